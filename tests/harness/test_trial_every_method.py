"""Every registered method runs the whole trial body on a tiny random Llama: load, measure the base, apply,
train, score, forgetting, save and reload, latency (merged where the method merges).

This is `run_trial`, the function the trial subprocess runs, called in-process so all fourteen methods
take seconds; `test_bench.py` runs the same body through real subprocesses and Optuna.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from peftplan.harness.channel import TrialChannel
from peftplan.harness.data import prepare_task, write_task
from peftplan.harness.loading import weights_source
from peftplan.harness.rundir import open_run
from peftplan.harness.suite import load_suite
from peftplan.harness.trial.entry import run_trial
from peftplan.harness.trial.outcome import TrialOutcome
from peftplan.harness.trial.recipe import TrialSpec
from peftplan.methods import get_method, method_names
from peftplan.results import TrialResult
from tests.harness.tiny import write_suite


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    base = tmp_path_factory.mktemp("every-method")
    loaded = load_suite(write_suite(base, {"training": {"steps": 2, "batch_size": 4, "threads": 1},
                                           "eval": {"task_examples": 8, "loss_examples": 8}}))
    run = open_run(base / "run", loaded, storage_url=None, resume=False)
    write_task(prepare_task(loaded), run.data_dir)
    return loaded, run


@pytest.mark.parametrize("name", method_names())
def test_every_method_runs_a_whole_trial(prepared_run: tuple, name: str) -> None:
    loaded, run = prepared_run
    method = get_method(name)
    spec = TrialSpec(
        run_dir=str(run.path), suite=loaded.normalized(), suite_dir=str(loaded.base_dir), method_key=name,
        method=name, method_config=method.make_config().model_dump(mode="json"), lr=1e-3, trial_number=0,
        pruning=False, weights=vars(weights_source(loaded.suite.model, loaded)),
    )
    outcome = TrialOutcome.start("cpu")
    run_trial(spec, TrialChannel(None, None), outcome, "cpu")
    assert outcome.status == "success"
    metrics = outcome.metrics
    assert metrics.steps == 2 and metrics.task_metric is not None and 0.0 <= metrics.task_metric <= 1.0
    assert metrics.trainable_params and metrics.adapter_bytes
    assert outcome.memory is not None and outcome.memory.peak_allocated
    forgetting = outcome.forgetting
    assert forgetting is not None and forgetting.probe == "self-sampled" and forgetting.tokens
    latency = outcome.latency
    assert latency is not None and latency.prefill_base and latency.prefill_unmerged
    assert latency.adapter_load_s is not None and latency.adapter_load_s >= 0
    # Decode is a difference of two timings; under heavy background load it may be withheld (None).
    assert all(v is None or v > 0 for v in (latency.decode_base, latency.decode_unmerged, latency.decode_merged))
    merged_expected = method.traits.mergeable and method.traits.inference_overhead != "none"
    assert (latency.prefill_merged is not None) == merged_expected
    # The outcome's parts are the result file's.
    TrialResult(suite_name="t", suite_hash="h", study_name="t/x", model="m", task="t", method=name, trial_number=0,
                config={}, config_hash="c", status=outcome.status, metrics=metrics, forgetting=forgetting,
                latency=latency, memory=outcome.memory, intermediate=outcome.intermediate,
                provenance=outcome.provenance)
    assert Path(run.data_dir / "probe-self-sampled.txt").is_file()


@pytest.mark.parametrize("name", ["lora", "qlora", "ia3", "prompt", "full"])
def test_planner_prediction_is_recorded_next_to_the_measured_peak(tmp_path: Path, name: str) -> None:
    """bf16 weights under bf16 autocast is a context the planner models: its peak must be within 10%."""
    loaded = load_suite(write_suite(tmp_path, {"model": {"dtype": "bf16"}, "eval": {"forgetting": None, "latency": None},
                                               "training": {"steps": 2, "batch_size": 4, "precision": "bf16"}}))
    run = open_run(tmp_path / "run", loaded, storage_url=None, resume=False)
    write_task(prepare_task(loaded), run.data_dir)
    method = get_method(name)
    spec = TrialSpec(
        run_dir=str(run.path), suite=loaded.normalized(), suite_dir=str(loaded.base_dir), method_key=name,
        method=name, method_config=method.make_config().model_dump(mode="json"), lr=1e-3, trial_number=0,
        pruning=False, weights=vars(weights_source(loaded.suite.model, loaded)), threads=1,
    )
    outcome = TrialOutcome.start("cpu")
    run_trial(spec, TrialChannel(None, None), outcome, "cpu")
    memory = outcome.memory
    assert memory is not None
    if memory.predicted is None:
        pytest.skip("the planner is not importable here")
    assert memory.measured_batch == 4 and memory.measured_seq_len
    predicted, measured = memory.predicted["peak_allocated"], memory.peak_allocated
    assert measured is not None
    assert abs(predicted - measured) / measured < 0.10, (predicted, measured)
