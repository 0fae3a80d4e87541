"""The recommendation, and why, in plain sentences: each reason quotes the configuration's own numbers.

The search itself is `planner/decide.py`. The defaults it starts from are the literature's: LoRA with
r=16, alpha=32 on all linear layers and lr 1e-4; the rank matched to the data size; QLoRA's 4-bit base
close to 16-bit LoRA; merging for one task; docs/planner.md "Recommendation" cites each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peftplan.budgets.budget import UNLIMITED as _UNLIMITED  # no budget given

if TYPE_CHECKING:
    from peftplan.planner.decide import Candidate, Inputs

LITERATURE_LR = 1e-4
_GIB = 1 << 30


@dataclass(frozen=True)
class Recommendation:
    """The chosen configuration (None when nothing fits), why, the ranked candidates, how it serves,
    and when nothing fits the smallest verified changes that make something fit."""

    method: str | None
    config: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    serving: dict[str, Any] | None = None
    suggestions: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] | None = None  # the chosen micro-batch, accumulation, sequence, knobs
    context: Any = None  # the chosen TrainContext (not in the JSON): what --emit should write

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "config": self.config, "reasons": list(self.reasons),
                "training": self.training, "candidates": self.candidates, "serving": self.serving,
                "suggestions": self.suggestions}


def _of(budget: int) -> str:
    return "" if budget >= _UNLIMITED else f" of {_gib(budget)}"


def _gib(n: float) -> str:
    return f"{n / _GIB:.2f} GiB" if abs(n) < _GIB else f"{n / _GIB:.1f} GiB"


def describe(cand: Candidate) -> str:
    """`lora r=16, alpha=32 on all-linear` (the method and its searched knobs)."""
    return describe_config(cand.method.name, cand.cfg.model_dump(mode="json"))


def describe_config(method: str, config: dict[str, Any]) -> str:
    """`lora r=16, alpha=32 on all-linear (nf4 base)` from a method name and its config dict."""
    parts = []
    if "rank" in config:
        parts.append(f"r={config['rank']}")
    if "alpha" in config and "rank" in config:
        parts.append(f"alpha={config['alpha']:g}")
    if config.get("virtual_tokens") is not None:
        parts.append(f"{config['virtual_tokens']} virtual tokens")
    if config.get("bottleneck") is not None:
        parts.append(f"bottleneck {config['bottleneck']}")
    text = f"{method} " + ", ".join(parts) if parts else method
    if config.get("targets"):
        text += f" on {','.join(config['targets'])}"
    if config.get("quant", "none") != "none":
        text += f" ({config['quant']} base)"
    return text


def _training_reason(cand: Candidate) -> str:
    ctx, memory = cand.ctx, cand.memory
    gpus = f" x {ctx.gpus} GPUs" if ctx.gpus > 1 else ""
    shard = f", {ctx.shard}" if ctx.gpus > 1 and ctx.shard != "none" else (", ddp" if ctx.gpus > 1 else "")
    effective = ctx.batch_size * cand.accum * ctx.gpus
    head = f"{describe(cand)} trains in {_gib(memory.total)}{_of(cand.budget_bytes)} per GPU"
    if cand.budget_bytes >= _UNLIMITED:
        head += " (no budget given)"
    elif cand.fits_training:
        head += f" ({_gib(cand.budget_bytes - memory.total)} to spare)"
    else:
        head += " (does not fit)"
    return (f"{head}: micro-batch {ctx.batch_size} x {cand.accum} accumulation{gpus} = {effective} sequences of "
            f"{ctx.seq_len:,} tokens, checkpointing {ctx.checkpointing}, {ctx.optimizer}{shard}.")


def _quality_reasons(cand: Candidate) -> list[str]:
    facts = cand.quality.facts
    examples = facts.get("examples")
    out: list[str] = []
    if examples is not None and examples < 20:
        out.append(f"With {examples} examples LoRA is hard to train (below ~20 examples); consider prompting or "
                   "few-shot examples first.")
    if facts.get("full"):
        if examples is None or examples < 100_000:
            out.append("Full fine-tuning ranks just below LoRA on small or unknown data: LoRA learns less and "
                       "forgets less (Biderman et al., 2024).")
        else:
            out.append(f"Full fine-tuning on {examples:,} examples: it pays off on large data, where LoRA's "
                       "capacity becomes the limit (LoRA Without Regret, 2025).")
    roles = facts.get("roles")
    if roles == "all":
        out.append("Adapts every attention and MLP layer: all-linear LoRA beats attention-only "
                   "(LoRA Without Regret, 2025).")
    elif roles == "mlp":
        out.append("Adapts the MLP layers only, close to all-linear in LoRA Without Regret (2025).")
    elif roles in ("attn", "partial"):
        out.append("Adapts only part of each block: LoRA Without Regret (2025) finds attention-only LoRA behind "
                   "all-linear.")
    rank, wanted = facts.get("rank"), facts.get("target_rank")
    if rank is not None and wanted is not None:
        if examples is None:
            out.append(f"Rank {rank}: the literature's default r=16 with alpha=2r and lr {LITERATURE_LR:g} "
                       "(pass --examples to match the rank to the data).")
        elif rank >= wanted:
            out.append(f"Rank {rank} for {examples:,} examples: the rank matched to the data size "
                       "(LoRA Without Regret, 2025).")
        else:
            out.append(f"Rank {rank} is below the {wanted} that {examples:,} examples call for: the largest that "
                       "fits here.")
    if facts.get("quant"):
        out.append(f"{str(facts['quant']).upper()} base: QLoRA's quality is close to 16-bit LoRA "
                   "(Dettmers et al., 2023).")
    if facts.get("seq_halvings"):
        out.append(f"Trains at {cand.ctx.seq_len:,} tokens per sequence: nothing fits at the longer default "
                   "(pass --seq-len to fix the length).")
    return out


def _speed_reason(cand: Candidate) -> str:
    speed, ctx = cand.speed, cand.ctx
    where = f"{ctx.gpus} x {cand.gpu_name}" if ctx.gpus > 1 else cand.gpu_name
    head = f"{speed.tokens_per_second:,.0f} tokens/s on {where}"
    if speed.hours is not None and speed.train_tokens is not None:
        cost = f" and ${speed.cost_usd:,.2f}" if speed.cost_usd is not None else ""
        return f"{head}: {speed.hours:,.1f} h{cost} for {speed.train_tokens:,} training tokens."
    return (f"{head}: ${cand.usd_per_million:,.2f} per million training tokens (pass --examples or "
            "--train-tokens for time and cost).")


def serving_reason(cand: Candidate) -> str:
    sv = cand.serving
    tp = f", tensor parallel {sv.tensor_parallel}" if sv.tensor_parallel > 1 else ""
    how = {"merge": "Merged", "hot-swap": "Hot-swap", "multi-tenant": "Multi-tenant"}.get(sv.mode, sv.mode)
    head = (f"{how} serving of {sv.tasks} task{'s' if sv.tasks != 1 else ''}{tp}: {_gib(sv.gpu_bytes)}"
            f"{_of(sv.budget_bytes)} per GPU{'' if sv.fits else ' (does not fit)'} (weights "
            f"{_gib(sv.weights_bytes)}, adapters {sv.adapter_gpu_bytes / _GIB:.2f} GiB, KV cache "
            f"{_gib(sv.kv_cache_bytes)} for {sv.concurrency} x {sv.context:,} tokens)")
    if sv.mode == "merge" and sv.resident_adapters == 1 and sv.adapter_gpu_bytes == 0:
        return (head + f"; one merged copy per task, {_gib(sv.storage_bytes)} on disk for {sv.tasks}; a switch "
                f"loads a copy in {sv.swap_seconds:,.1f} s; no inference overhead.")
    if sv.max_loras is not None:
        waiting = sv.host_adapters - sv.resident_adapters
        host = f", the other {waiting} wait in host RAM ({_gib(sv.host_bytes)} for all)" if waiting > 0 else ""
        cold = (f"a cold adapter moves in {sv.swap_seconds * 1000:,.1f} ms" if waiting > 0
                else "every task keeps its slot")
        return (head + f"; vLLM keeps {sv.max_loras} adapter slot{'s' if sv.max_loras != 1 else ''} at rank "
                f"{sv.max_lora_rank}{host}; {cold}; unmerged "
                f"adapters add {sv.extra_flops_pct:.2g}% FLOPs per token; mixed-task batches: yes "
                f"({sv.mixed_how}).")
    if sv.mode == "multi-tenant":
        mixed = f"yes ({sv.mixed_how})" if sv.mixed_batches else f"no ({sv.mixed_how})"
        return (head + f"; all {sv.resident_adapters} adapters stay resident, +{sv.extra_flops_pct:.2g}% FLOPs per "
                f"token unmerged; mixed-task batches: {mixed}.")
    overhead = "no overhead once merged" if sv.extra_flops_pct == 0 else f"+{sv.extra_flops_pct:.2g}% FLOPs per token"
    return (head + f"; a switch takes {sv.swap_seconds * 1000:,.0f} ms; {_gib(sv.storage_bytes)} on disk for "
            f"{sv.tasks} task{'s' if sv.tasks != 1 else ''}; {overhead}.")


def candidate_reasons(cand: Candidate) -> list[str]:
    """Why this configuration, each sentence from its own numbers."""
    reasons = [_training_reason(cand), *_quality_reasons(cand), _speed_reason(cand), serving_reason(cand)]
    if cand.serving.flags:
        reasons.append("Serve with: vllm serve MODEL " + " ".join(cand.serving.flags))
    if cand.changes:
        said = ", ".join(f"{flag.removeprefix('--')} {old} -> {new}" for flag, old, new in cand.changes)
        reasons.append(f"Chosen by the search (no flag fixed them): {said}.")
    reasons += [f"Note: {note}." for note in cand.notes + cand.serving.notes]
    return reasons


def nothing_fits_reasons(inputs: Inputs, ranked: list[Candidate], suggestions: list[dict[str, Any]]) -> list[str]:
    """Nothing fits: the closest configuration (its own numbers) and the verified changes that fit."""
    reasons = [f"Nothing fits: no configuration trains within {_gib(inputs.budget.vram_bytes)} per GPU and serves "
               f"within {_gib(inputs.needs.vram_bytes)}."]
    if ranked:
        closest = ranked[0]
        what = "serving needs" if closest.fits_training else "training needs"
        amount = closest.serving.gpu_bytes if closest.fits_training else closest.memory.total
        reasons.append(f"The closest, {describe(closest)} at micro-batch {closest.ctx.batch_size} and "
                       f"{closest.ctx.seq_len:,} tokens, {what} {_gib(amount)}.")
    for entry in suggestions:
        verdict = "fits" if entry["fits"] else "still does not fit"
        reasons.append(f"Try {' '.join(entry['flags'])}: {entry['method']} then needs {_gib(entry['total'])} to "
                       f"train ({verdict}, re-planned).")
    return reasons
