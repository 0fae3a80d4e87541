"""`peftplan plan`: for every PEFT method, what fits on the budget, what it costs, and what to pick."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from peftplan.commands._options import (
    FORMATS,
    AdapterDtypeOpt,
    AlphaOpt,
    BottleneckOpt,
    CheckpointingOpt,
    CompileLossOpt,
    GradCkptOpt,
    KbitPrepOpt,
    KeepLogitsOpt,
    KernelsOpt,
    LegacyLossOpt,
    LossChunksOpt,
    LossChunkTokensOpt,
    LossFp32Opt,
    LossOpt,
    LossRecomputeOpt,
    MethodOpt,
    OffloadActivationsOpt,
    OptimizerInBwdOpt,
    PackingOpt,
    PeftConfigOpt,
    PrecisionOpt,
    QuantOpt,
    RankOpt,
    StackOpt,
    TargetsOpt,
    VirtualTokensOpt,
    check_format,
)
from peftplan.errors import BadInputError

OPTIMIZERS = ("adamw", "adamw-fp32", "adamw8bit", "paged-adamw8bit", "paged-adamw", "sgd", "sgd-momentum",
              "adafactor")
DTYPES = ("bf16", "fp16", "fp32")
ATTENTION = ("sdpa", "flash", "eager")
SHARDS = ("none", "fsdp", "zero2", "zero3")
DEVICES = ("cuda", "cpu")
SWITCHING = ("merge", "hot-swap", "multi-tenant")
ENGINES = ("analytic", "trace", "both")


def _choice(kind: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        from peftplan.errors import UnknownNameError

        raise UnknownNameError(kind, value, allowed, hint=f"Use one of: {', '.join(allowed)}.")
    return value


def plan_command(
    typer_ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Catalog id, local config path or Hub id.")],
    vram: Annotated[float | None, typer.Option(help="GPU memory budget per GPU, in GiB.")] = None,
    gpu: Annotated[str | None, typer.Option(help="A GPU profile (memory, speed, price), e.g. rtx-4090, h100.")] = None,
    gpus: Annotated[int, typer.Option(help="Number of GPUs.")] = 1,
    shard: Annotated[str, typer.Option(help="none (DDP), fsdp or zero3 (shard weights, grads and states), zero2 (grads and states).")] = "none",
    cpu_offload: Annotated[bool, typer.Option("--cpu-offload", help="With --shard: optimizer states (and for fsdp/zero3 the weights) on the host.")] = False,
    stack: StackOpt = "hf",
    loss: LossOpt = None,
    loss_chunks: LossChunksOpt = None,
    loss_chunk_tokens: LossChunkTokensOpt = None,
    loss_recompute: LossRecomputeOpt = None,
    kernels: KernelsOpt = None,
    adapter_dtype: AdapterDtypeOpt = None,
    kbit_prep: KbitPrepOpt = None,
    checkpointing: CheckpointingOpt = None,
    offload_activations: OffloadActivationsOpt = None,
    optimizer_in_bwd: OptimizerInBwdOpt = None,
    packing: PackingOpt = None,
    lengths: Annotated[Path | None, typer.Option(help="Token counts of the examples (one per line), or a .jsonl dataset with --tokenizer: peak at the longest, time at the mean.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer (local directory or Hub id) to count a --lengths dataset.")] = None,
    lengths_field: Annotated[str | None, typer.Option("--lengths-field", help="The text field of a --lengths dataset.")] = None,
    precision: PrecisionOpt = None,
    loss_fp32: LossFp32Opt = None,
    legacy_loss: LegacyLossOpt = None,
    keep_logits: KeepLogitsOpt = None,
    compile_loss: CompileLossOpt = None,
    gpu_profiles: Annotated[Path | None, typer.Option("--gpu-profiles", help="A TOML file of extra GPU profiles.")] = None,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.")] = 2048,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Micro-batch size per GPU.")] = 1,
    grad_ckpt: GradCkptOpt = None,
    optimizer: Annotated[str | None, typer.Option(help=", ".join(OPTIMIZERS) + " (default: the stack's).")] = None,
    dtype: Annotated[str, typer.Option(help="bf16, fp16 or fp32 (16-bit trains under autocast).")] = "bf16",
    attn: Annotated[str, typer.Option("--attn", help="Attention kernel: sdpa, flash or eager.")] = "sdpa",
    device: Annotated[str, typer.Option(help="Whose kernels to model: cuda (default) or cpu.")] = "cuda",
    method: MethodOpt = None,
    rank: RankOpt = None,
    alpha: AlphaOpt = None,
    targets: TargetsOpt = None,
    virtual_tokens: VirtualTokensOpt = None,
    quant: QuantOpt = None,
    bottleneck: BottleneckOpt = None,
    peft_config: PeftConfigOpt = None,
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
    plan = make_plan(
        model=model, vram=vram, gpu=gpu, gpus=gpus, shard=_choice("shard mode", shard, SHARDS),
        cpu_offload=cpu_offload, stack=stack, lengths=lengths, tokenizer=tokenizer, lengths_field=lengths_field,
        knobs={"loss": loss, "loss_chunks": loss_chunks, "loss_chunk_tokens": loss_chunk_tokens,
               "loss_recompute": loss_recompute, "adapter_dtype": adapter_dtype, "kernels": kernels, "kbit_prep": kbit_prep, "checkpointing": checkpointing,
               "offload_activations": offload_activations, "optimizer_in_bwd": optimizer_in_bwd,
               "packing": packing, "precision": precision, "loss_fp32": loss_fp32, "keep_logits": keep_logits, "legacy_loss": legacy_loss,
               "compile_loss": compile_loss},
        gpu_profiles=gpu_profiles, seq_len=seq_len, batch_size=batch_size, grad_ckpt=grad_ckpt,
        optimizer=optimizer, dtype=_choice("dtype", dtype, DTYPES),
        attn=_choice("attention kernel", attn, ATTENTION), device=_choice("device", device, DEVICES),
        methods=method, rank=rank, alpha=alpha, targets=targets, virtual_tokens=virtual_tokens, quant=quant,
        bottleneck=bottleneck, peft_config=peft_config, tasks=tasks,
        switching=_choice("switching mode", switching, SWITCHING), examples=examples, train_tokens=train_tokens,
        epochs=epochs, mfu=mfu, fit_search=fit_search, trust_remote_code=trust_remote_code,
        engine=_choice("engine", engine, ENGINES), serve_gpu=serve_gpu, serve_vram=serve_vram,
        serve_context=serve_context, serve_concurrency=serve_concurrency, given=passed,
    )
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


def train_context(*, stack: str, knobs: dict[str, Any], grad_ckpt: bool | None, seq_len: int, batch_size: int,
                  optimizer: str | None, dtype: str, attn: str, gpus: int, shard: str, cpu_offload: bool,
                  device: str) -> Any:
    """The TrainContext of a stack with the user's knob overrides (None: the stack's default)."""
    from peftplan.planner.context import TrainContext
    from peftplan.planner.stacks import KNOB_NAMES, get_stack, resolve_knobs

    overrides = dict(knobs)
    if grad_ckpt is not None and overrides.get("checkpointing") is None:
        default = get_stack(stack).knobs.checkpointing
        overrides["checkpointing"] = "none" if not grad_ckpt else (default if default != "none" else "recompute")
    resolved = resolve_knobs(stack, **overrides)
    if cpu_offload and shard == "none":
        raise BadInputError("--cpu-offload needs --shard fsdp, zero2 or zero3")
    pinned = {name for name, value in overrides.items() if value is not None}
    if optimizer is not None:
        pinned.add("optimizer")
    values = {name: getattr(resolved, name) for name in KNOB_NAMES if name != "checkpointing"}
    return TrainContext(
        seq_len=seq_len, batch_size=batch_size, grad_checkpointing=resolved.checkpointing != "none",
        ckpt_offload=resolved.checkpointing == "offload",
        optimizer=_choice("optimizer", optimizer or get_stack(stack).optimizer, OPTIMIZERS),  # type: ignore[arg-type]
        dtype=dtype, attention=attn, gpus=gpus, shard=shard, device=device,  # type: ignore[arg-type]
        stack=stack, cpu_offload=cpu_offload, pinned=frozenset(pinned), **values)


def make_plan(
    *, model: str, vram: float | None = None, gpu: str | None = None, gpus: int = 1, shard: str = "none",
    cpu_offload: bool = False, stack: str = "hf", knobs: dict[str, Any] | None = None,
    lengths: Path | None = None, tokenizer: str | None = None, lengths_field: str | None = None,
    gpu_profiles: Path | None = None, seq_len: int = 2048, batch_size: int = 1, grad_ckpt: bool | None = None,
    optimizer: str | None = None, dtype: str = "bf16", attn: str = "sdpa", device: str = "cuda",
    methods: list[str] | None = None, rank: int | None = None, alpha: float | None = None,
    targets: str | None = None, virtual_tokens: int | None = None, quant: str | None = None,
    bottleneck: int | None = None, peft_config: Path | None = None, tasks: int = 1, switching: str = "merge",
    examples: int | None = None, train_tokens: int | None = None, epochs: float = 1.0, mfu: float = 0.40,
    fit_search: bool = True, trust_remote_code: bool = False, engine: str = "analytic",
    model_config: dict[str, Any] | None = None, method_config: dict[str, Any] | None = None,
    require_budget: bool = True, serve_gpu: str | None = None, serve_vram: float | None = None,
    serve_context: int | None = None, serve_concurrency: int | None = None, given: frozenset[str] | None = None,
) -> Any:
    """Resolve inputs and build the Plan (shared by the CLI and `peftplan.plan`).

    `model_config` plans that config dict under the name `model`; `method_config` gives the single
    method's settings as a dict; without `require_budget`, a missing budget means no memory limit.
    `given` names the parameters the user passed (the CLI's); without it, a parameter that is not None
    and not its default counts as given. The decision keeps what was given and searches the rest.
    """
    from peftplan.budgets import parse_budget
    from peftplan.commands._options import method_configs
    from peftplan.errors import BadInputError
    from peftplan.models import get_spec
    from peftplan.planner.plan import build_plan

    for name, value in (("--seq-len", seq_len), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInputError(f"{name} must be a positive integer, got {value!r}")
    from peftplan.planner.decide import check_contradictions, pins
    from peftplan.planner.serving import serving_needs

    adapter_knobs = {"rank": rank, "alpha": alpha, "targets": targets, "virtual_tokens": virtual_tokens,
                     "quant": quant, "bottleneck": bottleneck}
    check_contradictions(methods=methods, quant=quant, peft_config=peft_config is not None, method_knobs=adapter_knobs,
                         grad_ckpt=grad_ckpt, checkpointing=(knobs or {}).get("checkpointing"))
    if given is None:  # Python callers: what differs from the defaults
        given = frozenset([name for name, value in {**adapter_knobs, "methods": methods, "optimizer": optimizer,
                                                    "grad_ckpt": grad_ckpt, "lengths": lengths}.items()
                           if value is not None]
                          + [name for name, value, default in (("seq_len", seq_len, 2048), ("batch_size", batch_size, 1),
                                                               ("shard", shard, "none")) if value != default])
    elif lengths is not None:
        given = given | {"lengths"}
    notes: list[str] = []
    if vram is None and gpu is None and not require_budget:
        from peftplan.budgets import unlimited_budget

        budget = unlimited_budget(gpus, gpu_profiles)
        fit_search = False
        notes.append(f"no budget given: memory is not limited, fit is not judged; time and cost assume {budget.gpu.name}")
    else:
        budget = parse_budget(vram=vram, gpu=gpu, gpus=gpus, profiles_file=gpu_profiles)
    chosen = method_configs(methods, rank=rank, alpha=alpha, targets=targets, virtual_tokens=virtual_tokens,
                            quant=quant, bottleneck=bottleneck, peft_config=peft_config)
    if method_config is not None:
        if len(chosen) != 1:
            raise BadInputError("method_config needs exactly one method")
        chosen = [(chosen[0][0], chosen[0][0].make_config(**method_config))]
    if model_config is not None:
        from peftplan.models import spec_from_config

        spec = spec_from_config(dict(model_config), model_id=model, trust_remote_code=trust_remote_code)
    else:
        spec = get_spec(model, trust_remote_code=trust_remote_code)
    ctx = train_context(stack=stack, knobs=knobs or {}, grad_ckpt=grad_ckpt, seq_len=seq_len,
                        batch_size=batch_size, optimizer=optimizer, dtype=dtype, attn=attn, gpus=gpus,
                        shard=shard, cpu_offload=cpu_offload, device=device)

    per_example = None
    if lengths is not None:
        from dataclasses import replace

        from peftplan.planner.lengths import read_lengths

        stats = read_lengths(lengths, tokenizer=tokenizer, field=lengths_field)
        longest, mean = stats.capped(seq_len)
        examples = examples if examples is not None else stats.count
        per_example = mean
        if not ctx.packing:
            ctx = replace(ctx, seq_len=longest)
            notes.append(f"unpacked data: the peak is planned at the longest example ({longest:,} tokens"
                         f"{', capped at --seq-len' if stats.longest > seq_len else ''}), time at the mean "
                         f"({mean:,.0f} tokens)")
        else:
            notes.append(f"packed to {seq_len:,} tokens: every batch is full; time at the data's "
                         f"{examples:,} x {mean:,.0f} tokens")
    elif not ctx.packing and examples is not None:
        notes.append("unpacked data: --seq-len is a cap, planned as the length of every batch "
                     "(pass --lengths FILE to plan the longest batch and the mean, or --packing)")
    needs = serving_needs(vram_bytes=budget.vram_bytes, gpu=budget.gpu, gpus=budget.gpus, tasks=tasks,
                          switching=switching, serve_gpu=serve_gpu, serve_vram=serve_vram, context=serve_context,
                          concurrency=serve_concurrency, profiles_file=gpu_profiles)
    plan = build_plan(spec, chosen, ctx, budget, tasks=tasks, switching=switching, examples=examples,
                      train_tokens=train_tokens, epochs=epochs, mfu=mfu, fit_search=fit_search,
                      strict=bool(methods) or peft_config is not None, tokens_per_example=per_example,
                      serving=needs, pinned=pins(given, peft_config=peft_config is not None, knobs=ctx.pinned))
    plan.notes[:0] = notes
    if lengths is not None:
        plan.lengths = stats.to_dict()
    if engine != "analytic":
        from peftplan.planner.plan import attach_traces

        attach_traces(plan, chosen, engine)
    return plan
