"""Intervals next to every compared number: bootstrap over eval examples (task metric, forgetting; lm-eval in
`test_honest_measurements.py`),
over steps (training throughput), and repeated timings until ±5% or a cap (latency)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from peftplan import stats as intervals
from peftplan.harness import stats
from tests.harness.test_honest_measurements import run_one


def inside(value: float, interval: list[float | None] | None) -> bool:
    """Within [low, high]; a timing's interval may have no upper bound (None)."""
    if interval is None:
        return False
    low, high = interval
    return low - 1e-9 <= value and (high is None or value <= high + 1e-9)


def test_bootstrap_is_seeded_and_covers_the_estimate() -> None:
    rng = random.Random(1)
    correct = [int(rng.random() < 0.7) for _ in range(100)]
    first, again = stats.mean_ci(correct), stats.mean_ci(correct)
    assert first == again  # fixed seed: the same measurements give the same interval
    assert inside(sum(correct) / 100, first)
    # About ±1.96 * sqrt(p(1-p)/n) = ±0.09 for 100 examples at p = 0.7.
    assert 0.12 < first[1] - first[0] < 0.24
    assert stats.mean_ci([1]) is None  # nothing to resample


def test_paired_forgetting_interval_cancels_the_windows_own_difficulty() -> None:
    rng = random.Random(2)
    tokens = [127] * 16
    base = [t * rng.uniform(2.0, 5.0) for t in tokens]  # windows differ a lot in difficulty
    adapted = [b + t * 0.1 + rng.gauss(0, 1.0) for b, t in zip(base, tokens, strict=True)]  # +0.1 nats each
    paired = stats.paired_ratio_delta_ci(adapted, base, tokens)
    assert paired is not None and 0.0 < paired[0] < 0.1 < paired[1] < 0.2
    unpaired_width = (stats.ratio_ci(adapted, tokens)[1] - stats.ratio_ci(adapted, tokens)[0])
    assert paired[1] - paired[0] < unpaired_width / 10


def test_t_interval_and_separation() -> None:
    mean, low, high = intervals.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.303 * 1.0 / 3**0.5, rel=1e-6)
    assert intervals.relative_half_width((2.0, 1.9, 2.1)) == pytest.approx(0.05)
    assert intervals.separated([0.1, 0.2], [0.25, 0.3]) and not intervals.separated([0.1, 0.26], [0.25, 0.3])
    assert not intervals.separated(None, [0.0, 1.0])


def test_timings_repeat_until_precise_or_capped() -> None:
    from peftplan.harness.measure import MAX_REPEATS, MIN_REPEATS, measure_speed
    from peftplan.models.build import build_model
    from tests.harness.tiny import TINY_MODEL

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model(TINY_MODEL, device="cpu", dtype=torch.float32)
    speed = measure_speed(model, list(range(3, 19)), new_tokens=4, repeats=1, device="cpu")
    assert MIN_REPEATS <= speed.repeats <= MAX_REPEATS
    assert inside(speed.prefill_tokens_per_s, speed.prefill_ci)
    if speed.decode_tokens_per_s is not None and speed.decode_ci is not None:
        assert inside(speed.decode_tokens_per_s, speed.decode_ci)
    # Without time to repeat, the minimum is taken and the interval recorded however wide it is (its upper end
    # None when three noisy timings cannot bound the time away from zero).
    hurried = measure_speed(model, list(range(3, 19)), new_tokens=4, repeats=1, device="cpu", time_cap_s=0.0)
    assert hurried.repeats == MIN_REPEATS and inside(hurried.prefill_tokens_per_s, hurried.prefill_ci)


def test_a_trial_records_intervals_next_to_its_numbers(tmp_path: Path) -> None:
    outcome = run_one(tmp_path, {"eval": {"task_examples": 16, "loss_examples": 8,
                                          "forgetting": {"probe": "self-sampled", "tokens": 128, "window": 32}}})
    metrics, forgetting, latency = outcome.metrics, outcome.forgetting, outcome.latency
    assert forgetting is not None and latency is not None
    assert inside(metrics.task_metric, metrics.task_metric_ci)
    assert set(metrics.task_metrics_ci) == set(metrics.task_metrics)
    assert inside(metrics.train_tokens_per_s, metrics.train_tokens_per_s_ci)
    assert inside(forgetting.delta, forgetting.delta_ci)
    for variant in ("base", "unmerged", "merged"):
        assert inside(getattr(latency, f"prefill_{variant}"), getattr(latency, f"prefill_{variant}_ci"))
        assert latency.repeats[variant] >= 3
