"""The library API under the CLI: a `PlanRequest` in, a `Plan` out.

`peftplan plan`, `peftplan.plan(...)`, the harness (`methods: auto`) and Python users all build a
`PlanRequest` and call `plan(request)`; the CLI only parses and prints. The choices each field accepts
have one home each: the `Literal`s of `planner/context.py` and the stack table of `planner/stacks.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from pydantic import BaseModel, ConfigDict, Field

from peftplan.errors import BadInputError, UnknownNameError
from peftplan.planner.context import Attention, Device, Dtype, Optimizer, Shard

if TYPE_CHECKING:
    from peftplan.methods.base import Method, MethodConfig
    from peftplan.planner.plan import Plan

__all__ = ["PlanRequest", "choice", "method_configs", "plan", "train_context"]

OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
DTYPES: tuple[str, ...] = get_args(Dtype)
ATTENTION: tuple[str, ...] = get_args(Attention)
SHARDS: tuple[str, ...] = get_args(Shard)
DEVICES: tuple[str, ...] = get_args(Device)
SWITCHING: tuple[str, ...] = ("merge", "hot-swap", "multi-tenant")
ENGINES: tuple[str, ...] = ("analytic", "trace", "both")


def choice(kind: str, value: str, allowed: tuple[str, ...]) -> str:
    """`value` if it is one of `allowed`.

    Raises:
        UnknownNameError: with a did-you-mean and the allowed values.
    """
    if value not in allowed:
        raise UnknownNameError(kind, value, allowed, hint=f"Use one of: {', '.join(allowed)}.")
    return value


class PlanRequest(BaseModel):
    """Everything a plan is built from (the CLI's options; `knobs` are the stack knob overrides).

    `given` names the fields the user set (the CLI's); without it, a field that is not None and not its
    default counts as given. The decision keeps what was given and searches the rest.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    vram: float | None = None
    gpu: str | None = None
    gpus: int = 1
    shard: str = "none"
    cpu_offload: bool = False
    stack: str = "hf"
    knobs: dict[str, Any] = Field(default_factory=dict)
    lengths: Path | None = None
    tokenizer: str | None = None
    lengths_field: str | None = None
    gpu_profiles: Path | None = None
    seq_len: int = 2048
    batch_size: int = 1
    grad_ckpt: bool | None = None
    optimizer: str | None = None
    dtype: str = "bf16"
    attn: str = "sdpa"
    device: str = "cuda"
    methods: list[str] | None = None
    rank: int | None = None
    alpha: float | None = None
    targets: str | None = None
    virtual_tokens: int | None = None
    quant: str | None = None
    bottleneck: int | None = None
    peft_config: Path | None = None
    image_size: str | None = None  # "WxH"
    images_per_example: int | None = None
    image_tokens: int | None = None
    train_vision: bool = False
    tasks: int = 1
    switching: str = "merge"
    examples: int | None = None
    train_tokens: int | None = None
    epochs: float = 1.0
    mfu: float = 0.40
    fit_search: bool = True
    trust_remote_code: bool = False
    engine: str = "analytic"
    model_config_dict: dict[str, Any] | None = None  # plan this config dict under the name `model`
    method_config: dict[str, Any] | None = None
    require_budget: bool = True
    serve_gpu: str | None = None
    serve_vram: float | None = None
    serve_context: int | None = None
    serve_concurrency: int | None = None
    given: frozenset[str] | None = None


def plan(request: PlanRequest) -> Plan:
    """Resolve the request's inputs and build the Plan (see `PlanRequest`).

    Raises:
        BadInputError: an unknown model, method, target, stack, knob or GPU; a bad value (exit 2).
    """
    choice("shard mode", request.shard, SHARDS)
    choice("dtype", request.dtype, DTYPES)
    choice("attention kernel", request.attn, ATTENTION)
    choice("device", request.device, DEVICES)
    choice("switching mode", request.switching, SWITCHING)
    choice("engine", request.engine, ENGINES)
    return _plan(request)


def method_configs(
    methods: list[str] | None,
    *,
    rank: int | None = None,
    alpha: float | None = None,
    targets: str | None = None,
    virtual_tokens: int | None = None,
    quant: str | None = None,
    bottleneck: int | None = None,
    peft_config: Path | None = None,
) -> list[tuple[Method[Any], MethodConfig]]:
    """The methods to plan with their configs; a knob applies to every method whose config has it.

    Raises:
        BadInputError: unknown method, invalid knob value, or a bad peft config file.
    """
    from peftplan.methods import all_methods, get_method, split_names

    if peft_config is not None:
        from peftplan.methods.peft_config import read_peft_config

        if methods:
            raise BadInputError("--peft-config implies its own method; do not combine it with --method")
        return [read_peft_config(peft_config)]
    chosen = [get_method(name) for name in split_names(methods)] or all_methods()
    knobs: dict[str, Any] = {
        "rank": rank,
        "alpha": alpha,
        "targets": targets,
        "virtual_tokens": virtual_tokens,
        "quant": quant,
        "bottleneck": bottleneck,
    }
    given = {k: v for k, v in knobs.items() if v is not None}
    result = []
    for method in chosen:
        fields = method.config_cls.model_fields
        result.append((method, method.make_config(**{k: v for k, v in given.items() if k in fields})))
    if methods and given:
        unused = [k for k in given if not any(k in m.config_cls.model_fields for m, _ in result)]
        if unused:
            names = ", ".join(m.name for m, _ in result)
            raise BadInputError(f"--{unused[0].replace('_', '-')} does not apply to {names}")
    return result


def train_context(*, stack: str, knobs: dict[str, Any], grad_ckpt: bool | None, seq_len: int, batch_size: int,
                  optimizer: str | None, dtype: str, attn: str, gpus: int, shard: str, cpu_offload: bool,
                  device: str) -> Any:
    """The TrainContext of a stack with the user's knob overrides (None: the stack's default)."""
    from peftplan.planner.context import DEEPSPEED_KNOBS, DEEPSPEED_SHARDS, TrainContext, deepspeed_overrides
    from peftplan.planner.optimizers import FUSED_KERNEL
    from peftplan.planner.stacks import KNOB_NAMES, get_stack, resolve_knobs

    overrides = dict(knobs)
    if grad_ckpt is not None and overrides.get("checkpointing") is None:
        default = get_stack(stack).knobs.checkpointing
        overrides["checkpointing"] = "none" if not grad_ckpt else (default if default != "none" else "recompute")
    resolved = resolve_knobs(stack, **overrides)
    if cpu_offload and shard == "none":
        raise BadInputError("--cpu-offload needs --shard fsdp, zero2 or zero3")
    pinned = {name for name, value in overrides.items() if value is not None}
    if shard in DEEPSPEED_SHARDS:
        for name, engine in DEEPSPEED_KNOBS.items():
            if name in pinned and deepspeed_overrides(name, overrides[name]):
                raise BadInputError(f"--{name.replace('_', '-')} {overrides[name]} does not apply under --shard {shard}: "
                                    f"DeepSpeed's engine casts the model and its adapters to --dtype and runs "
                                    f"without autocast ({name} {engine})")
    if optimizer is not None:
        pinned.add("optimizer")
        if overrides.get("optimizer_fused") and optimizer not in FUSED_KERNEL:
            raise BadInputError(f"--optimizer-fused is torch AdamW's fused kernel ({', '.join(FUSED_KERNEL)}); "
                                f"--optimizer {optimizer} has none")
    values = {name: getattr(resolved, name) for name in KNOB_NAMES if name != "checkpointing"}
    return TrainContext(
        seq_len=seq_len, batch_size=batch_size, grad_checkpointing=resolved.checkpointing != "none",
        ckpt_offload=resolved.checkpointing == "offload",
        optimizer=choice("optimizer", optimizer or get_stack(stack).optimizer, OPTIMIZERS),  # type: ignore[arg-type]
        dtype=dtype, attention=attn, gpus=gpus, shard=shard, device=device,  # type: ignore[arg-type]
        stack=stack, cpu_offload=cpu_offload, pinned=frozenset(pinned), **values)


def _plan(r: PlanRequest) -> Plan:
    """Resolve the request's inputs and build the Plan.

    `model_config_dict` plans that config dict under the name `model`; `method_config` gives the single
    method's settings as a dict; without `require_budget`, a missing budget means no memory limit.
    `given` names the parameters the user passed (the CLI's); without it, a parameter that is not None
    and not its default counts as given. The decision keeps what was given and searches the rest.
    """
    from peftplan.budgets import parse_budget
    from peftplan.errors import BadInputError
    from peftplan.models import get_spec
    from peftplan.planner.plan import build_plan

    examples, fit_search, given = r.examples, r.fit_search, r.given
    for name, value in (("--seq-len", r.seq_len), ("--batch-size", r.batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInputError(f"{name} must be a positive integer, got {value!r}")
    from peftplan.planner.decide import check_contradictions, pins
    from peftplan.planner.serving import serving_needs

    adapter_knobs = {"rank": r.rank, "alpha": r.alpha, "targets": r.targets, "virtual_tokens": r.virtual_tokens,
                     "quant": r.quant, "bottleneck": r.bottleneck}
    check_contradictions(methods=r.methods, quant=r.quant, peft_config=r.peft_config is not None, method_knobs=adapter_knobs,
                         grad_ckpt=r.grad_ckpt, checkpointing=(r.knobs or {}).get("checkpointing"))
    if given is None:  # Python callers: what differs from the defaults
        given = frozenset([name for name, value in {**adapter_knobs, "methods": r.methods, "optimizer": r.optimizer,
                                                    "grad_ckpt": r.grad_ckpt, "lengths": r.lengths}.items()
                           if value is not None]
                          + [name for name, value, default in (("seq_len", r.seq_len, 2048), ("batch_size", r.batch_size, 1),
                                                               ("shard", r.shard, "none")) if value != default])
    elif r.lengths is not None:
        given = given | {"lengths"}
    notes: list[str] = []
    if r.vram is None and r.gpu is None and not r.require_budget:
        from peftplan.budgets import unlimited_budget

        budget = unlimited_budget(r.gpus, r.gpu_profiles)
        fit_search = False
        notes.append(f"no budget given: memory is not limited, fit is not judged; time and cost assume {budget.gpu.name}")
    else:
        budget = parse_budget(vram=r.vram, gpu=r.gpu, gpus=r.gpus, profiles_file=r.gpu_profiles)
    chosen = method_configs(r.methods, rank=r.rank, alpha=r.alpha, targets=r.targets, virtual_tokens=r.virtual_tokens,
                            quant=r.quant, bottleneck=r.bottleneck, peft_config=r.peft_config)
    if r.method_config is not None:
        if len(chosen) != 1:
            raise BadInputError("method_config needs exactly one method")
        chosen = [(chosen[0][0], chosen[0][0].make_config(**r.method_config))]
    if r.model_config_dict is not None:
        from peftplan.models import spec_from_config

        spec = spec_from_config(dict(r.model_config_dict), model_id=r.model, trust_remote_code=r.trust_remote_code)
    else:
        spec = get_spec(r.model, trust_remote_code=r.trust_remote_code)
    ctx = train_context(stack=r.stack, knobs=r.knobs or {}, grad_ckpt=r.grad_ckpt, seq_len=r.seq_len,
                        batch_size=r.batch_size, optimizer=r.optimizer, dtype=r.dtype, attn=r.attn, gpus=r.gpus,
                        shard=r.shard, cpu_offload=r.cpu_offload, device=r.device)
    from peftplan.planner.vision import image_context

    spec, ctx, image_notes = image_context(spec, ctx, image_size=r.image_size, images=r.images_per_example,
                                           tokens=r.image_tokens, train_vision=r.train_vision)
    notes += image_notes

    per_example = None
    if r.lengths is not None:
        from dataclasses import replace

        from peftplan.planner.lengths import read_lengths

        stats = read_lengths(r.lengths, tokenizer=r.tokenizer, field=r.lengths_field)
        longest, mean = stats.capped(r.seq_len)
        examples = examples if examples is not None else stats.count
        per_example = mean
        if not ctx.packing:
            ctx = replace(ctx, seq_len=longest)
            notes.append(f"unpacked data: the peak is planned at the longest example ({longest:,} tokens"
                         f"{', capped at --seq-len' if stats.longest > r.seq_len else ''}), time at the mean "
                         f"({mean:,.0f} tokens)")
        else:
            notes.append(f"packed to {r.seq_len:,} tokens: every batch is full; time at the data's "
                         f"{examples:,} x {mean:,.0f} tokens")
    elif not ctx.packing and examples is not None:
        notes.append("unpacked data: --seq-len is a cap, planned as the length of every batch "
                     "(pass --lengths FILE to plan the longest batch and the mean, or --packing)")
    needs = serving_needs(vram_bytes=budget.vram_bytes, gpu=budget.gpu, gpus=budget.gpus, tasks=r.tasks,
                          switching=r.switching, serve_gpu=r.serve_gpu, serve_vram=r.serve_vram, context=r.serve_context,
                          concurrency=r.serve_concurrency, profiles_file=r.gpu_profiles)
    plan = build_plan(spec, chosen, ctx, budget, tasks=r.tasks, switching=r.switching, examples=examples,
                      train_tokens=r.train_tokens, epochs=r.epochs, mfu=r.mfu, fit_search=fit_search,
                      strict=bool(r.methods) or r.peft_config is not None, tokens_per_example=per_example,
                      serving=needs, pinned=pins(given, peft_config=r.peft_config is not None, knobs=ctx.pinned))
    plan.notes[:0] = notes
    if r.lengths is not None:
        plan.lengths = stats.to_dict()
    if r.engine != "analytic":
        from peftplan.planner.plan import attach_traces

        attach_traces(plan, chosen, r.engine)
    return plan
