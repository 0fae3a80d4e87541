"""Optimizer state bytes and the temporaries of one optimizer step, per `TrainContext.optimizer`.

The names mean what `planner/trace_optim.py` builds (one table for the trace, the tests and the
harness): torch AdamW and SGD with foreach (torch's CUDA default), bitsandbytes' blockwise 8-bit
AdamW (paged or not) and transformers' Adafactor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from peftplan.replay.terms import Shape, numel

FUSED_KERNEL = ("adamw", "adamw-fp32")  # torch AdamW: the optimizers `fused=True` applies to
BNB_BLOCK = 256  # values per absmax in bitsandbytes' 8-bit optimizers
BNB_MIN_8BIT = 4096  # smaller tensors keep fp32 states
BNB_QMAPS = 2 * 256 * 4  # the signed and unsigned dynamic maps, shared by all tensors


@dataclass(frozen=True)
class OptimizerBytes:
    """State bytes kept between steps, and the peak extra bytes during `step()`."""

    states: int
    step_temporary: int


def optimizer_bytes(name: str, tensors: Sequence[tuple[Shape, int]], *, fused: bool = False) -> OptimizerBytes:
    """States and step temporaries for trainable `tensors`, given as (shape, itemsize) pairs; `fused`: torch
    AdamW's fused kernel (`torch._fused_adamw_` updates in place: no temporaries).

    Raises:
        ValueError: an optimizer name this model does not know.
    """
    if not tensors:
        return OptimizerBytes(0, 0)
    # Adapters repeat a few shapes: each distinct (shape, itemsize) is priced once, times how many there are.
    counts = Counter(tensors)
    if name == "paged-adamw":  # bitsandbytes' 32-bit kernel updates in place: no step temporaries
        return OptimizerBytes(sum(2 * 4 * numel(shape) * k for (shape, _), k in counts.items()), 0)
    if name in FUSED_KERNEL:
        states = sum(2 * numel(shape) * size * k for (shape, size), k in counts.items())
        if fused:
            return OptimizerBytes(states, 0)
        # foreach AdamW takes sqrt(exp_avg_sq) of a whole dtype group in one go.
        groups: dict[int, int] = {}
        for (shape, size), k in counts.items():
            groups[size] = groups.get(size, 0) + numel(shape) * size * k
        return OptimizerBytes(states, max(groups.values()))
    if name in ("adamw8bit", "paged-adamw8bit"):
        states = BNB_QMAPS
        for (shape, _), k in counts.items():
            n = numel(shape)
            states += k * (2 * n + 2 * 4 * (-(-n // BNB_BLOCK)) if n >= BNB_MIN_8BIT else 2 * 4 * n)
        return OptimizerBytes(states, 0)
    if name == "sgd":
        return OptimizerBytes(0, 0)
    if name == "sgd-momentum":
        return OptimizerBytes(sum(numel(shape) * size * k for (shape, size), k in counts.items()), 0)
    if name == "adafactor":
        return _adafactor(counts)
    raise ValueError(f"unknown optimizer {name!r}")


def _adafactor(counts: Counter[tuple[Shape, int]]) -> OptimizerBytes:
    """transformers' Adafactor (no first moment): fp32 row and column second moments for matrices,
    a full fp32 second moment for vectors. It steps one tensor at a time with an fp32 gradient copy,
    the update, and an fp32 working copy of a 16-bit weight. `counts`: how many tensors of each
    (shape, itemsize)."""
    states = 0
    temp = 0
    for (shape, size), k in counts.items():
        n = numel(shape)
        if len(shape) >= 2:
            states += k * 4 * (n // shape[-1] + shape[-1])
        else:
            states += k * 4 * n
        temp = max(temp, 4 * n * (2 + (size < 4) * 2))
    return OptimizerBytes(states, temp)
