"""IA3's forward as peft 0.21 runs it, replayed: a learned fp32 vector scales the output, or the input
of a feed-forward target."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftplan.replay.ops import Weight
from peftplan.replay.terms import AdapterKind, LinearAdapter

if TYPE_CHECKING:
    from peftplan.models.spec import LinearInfo
    from peftplan.replay.ops import Ops
    from peftplan.replay.symbolic import Sym

_MIXED = "each request's IA3 vectors are an elementwise scale"


class Ia3OutKind(AdapterKind):
    name = "ia3_out"
    prior = 0.85
    mixed_batches = _MIXED

    def replay(self, ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
        scaled = ops.mul_param(result, Weight(lin.out_features, ops.r.adapter_itemsize, True))
        return ops.cast(scaled, result.itemsize)

    def flops(self, lin: LinearInfo, adapter: LinearAdapter, *, train: bool) -> float:
        return (1.0 + 2.0 * train) * adapter.delta_params

    def merge_flops(self, lin: LinearInfo, adapter: LinearAdapter) -> float:
        return float(lin.in_features * lin.out_features)  # an elementwise scale of the weight


class Ia3InKind(Ia3OutKind):
    name = "ia3_in"
    scales_input = True

    def replay_input(self, ops: Ops, x: Sym, lin: LinearInfo) -> Sym:
        x32 = ops.cast(x, ops.r.adapter_itemsize)
        scaled = ops.mul_param(x32, Weight(lin.in_features, ops.r.adapter_itemsize, True))
        return ops.cast(scaled, x.itemsize)

    def replay(self, ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
        return result  # the scale was applied to the input


IA3_OUT = Ia3OutKind()
IA3_IN = Ia3InKind()
