"""Fit search: the largest micro-batch, sequence length and rank that fit, searched on the model itself.

Every probe prices the real memory model (no extrapolation). Memory grows with batch, sequence and
rank and is close to affine in each (quadratic in the sequence at most), so each search probes where
the line through its two bracketing probes meets the budget and checks the neighbour: the exact
boundary, usually in a handful of probes (`largest_secant`; `largest` is plain bisection).

The largest rank means something only up to the adapted layers' own dimensions: a LoRA update B·A
has rank at most min(in, out) of its layer, so the search stops at the smallest dimension of the
targeted layers; LoKr's rank applies to its Kronecker factor w2, which is stored whole (the rank
unused) from half its larger side up. Each adapter kind says what its rank is (`AdapterKind.rank_meaning`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from peftplan.methods.base import Method, MethodConfig
from peftplan.models.spec import ModelSpec
from peftplan.planner.context import TrainContext
from peftplan.planner.memory import GIB, StepModel, step_model
from peftplan.replay.terms import AdapterKind, MemoryTerms

MAX_BATCH = 1 << 16
MAX_RANK = 8192

def largest(fits: Callable[[int], bool], low: int, high: int) -> int:
    """The largest n in [low, high] with `fits(n)`, for a monotone `fits`; low - 1 if none fits."""
    if low > high or not fits(low):
        return low - 1
    return _climb(fits, low, high)


def _climb(fits: Callable[[int], bool], good: int, high: int) -> int:
    """From a fitting `good`, the largest fitting n <= high (exponential probe, then bisection)."""
    step = 1
    while good + step <= high and fits(good + step):
        good += step
        step *= 2
    bad = min(good + step, high + 1)
    return bisect(fits, good, bad)


def bisect(fits: Callable[[int], bool], good: int, bad: int, *, relative: float = 0.0) -> int:
    """Between a fitting `good` and a failing `bad`, the largest fitting n (within `relative` of it)."""
    while bad - good > max(1, int(good * relative)):
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def largest_secant(total: Callable[[int], int], budget: int, low: int, high: int) -> int:
    """The largest n in [low, high] with `total(n) <= budget`, for an increasing `total` that is close to
    affine: each probe goes where the line through the bracketing probes crosses the budget, and its
    neighbour is probed too, so a near-affine `total` ends in a handful of probes. low - 1 if none fits."""
    if low > high or total(low) > budget:
        return low - 1
    if total(high) <= budget:
        return high
    good, bad = low, high  # total(good) fits, total(bad) does not
    while bad - good > 1:
        slope = (total(bad) - total(good)) / (bad - good)
        guess = good + int((budget - total(good)) / slope) if slope > 0 else (good + bad) // 2
        guess = min(max(guess, good + 1), bad - 1)
        if total(guess) <= budget:
            good = guess
            if guess + 1 < bad and total(guess + 1) > budget:
                bad = guess + 1
        else:
            bad = guess
            if guess - 1 > good and total(guess - 1) <= budget:
                good = guess - 1
    return good


def max_batch_size(model: StepModel, vram_bytes: int, seq: int) -> int:
    """The largest micro-batch that fits at sequence length `seq` (0 if even 1 does not)."""
    return largest_secant(lambda b: model.breakdown(b, seq).total, vram_bytes, 1, MAX_BATCH)


def max_seq_len(model: StepModel, vram_bytes: int, batch: int, limit: int) -> int:
    """The longest sequence (up to the model's `limit`) that fits at micro-batch `batch` (0 if none)."""
    return largest_secant(lambda s: model.breakdown(batch, s).total, vram_bytes, 1, limit)


def rank_kind(terms: MemoryTerms) -> AdapterKind | None:
    """The adapter kind whose rank the method's `rank` knob sets (None: no ranked adapter)."""
    for adapter in terms.linear_adapters.values():
        if adapter.kind.rank_meaning is not None:
            return adapter.kind
    return None


def rank_cap(spec: ModelSpec, terms: MemoryTerms, cfg: MethodConfig) -> int:
    """The largest rank that still means something on the targeted layers (see the module docstring)."""
    linears = spec.linears_by_name
    targeted = [linears[name] for name in terms.linear_adapters if name in linears]
    if not targeted:
        return MAX_RANK
    kind = rank_kind(terms)
    if kind is None:
        return max(1, min(min(lin.in_features, lin.out_features) for lin in targeted))
    return kind.rank_cap(targeted, cfg)


def max_rank(
    spec: ModelSpec, method: Method, cfg: MethodConfig, ctx: TrainContext, vram_bytes: int
) -> int | None:
    """The largest rank that fits at the context's batch and length (0 if rank 1 does not), at most
    `rank_cap`; None for methods without a rank."""
    if "rank" not in type(cfg).model_fields:
        return None
    field = type(cfg).model_fields["rank"]
    upper = MAX_RANK
    for meta in field.metadata:
        upper = min(upper, getattr(meta, "le", upper) or upper)
    upper = min(upper, rank_cap(spec, method.memory_terms(spec, cfg), cfg))
    totals: dict[int, int] = {}

    def total(rank: int) -> int:
        if rank not in totals:
            model = step_model(spec, method, replace_rank(cfg, rank), ctx)
            totals[rank] = model.breakdown(ctx.batch_size, ctx.seq_len).total
        return totals[rank]

    # Memory is close to affine in the rank: secant probes from the two ends find the exact boundary.
    return largest_secant(total, vram_bytes, 1, upper)


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


def empty_fit_note(model: StepModel, vram_bytes: int, seq: int, seq_max: int) -> str:
    """Why the largest micro-batch is 0: what one sequence needs, what is fixed, and what does fit."""
    one = model.breakdown(1, seq)
    fixed = model.breakdown(1, 1)
    parts = (f"max batch 0: one sequence of {seq:,} tokens needs {one.total / GIB:.1f} GiB of "
             f"{vram_bytes / GIB:.1f} GiB")
    if fixed.total > vram_bytes:
        return (parts + f"; even a 1-token step needs {fixed.total / GIB:.1f} GiB (weights "
                f"{(fixed.weights + fixed.quant_constants) / GIB:.1f} GiB, optimizer states "
                f"{fixed.optimizer / GIB:.1f} GiB), so no batch or sequence fits")
    return parts + f"; at batch 1 the longest sequence that fits is {seq_max:,} tokens"
