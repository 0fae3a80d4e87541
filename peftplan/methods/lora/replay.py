"""LoRA's forward as peft 0.21 runs it, replayed: `result + lora_B(lora_A(dropout(x))) * scaling`.

peft keeps adapter weights in fp32 and casts the layer input to the adapter's dtype before the
branch; under autocast the branch's matmuls then run on low-precision copies of that input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftplan.replay.ops import Weight
from peftplan.replay.terms import AdapterKind, LinearAdapter

if TYPE_CHECKING:
    from peftplan.models.spec import LinearInfo
    from peftplan.replay.ops import Ops
    from peftplan.replay.symbolic import Sym

RANK_MEANING = "rank r of B·A, at most the smallest dimension of the targeted layers"


def lora_branch(ops: Ops, x: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
    """`lora_B(lora_A(dropout(x.to(adapter dtype))))` (fp32 in peft)."""
    size = ops.r.adapter_itemsize
    xc = ops.cast(x, size)
    dropped = ops.dropout(xc, adapter.dropout)
    a = ops.matmul(dropped, Weight(adapter.rank * lin.in_features, size, True, lin.name + ".lora_A"), adapter.rank)
    return ops.matmul(a, Weight(lin.out_features * adapter.rank, size, True, lin.name + ".lora_B"), lin.out_features)


class LoraKind(AdapterKind):
    name = "lora"
    rank_meaning = RANK_MEANING
    low_rank = True
    prior = 1.0
    mixed_batches = "multi-LoRA kernels (vLLM's punica, S-LoRA) gather each request's A and B"
    vllm = True

    def replay(self, ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
        update = ops.pointwise(lora_branch(ops, x, lin, adapter))  # * scaling
        return ops.cast(ops.add(result, update), result.itemsize)

    def flops(self, lin: LinearInfo, adapter: LinearAdapter, *, train: bool) -> float:
        return (2.0 + 4.0 * train) * adapter.delta_params

    def merge_flops(self, lin: LinearInfo, adapter: LinearAdapter) -> float:
        return 2.0 * adapter.rank * lin.in_features * lin.out_features  # B @ A


LORA = LoraKind()
