"""LoKr's forward as peft 0.21 runs it, replayed: `kron(w1, w2) * scale` built every forward in fp32,
then `x @ delta`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftplan.methods.lokr.factors import factorization
from peftplan.replay.symbolic import Sym, const
from peftplan.replay.terms import AdapterKind, LinearAdapter

if TYPE_CHECKING:
    from peftplan.models.spec import LinearInfo
    from peftplan.replay.ops import Ops


class LokrKind(AdapterKind):
    name = "lokr"
    rank_meaning = "rank of the Kronecker factor w2, which is stored whole (rank unused) from half its larger side"
    prior = 0.95
    # mixed_batches None: a dense delta weight per task.

    def replay(self, ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
        # kron(w1, w2) * scale in fp32 (the factors are fp32 parameters); the kron output is a temporary.
        numel = lin.in_features * lin.out_features
        ops.g.transient(const(numel * 4))
        ops.g.backward_temporary(const(numel * (4 + (ops.r.low or 4))))  # the delta's gradient, then upcast
        delta = Sym.fresh(const(numel), 4, True)
        out = ops.matmul_sym(ops.cast(x, 4), delta, lin.out_features)
        return ops.cast(ops.add(result, out), result.itemsize)

    def flops(self, lin: LinearInfo, adapter: LinearAdapter, *, train: bool) -> float:
        # x @ delta_W: a dense matmul, its input and weight gradients.
        return (2.0 + 4.0 * train) * lin.in_features * lin.out_features

    def merge_flops(self, lin: LinearInfo, adapter: LinearAdapter) -> float:
        return float(lin.in_features * lin.out_features)  # the Kronecker product

    def rank_cap(self, linears: list[LinearInfo], settings: object) -> int:
        # Above half the larger side of w2's factors, w2 is stored whole and the rank stops mattering.
        factor = int(getattr(settings, "decompose_factor", -1))
        sides = [max(factorization(lin.out_features, factor)[1], factorization(lin.in_features, factor)[1])
                 for lin in linears]
        return max(1, max(-(-side // 2) - 1 for side in sides))


LOKR = LokrKind()
