"""Options shared by commands that take a model and method knobs (`methods`, `plan`, `trace`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    pass

FORMATS = ("table", "json", "markdown")

# The method knobs `methods`, `plan` and `trace` share (see `method_configs`).
MethodOpt = Annotated[list[str] | None, typer.Option("--method", help="Restrict to these methods (repeat or comma-separate).")]
RankOpt = Annotated[int | None, typer.Option(help="LoRA-family rank.")]
AlphaOpt = Annotated[float | None, typer.Option(help="LoRA-family alpha.")]
TargetsOpt = Annotated[str | None, typer.Option(help="Module names, re:<regex>, or presets attn, mlp, all-linear.")]
VirtualTokensOpt = Annotated[int | None, typer.Option("--virtual-tokens", help="Prefix/prompt tuning tokens.")]
QuantOpt = Annotated[str | None, typer.Option(help="Base quantization: none, nf4, fp4, int8.")]
BottleneckOpt = Annotated[int | None, typer.Option(help="Bottleneck adapter width.")]
PeftConfigOpt = Annotated[Path | None, typer.Option("--peft-config", help="Use exactly this peft adapter_config.json.")]


# The training stack and its knobs, shared by `plan` and `trace` (None: the stack's default; planner/stacks.py).
StackOpt = Annotated[str, typer.Option(help="Training stack whose memory techniques to price: hf, trl, unsloth, axolotl, llama-factory, torchtune, litgpt.")]
LossOpt = Annotated[str | None, typer.Option(help="Loss knob: full (fp32 logits), chunked or fused (default: the stack's).")]
LossChunksOpt = Annotated[int | None, typer.Option("--loss-chunks", help="Chunks of the chunked loss (default: the stack's).")]
LossChunkTokensOpt = Annotated[int | None, typer.Option("--loss-chunk-tokens", help="Chunks of this many tokens instead (0: use --loss-chunks).")]
LossRecomputeOpt = Annotated[bool | None, typer.Option("--loss-recompute/--no-loss-recompute", help="Checkpoint each loss chunk (TRL's chunked_nll).")]
KernelsOpt = Annotated[str | None, typer.Option(help="torch (the model's modules) or unsloth (its fused kernels); default: the stack's.")]
AdapterDtypeOpt = Annotated[str | None, typer.Option("--adapter-dtype", help="fp32 (peft) or dtype (the training dtype); default: the stack's.")]
KbitPrepOpt = Annotated[str | None, typer.Option("--kbit-prep", help="Quantized base preparation: peft (fp32 upcast), none, torchtune or all-linear (litgpt: the output layer too).")]
CheckpointingOpt = Annotated[str | None, typer.Option(help="none, recompute or offload (block inputs on the host); default: the stack's.")]
OffloadActivationsOpt = Annotated[bool | None, typer.Option("--offload-activations/--no-offload-activations", help="Saved activations on the host (torch save_on_cpu, torchtune).")]
OptimizerInBwdOpt = Annotated[bool | None, typer.Option("--optimizer-in-bwd/--no-optimizer-in-bwd", help="Step each parameter inside backward (torchtune).")]
PackingOpt = Annotated[bool | None, typer.Option("--packing/--no-packing", help="Pack sequences to --seq-len (unpacked, --seq-len is a cap).")]
PrecisionOpt = Annotated[str | None, typer.Option(help="mixed (autocast, fp32 adapters) or pure (all in --dtype); default: the stack's.")]
LossFp32Opt = Annotated[bool | None, typer.Option("--loss-fp32/--no-loss-fp32", help="The loss upcasts logits to fp32 (default: the stack's).")]
LegacyLossOpt = Annotated[bool | None, typer.Option("--legacy-loss/--no-legacy-loss", help="transformers < 4.45's loss (fp32 logits in the model, a shifted copy).")]
CompileLossOpt = Annotated[bool | None, typer.Option("--compile-loss/--no-compile-loss", help="The loss runs under torch.compile (torchtune's compile: True).")]
BnbKeepsInputOpt = Annotated[bool | None, typer.Option("--bnb-keeps-input/--no-bnb-keeps-input", help="bitsandbytes < 0.43.2: each 4-bit Linear keeps its input as long as the graph.")]
BnbFp16StateOpt = Annotated[bool | None, typer.Option("--bnb-fp16-state/--no-bnb-fp16-state", help="4-bit weights quantized from fp16 (Lightning, litgpt): dequantized to fp16, then cast.")]
KeepLogitsOpt = Annotated[bool | None, typer.Option("--keep-logits/--no-keep-logits", help="The loop holds logits through backward (litgpt).")]
GradCkptOpt = Annotated[bool | None, typer.Option("--grad-ckpt/--no-grad-ckpt", help="Gradient checkpointing (default: the stack's; on for hf, as TRL and most PEFT recipes train).")]


def knob_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The stack knobs among a command's parameters (`locals()`), by knob name (None: the stack's)."""
    from peftplan.planner.stacks import KNOB_NAMES

    return {name: values.get(name) for name in KNOB_NAMES}


def check_format(fmt: str, allowed: tuple[str, ...] = FORMATS) -> str:
    if fmt not in allowed:
        from peftplan.errors import UnknownNameError

        raise UnknownNameError("format", fmt, allowed, hint=f"Use one of: {', '.join(allowed)}.")
    return fmt


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
