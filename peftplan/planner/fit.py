"""Fit search: the largest micro-batch, sequence length and rank that fit, searched on the model itself.

Every probe prices the real memory model (no extrapolation): memory grows with batch, sequence and
rank, so an exponential probe followed by bisection finds each limit in a few dozen evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from peftplan.methods.base import Method, MethodConfig
from peftplan.models.spec import ModelSpec
from peftplan.planner.context import TrainContext
from peftplan.planner.memory import StepModel, step_model

MAX_BATCH = 1 << 16
MAX_RANK = 8192


def largest(fits: Callable[[int], bool], low: int, high: int) -> int:
    """The largest n in [low, high] with `fits(n)`, for a monotone `fits`; low - 1 if none fits."""
    if low > high or not fits(low):
        return low - 1
    step = 1
    good = low
    while good + step <= high and fits(good + step):  # exponential probe
        good += step
        step *= 2
    bad = min(good + step, high + 1)
    while bad - good > 1:  # bisection between a fitting and a failing value
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def max_batch_size(model: StepModel, vram_bytes: int, seq: int) -> int:
    """The largest micro-batch that fits at sequence length `seq` (0 if even 1 does not)."""
    return largest(lambda b: model.breakdown(b, seq).total <= vram_bytes, 1, MAX_BATCH)


def max_seq_len(model: StepModel, vram_bytes: int, batch: int, limit: int) -> int:
    """The longest sequence (up to the model's `limit`) that fits at micro-batch `batch` (0 if none)."""
    return largest(lambda s: model.breakdown(batch, s).total <= vram_bytes, 1, limit)


def max_rank(
    spec: ModelSpec, method: Method, cfg: MethodConfig, ctx: TrainContext, vram_bytes: int
) -> int | None:
    """The largest rank that fits at the context's batch and length; None for methods without a rank."""
    if "rank" not in type(cfg).model_fields:
        return None
    field = type(cfg).model_fields["rank"]
    upper = MAX_RANK
    for meta in field.metadata:
        upper = min(upper, getattr(meta, "le", upper) or upper)

    def fits(rank: int) -> bool:
        model = step_model(spec, method, replace_rank(cfg, rank), ctx)
        return model.breakdown(ctx.batch_size, ctx.seq_len).total <= vram_bytes

    return largest(fits, 1, upper)


def replace_rank(cfg: MethodConfig, rank: int) -> MethodConfig:
    return cfg.model_copy(update={"rank": rank})


def sequence_limit(spec: ModelSpec) -> int:
    """The model's longest supported sequence (its position table), capped at 1M tokens."""
    cfg = spec.text_config
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = cfg.get(key)
        if isinstance(value, int) and value > 0:
            return min(value, 1 << 20)
    return 1 << 17


def with_shape(ctx: TrainContext, batch: int, seq: int) -> TrainContext:
    return replace(ctx, batch_size=batch, seq_len=seq)
