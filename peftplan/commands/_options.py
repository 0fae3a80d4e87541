"""Options shared by commands that take a model and method knobs (`methods`, `plan`, `trace`).

A group of options is declared once, as the fields of a dataclass (`MethodOptions`, `StepOptions`,
`KnobOptions`); a
command takes the group as one keyword-only parameter annotated with it, and `@option_groups` shows
typer the group's options in that place and hands the command the filled dataclass.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

FORMATS = ("table", "json", "markdown")


@dataclass(frozen=True)
class MethodOptions:
    """Which methods, and the method knobs `methods`, `plan` and `trace` share (`api.method_configs`)."""

    methods: Annotated[list[str] | None, typer.Option("--method", help="Restrict to these methods (repeat or comma-separate).")] = None
    rank: Annotated[int | None, typer.Option(help="LoRA-family rank.")] = None
    alpha: Annotated[float | None, typer.Option(help="LoRA-family alpha.")] = None
    targets: Annotated[str | None, typer.Option(help="Module names, re:<regex>, or presets attn, mlp, all-linear.")] = None
    virtual_tokens: Annotated[int | None, typer.Option("--virtual-tokens", help="Prefix/prompt tuning tokens.")] = None
    quant: Annotated[str | None, typer.Option(help="Base quantization: none, nf4, fp4, int8.")] = None
    bottleneck: Annotated[int | None, typer.Option(help="Bottleneck adapter width.")] = None
    peft_config: Annotated[Path | None, typer.Option("--peft-config", help="Use exactly this peft adapter_config.json.")] = None

    def to_dict(self) -> dict[str, Any]:
        """By field name: `api.method_configs(**...)` and `PlanRequest`'s fields of the same names."""
        return asdict(self)


_OPTIMIZERS = "adamw, adamw-fp32, adamw8bit, paged-adamw8bit, paged-adamw, sgd, ..."


@dataclass(frozen=True)
class StepOptions:
    """The training step `plan` and `trace` price: the stack (its knobs: `KnobOptions`), shape and dtypes."""

    stack: Annotated[str, typer.Option(help="Training stack whose memory techniques to price: hf, trl, unsloth, axolotl, llama-factory, torchtune, litgpt.")] = "hf"
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.")] = 2048
    batch_size: Annotated[int, typer.Option("--batch-size", help="Micro-batch size per GPU.")] = 1
    grad_ckpt: Annotated[bool | None, typer.Option("--grad-ckpt/--no-grad-ckpt", help="Gradient checkpointing (default: the stack's; on for hf, as TRL and most PEFT recipes train).")] = None
    optimizer: Annotated[str | None, typer.Option(help=f"{_OPTIMIZERS} (default: the stack's).")] = None
    dtype: Annotated[str, typer.Option(help="bf16, fp16 or fp32 (16-bit trains under autocast).")] = "bf16"
    attn: Annotated[str, typer.Option("--attn", help="Attention kernel: sdpa, flash or eager.")] = "sdpa"

    def to_dict(self) -> dict[str, Any]:
        """By field name, as `PlanRequest` and `api.train_context` take them."""
        return asdict(self)


@dataclass(frozen=True)
class KnobOptions:
    """The stack knob overrides `plan` and `trace` take, one per `Knobs` field (None: the stack's; planner/stacks.py)."""

    loss: Annotated[str | None, typer.Option(help="Loss knob: full (fp32 logits), chunked or fused (default: the stack's).")] = None
    loss_chunks: Annotated[int | None, typer.Option("--loss-chunks", help="Chunks of the chunked loss (default: the stack's).")] = None
    loss_chunk_tokens: Annotated[int | None, typer.Option("--loss-chunk-tokens", help="Chunks of this many tokens instead (0: use --loss-chunks).")] = None
    loss_recompute: Annotated[bool | None, typer.Option("--loss-recompute/--no-loss-recompute", help="Checkpoint each loss chunk (TRL's chunked_nll).")] = None
    kernels: Annotated[str | None, typer.Option(help="torch (the model's modules) or unsloth (its fused kernels); default: the stack's.")] = None
    adapter_dtype: Annotated[str | None, typer.Option("--adapter-dtype", help="fp32 (peft) or dtype (the training dtype); default: the stack's.")] = None
    kbit_prep: Annotated[str | None, typer.Option("--kbit-prep", help="Quantized base preparation: peft (fp32 upcast), none, torchtune or all-linear (litgpt: the output layer too).")] = None
    checkpointing: Annotated[str | None, typer.Option(help="none, recompute or offload (block inputs on the host); default: the stack's.")] = None
    offload_activations: Annotated[bool | None, typer.Option("--offload-activations/--no-offload-activations", help="Saved activations on the host (torch save_on_cpu, torchtune).")] = None
    optimizer_in_bwd: Annotated[bool | None, typer.Option("--optimizer-in-bwd/--no-optimizer-in-bwd", help="Step each parameter inside backward (torchtune).")] = None
    optimizer_fused: Annotated[bool | None, typer.Option("--optimizer-fused/--no-optimizer-fused", help="torch AdamW's fused kernel, no step temporaries (transformers' adamw_torch_fused, torchtune's fused: True).")] = None
    packing: Annotated[bool | None, typer.Option("--packing/--no-packing", help="Pack sequences to --seq-len (unpacked, --seq-len is a cap).")] = None
    precision: Annotated[str | None, typer.Option(help="mixed (autocast, fp32 adapters) or pure (all in --dtype); default: the stack's.")] = None
    loss_fp32: Annotated[bool | None, typer.Option("--loss-fp32/--no-loss-fp32", help="The loss upcasts logits to fp32 (default: the stack's).")] = None
    legacy_loss: Annotated[bool | None, typer.Option("--legacy-loss/--no-legacy-loss", help="transformers < 4.45's loss (fp32 logits in the model, a shifted copy).")] = None
    keep_logits: Annotated[bool | None, typer.Option("--keep-logits/--no-keep-logits", help="The loop holds logits through backward (litgpt).")] = None
    compile_loss: Annotated[bool | None, typer.Option("--compile-loss/--no-compile-loss", help="The loss runs under torch.compile (torchtune's compile: True).")] = None
    bnb_keeps_input: Annotated[bool | None, typer.Option("--bnb-keeps-input/--no-bnb-keeps-input", help="bitsandbytes < 0.43.2: each 4-bit Linear keeps its input as long as the graph.")] = None
    bnb_fp16_state: Annotated[bool | None, typer.Option("--bnb-fp16-state/--no-bnb-fp16-state", help="4-bit weights quantized from fp16 (Lightning, litgpt): dequantized to fp16, then cast.")] = None
    model_code: Annotated[str | None, typer.Option("--model-code", help="Whose model code runs the blocks: transformers or litgpt (its fused qkv, RoPE and LoRA); default: the stack's.")] = None
    output_fp32: Annotated[bool | None, typer.Option("--output-fp32/--no-output-fp32", help="The loop's wrapper casts the logits to fp32 (Lightning Fabric, litgpt).")] = None
    fsdp_flat_grads: Annotated[bool | None, typer.Option("--fsdp-flat-grads/--no-fsdp-flat-grads", help="With --shard fsdp: use_orig_params=True, a unit's gradient spans its frozen parameters too (Lightning, litgpt).")] = None
    fsdp_no_sync: Annotated[bool | None, typer.Option("--fsdp-no-sync/--no-fsdp-no-sync", help="With --shard fsdp: gradient accumulation under no_sync(), unsharded gradients all step (litgpt).")] = None
    fsdp_root_whole: Annotated[bool | None, typer.Option("--fsdp-root-whole/--no-fsdp-root-whole", help="With --shard fsdp: the root unit (embeddings, output layer) stays gathered from forward to backward (FSDP1).")] = None

    def to_dict(self) -> dict[str, Any]:
        """The overrides by knob name, in `KNOB_NAMES` order (what `api.train_context` and `PlanRequest` take)."""
        from peftplan.planner.stacks import KNOB_NAMES

        return {name: getattr(self, name) for name in KNOB_NAMES}


@dataclass(frozen=True)
class ImageOptions:
    """A vision-language model's images per example (`PlanRequest`'s fields of the same names)."""

    image_size: Annotated[str | None, typer.Option("--image-size", help="Each image's size in pixels, WxH (resized as the model's processor does).")] = None
    images_per_example: Annotated[int | None, typer.Option("--images-per-example", help="Images per training example (default 1 with --image-size or --image-tokens).")] = None
    image_tokens: Annotated[int | None, typer.Option("--image-tokens", help="Language-model tokens per image, instead of --image-size.")] = None
    train_vision: Annotated[bool, typer.Option("--train-vision", help="Train the vision tower and projector too (default: frozen; LoRA presets then adapt them).")] = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_GROUPS = (MethodOptions, StepOptions, KnobOptions, ImageOptions)


def option_groups(command: Callable[..., None]) -> Callable[..., None]:
    """Show typer each `_GROUPS` parameter of `command` as its dataclass's options, in its place.

    The command is called with the group's dataclass filled from those options. Typer reads the options
    from the returned function's `__signature__`.
    """
    signature = inspect.signature(command, eval_str=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type] = {}
    for param in signature.parameters.values():
        if param.annotation in _GROUPS:
            groups[param.name] = param.annotation
            params += _group_parameters(param.annotation)
        else:
            params.append(param)

    @functools.wraps(command)
    def run(**kwargs: Any) -> None:
        for name, group in groups.items():
            kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in fields(group)})
        command(**kwargs)

    # What inspect.signature (and so typer) reads; the annotations follow it for typing.get_type_hints.
    vars(run)["__signature__"] = signature.replace(parameters=params)
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def _group_parameters(group: type) -> list[inspect.Parameter]:
    hints = get_type_hints(group, include_extras=True)
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
            for f in fields(group)]


def check_format(fmt: str, allowed: tuple[str, ...] = FORMATS) -> str:
    if fmt not in allowed:
        from peftplan.errors import UnknownNameError

        raise UnknownNameError("format", fmt, allowed, hint=f"Use one of: {', '.join(allowed)}.")
    return fmt


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
