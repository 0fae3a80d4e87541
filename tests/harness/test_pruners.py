"""Multi-fidelity pruners (successive halving, Hyperband) on the eval steps: what the suite builds, a bench that
prunes with one, and the replay `benchmarks/pruners.py` scores them with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from peftplan.harness.search import make_pruner
from peftplan.harness.suite import parse_suite
from peftplan.results import TrialStatus, read_result
from tests.harness.tiny import TINY_SUITE, deep_update, write_suite
from tests.scripts import load_script


def suite_with(pruner: dict, **training: int):
    return parse_suite(deep_update(TINY_SUITE, {"search": {"pruner": pruner},
                                                "training": {"steps": 30, "eval_every": 10, **training}}))


def test_the_suite_builds_rungs_on_its_eval_steps() -> None:
    sha = make_pruner(suite_with({"kind": "successive_halving"}), 30)
    assert isinstance(sha, optuna.pruners.SuccessiveHalvingPruner)
    assert (sha._min_resource, sha._reduction_factor, sha._min_early_stopping_rate) == (10, 3, 0)
    band = make_pruner(suite_with({"kind": "hyperband", "reduction_factor": 2}), 30)
    assert isinstance(band, optuna.pruners.HyperbandPruner)
    assert (band._min_resource, band._max_resource, band._reduction_factor) == (10, 30, 2)
    # Unset, the new setting leaves the resolved suite (and so its hash) as it was.
    assert "reduction_factor" not in suite_with({"kind": "median"}).model_dump(mode="json")["search"]["pruner"]


def test_a_bench_prunes_at_the_first_rung_with_successive_halving(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, {
        # A fast learner first, then a learning rate that cannot move the loss: halving stops it at its first eval.
        "methods": [{"name": "lora", "trials": 2, "enqueue": [{"lr": 0.01}, {"lr": 1.0e-7}],
                     "fixed": {"rank": 4, "targets": "all-linear", "dropout": 0.0, "alpha_ratio": 2}}],
        "search": {"recipe": False, "pruner": {"kind": "successive_halving"}},
        "training": {"steps": 6, "eval_every": 2, "threads": 1},
        "eval": {"forgetting": None, "latency": None, "task_examples": 8, "loss_examples": 8},
    })
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "peftplan.cli", "bench", str(suite), "--run-dir", str(run)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (read_result(run / "trials" / f"lora-{n}.json") for n in (0, 1))
    assert first.status == TrialStatus.SUCCESS and [v.step for v in first.intermediate] == [2, 4, 6]
    assert second.status == TrialStatus.PRUNED and [v.step for v in second.intermediate] == [2]


@pytest.mark.parametrize("kind", ["none", "successive_halving", "hyperband", "median"])
def test_the_benchmark_replays_learning_curves_through_each_pruner(kind: str) -> None:
    bench = load_script("benchmarks/pruners.py", "pruners_benchmark")
    suite = suite_with({"kind": "median", "startup_trials": 1})
    good = bench.Curve("lora", 0, [(10, 0.9), (20, 0.5), (30, 0.3)], 30, 0.90, 0.5)
    bad = bench.Curve("lora", 1, [(10, 2.0), (20, 1.9), (30, 1.8)], 30, 0.60, 0.5)
    better = bench.Curve("lora", 2, [(10, 0.8), (20, 0.4), (30, 0.2)], 30, 0.93, 0.5)
    replayed = bench.replay([good, bad, better], kind, suite, "t/lora")
    assert replayed.steps_total == 90 and replayed.lost_points == 0.0
    if kind == "none":
        assert (replayed.steps_used, replayed.pruned, replayed.seconds_saved) == (90, 0, 0.0)
    elif kind in ("successive_halving", "median"):  # the bad trial stops at its first eval
        assert (replayed.steps_used, replayed.pruned, replayed.seconds_saved) == (70, 1, 10.0)
    else:
        assert replayed.steps_used <= 90
    # Pruning a trial that would have become the best loses its accuracy.
    late = bench.Curve("lora", 3, [(10, 2.1), (20, 0.3), (30, 0.1)], 30, 0.97, 0.5)
    if kind == "successive_halving":
        assert bench.replay([good, late], kind, suite, "t/lora").lost_points == pytest.approx(7.0)
    found = bench.evaluate([good, bad, better], suite, "t", orders=5)
    assert found[kind]["orders"] == 5 and 0 <= found[kind]["saved_pct_over_orders"] <= 100
