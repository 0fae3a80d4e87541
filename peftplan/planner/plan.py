"""The Plan: for every method, what fits on the budget, what it costs, and which one to pick.

`build_plan` is what both `peftplan plan` and `peftplan.plan(...)` run. `Plan.to_dict` is the JSON
contract of DESIGN.md (fields may be added, none renamed).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from peftplan.budgets.budget import Budget
from peftplan.errors import BadInputError, NothingFitsError
from peftplan.methods.base import Method, MethodConfig
from peftplan.methods.targets import UnusableTargetError
from peftplan.models.spec import ModelSpec
from peftplan.planner.arch import arch_of
from peftplan.planner.context import MemoryBreakdown, TrainContext
from peftplan.planner.fit import (
    RANK_KNOBS,
    empty_fit_note,
    max_batch_size,
    max_rank,
    max_seq_len,
    rank_kind,
    sequence_limit,
)
from peftplan.planner.memory import price, step_model_from_terms
from peftplan.planner.recommend import Recommendation
from peftplan.planner.serving import ServingNeeds, price_serving
from peftplan.planner.stacks import check_method, get_stack
from peftplan.planner.storage import adapter_file_bytes
from peftplan.planner.throughput import DEFAULT_MFU, inference_overhead, throughput, training_flops_per_token

SWITCHING = ("merge", "hot-swap", "multi-tenant")
COMPONENTS = MemoryBreakdown.COMPONENTS


@dataclass
class MethodPlan:
    """One method's entry of the plan (see `to_dict` for the JSON form)."""

    method: str
    config: dict[str, Any]
    trainable_params: int
    total_params: int
    memory: MemoryBreakdown
    peak_moment: str
    fits: bool
    headroom_bytes: int
    max_batch_size: int
    max_seq_len: int
    max_rank: int | None
    adapter_bytes: int
    mergeable: bool
    inference_overhead: str
    inference: dict[str, Any]
    throughput: dict[str, Any]
    task_switching: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    trace: dict[str, Any] | None = None
    context: TrainContext | None = None  # the context this method was priced in (stack rules applied)
    serving: dict[str, Any] | None = None  # planner/serving.py's ServingPlan for the plan's serving needs
    max_rank_knob: str | None = None  # what `max_rank` is the rank of (fit.RANK_KNOBS)

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    def bytes_per_param(self) -> dict[str, float]:
        """Each memory component per model parameter."""
        n = max(self.total_params, 1)
        return {name: round(getattr(self.memory, name) / n, 4) for name in COMPONENTS}

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "method": self.method,
            "config": self.config,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "trainable_pct": round(self.trainable_pct, 6),
            "memory": self.memory.to_dict(),
            "predicts": "peak_allocated",
            "peak_moment": self.peak_moment,
            "bytes_per_param": self.bytes_per_param(),
            "fits": self.fits,
            "headroom_bytes": self.headroom_bytes,
            "max_batch_size": self.max_batch_size,
            "max_seq_len": self.max_seq_len,
            "max_rank": self.max_rank,
            "max_rank_knob": self.max_rank_knob,
            "adapter_bytes": self.adapter_bytes,
            "mergeable": self.mergeable,
            "inference_overhead": self.inference_overhead,
            "inference": self.inference,
            "throughput": self.throughput,
            "task_switching": self.task_switching,
            "serving": self.serving,
            "notes": self.notes,
        }
        if self.trace is not None:
            data["trace"] = self.trace
        return data


@dataclass
class Plan:
    """The model, budget and training context; one entry per method; a recommendation."""

    spec: ModelSpec
    budget: Budget
    ctx: TrainContext
    methods: list[MethodPlan]
    recommendation: Recommendation
    skipped: list[dict[str, str]] = field(default_factory=list)
    tasks: int = 1
    switching: str = "merge"
    train_tokens: int | None = None
    notes: list[str] = field(default_factory=list)
    examples: int | None = None
    engine: str = "analytic"
    lengths: dict[str, Any] | None = None  # the --lengths distribution (count, longest, mean, p99)

    @property
    def any_fits(self) -> bool:
        return any(m.fits for m in self.methods)

    def method(self, name: str) -> MethodPlan:
        for entry in self.methods:
            if entry.method == name:
                return entry
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        ctx = self.ctx
        gpu = self.budget.gpu
        return {
            "model": {"id": self.spec.model_id, "architecture": self.spec.architecture, "total_params": self.spec.total_params},
            "budget": {
                "vram_bytes": self.budget.vram_bytes,
                "gpus": self.budget.gpus,
                "gpu": gpu.key if self.budget.compute_from_profile else None,
                "compute_profile": gpu.key,
                "bf16_tflops": gpu.bf16_tflops,
                "usd_per_hour": gpu.usd_per_hour,
            },
            "training": {
                "seq_len": ctx.seq_len,
                "batch_size": ctx.batch_size,
                "grad_checkpointing": ctx.grad_checkpointing,
                "optimizer": ctx.optimizer,
                "dtype": ctx.dtype,
                "attention": ctx.attention,
                "shard": ctx.shard,
                "device": ctx.device,
                "tasks": self.tasks,
                "switching": self.switching,
                "train_tokens": self.train_tokens,
                "examples": self.examples,
                **ctx.knobs(),
                **({"lengths": self.lengths} if self.lengths is not None else {}),
            },
            "engine": self.engine,
            "methods": [m.to_dict() for m in self.methods],
            "skipped": self.skipped,
            "recommendation": self.recommendation.to_dict(),
            "notes": self.notes,
        }


def _trainable_context(method: Method, cfg: MethodConfig, ctx: TrainContext) -> tuple[TrainContext, list[str]]:
    """The context the real stack trains this method in: its rules for quantized bases and full
    fine-tuning (planner/stacks.py), and what transformers 5.23 / peft 0.21 can run."""
    notes: list[str] = []
    stack = get_stack(ctx.stack)
    terms_quant = getattr(cfg, "quant", "none")
    rules = dict(stack.when_quantized) if terms_quant != "none" else {}
    if method.trains_whole_base:
        rules.update(stack.when_full)
    changes = {name: value for name, value in rules.items() if name not in ctx.pinned and getattr(ctx, name) != value}
    if changes:
        ctx = replace(ctx, **changes)
        said = ", ".join(f"{name} {value}" for name, value in changes.items())
        notes.append(f"{stack.name} trains this with {said} (its default here)")
    if not method.supports_checkpointing and ctx.grad_checkpointing:
        notes.append("planned without gradient checkpointing: transformers drops prefix tuning's key/values in "
                     "checkpointed blocks and the step fails")
        ctx = replace(ctx, grad_checkpointing=False, ckpt_offload=False)
    return ctx, notes


def plan_method(
    spec: ModelSpec, method: Method, cfg: MethodConfig, ctx: TrainContext, budget: Budget, *,
    tasks: int = 1, switching: str = "merge", train_tokens: int | None = None, mfu: float = DEFAULT_MFU,
    fit_search: bool = True, serving: ServingNeeds | None = None,
) -> MethodPlan:
    """Plan one method (its memory, fit limits, file size, speed, serving and task switching).

    `serving` gives the serving needs (default: `tasks` by `switching` on the training GPU).

    Raises:
        BadInputError: the method cannot apply to this model or setting.
    """
    method.check(spec, cfg)
    check_method(ctx.stack, method.name)
    ctx, context_notes = _trainable_context(method, cfg, ctx)
    terms = method.memory_terms(spec, cfg)
    model = step_model_from_terms(spec, terms, ctx)
    memory, moment = price(model, ctx.batch_size, ctx.seq_len)
    vram = budget.vram_bytes
    limit = max(1, sequence_limit(spec) - terms.extra_tokens - terms.prefix_tokens)
    batch_max = seq_max = 0
    rank_max: int | None = None
    empty: list[str] = []
    if fit_search:
        batch_max = max_batch_size(model, vram, ctx.seq_len)
        seq_max = max_seq_len(model, vram, ctx.batch_size, limit)
        rank_max = max_rank(spec, method, cfg, ctx, vram)
        if batch_max == 0:
            empty.append(empty_fit_note(model, vram, ctx.seq_len, max_seq_len(model, vram, 1, limit)))
    adapter_bytes = adapter_file_bytes(spec, method, terms, dtype=ctx.dtype)
    a = arch_of(spec)
    flops = training_flops_per_token(spec, a, terms, ctx.seq_len, checkpointing=ctx.grad_checkpointing)
    speed = throughput(flops, tflops=budget.gpu.bf16_tflops, gpus=budget.gpus, mfu=mfu,
                       train_tokens=train_tokens, usd_per_hour=budget.gpu.usd_per_hour)
    needs = serving or ServingNeeds(vram_bytes=vram, gpu=budget.gpu, tasks=tasks, switching=switching,
                                    gpus=budget.gpus)
    served = price_serving(spec, method, terms, adapter_bytes=adapter_bytes, dtype=ctx.dtype, needs=needs,
                           train_seq=ctx.seq_len)
    trainable = spec.total_params if terms.trainable_base == "all" else method.trainable_params(spec, cfg)
    notes = empty + list(served.notes) + context_notes
    if terms.quant != "none":
        notes.append("bitsandbytes dequantizes each weight per matmul; the FLOP-based speed does not include it")
    return MethodPlan(
        method=method.name,
        config=cfg.model_dump(mode="json"),
        trainable_params=trainable,
        total_params=spec.total_params,
        memory=memory,
        peak_moment=moment,
        fits=memory.total <= vram,
        headroom_bytes=vram - memory.total,
        max_batch_size=batch_max,
        max_seq_len=seq_max,
        max_rank=rank_max,
        adapter_bytes=adapter_bytes,
        mergeable=method.mergeable,
        inference_overhead=method.inference_overhead,
        inference=inference_overhead(spec, a, terms, method.inference_overhead, ctx.seq_len),
        throughput={
            "flops_per_token": flops,
            "tokens_per_second": round(speed.tokens_per_second, 1),
            "mfu": mfu,
            "hours": None if speed.hours is None else round(speed.hours, 4),
            "cost_usd": None if speed.cost_usd is None else round(speed.cost_usd, 2),
        },
        task_switching={
            "tasks": served.tasks,
            "mode": served.mode,
            "storage_bytes": served.storage_bytes,
            "full_copies_bytes": served.full_copies_bytes,
            "swap_seconds": round(served.swap_seconds, 4),
            "merge_seconds": round(served.merge_seconds, 4),
            "serving_bytes": served.weights_bytes + served.adapter_gpu_bytes,
        },
        notes=notes,
        context=ctx,
        serving=served.to_dict(),
        max_rank_knob=RANK_KNOBS.get(rank_kind(terms) or "") if "rank" in type(cfg).model_fields else None,
    )


def build_plan(
    spec: ModelSpec,
    chosen: list[tuple[Method, MethodConfig]],
    ctx: TrainContext,
    budget: Budget,
    *,
    tasks: int = 1,
    switching: str = "merge",
    examples: int | None = None,
    train_tokens: int | None = None,
    epochs: float = 1.0,
    mfu: float = DEFAULT_MFU,
    fit_search: bool = True,
    strict: bool = False,
    tokens_per_example: float | None = None,
    serving: ServingNeeds | None = None,
    pinned: frozenset[str] = frozenset(),
) -> Plan:
    """Plan every method in `chosen`; methods that cannot apply are listed as skipped. The
    recommendation searches whole configurations (planner/decide.py): `pinned` names what the user
    fixed (flag names without dashes, e.g. "rank", "seq_len"); `serving` the serving needs.

    Raises:
        BadInputError: bad knobs, a target no method can use on this model (e.g. a typo), or (with
            `strict`, or when it is the only method) a method that cannot apply.
    """
    if switching not in SWITCHING:
        from peftplan.errors import UnknownNameError

        raise UnknownNameError("switching mode", switching, SWITCHING)
    if tasks < 1:
        raise BadInputError(f"--tasks must be at least 1, got {tasks}")
    if examples is not None and examples < 1:
        raise BadInputError(f"--examples must be at least 1, got {examples}")
    if train_tokens is not None and train_tokens < 1:
        raise BadInputError(f"--train-tokens must be at least 1, got {train_tokens}")
    if not 0 < mfu <= 1:
        raise BadInputError(f"--mfu must be in (0, 1], got {mfu}")
    ctx = replace(ctx, gpus=budget.gpus)
    notes: list[str] = []
    tokens = train_tokens
    if tokens is None and examples is not None:
        per_example = tokens_per_example if tokens_per_example is not None else ctx.seq_len
        tokens = int(examples * per_example * epochs)
        how = ("the mean example length" if tokens_per_example is not None
               else "each example taken as a full sequence")
        notes.append(f"train tokens = {examples} examples x {per_example:,.0f} tokens x {epochs:g} epoch(s) ({how})")
    from peftplan.budgets.budget import UNLIMITED

    if not budget.compute_from_profile and budget.vram_bytes < UNLIMITED:
        notes.append(f"time and cost assume {budget.gpu.name} compute (the nearest profile with this much memory); "
                     "pass --gpu for another")
    needs = serving or ServingNeeds(vram_bytes=budget.vram_bytes, gpu=budget.gpu, tasks=tasks, switching=switching,
                                    gpus=budget.gpus)
    entries: list[MethodPlan] = []
    skipped: list[dict[str, str]] = []
    for method, cfg in chosen:
        try:
            entries.append(plan_method(spec, method, cfg, ctx, budget, tasks=tasks, switching=switching,
                                       train_tokens=tokens, mfu=mfu, fit_search=fit_search, serving=needs))
        except BadInputError as exc:
            # A target no method can use (e.g. a typo) is bad input for all, never a skip of each.
            if strict or len(chosen) == 1 or isinstance(exc, UnusableTargetError):
                raise
            skipped.append({"method": method.name, "reason": str(exc)})
    from peftplan.planner.decide import Inputs, decide

    planned = {e.method for e in entries}
    rec = decide(Inputs(spec, [(m, c) for m, c in chosen if m.name in planned], ctx, budget, needs, pinned,
                        examples=examples, train_tokens=train_tokens, epochs=epochs,
                        tokens_per_example=tokens_per_example, mfu=mfu))
    return Plan(spec, budget, ctx, entries, rec, skipped, tasks, switching, tokens, notes, examples)


def check_fits(plan: Plan) -> None:
    """Raise NothingFitsError (exit 3) when no configuration fits: the search found none that trains
    within the budget and serves within the serving GPU."""
    if plan.recommendation.method is not None:
        return
    if not plan.any_fits:
        raise NothingFitsError(f"no method fits {plan.budget.vram_gib:.1f} GiB per GPU for {plan.spec.model_id}")
    raise NothingFitsError(f"no configuration of {plan.spec.model_id} both trains in {plan.budget.vram_gib:.1f} GiB "
                           "per GPU and fits the serving GPU (see the suggestions)")


ENGINES = ("analytic", "trace", "both")


def attach_traces(plan: Plan, chosen: list[tuple[Method, MethodConfig]], engine: str) -> None:
    """Run the traced engine for every planned method (`--engine trace|both`).

    Each entry gains `trace`: the traced `memory` breakdown, `peak_phase`, and `error`, the relative
    difference of the analytic `peak_allocated` from the traced one (both predict
    `torch.cuda.max_memory_allocated`). With `trace`, the entry's memory and fit come from the trace
    (plus the analytic allocator reserve and CUDA context); the fit limits stay analytic.
    """
    from peftplan.errors import PeftplanError
    from peftplan.planner.memory import CUDA_CONTEXT, reserved_for
    from peftplan.planner.trace import trace_memory

    configs = {method.name: (method, cfg) for method, cfg in chosen}
    for entry in plan.methods:
        method, cfg = configs[entry.method]
        try:
            result = trace_memory(plan.spec, method, cfg, plan.ctx)
        except PeftplanError as exc:
            entry.trace = {"memory": None, "peak_phase": None, "error": None, "failed": str(exc)}
            entry.notes.append(f"trace failed: {exc}")
            continue
        traced = result.memory.peak_allocated
        data = result.to_dict()
        entry.trace = {
            "memory": data["memory"],
            "peak_phase": data["peak_phase"],
            "peak_segment": data["peak_segment"],
            "error": round((entry.memory.peak_allocated - traced) / traced, 5) if traced else None,
            "seconds": data["seconds"],
        }
        if engine == "trace":
            reserved = reserved_for(traced)
            entry.memory = replace(result.memory, overhead=CUDA_CONTEXT, reserved=reserved,
                                   total=reserved + CUDA_CONTEXT, extra={})
            entry.peak_moment = data["peak_phase"]
            entry.fits = entry.memory.total <= plan.budget.vram_bytes
            entry.headroom_bytes = plan.budget.vram_bytes - entry.memory.total
    if plan.ctx.shard == "fsdp" and plan.budget.gpus > 1:
        plan.notes.append("the trace runs one unsharded GPU; FSDP sharding is analytic only")
    plan.engine = engine  # the recommendation stays the analytic search's (candidates are not traced)
