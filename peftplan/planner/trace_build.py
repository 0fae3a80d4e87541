"""Build the model a trace runs: the real architecture at a chosen depth, the real method applied.

`build_trained_model` makes the same model on two devices:
- `"meta"` then `make_fake`: the traced engine's model, no weights at all (quantized layers per
  `trace_quant.py`);
- `"cpu"`: random real weights, quantized by real bitsandbytes, for the trace-equals-reality tests.

Precision (what the harness's training loop does too):
- `dtype` bf16/fp16: the base is loaded in that dtype and the step runs under `torch.autocast` in it;
  peft keeps its adapters in fp32, and autocast casts them (cached for the forward) for the matmuls;
- `dtype` fp32: everything fp32, no autocast;
- `precision="pure"`: no autocast whatever the dtype (torchtune, litgpt's `bf16-true`);
  `adapter_dtype="dtype"`: the method's tensors are cast to the training dtype after it is applied;
- optimizer `adamw-fp32`: the trainable parameters are held in fp32 (master weights), whatever `dtype`.

Quantized bases are prepared per `kbit_prep` (peft's fp32 upcast, or none; `all-linear` quantizes the
output layer too), on both devices by the same code.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from peftplan.errors import BadInputError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch._subclasses.fake_tensor import FakeTensorMode

    from peftplan.methods.base import Method, MethodConfig
    from peftplan.planner.context import TrainContext

__all__ = [
    "BASE_MARK",
    "attribute_tensors",
    "build_trained_model",
    "config_at_depth",
    "depth_of",
    "enable_checkpointing",
    "make_fake",
    "torch_dtype",
]

BASE_MARK = "_peftplan_base"  # set on every parameter of the base model before the method is applied
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _layer_config(config: dict[str, Any]) -> dict[str, Any]:
    """The (sub)config holding the text stack's depth: `text_config` for VLMs that nest it."""
    nested = config.get("text_config")
    if isinstance(nested, dict) and any(k in nested for k in _LAYER_KEYS):
        return nested
    return config


def depth_of(config: dict[str, Any]) -> int:
    """Number of blocks in the text stack of `config`."""
    layer_config = _layer_config(config)
    for key in _LAYER_KEYS:
        if isinstance(layer_config.get(key), int):
            return int(layer_config[key])
    raise BadInputError(f"cannot find the layer count in the {config.get('model_type')!r} config")


def config_at_depth(config: dict[str, Any], depth: int) -> dict[str, Any]:
    """A copy of `config` with its text stack truncated to `depth` blocks (per-layer lists too)."""
    out = copy.deepcopy(config)
    layer_config = _layer_config(out)
    full = depth_of(config)
    for key in _LAYER_KEYS:
        if isinstance(layer_config.get(key), int):
            layer_config[key] = depth
            break
    for key, value in list(layer_config.items()):
        if isinstance(value, list) and len(value) == full and key.startswith("layer"):
            layer_config[key] = value[:depth]  # e.g. layer_types (sliding vs full attention)
    return out


def mark_vision_frozen(model: nn.Module) -> None:
    """Tell the methods' target selection that a VLM's vision tower stays frozen (`FROZEN_ATTR`): LoRA
    presets then adapt the language model only, as the plan prices them."""
    from peftplan.models.spec import FROZEN_ATTR

    towers = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] == "visual"]
    if towers:
        setattr(model, FROZEN_ATTR, tuple(towers[:1]))


def freeze_vision_tower(model: nn.Module) -> None:
    """Freeze a VLM's vision tower and projector (`model.visual`): their base parameters, not adapters a
    method put there by name (planner/vision.py prices the same). Nothing happens on a text model."""
    for name, p in model.named_parameters():
        if ".visual." in f".{name}" and "lora_" not in name and p.requires_grad:
            p.requires_grad_(False)


def build_trained_model(
    config: dict[str, Any],
    method: Method,
    cfg: MethodConfig,
    ctx: TrainContext,
    *,
    device: str = "meta",
) -> nn.Module:
    """The model of one training run: built, quantized if asked, adapted by `method`, in train mode.

    Raises:
        BadInputError: the method refuses the model or config.
    """
    import torch

    from peftplan.models.build import build_model

    config = dict(config)
    if ctx.attention == "eager":
        config["attn_implementation"] = "eager"
    # else transformers' own default: SDPA where the architecture supports it (flash-attention 2 needs
    # CUDA; on this CPU dispatch SDPA runs a flash-style kernel that stores no seq x seq scores).
    config["use_cache"] = False  # a training step keeps no KV cache
    model: Any = build_model(config, device=device, dtype=torch_dtype(ctx.dtype))
    _mark_base(model)
    quant = getattr(cfg, "quant", "none")
    if quant != "none":
        _quantize_base(model, quant, ctx.kbit_prep, device)
        _mark_base(model)
        # The base is quantized and prepared as the stack does it; the method only wraps it.
        cfg = cfg.model_copy(update={"quant": "none"})
    if not ctx.train_vision:
        mark_vision_frozen(model)
    with torch.device(device):  # meta: what peft creates (and bnb copies) stays on meta too
        model = method.apply(model, cfg)
    if not ctx.train_vision:
        freeze_vision_tower(model)
    if ctx.adapter_dtype == "dtype":
        _cast_added(model, torch_dtype(ctx.dtype))
    if ctx.optimizer == "adamw-fp32":
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    if ctx.grad_checkpointing:
        enable_checkpointing(model)
    model.train()
    return model


def _quantize_base(model: Any, quant: str, kbit_prep: str, device: str) -> None:
    """What `method.apply`'s `prepare_base` does on a real base, with the stack's k-bit preparation:
    real bitsandbytes layers on a CPU base, their meta twins (`trace_quant.py`) on a meta one."""
    from peftplan.planner.trace_quant import prepare_kbit, quantize_base_on_meta

    if device == "meta":
        quantize_base_on_meta(model, quant, kbit_prep)
        return
    from peftplan.methods.quantize import disable_cpu_repacking, quantize_linears

    quantize_linears(model, quant, include_output=kbit_prep == "all-linear")
    prepare_kbit(model, kbit_prep)
    disable_cpu_repacking(model)


def _cast_added(model: Any, dtype: torch.dtype) -> None:
    """The method's tensors in the training dtype (`adapter_dtype="dtype"`: torchtune, litgpt, TRL on a
    quantized base) instead of peft's fp32 (`autocast_adapter_dtype`)."""
    for module in model.modules():
        for param in list(module._parameters.values()):
            if param is not None and not getattr(param, BASE_MARK, False) and param.is_floating_point():
                param.data = param.data.to(dtype)
        for name, buf in list(module._buffers.items()):
            if buf is not None and not getattr(buf, BASE_MARK, False) and buf.is_floating_point():
                module._buffers[name] = buf.to(dtype)


def _mark_base(model: nn.Module) -> None:
    """Mark every tensor of the base model, so that what the method adds can be told apart."""
    for tensor in [*model.parameters(), *model.buffers(), *attribute_tensors(model)]:
        setattr(tensor, BASE_MARK, True)


def enable_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing of every block (torch's recommended kind)."""
    target: Any = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(target, "supports_gradient_checkpointing", False):
        raise BadInputError(f"{type(target).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(target, "activation_checkpointing_enable"):  # transformers >= 5.x
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def make_fake(model: nn.Module, mode: FakeTensorMode) -> None:
    """Swap every meta parameter, buffer and tensor attribute of `model` for a fake CPU tensor, in place.

    Tied parameters stay one object; bnb-quantized weights get their stand-ins (`trace_quant.py`).
    `.to()` cannot be used: it fails inside FakeTensorMode (torch 2.13), hence the manual swap.
    """
    import torch
    from torch import nn

    from peftplan.planner.trace_quant import fake_quantized_weight, is_quantized_weight

    converter = mode.fake_tensor_converter
    cpu = torch.device("cpu")
    swapped: dict[int, Any] = {}

    def fake(t: torch.Tensor) -> Any:
        out = converter.from_meta_and_device(mode, t, cpu)
        if getattr(t, BASE_MARK, False):
            setattr(out, BASE_MARK, True)
        return out

    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None or not param.is_meta:
                continue
            new = swapped.get(id(param))
            if new is None:
                if is_quantized_weight(param):
                    new = fake_quantized_weight(mode, param, module)
                else:
                    new = nn.Parameter(fake(param.data), requires_grad=param.requires_grad)
                if getattr(param, BASE_MARK, False):
                    setattr(new, BASE_MARK, True)
                swapped[id(param)] = new
            module._parameters[name] = new  # type: ignore[assignment]
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                module._buffers[name] = swapped.setdefault(id(buf), fake(buf))
        for name, value in list(vars(module).items()):
            if name.startswith("_"):
                continue
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(module, name, swapped.setdefault(id(value), fake(value)))
            elif isinstance(value, dict):  # e.g. peft's prompt_tokens per adapter
                for key, item in list(value.items()):
                    if isinstance(item, torch.Tensor) and item.is_meta:
                        value[key] = swapped.setdefault(id(item), fake(item))


def attribute_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Tensors a model holds outside its parameters and buffers (plain attributes, dicts of them)."""
    import torch

    found: list[torch.Tensor] = []
    for module in model.modules():
        for name, value in vars(module).items():
            if name.startswith("_"):
                continue
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif isinstance(value, dict):
                found.extend(v for v in value.values() if isinstance(v, torch.Tensor))
    return found
