"""DoRA's forward as peft 0.21 runs it, replayed: LoRA's branch plus the magnitude renormalisation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftplan.methods.lora.replay import RANK_MEANING, lora_branch
from peftplan.replay.symbolic import Sym, const
from peftplan.replay.terms import AdapterKind, LinearAdapter

if TYPE_CHECKING:
    from peftplan.models.spec import LinearInfo
    from peftplan.replay.ops import Ops


class DoraKind(AdapterKind):
    name = "dora"
    rank_meaning = RANK_MEANING
    low_rank = True
    prior = 1.0
    # mixed_batches None: its magnitude renormalises the merged column norms per task; vLLM does not serve it.

    def replay(self, ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
        r = ops.r
        fan_in, fan_out, rank = lin.in_features, lin.out_features, adapter.rank
        # The weight norm ||W + s·B·A|| is rebuilt every forward: B(A(eye)) through the adapter (peft
        # does this for FSDP), then detached. The graph of B(A(eye)) keeps the identity the first matmul
        # read (its autocast copy, or the fp32 identity itself) until the module returns.
        low = r.low or 4
        eye32 = fan_in * fan_in * 4
        kept_eye = fan_in * fan_in * low
        lora_weight = fan_in * rank * low + fan_in * fan_out * low
        building = eye32 + (kept_eye if low != 4 else 0) + lora_weight
        # Summing: lora_weight and the (dequantized) base weight, both as fp32 (their low-precision
        # copies are gone once upcast), then s·BA and W + s·BA.
        weight32 = fan_in * fan_out * 4
        base_weight = weight32 if (r.quantized or r.base_itemsize != 4) else 0
        summing = kept_eye + fan_in * rank * low + weight32 + base_weight + 2 * weight32
        ops.g.transient(const(max(building, summing)))
        magnitude = Sym.fresh(const(fan_out), 4, True)  # magnitude / weight_norm, a tiny vector
        lora_result = lora_branch(ops, x, lin, adapter)
        base_term = ops.mul(magnitude, result)  # (mag_norm_scale - 1) * base_result
        lora_term = ops.pointwise(ops.mul(magnitude, lora_result))  # mag_norm_scale * lora_result * scaling
        dora = ops.add(base_term, lora_term)
        return ops.cast(ops.add(result, dora), result.itemsize)

    def flops(self, lin: LinearInfo, adapter: LinearAdapter, *, train: bool) -> float:
        return (2.0 + 4.0 * train) * adapter.delta_params

    def merge_flops(self, lin: LinearInfo, adapter: LinearAdapter) -> float:
        return 2.0 * adapter.rank * lin.in_features * lin.out_features  # B @ A


DORA = DoraKind()
