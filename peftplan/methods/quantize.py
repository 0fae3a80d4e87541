"""Quantize a loaded base model's Linear layers with bitsandbytes (what QLoRA and QDoRA train on).

The output layer, embeddings and norms stay unquantized, as transformers' bitsandbytes integration does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
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
