"""`peftplan trace`: run one training step of the real model on fake tensors and report its memory."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, get_args

import typer

from peftplan.commands._options import (
    ImageOptions,
    KnobOptions,
    MethodOptions,
    StepOptions,
    check_format,
    option_groups,
    print_json,
)
from peftplan.errors import BadInputError, UnknownNameError

GIB = 1024**3
_COLUMNS = (
    ("weights", "weights"),
    ("quant", "quant_constants"),
    ("adapter", "adapter"),
    ("grads", "gradients"),
    ("optim", "optimizer"),
    ("activ", "activations"),
    ("logits", "logits"),
)


def _choice(kind: str, value: str, literal: Any) -> str:
    choices = get_args(literal)
    if value not in choices:
        raise UnknownNameError(kind, value, choices, hint=f"Use one of: {', '.join(choices)}.")
    return value


@option_groups
def trace_command(
    *,
    model: Annotated[str, typer.Option("--model", "-m", help="Catalog id, local path or Hub id.")],
    adapter: MethodOptions,
    step: StepOptions,
    knobs: KnobOptions,
    images: ImageOptions,
    full_depth: Annotated[
        bool, typer.Option("--full-depth", help="Trace every block; no extrapolation.")
    ] = False,
    top: Annotated[int, typer.Option(help="Modules listed at the peak.")] = 5,
    fmt: Annotated[str, typer.Option("--format", help="table, json or markdown.")] = "table",
) -> None:
    """Trace one steady-state training step per method: exact peak allocated bytes, no GPU, no weights.

    The stack and its knobs are plan's (`--stack`, `--loss`, `--kbit-prep`, ...); each runs in the step as
    the stack's code does (docs/trace.md, "Training stacks in the trace"). A knob the trace cannot run is
    refused with the reason.
    """
    check_format(fmt)
    from peftplan.api import train_context
    from peftplan.planner.context import Attention, Dtype

    for name, value in (("seq-len", step.seq_len), ("batch-size", step.batch_size), ("top", top)):
        if value < 1:
            raise BadInputError(f"--{name} must be a positive integer, got {value}")
    # The same TrainContext as plan's: the stack's knobs, with the user's overrides.
    ctx = train_context(
        **step.to_dict() | {"dtype": _choice("dtype", step.dtype, Dtype), "attn": _choice("attention kernel", step.attn, Attention)},
        knobs=knobs.to_dict(),
        gpus=1, shard="none", cpu_offload=False, device="cpu",
    )
    from peftplan.api import method_configs

    chosen = method_configs(**adapter.to_dict())
    from peftplan.methods.targets import UnusableTargetError
    from peftplan.models import get_spec
    from peftplan.planner.method_plan import trainable_context
    from peftplan.planner.stacks import check_method
    from peftplan.planner.trace import trace_memory
    from peftplan.planner.vision import image_context

    spec = get_spec(model)
    image = images.to_dict()
    spec, ctx, notes = image_context(spec, ctx, image_size=image["image_size"], images=image["images_per_example"],
                                     tokens=image["image_tokens"], train_vision=image["train_vision"])
    entries: list[dict[str, Any]] = []
    for m, cfg in chosen:
        try:
            check_method(ctx.stack, m.name)
            # What the stack changes for this method (quantized base, full fine-tuning), as plan does; a
            # checkpointing the user asked for is kept, and refused by the trace if the method cannot.
            method_ctx, method_notes = trainable_context(m, cfg, ctx)
            if "checkpointing" in ctx.pinned and method_ctx.checkpointing != ctx.checkpointing:
                method_ctx = replace(method_ctx, grad_checkpointing=ctx.grad_checkpointing,
                                     ckpt_offload=ctx.ckpt_offload)
                method_notes = [n for n in method_notes if "checkpointing" not in n]
            result = trace_memory(spec, m, cfg, method_ctx, extrapolate=not full_depth, top=top)
        except BadInputError as exc:
            if len(chosen) == 1 or isinstance(exc, UnusableTargetError):  # bad input for all, not a skip
                raise
            notes.append(f"{m.name}: not traced: {exc}")
            continue
        notes.extend(f"{m.name}: {note}" for note in method_notes)
        entries.append(
            {**result.to_dict(), "training": _training(method_ctx), "mergeable": m.traits.mergeable,
             "inference_overhead": m.traits.inference_overhead}
        )
    if not entries:
        raise BadInputError("no method could be traced: " + "; ".join(notes))
    data = {
        "model": {"id": spec.model_id, "architecture": spec.architecture, "total_params": spec.total_params},
        "training": _training(ctx),
        "engine": "trace",
        "methods": entries,
        "notes": notes,
    }
    if fmt == "json":
        print_json(data)
    else:
        _render(data, fmt)


def _training(ctx: Any) -> dict[str, Any]:
    """The step's setting as traced: plan's `training` keys (the stack and every knob)."""
    return {**ctx.step_setting(), **ctx.knobs(), **(ctx.image_setting() if ctx.images else {})}


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def _render(data: dict[str, Any], fmt: str) -> None:
    t = data["training"]
    title = (
        f"Traced step of {data['model']['id']} ({t['stack']} stack): seq {t['seq_len']} x batch {t['batch_size']}, "
        f"{t['dtype']}, {t['optimizer']}, loss {t['loss']}, checkpointing {t['checkpointing']} (GiB)"
    )
    columns = ["method", "trainable"] + [label for label, _ in _COLUMNS] + ["peak", "phase", "s"]
    rows = []
    for entry in data["methods"]:
        mem = entry["memory"]
        rows.append(
            [entry["method"], f"{entry['trainable_params']:,}"]
            + [_gib(mem[key]) for _, key in _COLUMNS]
            + [_gib(mem["peak_allocated"]), entry["peak_phase"], f"{entry['seconds']:.1f}"]
        )
    single = data["methods"][0] if len(data["methods"]) == 1 else None
    modules = [(m["module"], _gib(m["bytes"])) for m in single["top_modules"]] if single else []
    if fmt == "markdown":
        print(f"### {title}\n")
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for cells in rows:
            print("| " + " | ".join(cells) + " |")
        if modules:
            print(f"\nLargest transient holders at the peak ({single['peak_segment']}):\n")  # type: ignore[index]
            for name, size in modules:
                print(f"- `{name}`: {size} GiB")
        for note in data["notes"]:
            print(f"\n- {note}")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped output: do not squash the columns to 80
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col in ("method", "phase") else "right", no_wrap=True)
    for cells in rows:
        table.add_row(*cells)
    console.print(table)
    if modules:
        console.print(f"Largest transient holders at the peak ({single['peak_segment']}):", highlight=False)  # type: ignore[index]
        for name, size in modules:
            console.print(f"  {size:>8} GiB  {name}", highlight=False)
    for note in data["notes"]:
        console.print(f"[dim]{note}[/dim]", highlight=False)
