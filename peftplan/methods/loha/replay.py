"""LoHa's forward as peft 0.21 runs it, replayed: a dense delta `(w1a @ w1b) * (w2a @ w2b) * scale`
built every forward, then `x @ delta`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftplan.replay.terms import DenseDeltaKind, LinearAdapter

if TYPE_CHECKING:
    from peftplan.models.spec import LinearInfo
    from peftplan.replay.ops import Ops


class LohaKind(DenseDeltaKind):
    name = "loha"
    rank_meaning = "rank of each of the two Hadamard factors, at most the smallest targeted dimension"

    def delta_bytes(self, ops: Ops, numel: int) -> tuple[int, int, int]:
        # HadaWeight: ((w1a @ w1b) * (w2a @ w2b)) * scale, built in the autocast dtype when autocast is on.
        # Backward: the delta's gradient, and HadaWeight rebuilding one factor product plus its temporary.
        size = ops.r.low or 4
        return size, 3 * numel * size, numel * size + 2 * numel * 4

    def merge_flops(self, lin: LinearInfo, adapter: LinearAdapter) -> float:
        return 4.0 * adapter.rank * lin.in_features * lin.out_features  # two low-rank products, their product


LOHA = LohaKind()
