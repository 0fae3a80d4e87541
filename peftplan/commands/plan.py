"""`peftplan plan`: for every PEFT method, what fits on the budget, what it costs, and what to pick."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from peftplan.commands._options import (
    FORMATS,
    ImageOptions,
    KnobOptions,
    MethodOptions,
    StepOptions,
    check_format,
    option_groups,
)
from peftplan.errors import BadInputError


@option_groups
def plan_command(
    *,
    typer_ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Catalog id, local config path or Hub id.")],
    vram: Annotated[float | None, typer.Option(help="GPU memory budget per GPU, in GiB.")] = None,
    gpu: Annotated[str | None, typer.Option(help="A GPU profile (memory, speed, price), e.g. rtx-4090, h100.")] = None,
    gpus: Annotated[int, typer.Option(help="Number of GPUs.")] = 1,
    shard: Annotated[str, typer.Option(help="none (DDP), fsdp or zero3 (shard weights, grads and states), zero2 (grads and states).")] = "none",
    cpu_offload: Annotated[bool, typer.Option("--cpu-offload", help="With --shard: optimizer states (and for fsdp/zero3 the weights) on the host.")] = False,
    step: StepOptions,
    knobs: KnobOptions,
    lengths: Annotated[Path | None, typer.Option(help="Token counts of the examples (one per line), or a .jsonl dataset with --tokenizer: peak at the longest, time at the mean.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer (local directory or Hub id) to count a --lengths dataset.")] = None,
    lengths_field: Annotated[str | None, typer.Option("--lengths-field", help="The text field of a --lengths dataset.")] = None,
    gpu_profiles: Annotated[Path | None, typer.Option("--gpu-profiles", help="A TOML file of extra GPU profiles.")] = None,
    device: Annotated[str, typer.Option(help="Whose kernels to model: cuda (default) or cpu.")] = "cuda",
    adapter: MethodOptions,
    images: ImageOptions,
    tasks: Annotated[int, typer.Option(help="How many adapted tasks will be served.")] = 1,
    switching: Annotated[str, typer.Option(help="merge, hot-swap or multi-tenant.")] = "merge",
    serve_gpu: Annotated[str | None, typer.Option("--serve-gpu", help="GPU profile serving the tasks (default: the training GPU).")] = None,
    serve_vram: Annotated[float | None, typer.Option("--serve-vram", help="Serving GPU memory in GiB (default: the training budget).")] = None,
    serve_context: Annotated[int | None, typer.Option("--serve-context", help="Tokens per served sequence (default: --seq-len).")] = None,
    serve_concurrency: Annotated[int | None, typer.Option("--serve-concurrency", help="Sequences served at once (default: 1; multi-tenant: one per task, up to 32).")] = None,
    examples: Annotated[int | None, typer.Option(help="Training examples (for time, cost and rank advice).")] = None,
    train_tokens: Annotated[int | None, typer.Option("--train-tokens", help="Training tokens (for time and cost).")] = None,
    epochs: Annotated[float, typer.Option(help="Epochs over --examples.")] = 1.0,
    mfu: Annotated[float, typer.Option(help="Model-FLOPs utilisation assumed for speed.")] = 0.40,
    fit_search: Annotated[bool, typer.Option("--fit-search/--no-fit-search", help="Search the largest batch, sequence and rank that fit.")] = True,
    engine: Annotated[str, typer.Option(help="analytic (fast), trace (fake-tensor step) or both (adds the error).")] = "analytic",
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow a model's custom code.")] = False,
    emit: Annotated[str | None, typer.Option(help="Write the recommended (or the one chosen) configuration for a stack: peft, trl, axolotl, llama-factory, torchtune, unsloth.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json, markdown or html (one self-contained page).")] = "table",
    out: Annotated[Path | None, typer.Option("--out", help="Write the output to this file instead of stdout.")] = None,
) -> None:
    """Plan PEFT fine-tuning of a model on a GPU budget: memory, fit, cost and a recommendation.

    Exits 0 when some method fits, 3 when none does, 2 on bad input.
    """
    check_format(fmt, (*FORMATS, "html"))
    sources = {name: typer_ctx.get_parameter_source(name) for name in typer_ctx.params}
    # What the user typed is pinned; the rest is the decision's to search.
    passed = frozenset(name for name, source in sources.items()
                       if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"))
    from peftplan.api import PlanRequest
    from peftplan.api import plan as api_plan

    plan = api_plan(PlanRequest(
        model=model, vram=vram, gpu=gpu, gpus=gpus, shard=shard,
        cpu_offload=cpu_offload, **step.to_dict(), lengths=lengths, tokenizer=tokenizer, lengths_field=lengths_field,
        knobs=knobs.to_dict(), gpu_profiles=gpu_profiles, device=device, **adapter.to_dict(), **images.to_dict(),
        tasks=tasks,
        switching=switching, examples=examples, train_tokens=train_tokens,
        epochs=epochs, mfu=mfu, fit_search=fit_search, trust_remote_code=trust_remote_code,
        engine=engine, serve_gpu=serve_gpu, serve_vram=serve_vram,
        serve_context=serve_context, serve_concurrency=serve_concurrency, given=passed,
    ))
    if emit is not None:
        from peftplan.planner.emit import emit_plan

        _write(emit_plan(plan, emit), out)
    elif fmt != "table" or out is not None:
        _write(_render_text(plan, fmt), out)
    else:
        from peftplan.planner.render import print_table

        print_table(plan)
    from peftplan.planner.plan import check_fits

    check_fits(plan)


def _render_text(plan: Any, fmt: str) -> str:
    if fmt == "json":
        import json

        return json.dumps(plan.to_dict(), indent=2) + "\n"
    if fmt == "html":
        from peftplan.reports.plan_html import render_plan_html

        return render_plan_html(plan.to_dict())
    if fmt == "markdown":
        from peftplan.planner.render import to_markdown

        return str(to_markdown(plan))
    raise BadInputError("--out needs --format json, markdown or html")


def _write(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        raise BadInputError(f"cannot write {out}: {exc.strerror or exc}") from None
