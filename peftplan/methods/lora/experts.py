"""LoRA on a bare parameter (peft 0.21's `lora.ParamWrapper`, reached by `target_parameters`): fused MoE
experts [E, d1, d2] and routers [E, H].

How peft computes it (`peft/tuners/lora/layer.py`, `ParamWrapper._activate_lora` and the proxies above
it): around the wrapped module's forward it registers a parametrization, so that reading the
parameter returns an **adapted copy of the whole weight**, cached for that forward
(`nn.utils.parametrize.cached()`):
- one adapter on a 3D parameter in fp32/bf16/fp16 (`_LoraFactorsProxy`): the factors are reshaped to
  lhs [E, d1, r], rhs [E, r, d2] and cast to the parameter's dtype, then
  `torch.baddbmm(W, lhs, rhs, alpha=scaling)` runs with autocast off: a new [E, d1, d2] tensor in W's dtype;
- otherwise (a 2D router, several adapters, fp8) `_LoraParameterProxy`: the delta weight B·A
  (`get_delta_weight`, an einsum for 3D) and `W + delta`, two full-size tensors.

The experts then run on the adapted copy as on a trainable weight: every expert's `F.linear` (or
grouped matmul) saves its input tokens and computes a weight gradient for its slice, the backward
builds the full [E, d1, d2] gradient of the copy, and `baddbmm`'s backward turns it into the factors'
gradients (two [E, ., r] matmuls). So LoRA on experts costs, per MoE block: the adapted copy in the
base dtype (alive from the block's forward to its backward, since the expert matmuls save their slice
of it), the saved expert inputs, a full-size gradient in the backward, and FLOPs like full fine-tuning
of the active experts' weight gradients plus 6·r·E·d1·d2 per step for building and differentiating the copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftplan.replay.symbolic import Sym, const
from peftplan.replay.terms import ParamAdapter, ParamAdapterKind

if TYPE_CHECKING:
    from peftplan.replay.ops import Ops


class LoraParamKind(ParamAdapterKind):
    name = "lora on parameters (peft target_parameters)"

    def replay_weight(self, ops: Ops, adapter: ParamAdapter) -> Sym | None:
        """The adapted copy `baddbmm(W, lhs, rhs)` in the parameter's dtype (lhs, rhs: the factors cast to it)."""
        r = ops.r
        itemsize = r.base_itemsize
        factors = adapter.delta_params
        if itemsize != r.adapter_itemsize:
            ops.g.save(ops.fresh(const(factors), itemsize, True))  # baddbmm saves lhs and rhs (cast copies)
        # Not the block's "largest tensor": its gradient exists once, beside others (`planner/blocks.py: _moe`).
        copy = Sym.fresh(const(adapter.weight_numel), itemsize, True)
        if adapter.experts == 1:  # `_LoraParameterProxy`: the delta B·A exists beside W + delta
            ops.g.transient(const(adapter.weight_numel * itemsize))
        return copy

    def flops(self, adapter: ParamAdapter, *, train: bool, tokens: int, active: float) -> float:
        """Per token: the weight gradients of the active part of the adapted copy (2 per active weight),
        plus building the copy (2·r·E·d1·d2 per forward) and differentiating it (4·r·E·d1·d2), amortised
        over the `tokens` of one step; `active` is the share of the weight one token multiplies by."""
        build = 2.0 * adapter.rank * adapter.weight_numel
        if not train:
            return build / max(tokens, 1)
        return 2.0 * active * adapter.weight_numel + 3.0 * build / max(tokens, 1)


LORA_PARAM = LoraParamKind()
