"""LoHa's forward as peft 0.21 runs it, replayed: a dense delta `(w1a @ w1b) * (w2a @ w2b) * scale`
built every forward, then `x @ delta`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftplan.replay.symbolic import Sym, const
from peftplan.replay.terms import AdapterKind, LinearAdapter

if TYPE_CHECKING:
    from peftplan.models.spec import LinearInfo
    from peftplan.replay.ops import Ops


class LohaKind(AdapterKind):
    name = "loha"
    rank_meaning = "rank of each of the two Hadamard factors, at most the smallest targeted dimension"
    prior = 0.95
    # mixed_batches None: a dense delta weight per task.

    def replay(self, ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
        # HadaWeight: ((w1a @ w1b) * (w2a @ w2b)) * scale, built in the autocast dtype when autocast is on.
        size = ops.r.low or 4
        numel = lin.in_features * lin.out_features
        ops.g.transient(const(3 * numel * size))
        # Backward: the delta's gradient, and HadaWeight rebuilding one factor product plus its temporary.
        ops.g.backward_temporary(const(numel * size + 2 * numel * 4))
        delta = Sym.fresh(const(numel), size, True)
        out = ops.matmul_sym(ops.cast(x, size), delta, lin.out_features)
        return ops.cast(ops.add(result, out), result.itemsize)

    def flops(self, lin: LinearInfo, adapter: LinearAdapter, *, train: bool) -> float:
        # x @ delta_W: a dense matmul, its input and weight gradients.
        return (2.0 + 4.0 * train) * lin.in_features * lin.out_features

    def merge_flops(self, lin: LinearInfo, adapter: LinearAdapter) -> float:
        return 4.0 * adapter.rank * lin.in_features * lin.out_features  # two low-rank products, their product


LOHA = LohaKind()
