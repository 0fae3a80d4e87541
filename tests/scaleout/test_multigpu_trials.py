"""Multi-GPU trials (`training.gpus: 2`) through a real `peftplan bench` and `accelerate launch`.

There is no GPU here: the same path runs 2 CPU ranks on the gloo backend. Each rank trains on its own
share of the batches; rank 0 then measures the trained model; the result holds every rank's peak next
to the planner's per-GPU prediction.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peftplan.cli import main
from peftplan.harness.measure import planner_prediction
from peftplan.results import TrialResult, TrialStatus, read_result
from tests.harness.tiny import TINY_MODEL, write_suite
from tests.scaleout.helpers import ENV

pytestmark = pytest.mark.timeout(180)
TWO_CPU_RANKS = {"gpus": 2, "device": "cpu", "threads": 1, "steps": 3, "eval_every": 3}
ONE_TRIAL = {"trials": 1, "pruner": {"kind": "none"}}
# Deep and narrow: the weights outweigh the activations of a 2 x 32 batch, so sharding them shows.
DEEP_MODEL = {**TINY_MODEL, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 16}


def bench(tmp_path: Path, changes: dict) -> tuple[subprocess.CompletedProcess[str], TrialResult | None]:
    suite = write_suite(tmp_path, {"search": ONE_TRIAL, "methods": [{"name": "lora", "fixed": {"rank": 4}}],
                                   **changes})
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "peftplan.cli", "bench", str(suite), "--run-dir", str(run)],
                          capture_output=True, text=True, env=ENV, timeout=170)
    path = run / "trials" / "lora-0.json"
    return done, read_result(path) if path.is_file() else None


def test_ddp_trial_trains_on_two_ranks_and_rank0_measures_the_trained_adapter(tmp_path: Path) -> None:
    done, result = bench(tmp_path, {"name": "ddp", "training": TWO_CPU_RANKS})
    assert done.returncode == 0 and result is not None, done.stdout[-1500:] + done.stderr[-1500:]
    assert result.status == TrialStatus.SUCCESS
    run = result.distributed
    assert run is not None and (run.world_size, run.parallel, run.backend, run.distributed_type) == (
        2, "ddp", "gloo", "MULTI_CPU")
    ranks = run.ranks
    assert [r.rank for r in ranks] == [0, 1]
    assert ranks[0].train_loss != ranks[1].train_loss  # each rank trained on its own share ...
    assert ranks[0].trainable_checksum == pytest.approx(ranks[1].trainable_checksum, rel=1e-12)  # ... in sync
    assert result.metrics.train_tokens == sum(r.train_tokens for r in ranks)
    memory = result.memory
    assert memory is not None and memory.ranks is not None
    peaks = [r.peak_allocated or 0 for r in memory.ranks]
    assert [r.rank for r in memory.ranks] == [0, 1] and all(p > 0 for p in peaks)
    assert all(r.source == "cpu-livebytes" for r in memory.ranks) and memory.peak_allocated == max(peaks)
    predicted = (memory.predicted or {})["peak_allocated"]
    assert all(abs(predicted - p) / p < 0.10 for p in peaks), (peaks, predicted)  # per GPU, unsharded
    # The prediction and the shape are those of the rank whose peak is reported; every rank has its own.
    reported = next(r for r in memory.ranks if r.peak_allocated == memory.peak_allocated)
    assert (memory.measured_batch, memory.measured_seq_len) == (reported.measured_batch, reported.measured_seq_len)
    assert reported.predicted_peak_allocated == predicted and all(r.measured_seq_len for r in memory.ranks)
    # The training loss is every rank's, weighted by tokens; the eval loss was scored in shares and summed.
    weighted = sum((r.train_loss or 0) * r.train_tokens for r in ranks) / sum(r.train_tokens for r in ranks)
    assert result.metrics.train_loss == pytest.approx(weighted, rel=1e-9)
    assert result.intermediate and result.intermediate[-1].eval_loss == result.metrics.eval_loss
    # Every rank wrote its own outcome; the trial process wrote outcome.json (rank 0's, as it finished).
    work = tmp_path / "run" / "work" / "lora-0"
    assert sorted(p.name for p in work.glob("outcome*.json")) == ["outcome-rank0.json", "outcome-rank1.json",
                                                                  "outcome.json"]
    assert json.loads((work / "outcome.json").read_text()) == json.loads((work / "outcome-rank0.json").read_text())
    # What a single-process trial measures, rank 0 measured on the trained adapter.
    assert result.metrics.task_metric is not None and result.metrics.adapter_bytes
    assert result.forgetting is not None and result.forgetting.base_reference == "adapter-disabled"
    latency = result.latency
    assert latency is not None and latency.prefill_unmerged and latency.prefill_merged
    # Decode is a difference of two timings: None when a tiny model's decode drowns in the noise.
    assert all(v is None or v > 0 for v in (latency.decode_unmerged, latency.decode_merged))
    print("ddp per-rank peaks", peaks, "predicted per GPU", predicted)


def test_fsdp_trial_shards_the_model_and_each_rank_peak_meets_the_sharded_prediction(tmp_path: Path) -> None:
    done, result = bench(tmp_path, {
        "name": "fsdp", "model": {"config": DEEP_MODEL, "dtype": "fp32"},
        "training": {**TWO_CPU_RANKS, "parallel": "fsdp", "batch_size": 2, "seq_len": 32, "precision": "fp32"},
        "eval": {"task_examples": 8, "loss_examples": 5}})  # 5: the ranks' eval shares are padded to 3 each
    assert done.returncode == 0 and result is not None, done.stdout[-1500:] + done.stderr[-1500:]
    assert result.status == TrialStatus.SUCCESS and result.metrics.task_metric is not None
    assert result.distributed is not None and result.distributed.parallel == "fsdp"
    assert result.distributed.sharded_blocks == DEEP_MODEL["num_hidden_layers"]
    # Rank 0 measured the base after training, on the whole model it rebuilt: no peer waited for it.
    latency = result.latency
    assert latency is not None and latency.prefill_base and latency.prefill_unmerged
    assert all(v is None or v > 0 for v in (latency.decode_base, latency.decode_unmerged))
    assert result.forgetting is not None and result.forgetting.probe == "self-sampled"
    assert result.forgetting.base_reference == "adapter-disabled"
    checksums = [r.trainable_checksum for r in result.distributed.ranks]
    assert checksums[0] == pytest.approx(checksums[1], rel=1e-12)
    memory = result.memory
    assert memory is not None and memory.ranks is not None and memory.predicted is not None
    peaks = [r.peak_allocated or 0 for r in memory.ranks]
    sharded = memory.predicted["peak_allocated"]
    spec = json.loads((tmp_path / "run" / "work" / "lora-0" / "spec.json").read_text())
    unsharded, _ = planner_prediction(
        "deep", DEEP_MODEL, "lora", spec["method_config"], seq_len=memory.measured_seq_len or 0,
        batch_size=memory.measured_batch or 0, grad_checkpointing=False, optimizer="adamw", dtype="fp32",
        device="cpu", gpus=2, shard="none")
    assert unsharded is not None and sharded < 0.85 * unsharded["peak_allocated"]
    assert all(abs(sharded - p) / p < 0.10 for p in peaks), (peaks, sharded)
    assert all(p < 0.9 * unsharded["peak_allocated"] for p in peaks), (peaks, unsharded)  # sharding took effect
    print("fsdp per-rank peaks", peaks, "predicted per GPU", sharded, "unsharded", unsharded["peak_allocated"])


def test_a_rank_out_of_memory_makes_the_trial_oom(tmp_path: Path) -> None:
    done, result = bench(tmp_path, {"name": "oom", "training": TWO_CPU_RANKS, "budget": {"memory_cap": "1MiB"}})
    assert done.returncode == 1 and "no trial succeeded" in done.stderr
    assert result is not None and result.status == TrialStatus.OOM
    # Both ranks hit the cap at the same op; whichever exits first has the launcher stop the other.
    assert result.error is not None and "MemoryCapExceeded" in result.error, result.error
    # A failed rank exits non-zero (so the launcher stops its peers), after writing its outcome.
    assert "accelerate launch exited with code 1" in result.error, result.error
    work = tmp_path / "run" / "work" / "lora-0"
    outcomes = [json.loads(path.read_text()) for path in sorted(work.glob("outcome-rank*.json"))]
    assert outcomes and all(o["status"] in ("oom", "failed") for o in outcomes)
    assert any(o["status"] == "oom" for o in outcomes)


def test_fewer_training_examples_than_ranks_times_batch_are_refused(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    suite = write_suite(tmp_path, {"task": {"train": {"size": 40}, "holdout": 32},  # 8 training examples
                                   "training": {"gpus": 2, "device": "cpu", "batch_size": 8}})
    expected = "training.gpus: 2 ranks x batch_size 8 need 16 training examples, the task has 8"
    for argv in (["validate", str(suite)], ["bench", str(suite), "--run-dir", str(tmp_path / "run")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_multi_gpu_trials_are_refused_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench` and `worker` call `check_gpus` first (see the CUDA refusal below): exit 2 with this one line."""
    from peftplan.errors import BadInputError
    from peftplan.harness.checks import check_gpus
    from peftplan.harness.suite import TrainingSection

    training = TrainingSection(gpus=2, device="cpu")
    with monkeypatch.context() as patch, pytest.raises(BadInputError) as caught:
        patch.setattr(sys, "platform", "darwin")  # only around the check: other code reads it too
        check_gpus(training)
    assert str(caught.value) == "training.gpus: 2 ranks per trial need Linux; this host runs darwin (use gpus: 1)"
    check_gpus(training)  # on this Linux host: fine
