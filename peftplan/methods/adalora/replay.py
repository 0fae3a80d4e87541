"""AdaLoRA's forward as peft 0.21 runs it, replayed (peft/tuners/adalora/layer.py, `SVDLinear.forward`):

    x = x.to(lora_A.dtype)
    result += (dropout(x) @ (lora_A * lora_E).T @ lora_B.T) * scaling / (ranknum + 1e-5)

`lora_A * lora_E` is a new [r, in] tensor every forward (autograd keeps only the leaves for it); under
autocast both matmuls cast their operands afresh, since `(A * E).T` and `lora_B.T` are not leaf tensors
(autocast caches only leaves' casts). `ranknum` is a one-element fp32 tensor, not a 0-dim scalar, so the
division promotes the update to fp32 before the in-place add into the base output. peft's bitsandbytes
layers (`adalora/bnb.py`) differ: they cast the input to fp32 and the update back to the base output's
dtype unless `torch.is_autocast_enabled()`, which asks about CUDA's autocast only (so a CPU step under
autocast converts too); the 4-bit layer adds into a clone of the base output, the 8-bit one out of place,
which leaves that layer's output in fp32.

The orthogonal regularisation `AdaLoraModel.forward` adds to the loss (a Gram matrix of every lora_A and
lora_B) is priced by the planner from `MemoryTerms.loss_terms` (see `methods/adalora/__init__.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftplan.replay.ops import Weight, promote
from peftplan.replay.symbolic import Sym, const
from peftplan.replay.terms import AdapterKind, LinearAdapter

if TYPE_CHECKING:
    from peftplan.models.spec import LinearInfo
    from peftplan.replay.ops import Ops


class AdaLoraKind(AdapterKind):
    name = "adalora"
    # rank_meaning None: its rank knob is `init_r`, which the planner's rank searches do not set.
    prior = 0.95
    # mixed_batches None: no serving engine loads peft's ADALORA adapters (P·Λ·Q, masked ranks).

    def replay(self, ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
        r = ops.r
        size = r.adapter_itemsize
        rank, fan_in, fan_out = adapter.rank, lin.in_features, lin.out_features
        quantized = r.quantizes(lin.name, lin.role)
        converts = not quantized or r.low is None or r.device == "cpu"  # bnb layers: see the module docstring
        xc = ops.cast(x, size) if converts else x  # alive until the module returns
        dropped = ops.dropout(xc, adapter.dropout)
        scaled_a = Sym.fresh(const(rank * fan_in), size, True)  # lora_A * lora_E: autograd keeps only the leaves
        down = ops.matmul_sym(dropped, scaled_a, rank)
        up = ops.matmul(down, Weight(fan_out * rank, size, True), fan_out)  # lora_B.T: cast afresh, never cached
        if quantized and converts:
            up = ops.cast(up, result.itemsize)  # bnb layers: output.to(expected_dtype)
        scaled = ops.pointwise(up)  # * scaling
        ranknum = ops.fresh(const(1), size, False)  # ranknum + 1e-5, which the division saves
        if scaled.grad:
            ops.g.save(ranknum)
        update = ops.fresh(scaled.numel, promote(scaled.itemsize, size), scaled.grad)  # / ranknum
        # At the division: the cast input, the scaled update and its promoted quotient.
        alive = [scaled, update] + ([xc] if xc is not x and xc.storage not in ops.g.saved else [])
        ops.g.transient(sum((t.storage_bytes for t in alive), const(0)))
        grad = result.grad or update.grad
        if quantized and r.terms.quant == "int8":
            return ops.fresh(result.numel, promote(result.itemsize, update.itemsize), grad)  # result + output
        if quantized:
            result = ops.fresh(result.numel, result.itemsize, result.grad)  # result = result.clone()
        return result.view(grad=grad)  # result += update: in place, the base output's dtype

    def flops(self, lin: LinearInfo, adapter: LinearAdapter, *, train: bool) -> float:
        # Two matmuls through rank r (A·E is r·in multiplies per forward, not per token).
        return (2.0 + 4.0 * train) * adapter.rank * (lin.in_features + lin.out_features)

    def merge_flops(self, lin: LinearInfo, adapter: LinearAdapter) -> float:
        return 2.0 * adapter.rank * lin.in_features * lin.out_features  # B @ (A * E)


ADALORA = AdaLoraKind()
