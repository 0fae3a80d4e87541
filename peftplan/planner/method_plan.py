"""One method's entry of the plan: its memory, fit limits, file size, speed and task switching.

`plan_method` prices one (method, config) under a training context; `trainable_context` applies the
stack's rules for the method first. Both the plan (`planner/plan.py`) and the decision search
(`planner/decide.py`) use them, so they live below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from peftplan.budgets.budget import Budget
from peftplan.methods.base import Method, MethodConfig
from peftplan.models.arch import arch_of
from peftplan.models.spec import ModelSpec
from peftplan.planner.context import MemoryBreakdown, TrainContext
from peftplan.planner.fit import (
    empty_fit_note,
    max_batch_size,
    max_rank,
    max_seq_len,
    rank_kind,
    sequence_limit,
)
from peftplan.planner.memory import price, step_model_from_terms
from peftplan.planner.serving import ServingNeeds, price_serving
from peftplan.planner.stacks import check_method, get_stack
from peftplan.planner.storage import adapter_file_bytes
from peftplan.planner.throughput import DEFAULT_MFU, inference_overhead, throughput, training_flops_per_token
from peftplan.replay.terms import MemoryTerms

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
    max_rank_knob: str | None = None  # what `max_rank` is the rank of (AdapterKind.rank_meaning)

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


def trainable_context(method: Method, cfg: MethodConfig, ctx: TrainContext) -> tuple[TrainContext, list[str]]:
    """The context the real stack trains this method in: its rules for quantized bases and full
    fine-tuning (planner/stacks.py), and what transformers 5.23 / peft 0.21 can run."""
    notes: list[str] = []
    stack = get_stack(ctx.stack)
    terms_quant = getattr(cfg, "quant", "none")
    rules = dict(stack.when_quantized) if terms_quant != "none" else {}
    if method.traits.whole_base:
        rules.update(stack.when_full)
    changes = {name: value for name, value in rules.items() if name not in ctx.pinned and getattr(ctx, name) != value}
    if changes:
        ctx = replace(ctx, **changes)
        said = ", ".join(f"{name} {value}" for name, value in changes.items())
        notes.append(f"{stack.name} trains this with {said} (its default here)")
    if not method.traits.checkpointing and ctx.grad_checkpointing:
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
    ctx, context_notes = trainable_context(method, cfg, ctx)
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
    flops = training_flops_per_token(spec, a, terms, ctx.seq_len, checkpointing=ctx.grad_checkpointing,
                                     batch=ctx.batch_size)
    speed = throughput(flops, tflops=budget.gpu.bf16_tflops, gpus=budget.gpus, mfu=mfu,
                       train_tokens=train_tokens, usd_per_hour=budget.gpu.usd_per_hour)
    needs = serving or ServingNeeds(vram_bytes=vram, gpu=budget.gpu, tasks=tasks, switching=switching,
                                    gpus=budget.gpus)
    served = price_serving(spec, method, terms, adapter_bytes=adapter_bytes, dtype=ctx.dtype, needs=needs,
                           train_seq=ctx.seq_len)
    trainable = method.trainable_params(spec, cfg)
    notes = empty + parameter_adapter_notes(terms) + list(terms.notes) + list(served.notes) + context_notes
    notes += unquantized_expert_notes(spec, terms, ctx)
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
        mergeable=method.traits.mergeable,
        inference_overhead=method.traits.inference_overhead,
        inference=inference_overhead(spec, a, terms, method.traits.inference_overhead, ctx.seq_len),
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
        max_rank_knob=_rank_meaning(terms) if "rank" in type(cfg).model_fields else None,
    )


def _rank_meaning(terms: MemoryTerms) -> str | None:
    kind = rank_kind(terms)
    return kind.rank_meaning if kind is not None else None


def parameter_adapter_notes(terms: MemoryTerms) -> list[str]:
    """What the method puts on bare parameters (fused MoE experts, routers): names, ranks, parameters."""
    if not terms.param_adapters:
        return []
    groups: dict[tuple[str, int], list[int]] = {}
    for name, adapter in terms.param_adapters.items():
        short = ".".join(name.split(".")[-2:])
        groups.setdefault((short, adapter.rank), []).append(adapter.delta_params)
    parts = [f"{short} at rank {rank} ({len(sizes)}x, {sum(sizes):,} params)" for (short, rank), sizes in groups.items()]
    return ["adapts parameters through peft's target_parameters: " + "; ".join(parts)]


def unquantized_expert_notes(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext) -> list[str]:
    """On a 4/8-bit base: the fused MoE experts bitsandbytes leaves unquantized, what they cost, and what helps.

    transformers 5.23 swaps only `nn.Linear` layers for bitsandbytes ones, so fused 3D experts (and
    routers) load in the load dtype; peft's `prepare_model_for_kbit_training` then casts every 16-bit
    parameter that is not 4-bit, experts included, to fp32 (docs/models.md).
    """
    moe = spec.moe
    if terms.quant == "none" or moe is None or not moe.fused:
        return []
    from peftplan.planner.activations import base_itemsize
    from peftplan.planner.context import DTYPE_BYTES

    numel = moe.routed_params
    size = base_itemsize(terms, ctx)
    dtype = DTYPE_BYTES[ctx.dtype]
    gib = numel * size / 2**30
    what = (f"{numel / 1e9:.1f}B fused expert parameters ({numel / spec.total_params:.0%} of the model) are not "
            f"quantized by bitsandbytes (they are 3D parameters, not Linear layers)")
    if size > dtype:
        return [f"{what}, and peft's k-bit preparation (--kbit-prep peft) upcasts them to fp32: {gib:.1f} GiB; "
                f"--kbit-prep none keeps them in {ctx.dtype} ({numel * dtype / 2**30:.1f} GiB, as LLaMA-Factory and "
                f"Unsloth do), or train 16-bit LoRA sharded over more GPUs (--gpus N --shard fsdp); fp32 experts may "
                "not run at all on a GPU: torch's grouped_mm, transformers' default for experts, takes bf16 only "
                "(not checked on a GPU)"]
    return [f"{what}: they stay in {ctx.dtype} ({gib:.1f} GiB), so the 4/8-bit base saves little; 16-bit LoRA "
            "sharded over more GPUs (--gpus N --shard fsdp) costs about the same per GPU"]
