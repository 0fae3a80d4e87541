"""bitsandbytes-quantized bases for the traced engine: real bnb layers whose storage is fake.

bitsandbytes quantizes when a parameter moves to a real device, so a meta or fake base can never be
quantized the normal way. The trace therefore builds the quantized base on the meta device itself:

- every Linear that `peftplan.methods.quantize` would replace becomes the same real `bnb.nn.Linear4bit`
  or `bnb.nn.Linear8bitLt`, and its weight is produced by bitsandbytes' own `quantize_4bit` /
  `int8_vectorwise_quant` run on the meta weight. The packed bytes (NF4/FP4: 2 weights per byte),
  the absmax per 64-weight block, and with double quantization the 8-bit absmax, fp32 second-level
  constants per 256 blocks, the 256-entry code and the offset, or the int8 rows plus fp32 row
  statistics (SCB), are exactly the tensors bitsandbytes would allocate;
- the base is prepared per the `kbit_prep` knob, as on a real base (peft's k-bit preparation casts the
  non-quantized weights to fp32; the other stacks keep them in the training dtype);
- when the model is made fake, each quantized weight becomes a fake tensor of a class named like
  bitsandbytes' own (`Params4bit`, `Int8Params`: peft dispatches on that name), carrying the same
  attributes and a fake `QuantState`. bnb's layer `forward` and autograd functions then run unchanged.

One substitution remains: `bitsandbytes::gemm_4bit` is a single op whose kernel dequantizes internally,
so its fake implementation shows only the output. `DecomposeGemm4bit` runs bnb's own default kernel
(`_gemm_4bit_default_impl`: dequantize the absmax, dequantize the weight into the compute dtype, then
`F.linear`) op by op, so the dequantized weight appears as the temporary it is. CUDA takes this same
path for M = batch x seq above 1536 rows; below that its fused kernel skips the temporary, so the
trace is then an upper bound by one layer's dequantized weight. The backward always dequantizes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from peftplan.methods import quantize

if TYPE_CHECKING:
    from torch import nn

__all__ = ["DecomposeGemm4bit", "fake_quantized_weight", "is_quantized_weight", "prepare_kbit", "quantize_base_on_meta"]

# Attributes bitsandbytes keeps on a quantized parameter; the fake stand-in carries the same ones.
_PARAMS4BIT_ATTRS = ("blocksize", "compress_statistics", "quant_type", "quant_storage", "bnb_quantized")


class Params4bit(FakeTensor):
    """A fake tensor standing in for `bnb.nn.Params4bit` (peft recognises bnb weights by class name)."""

    quant_state: Any
    module: Any


class Int8Params(FakeTensor):
    """A fake tensor standing in for `bnb.nn.Int8Params`."""

    has_fp16_weights: bool
    CB: Any
    SCB: Any


def _quantized_linear_on_meta(target: quantize.QuantTarget, quant: str, compute_dtype: torch.dtype) -> nn.Module:
    """The bnb layer `methods.quantize._quantized_linear` makes, with bnb's own layout, on meta."""
    import bitsandbytes as bnb

    weight = target.weight
    bias = target.bias is not None
    new: Any
    param: Any
    if quant == "int8":
        new = bnb.nn.Linear8bitLt(
            target.in_features, target.out_features, bias=bias, has_fp16_weights=False, device="meta"
        )
        # Int8Params._quantize: fp16 rows -> int8 rows (data and CB are one tensor) + fp32 row absmax.
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(weight.contiguous().to(torch.float16))
        param = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False)
        param.CB, param.SCB = param.data, scb
        new.weight = param
    else:
        new = bnb.nn.Linear4bit(
            target.in_features,
            target.out_features,
            bias=bias,
            compute_dtype=compute_dtype,
            compress_statistics=True,
            quant_type=quant,
            device="meta",
        )
        packed, state = bnb.functional.quantize_4bit(
            weight.contiguous(),
            blocksize=64,
            compress_statistics=True,
            quant_type=quant,
            quant_storage=torch.uint8,
        )
        param = bnb.nn.Params4bit(
            packed,
            requires_grad=False,
            quant_state=state,
            blocksize=64,
            compress_statistics=True,
            quant_type=quant,
            bnb_quantized=True,
            module=new,
        )
        new.weight = param
        new.quant_state = state
        new.support_avx512bf16_for_cpu = False  # as methods.quantize.disable_cpu_repacking
    if bias:
        new.bias = target.bias
    return new


def quantize_base_on_meta(model: Any, quant: str, kbit_prep: str = "peft") -> int:
    """Mirror `methods.quantize.prepare_quantized_base` on a meta model; returns how many layers.

    The same Linears are replaced (all but the output layer; all of them under `kbit_prep="all-linear"`),
    then the base is prepared per `kbit_prep` (`prepare_kbit`), exactly as on a real base.
    """
    import bitsandbytes as bnb

    # bitsandbytes caches its dynamic code map on the device of its first use: make that the CPU, not meta.
    bnb.functional.name2qmap.setdefault("dynamic", bnb.functional.create_dynamic_map())
    compute_dtype = quantize.compute_dtype_of(model)
    targets = quantize.quantization_targets(model, include_output=kbit_prep == "all-linear")
    for target in targets:
        quantize.replace_module(model, target.name, _quantized_linear_on_meta(target, quant, compute_dtype))
    quantize.mark_loaded_in_kbit(model, quant)
    prepare_kbit(model, kbit_prep)
    return len(targets)


def prepare_kbit(model: Any, kbit_prep: str) -> None:
    """A quantized base made ready for adapter training, per the `kbit_prep` knob (planner/stacks.py).

    `peft`: peft's `prepare_model_for_kbit_training` (freeze, cast every unquantized parameter to fp32).
    `none`, `torchtune`, `all-linear`: the base is frozen and keeps the dtype it was loaded in (Unsloth,
    LLaMA-Factory, axolotl; torchtune's torchao NF4, whose storage bitsandbytes' NF4 stands in for; litgpt).
    """
    if kbit_prep == "peft":
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return
    for param in model.parameters():
        param.requires_grad = False


def is_quantized_weight(param: Any) -> bool:
    return type(param).__name__ in ("Params4bit", "Int8Params")


def _fake_quant_state(convert: Any, state: Any) -> Any:
    """A copy of a bnb `QuantState` whose tensors are fake."""
    from bitsandbytes.functional import QuantState

    def fake(t: Any) -> Any:
        return convert(t) if isinstance(t, torch.Tensor) else t

    state2 = _fake_quant_state(convert, state.state2) if state.state2 is not None else None
    return QuantState(
        absmax=fake(state.absmax),
        shape=state.shape,
        code=fake(state.code),
        blocksize=state.blocksize,
        quant_type=state.quant_type,
        dtype=state.dtype,
        offset=fake(state.offset),
        state2=state2,
    )


def fake_quantized_weight(mode: FakeTensorMode, param: Any, module: Any) -> FakeTensor:
    """The fake stand-in of a meta `Params4bit` / `Int8Params`, with bnb's attributes and fake constants."""
    device = torch.device("cpu")
    converter = mode.fake_tensor_converter

    def convert(t: torch.Tensor) -> FakeTensor:
        return converter.from_meta_and_device(mode, t, device)

    meta = param.data
    fake: FakeTensor
    if type(param).__name__ == "Params4bit":
        fake4 = Params4bit(mode, meta, device)
        for attr in _PARAMS4BIT_ATTRS:
            setattr(fake4, attr, getattr(param, attr))
        fake4.quant_state = _fake_quant_state(convert, param.quant_state)
        fake4.module = module
        module.quant_state = fake4.quant_state
        fake = fake4
    else:
        fake8 = Int8Params(mode, meta, device)
        fake8.has_fp16_weights = param.has_fp16_weights
        fake8.CB = fake8 if param.CB is not None else None  # data and CB are one tensor, as in bnb
        fake8.SCB = convert(param.SCB) if param.SCB is not None else None
        fake = fake8
    fake.requires_grad_(False)
    fake._is_param = True  # isinstance(fake, nn.Parameter), as for nn.Parameter(fake)
    return fake


class DecomposeGemm4bit(TorchDispatchMode):
    """Run `bitsandbytes::gemm_4bit` as bnb's default kernel does, op by op (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        # Imported here, not while the mode runs: an import inside a tracked step would count its constants.
        import bitsandbytes  # noqa: F401 - registers the op
        from bitsandbytes.backends.default.ops import _gemm_4bit_default_impl

        self.gemm_4bit = torch.ops.bitsandbytes.gemm_4bit.default
        self.default_impl = _gemm_4bit_default_impl

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is self.gemm_4bit:
            return self.default_impl(*args, **kwargs)
        return func(*args, **kwargs)
