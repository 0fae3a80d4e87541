"""Bytes of the model's parameters as the real stack stores them: by dtype, or as bitsandbytes packs them.

bitsandbytes (what `methods/quantize.py` uses) quantizes every Linear except the output layer:
- NF4/FP4 pack two weights per byte, with one absmax per 64-weight block. Under double quantization
  (QLoRA's default, and ours) that absmax is 8-bit, with fp32 second-level absmax per 256 blocks, a
  256-entry fp32 code table and an fp32 offset; the 16-entry 4-bit code is fp32 too.
- int8 (LLM.int8) keeps one int8 per weight plus an fp32 absmax per output row (SCB).
Embeddings, norms, biases and the output layer stay unquantized, and peft's k-bit preparation
casts them to fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftplan.methods.base import Quant
from peftplan.models.spec import LinearInfo, ModelSpec
from peftplan.planner.context import DTYPE_BYTES, TrainContext
from peftplan.replay.terms import MemoryTerms

BLOCK_4BIT = 64  # weights per absmax block
BLOCK_DOUBLE = 256  # absmax values per second-level block
CODE_4BIT = 16 * 4  # the NF4/FP4 code table (fp32)
CODE_DYNAMIC = 256 * 4  # the 8-bit dynamic map of double quantization (fp32)
OFFSET = 4


@dataclass(frozen=True)
class WeightBytes:
    """Parameter storage: base weights, quantization constants, the method's own tensors."""

    weights: int
    quant_constants: int
    adapter: int
    quantized_params: int = 0  # base parameters stored quantized


def quantized_linear_bytes(numel: int, out_features: int, quant: Quant, *, double_quant: bool = True) -> tuple[int, int]:
    """(data bytes, constant bytes) bitsandbytes stores for one Linear weight of `numel` values."""
    if quant == "int8":
        return numel, out_features * 4
    blocks = -(-numel // BLOCK_4BIT)
    data = -(-numel // 2)
    if double_quant:
        second = -(-blocks // BLOCK_DOUBLE)
        return data, blocks + second * 4 + CODE_DYNAMIC + OFFSET + CODE_4BIT
    return data, blocks * 4 + CODE_4BIT


def quantized_linears(spec: ModelSpec, kbit_prep: str = "peft") -> list[LinearInfo]:
    """The Linears stored quantized: all but the output layer (transformers' bitsandbytes loader and
    torchtune's NF4 builders alike), or every one under litgpt's plugin (`all-linear`)."""
    return [lin for lin in spec.linears if lin.role != "output" or kbit_prep == "all-linear"]


def quantized_totals(spec: ModelSpec, quant: Quant, kbit_prep: str = "peft") -> tuple[int, int, int]:
    """(data bytes, constant bytes, parameters) of the Linears bitsandbytes stores quantized (once per spec)."""
    def build() -> tuple[int, int, int]:
        data = constants = packed_params = 0
        for lin in quantized_linears(spec, kbit_prep):
            numel = lin.in_features * lin.out_features
            d, c = quantized_linear_bytes(numel, lin.out_features, quant)
            data, constants, packed_params = data + d, constants + c, packed_params + numel
        return data, constants, packed_params

    return spec.memo(f"quantized_totals:{quant}:{kbit_prep}", build)


def weight_bytes(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext) -> WeightBytes:
    """Bytes of every parameter at rest, for the method's `terms` under `ctx`."""
    dtype = DTYPE_BYTES[ctx.dtype]
    master = ctx.optimizer == "adamw-fp32"  # trainable parameters are kept in fp32
    adapter = ctx.adapter_itemsize * (terms.adapter_params + terms.frozen_adapter_params) + terms.buffer_bytes
    if terms.quant != "none":
        data, constants, packed_params = quantized_totals(spec, terms.quant, ctx.kbit_prep)
        rest = spec.total_params - packed_params
        if spec.tie_word_embeddings and any(lin.role == "output" for lin in quantized_linears(spec, ctx.kbit_prep)):
            # A quantized output layer gets its own packed weight; the tied embedding it shared stays.
            rest += spec.vocab_size * spec.hidden_size
        # peft's k-bit preparation upcasts what is not quantized to fp32; other stacks leave it as loaded.
        rest_size = 4 if ctx.kbit_prep == "peft" else dtype
        return WeightBytes(data + rest_size * rest, constants, adapter, packed_params)
    trainable = trainable_base_params(spec, terms)
    frozen = spec.total_params - trainable
    train_size = 4 if master else dtype
    return WeightBytes(frozen * dtype + trainable * train_size, 0, adapter)


def trainable_base_params(spec: ModelSpec, terms: MemoryTerms) -> int:
    """How many of the base model's own parameters train (full fine-tuning: all; BitFit: biases)."""
    if terms.trainable_base == "all":
        return spec.trainable_base_params
    if terms.trainable_base == "biases":
        return sum(p.numel for p in spec.params if p.tied_to is None and p.name.rsplit(".", 1)[-1] == "bias"
                   and not spec.is_frozen(p.name))
    return 0


def trainable_base_tensors(spec: ModelSpec, terms: MemoryTerms) -> list[int]:
    """Element counts of the base parameters that train, one per tensor."""
    if terms.trainable_base == "all":
        return [p.numel for p in spec.params if p.tied_to is None and not spec.is_frozen(p.name)]
    if terms.trainable_base == "biases":
        return [p.numel for p in spec.params if p.tied_to is None and p.name.rsplit(".", 1)[-1] == "bias"
                and not spec.is_frozen(p.name)]
    return []


def bits_per_param(quant: Quant, *, double_quant: bool = True, numel: int = 4096 * 4096, rows: int = 4096) -> float:
    """Storage bits per weight of a quantized Linear, constants included."""
    data, constants = quantized_linear_bytes(numel, rows, quant, double_quant=double_quant)
    return 8 * (data + constants) / numel


@dataclass(frozen=True)
class UnitBytes:
    """Parameter bytes as stored, split the way FSDP's transformer auto-wrap makes units of a model.

    accelerate's TRANSFORMER_BASED_WRAP, Lightning's `auto_wrap_policy={Block}` and torchtune's per-layer
    `fully_shard` make every block a unit; the root unit holds the rest (embeddings, final norm, output
    layer, a VLM's vision tower). Quantization constants are not parameters and belong to no unit.
    """

    block: int  # the largest block
    root: int
    trained: int  # the blocks (and the root) holding a trainable tensor, whole


def unit_bytes(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext, weights: int,
               trained_names: list[str]) -> UnitBytes:
    """The largest block's and the root's stored parameter bytes, and the units `trained_names` touch.

    A quantized Linear's weight counts its packed data; every other parameter the bytes per parameter of
    `weights` (the unquantized rest of a quantized model: its stored size, see `weight_bytes`).
    """
    prefix = f"{spec.layers_path}."
    quantized: dict[str, LinearInfo] = {}
    rest_size = weights / max(spec.total_params, 1)
    if terms.quant != "none":
        quantized = {lin.name + ".weight": lin for lin in quantized_linears(spec, ctx.kbit_prep)}
        rest_size = 4 if ctx.kbit_prep == "peft" else DTYPE_BYTES[ctx.dtype]
    blocks: dict[str, float] = {}
    root = 0.0
    for p in spec.params:
        lin = quantized.get(p.name)
        if p.tied_to is not None:
            if lin is None:
                continue
        nbytes = quantized_linear_bytes(p.numel, lin.out_features, terms.quant)[0] if lin else p.numel * rest_size
        if p.name.startswith(prefix):
            index = p.name[len(prefix):].split(".", 1)[0]
            blocks[index] = blocks.get(index, 0) + nbytes
        else:
            root += nbytes
    trained_blocks = {n[len(prefix):].split(".", 1)[0] for n in trained_names if n.startswith(prefix)}
    trained = sum(blocks.get(i, 0) for i in trained_blocks)
    if any(not n.startswith(prefix) for n in trained_names):
        trained += root
    return UnitBytes(int(max(blocks.values(), default=0)), int(root), int(trained))
