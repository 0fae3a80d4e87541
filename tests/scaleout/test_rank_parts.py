"""The parts of a multi-GPU trial that need no second process: FSDP's units, the ranks' shares of the eval loss,
what the trial records from every rank, how the ranks' outcomes merge, and a rank whose launcher is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from torch import nn

from peftplan.harness import multigpu
from peftplan.harness.channel import TrialChannel
from peftplan.harness.measure import MemoryPeak, planner_prediction
from peftplan.harness.ranks import SingleProcess, decoder_blocks, even_share, mean_loss
from peftplan.harness.suite import load_suite
from peftplan.harness.tasks import IGNORE, Encoded
from peftplan.harness.train import TrainStats, evaluate_loss
from peftplan.harness.trial import entry
from peftplan.harness.trial.outcome import OUTCOME, TrialOutcome
from peftplan.harness.trial.recipe import SPEC, TrialContext, TrialSpec
from peftplan.harness.trial.training import RankFigures, record_training
from peftplan.methods import get_method
from peftplan.models.build import build_model
from peftplan.results import Distributed, MemoryMeasurement, TrialStatus
from tests.harness.tiny import TINY_MODEL, write_suite

T = TypeVar("T")


class Block(nn.Module):
    def __init__(self, inner: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.inner = Block() if inner else None


class Stack(nn.Module):
    _no_split_modules = ["Block"]

    def __init__(self, nested: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(inner=nested), Block(inner=nested)])


def test_decoder_blocks_are_the_innermost_matches_and_may_be_none() -> None:
    flat = Stack(nested=False)
    assert decoder_blocks(flat) == list(flat.layers)
    nested = Stack(nested=True)  # a Block inside each Block: only the inner ones, never a parent after its child
    assert decoder_blocks(nested) == [layer.inner for layer in nested.layers]
    assert decoder_blocks(nn.Sequential(nn.Linear(2, 2))) == []


class FakeRanks(SingleProcess):
    """Rank `rank` of `world_size`, whose peers' gathered values come from `peers` (rank order, self excluded)."""

    def __init__(self, rank: int, world_size: int, peers: Sequence[Any] = (), parallel: str = "ddp") -> None:
        self.rank, self.world_size, self.parallel, self.peers = rank, world_size, parallel, list(peers)
        self.is_main = rank == 0

    def gather(self, value: T) -> list[T]:
        out = list(self.peers)
        out.insert(self.rank, value)
        return out

    def describe(self) -> Distributed:
        return Distributed(world_size=self.world_size, parallel=self.parallel)


def test_eval_loss_in_even_shares_sums_to_the_single_process_loss() -> None:
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, device="cpu", dtype=torch.float32)
    items = [Encoded(list(range(3, 3 + n)), [IGNORE] * 2 + list(range(5, 3 + n))) for n in (5, 9, 7, 6, 8)]
    shares = [even_share(items, rank, 2) for rank in (0, 1)]
    assert [len(s) for s in shares] == [3, 3]  # 5 items padded to 6: the same number of forwards on each rank
    assert shares[1][-1].labels == [IGNORE] * len(shares[1][-1].input_ids)  # the filler counts no tokens
    whole = evaluate_loss(model, items, 0, batch_size=2, device="cpu", autocast=None)
    from peftplan.harness.train import loss_sums

    rank1 = loss_sums(model, shares[1], 0, batch_size=2, device="cpu", autocast=None)
    shared = mean_loss(FakeRanks(0, 2, [rank1]), model, items, 0, batch_size=2, device="cpu", autocast=None)
    assert shared == pytest.approx(whole, rel=1e-6)


def _context(tmp_path: Path) -> TrialContext:
    loaded = load_suite(write_suite(tmp_path, {"training": {"gpus": 2, "device": "cpu"}}))
    spec = TrialSpec(run_dir=str(tmp_path), suite=loaded.normalized(), suite_dir=str(tmp_path),
                     method_key="lora", method="lora", method_config={"rank": 4}, lr=1e-3, trial_number=0,
                     pruning=False, weights={})
    method = get_method("lora")
    return TrialContext(spec, loaded, "cpu", None, TrialChannel(None, None), None, method,
                        method.make_config(rank=4))


def test_the_reported_peak_and_its_prediction_are_the_same_ranks(tmp_path: Path) -> None:
    """Rank 1 padded to longer examples and peaked higher: the trial's shape and prediction are rank 1's."""
    ctx = _context(tmp_path)
    peer = RankFigures(rank=1, source="cpu-livebytes", peak_allocated=5_000_000, peak_reserved=None, rss_peak=1,
                       measured_batch=8, measured_seq_len=48, train_tokens=300, train_time_s=2.0, train_loss=1.0,
                       trainable_checksum=0.0)
    outcome = TrialOutcome.start("cpu")
    outcome.memory = MemoryMeasurement(source="cpu-livebytes")
    stats = TrainStats(steps=4, train_loss=2.0, eval_loss=1.5, tokens=100, train_time_s=1.0)
    record_training(ctx, outcome, FakeRanks(0, 2, [peer]), nn.Linear(2, 2), stats,
                    MemoryPeak("cpu-livebytes", 4_000_000), (8, 40), "float32")
    memory = outcome.memory
    assert (memory.peak_allocated, memory.measured_batch, memory.measured_seq_len) == (5_000_000, 8, 48)
    expected, _ = planner_prediction("tiny", TINY_MODEL, "lora", {"rank": 4}, seq_len=48, batch_size=8,
                                     grad_checkpointing=False, optimizer="adamw", dtype="fp32", device="cpu", gpus=2)
    assert expected is not None and memory.predicted == expected
    assert memory.ranks is not None and [r.measured_seq_len for r in memory.ranks] == [40, 48]
    assert memory.ranks[1].predicted_peak_allocated == expected["peak_allocated"]
    assert memory.ranks[0].predicted_peak_allocated < expected["peak_allocated"]  # its shorter sequences
    metrics = outcome.metrics
    assert metrics.train_loss == pytest.approx((2.0 * 100 + 1.0 * 300) / 400)  # weighted by tokens
    assert (metrics.train_tokens, metrics.train_time_s, metrics.train_tokens_per_s) == (400, 2.0, 200.0)
    distributed = outcome.distributed
    assert distributed is not None and (distributed.world_size, distributed.parallel) == (2, "ddp")
    assert [r.train_tokens for r in distributed.ranks] == [100, 300]


def test_the_trial_process_alone_writes_outcome_json(tmp_path: Path) -> None:
    """Rank 0's failure stays in outcome-rank0.json until the merge; the merge names every rank's error."""
    rank0 = TrialOutcome.start("cpu")
    rank0.error = "RuntimeError: Connection closed by peer"
    multigpu.write_merged(tmp_path, {0: rank0, 1: None}, "cpu", "accelerate launch exited with code 1")
    merged = json.loads((tmp_path / OUTCOME).read_text())
    assert merged["status"] == "failed"
    assert merged["error"] == ("rank 0: RuntimeError: Connection closed by peer; no outcome from rank(s) 1; "
                               "accelerate launch exited with code 1")


def test_the_merge_is_rank_0s_outcome_once_it_finished_else_oom_if_any_rank_ran_out(tmp_path: Path) -> None:
    finished, oom = TrialOutcome.start("cpu"), TrialOutcome.start("cpu")
    finished.status, finished.metrics.steps = TrialStatus.SUCCESS, 4
    oom.status, oom.error = TrialStatus.OOM, "OutOfMemoryError: CUDA out of memory"
    multigpu.write_merged(tmp_path, {0: finished, 1: oom}, "cpu", None)  # rank 0 finished: the others had too
    merged = TrialOutcome.model_validate_json((tmp_path / OUTCOME).read_text())
    assert merged.status == TrialStatus.SUCCESS and merged.metrics.steps == 4 and merged.error is None
    echo = TrialOutcome.start("cpu")
    echo.error = "RuntimeError: Connection closed by peer"
    multigpu.write_merged(tmp_path, {0: echo, 1: oom}, "cpu", None)
    merged = TrialOutcome.model_validate_json((tmp_path / OUTCOME).read_text())
    assert merged.status == TrialStatus.OOM
    assert merged.error == "rank 1: OutOfMemoryError: CUDA out of memory; rank 0: RuntimeError: Connection closed by peer"


def test_a_launch_that_raises_still_leaves_an_outcome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _context(tmp_path)
    spec_path = tmp_path / SPEC
    spec_path.write_text(ctx.spec.model_dump_json())

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("accelerate is not installed")

    monkeypatch.setattr(multigpu, "run_ranks", broken)
    monkeypatch.setattr(entry, "die_with_parent", lambda: None)  # not for the test process itself
    assert entry.main([str(spec_path)]) == 0
    outcome = json.loads((tmp_path / OUTCOME).read_text())
    assert outcome["status"] == "failed" and outcome["error"] == "OSError: accelerate is not installed"


def test_a_rank_whose_launcher_is_not_the_trial_processes_child_exits(tmp_path: Path) -> None:
    code = "import sys; from peftplan.harness.lifeline import exit_if_orphaned_rank as check; " \
           "check(int(sys.argv[1])); print('still running')"
    # This process is the child's launcher here, so the check wants this process's parent as the trial process.
    kept = subprocess.run([sys.executable, "-c", code, str(os.getppid())], capture_output=True, text=True)
    assert kept.returncode == 0 and kept.stdout.strip() == "still running", kept.stderr
    orphan = subprocess.run([sys.executable, "-c", code, str(os.getpid())], capture_output=True, text=True)
    assert orphan.returncode == 1 and not orphan.stdout
    assert f"the trial process {os.getpid()} no longer runs its launcher {os.getpid()}; exiting" in orphan.stderr
