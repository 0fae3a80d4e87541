"""VeRA's forward as peft 0.21 runs it, replayed: `lambda_b * (lambda_d * (x @ A.T) @ B.T)` with A and B
frozen slices of projections shared by every layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftplan.replay.ops import Weight
from peftplan.replay.terms import AdapterKind, LinearAdapter

if TYPE_CHECKING:
    from peftplan.models.spec import LinearInfo
    from peftplan.replay.ops import Ops
    from peftplan.replay.symbolic import Sym


class VeraKind(AdapterKind):
    name = "vera"
    rank_meaning = "rank of the shared frozen projections A and B, at most the smallest targeted dimension"
    prior = 0.9
    # mixed_batches None: batchable in principle (per-request vectors), but no serving engine implements it.

    def replay(self, ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
        rank = adapter.rank
        xc = ops.dropout(ops.cast(x, 4), adapter.dropout)
        down = ops.matmul(xc, Weight(rank * lin.in_features, 4, False), rank)
        scaled_down = ops.mul_param(down, Weight(rank, 4, True))
        up = ops.matmul(scaled_down, Weight(lin.out_features * rank, 4, False), lin.out_features)
        scaled_up = ops.mul_param(up, Weight(lin.out_features, 4, True))
        return ops.cast(ops.add(result, scaled_up), result.itemsize)

    def flops(self, lin: LinearInfo, adapter: LinearAdapter, *, train: bool) -> float:
        # Frozen projections: forward and input gradients only.
        return (2.0 + 2.0 * train) * adapter.rank * (lin.in_features + lin.out_features)

    def merge_flops(self, lin: LinearInfo, adapter: LinearAdapter) -> float:
        return 2.0 * adapter.rank * lin.in_features * lin.out_features  # B @ A


VERA = VeraKind()
