"""Quantize a loaded base model's Linear layers with bitsandbytes (what QLoRA and QDoRA train on).

The output layer, embeddings and norms stay unquantized, as transformers' bitsandbytes integration does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class QuantTarget:
    """A layer to quantize: its weight in nn.Linear layout (out, in), whatever the source layer was."""

    name: str
    in_features: int
    out_features: int
    weight: torch.Tensor
    bias: torch.nn.Parameter | None


def quantization_targets(model: nn.Module, *, include_output: bool = False) -> list[QuantTarget]:
    """Every Linear and GPT-2 style Conv1D except the output layer, as transformers' bnb integration does
    (`include_output`: the output layer too, as litgpt's bitsandbytes plugin does)."""
    from torch import nn

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None  # type: ignore[operator]
    targets = []
    for name, module in model.named_modules():
        if module is output and not include_output:
            continue
        if type(module) is nn.Linear:
            weight = module.weight.data
        elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
            weight = module.weight.data.t().contiguous()  # Conv1D stores (in, out)
        else:
            continue
        targets.append(QuantTarget(name, weight.shape[1], weight.shape[0], weight, module.bias))
    return targets


def compute_dtype_of(model: nn.Module) -> torch.dtype:
    import torch

    dtype = next(model.parameters()).dtype
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _quantized_linear(target: QuantTarget, quant: str, compute_dtype: object) -> nn.Module:
    import bitsandbytes as bnb

    device = target.weight.device
    weight = target.weight.to("cpu")
    if quant == "int8":
        new: nn.Module = bnb.nn.Linear8bitLt(
            target.in_features, target.out_features, bias=target.bias is not None, has_fp16_weights=False
        )
        new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(
            target.in_features,
            target.out_features,
            bias=target.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=True,  # double quantization of the absmax constants
            quant_type=quant,
        )
        new.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type=quant)
    if target.bias is not None:
        new.bias = target.bias
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


def quantize_linears(model: nn.Module, quant: str, *, include_output: bool = False) -> int:
    """Replace every Linear/Conv1D except the output layer (unless `include_output`) by its bitsandbytes
    version; returns how many."""
    compute_dtype = compute_dtype_of(model)
    targets = quantization_targets(model, include_output=include_output)
    for target in targets:
        replace_module(model, target.name, _quantized_linear(target, quant, compute_dtype))
    mark_loaded_in_kbit(model, quant)
    return len(targets)


def prepare_quantized_base(model: nn.Module, quant: str) -> None:
    """Quantize the base (unless it was loaded quantized, as `harness/loading.py` does) and make it ready for
    adapter training (peft's k-bit preparation)."""
    from peft import prepare_model_for_kbit_training

    if not has_quantized_linears(model):
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


def mark_loaded_in_kbit(model: nn.Module, quant: str) -> None:
    """Flag the model as transformers' bitsandbytes loader does, so peft wraps the quantized layers
    with its bitsandbytes adapter layers (the ones a QLoRA user of transformers + peft trains)."""
    setattr(model, "is_loaded_in_8bit" if quant == "int8" else "is_loaded_in_4bit", True)
