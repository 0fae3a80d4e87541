"""Multi-fidelity pruning on the smoke suite: training steps saved against accuracy lost.

1. Runs the suite once with no pruning (`search.pruner.kind: none`), so that every trial reports its eval loss at
   every eval step and trains to the end. `--run-dir` reuses such a run.
2. Replays each pruner over those trials, method by method, in an in-memory Optuna study named like the run's:
   each trial reports its negated eval loss at its eval steps, as `harness/runner.py` does, and stops at the
   first step its pruner says so (before the last step). A pruned trial used the steps up to there; a kept one
   all of them and scores its measured accuracy.
3. Per pruner: the share of trial-steps saved, and the accuracy lost, in points: per method, the best accuracy
   among the kept trials against the best among all trials (mean and worst over methods). In the run's trial
   order, and as the mean over `--orders` random orders of each method's trials (the first trials of a study
   decide its early rungs, so one order is one draw).

The replay keeps the configurations fixed: in a real run a sampler adapts to what is pruned, and the trial-steps
saved there buy new trials. It measures what the pruner decides, on real learning curves.

Usage: python benchmarks/pruners.py [--suite suites/smoke.yaml] [--run-dir DIR] [--orders 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

PRUNERS = ("none", "median", "successive_halving", "hyperband")
LATE = " (first rung at the 2nd eval)"  # the same pruners, not consulted before the second eval step


@dataclass(frozen=True)
class Curve:
    """One trial as it ran without pruning: its eval losses by step, its steps, and its final accuracy."""

    method: str
    number: int
    losses: list[tuple[int, float]]
    steps: int
    accuracy: float
    step_time_s: float | None = None


@dataclass(frozen=True)
class Replayed:
    """One method's trials under one pruner."""

    steps_used: int
    steps_total: int
    lost_points: float  # best accuracy of all trials minus best of the kept ones, in points
    seconds_saved: float  # training time of the steps not taken
    pruned: int


def run_without_pruning(suite_path: Path, run_dir: Path) -> float:
    """Bench the suite with `search.pruner.kind: none` into `run_dir`; returns the wall time (s)."""
    from peftplan.harness.progress import LineProgress
    from peftplan.harness.rundir import open_run
    from peftplan.harness.runner import BenchRunner
    from peftplan.harness.suite import LoadedSuite, load_suite, parse_suite

    original = load_suite(suite_path)
    data = original.suite.model_dump(mode="json")
    data["search"]["pruner"]["kind"] = "none"
    data["name"] = f"{original.suite.name}-nopruning"
    loaded = LoadedSuite(parse_suite(data), original.source, original.base_dir)  # paths stay the suite's
    run = open_run(run_dir, loaded, storage_url=None, resume=False)
    started = time.perf_counter()
    BenchRunner(loaded, run, progress=LineProgress()).run()
    return time.perf_counter() - started


def read_curves(run_dir: Path) -> list[Curve]:
    from peftplan.results import TrialStatus, read_result

    curves = []
    for path in sorted((run_dir / "trials").glob("*.json")):
        result = read_result(path)
        if result.status != TrialStatus.SUCCESS or result.metrics.task_metric is None or result.confirm_of is not None:
            continue
        m = result.metrics
        per_step = m.train_time_s / m.steps if m.train_time_s and m.steps else None
        curves.append(Curve(result.label or result.method, result.trial_number,
                            [(v.step, v.eval_loss) for v in result.intermediate], int(m.steps or 0),
                            float(m.task_metric), per_step))
    return curves


def make_pruner(kind: str, suite: Any) -> Any:
    """The pruner `harness/search.py` builds for the suite with `search.pruner.kind: kind`; with LATE, its first
    rung at the second eval step (successive halving and Hyperband: `eval_every` doubled, as a suite evaluating
    half as often would; median: `warmup_steps` up to the second eval)."""
    from peftplan.harness.search import make_pruner as harness_pruner

    late = kind.endswith(LATE)
    kind = kind.removesuffix(LATE)
    every = suite.training.eval_every
    pruner = suite.search.pruner.model_copy(update={"kind": kind, **({"warmup_steps": 2 * every - 1} if late else {})})
    changed = suite.model_copy(update={
        "search": suite.search.model_copy(update={"pruner": pruner, "multi_objective": False}),
        "training": suite.training.model_copy(update={"eval_every": 2 * every if late and kind != "median" else every}),
    })
    return harness_pruner(changed, changed.training.steps)


def replay(curves: list[Curve], kind: str, suite: Any, study_name: str) -> Replayed:
    """One method's trials, in the given order, under one pruner."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(study_name=study_name, direction="maximize", pruner=make_pruner(kind, suite))
    used, saved_s, kept, pruned = 0, 0.0, [], 0
    for curve in curves:
        trial = study.ask()
        stopped_at = None
        for step, loss in curve.losses:
            trial.report(-loss, step)  # the runner's report: eval loss, negated in a maximised study
            if step < curve.steps and trial.should_prune():
                stopped_at = step
                break
        if stopped_at is None:
            used += curve.steps
            kept.append(curve.accuracy)
            study.tell(trial, curve.accuracy)
        else:
            used += stopped_at
            pruned += 1
            saved_s += (curve.steps - stopped_at) * (curve.step_time_s or 0.0)
            study.tell(trial, state=TrialState.PRUNED)
    best = max(c.accuracy for c in curves)
    return Replayed(used, sum(c.steps for c in curves), 100 * (best - max(kept, default=0.0)), saved_s, pruned)


def evaluate(curves: list[Curve], suite: Any, suite_name: str, orders: int) -> dict[str, dict[str, Any]]:
    """Every pruner over every method's trials: in trial order, and over `orders` shuffled orders."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    methods: dict[str, list[Curve]] = {}
    for curve in curves:
        methods.setdefault(curve.method, []).append(curve)
    rng = random.Random(0)
    draws = [{m: rng.sample(cs, len(cs)) for m, cs in methods.items()} for _ in range(orders)]
    out = {}
    for kind in [*PRUNERS, *(k + LATE for k in PRUNERS if k != "none")]:
        runs = {m: replay(sorted(cs, key=lambda c: c.number), kind, suite, f"{suite_name}/{m}")
                for m, cs in methods.items()}
        used, total = sum(r.steps_used for r in runs.values()), sum(r.steps_total for r in runs.values())
        saved_over, lost_over = [], []
        for draw in draws:
            shuffled = [replay(cs, kind, suite, f"{suite_name}/{m}") for m, cs in draw.items()]
            saved_over.append(100 * (1 - sum(r.steps_used for r in shuffled) / sum(r.steps_total for r in shuffled)))
            lost_over.append(statistics.fmean(r.lost_points for r in shuffled))
        out[kind] = {
            "steps_used": used, "steps_total": total, "saved_pct": 100 * (1 - used / total),
            "pruned": sum(r.pruned for r in runs.values()),
            "lost_points_mean": statistics.fmean(r.lost_points for r in runs.values()),
            "lost_points_max": max(r.lost_points for r in runs.values()),
            "train_seconds_saved": sum(r.seconds_saved for r in runs.values()),
            "per_method_lost_points": {m: r.lost_points for m, r in runs.items()},
            "orders": orders,
            "saved_pct_over_orders": statistics.fmean(saved_over) if draws else None,
            "lost_points_over_orders": statistics.fmean(lost_over) if draws else None,
            "lost_points_over_orders_max": max(lost_over) if draws else None,
        }
    return out


def table(found: dict[str, dict[str, Any]], trials: int) -> str:
    orders = next(iter(found.values()))["orders"]
    lines = ["| pruner | trials pruned | trial-steps used / total | saved | training time saved | accuracy lost "
             f"(points, mean / worst method) | over {orders} trial orders: saved, lost (mean / worst draw) |",
             "|---|---|---|---|---|---|---|"]
    for kind, f in found.items():
        lines.append(f"| {kind} | {f['pruned']} | {f['steps_used']} / {f['steps_total']} | {f['saved_pct']:.0f}% | "
                     f"{f['train_seconds_saved']:.0f} s | "
                     f"{f['lost_points_mean']:.1f} / {f['lost_points_max']:.1f} | "
                     f"{f['saved_pct_over_orders']:.0f}%, {f['lost_points_over_orders']:.1f} / "
                     f"{f['lost_points_over_orders_max']:.1f} |")
    return "\n".join(lines) + f"\n\n{trials} trials."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=ROOT / "suites" / "smoke.yaml")
    parser.add_argument("--run-dir", type=Path, default=None, help="A finished run without pruning to replay "
                        "(default: run the suite into runs/<name>-nopruning, or reuse it when it is there).")
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from peftplan.harness.suite import load_suite

    loaded = load_suite(args.suite)
    run_dir = args.run_dir or ROOT / "runs" / f"{loaded.suite.name}-nopruning"
    wall = None
    if not (run_dir / "trials").is_dir():
        wall = run_without_pruning(args.suite, run_dir)
    curves = read_curves(run_dir)
    if not curves:
        print(f"no successful trial in {run_dir}", file=sys.stderr)
        return 1
    found = evaluate(curves, loaded.suite, f"{loaded.suite.name}-nopruning", args.orders)
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), "wall_s": wall, "trials": len(curves), "pruners": found}, indent=2))
    else:
        if wall is not None:
            print(f"run without pruning: {wall / 60:.1f} min in {run_dir}\n")
        print(table(found, len(curves)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
