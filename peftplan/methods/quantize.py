"""Quantize a loaded base model's Linear layers with bitsandbytes (what QLoRA and QDoRA train on).

The output layer, embeddings and norms stay unquantized, as transformers' bitsandbytes integration does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


def _quantized_linear(linear: nn.Linear, quant: str, compute_dtype: object) -> nn.Module:
    import bitsandbytes as bnb

    device = linear.weight.device
    weight = linear.weight.data.to("cpu")
    if quant == "int8":
        new: nn.Module = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=linear.bias is not None, has_fp16_weights=False
        )
        new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=True,  # double quantization of the absmax constants
            quant_type=quant,
        )
        new.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type=quant)
    if linear.bias is not None:
        new.bias = linear.bias
    new = new.to(device)  # bitsandbytes quantizes on the move to a real device
    disable_cpu_repacking(new)
    return new


def disable_cpu_repacking(module: nn.Module) -> None:
    """Guard the avx512_bf16 pitfall (STACK.md).

    On such CPUs the first eval-mode no-grad forward repacks 4-bit weights into a layout without
    autograd, and every later LoRA gradient is silently wrong. Turning the repacking off keeps them exact.
    """
    import bitsandbytes as bnb

    for sub in module.modules():
        if isinstance(sub, bnb.nn.Linear4bit):
            sub.support_avx512bf16_for_cpu = False


def quantize_linears(model: nn.Module, quant: str) -> int:
    """Replace every Linear except the output layer by its bitsandbytes version; returns how many."""
    import torch
    from torch import nn

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None  # type: ignore[operator]
    compute_dtype = next(model.parameters()).dtype
    if compute_dtype not in (torch.float16, torch.bfloat16, torch.float32):
        compute_dtype = torch.float32
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and module is not output
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _quantized_linear(module, quant, compute_dtype))
    return len(targets)


def prepare_quantized_base(model: nn.Module, quant: str) -> None:
    """Quantize the base and make it ready for adapter training (peft's k-bit preparation)."""
    from peft import prepare_model_for_kbit_training

    quantize_linears(model, quant)
    # Checkpointing is the training loop's choice, not a side effect of quantizing.
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    disable_cpu_repacking(model)


def _dequantized_weight(layer: Any) -> torch.Tensor:
    """The full-precision (fp32) weight a bitsandbytes layer computes with."""
    import bitsandbytes as bnb
    import torch

    weight = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).to(torch.float32)
    # LLM.int8: int8 rows times their absmax / 127.
    return (weight.data.to(torch.float32) * weight.SCB.to(torch.float32).unsqueeze(1) / 127.0)


def merge_into_dequantized(peft_model: nn.Module) -> nn.Module:
    """Merge LoRA/DoRA adapters of a quantized base into full-precision Linear layers.

    Merging into the 4-bit storage would re-quantize the sum and lose the update's precision, so each
    adapted layer becomes a plain fp32 Linear holding dequantize(W) + ΔW (DoRA: rescaled per row).
    """
    import bitsandbytes as bnb
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer
    from torch import nn

    for name, layer in list(peft_model.named_modules()):
        if not isinstance(layer, BaseTunerLayer):
            continue
        base = layer.get_base_layer()
        if not isinstance(base, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt):
            continue
        weight = _dequantized_weight(base)
        for adapter in layer.active_adapters:
            delta = layer.get_delta_weight(adapter).to(torch.float32)  # type: ignore[attr-defined]
            magnitudes = getattr(layer, "lora_magnitude_vector", None)
            if magnitudes is not None and adapter in magnitudes:
                norm = torch.linalg.norm(weight + delta, dim=1)
                weight = (magnitudes[adapter].weight.to(torch.float32) / norm).view(-1, 1) * (weight + delta)
            else:
                weight = weight + delta
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device=weight.device)
        with torch.no_grad():
            merged.weight.copy_(weight)
            if base.bias is not None:
                merged.bias.copy_(base.bias.to(torch.float32))
        parent_name, _, child = name.rpartition(".")
        setattr(peft_model.get_submodule(parent_name), child, merged)
    return peft_model.get_base_model()  # type: ignore[operator]


def has_quantized_linears(model: nn.Module) -> bool:
    import bitsandbytes as bnb

    return any(isinstance(m, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt) for m in model.modules())
