"""What a trial records when something was not measured or went wrong: nulls, never zeros, and the planner's
error instead of a silently missing prediction. Tiny random Llama, the real trial body, in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from peftplan.harness.channel import TrialChannel
from peftplan.harness.data import prepare_task, write_task
from peftplan.harness.loading import weights_source
from peftplan.harness.rundir import open_run
from peftplan.harness.suite import load_suite
from peftplan.harness.trial.entry import run_trial
from peftplan.harness.trial.outcome import TrialOutcome
from peftplan.harness.trial.recipe import TrialSpec
from peftplan.methods import get_method
from peftplan.results import TrialResult
from tests.harness.tiny import write_suite


def run_one(tmp_path: Path, changes: dict[str, Any], method: str = "lora", **config: Any) -> TrialOutcome:
    """Run one trial of the tiny suite with `changes`; returns its outcome (put into a result, as the runner does)."""
    loaded = load_suite(write_suite(tmp_path, {"training": {"steps": 2, "batch_size": 4, "threads": 1},
                                               **changes}))
    run = open_run(tmp_path / "run", loaded, storage_url=None, resume=False)
    write_task(prepare_task(loaded), run.data_dir)
    cfg = get_method(method).make_config(**config)
    spec = TrialSpec(run_dir=str(run.path), suite=loaded.normalized(), suite_dir=str(loaded.base_dir),
                     method_key=method, method=method, method_config=cfg.model_dump(mode="json"), lr=1e-3,
                     trial_number=0, pruning=False, weights=vars(weights_source(loaded.suite.model, loaded)))
    outcome = TrialOutcome.start("cpu")
    run_trial(spec, TrialChannel(None, None), outcome, "cpu")
    TrialResult(suite_name="t", suite_hash="h", study_name="t/x", model="m", task="t", method=method, trial_number=0,
                config={}, config_hash="c", status=outcome.status, metrics=outcome.metrics,
                forgetting=outcome.forgetting, latency=outcome.latency, memory=outcome.memory,
                intermediate=outcome.intermediate, provenance=outcome.provenance)
    return outcome


def lm_eval_task(directory: Path) -> dict[str, Any]:
    """A local lm-eval multiple-choice task (offline), as the suite's `eval.lm_eval` section."""
    rows = [{"question": f"{i} plus one is", "choices": [f" {i + 1}", f" {i + 7}"], "label": 0} for i in range(8)]
    (directory / "probe.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (directory / "tasks").mkdir()
    (directory / "tasks" / "tiny_probe.yaml").write_text(
        "task: tiny_probe\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {directory / 'probe.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\ntarget_delimiter: ''\n"
        "metric_list:\n  - metric: acc\n"
    )
    return {"tasks": ["tiny_probe"], "include_path": "tasks", "limit": 8, "batch_size": 4}


def test_forgetting_with_only_lm_eval_probes_is_null_not_zero(tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    outcome = run_one(tmp_path, {"eval": {"forgetting": None, "latency": None, "task_examples": 8,
                                          "loss_examples": 8, "lm_eval": lm_eval_task(tmp_path)}})
    forgetting = outcome.forgetting
    assert forgetting is not None and forgetting.probe == "lm-eval"
    assert forgetting.delta is None and forgetting.loss_base is None and forgetting.loss_adapted is None
    assert forgetting.tokens is None
    assert set(forgetting.lm_eval) == {"tiny_probe/acc"}
    # Its interval: a paired bootstrap over the documents both runs scored.
    low, high = forgetting.lm_eval_ci["tiny_probe/acc"]
    assert low - 1e-9 <= forgetting.lm_eval["tiny_probe/acc"] <= high + 1e-9


def test_a_failing_planner_is_recorded_as_prediction_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import peftplan

    def broken_planner(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("a planner bug")

    monkeypatch.setattr(peftplan, "plan", broken_planner)
    outcome = run_one(tmp_path, {"eval": {"forgetting": None, "latency": None, "task_examples": 8,
                                          "loss_examples": 8}})
    memory = outcome.memory
    assert outcome.status == "success" and memory is not None and memory.peak_allocated
    assert memory.predicted is None and memory.prediction_error == "ZeroDivisionError: a planner bug"
