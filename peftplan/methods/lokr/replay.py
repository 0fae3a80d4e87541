"""LoKr's forward as peft 0.21 runs it, replayed: `kron(w1, w2) * scale` built every forward in fp32,
then `x @ delta`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftplan.methods.lokr.factors import factorization
from peftplan.replay.terms import DenseDeltaKind, LinearAdapter

if TYPE_CHECKING:
    from peftplan.models.spec import LinearInfo
    from peftplan.replay.ops import Ops


class LokrKind(DenseDeltaKind):
    name = "lokr"
    rank_meaning = "rank of the Kronecker factor w2, which is stored whole (rank unused) from half its larger side"

    def delta_bytes(self, ops: Ops, numel: int) -> tuple[int, int, int]:
        # kron(w1, w2) * scale in fp32 (the factors are fp32 parameters); the kron output is a temporary.
        # Backward: the delta's gradient, then its upcast.
        return 4, numel * 4, numel * (4 + (ops.r.low or 4))

    def merge_flops(self, lin: LinearInfo, adapter: LinearAdapter) -> float:
        return float(lin.in_features * lin.out_features)  # the Kronecker product

    def rank_cap(self, linears: list[LinearInfo], settings: object) -> int:
        # Above half the larger side of w2's factors, w2 is stored whole and the rank stops mattering.
        factor = int(getattr(settings, "decompose_factor", -1))
        sides = [max(factorization(lin.out_features, factor)[1], factorization(lin.in_features, factor)[1])
                 for lin in linears]
        return max(1, max(-(-side // 2) - 1 for side in sides))


LOKR = LokrKind()
