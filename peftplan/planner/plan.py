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
from peftplan.planner.context import MemoryBreakdown, TrainContext
from peftplan.planner.method_plan import MethodPlan, plan_method
from peftplan.planner.recommend import Recommendation
from peftplan.planner.serving import ServingNeeds
from peftplan.planner.throughput import DEFAULT_MFU

SWITCHING = ("merge", "hot-swap", "multi-tenant")
COMPONENTS = MemoryBreakdown.COMPONENTS


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
                **ctx.step_setting(),
                "shard": ctx.shard,
                "device": ctx.device,
                "tasks": self.tasks,
                "switching": self.switching,
                "train_tokens": self.train_tokens,
                "examples": self.examples,
                **ctx.knobs(),
                **(ctx.image_setting() if ctx.images else {}),
                **({"lengths": self.lengths} if self.lengths is not None else {}),
            },
            "engine": self.engine,
            "methods": [m.to_dict() for m in self.methods],
            "skipped": self.skipped,
            "recommendation": self.recommendation.to_dict(),
            "notes": self.notes,
        }


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
    if plan.ctx.shard != "none" and plan.budget.gpus > 1:
        plan.notes.append(f"the trace runs one unsharded GPU (no NCCL here); {plan.ctx.shard} sharding is analytic only")
    plan.engine = engine  # the recommendation stays the analytic search's (candidates are not traced)
