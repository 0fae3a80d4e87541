"""QLoRA gradients against a reference: the same adapters on plain Linear layers holding the dequantized weights.

Both the training loop's test and the quantized loading's test check that nothing (an eval forward, the base
latency) has corrupted the 4-bit base's gradients; they differ only in how close they ask the two to be.
"""

from __future__ import annotations

from typing import Any

import torch


def nonzero_lora_b(model: torch.nn.Module) -> None:
    """A non-zero LoRA B (peft starts it at zero), so gradients reach A through the quantized base too."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.02)


def quantized_and_reference_grads(model: torch.nn.Module, batch: dict[str, Any]
                                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The trainable parameters' gradients of one training step on `batch`: through the 4-bit base, then
    through the reference (the model keeps the plain layers afterwards)."""
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    from peftplan.methods.quantize import _dequantized_weight

    def step() -> dict[str, torch.Tensor]:
        model(**batch).loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad(set_to_none=True)
        return grads

    model.train()
    quantized = step()
    for module in list(model.modules()):
        if isinstance(module, LoraLayer) and isinstance(module.base_layer, bnb.nn.Linear4bit):
            base = module.base_layer
            plain = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
            with torch.no_grad():
                plain.weight.copy_(_dequantized_weight(base))
                if base.bias is not None:
                    plain.bias.copy_(base.bias)
            plain.requires_grad_(False)
            module.base_layer = plain
    return quantized, step()
