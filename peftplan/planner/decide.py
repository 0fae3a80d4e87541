"""The decision: search complete configurations under the training budget and the serving needs.

A configuration is a method and its settings (rank, alpha, target preset, base quantization), the
micro-batch and gradient accumulation, the sequence length (only when the user left it free),
checkpointing, the optimizer, and sharding over the budget's GPUs. Every flag the user passed is a
pin and stays as given; the stack's other knobs are the user's training stack and stay too.

Hard constraints: the training step's total fits the budget, and serving (planner/serving.py) fits
the serving GPU. Configurations rank by:
1. a quality prior from the literature (`quality`; cited in docs/planner.md "Recommendation");
2. then training cost and time;
3. then serving cost.

The search is cheap because memory is a polynomial in batch and sequence: each (method, settings) step
is built once (`StepModel`) and priced at many shapes, and checkpointing, optimizer and sharding,
which change no activation, re-price the same model (`recontext`). Settings are tried best prior
first, and a method stops at the first prior level that fits. The result is the best configuration of
each method; the top three are the candidates, the first is the recommendation. When nothing fits,
the same search runs with one pin (or one budget input) relaxed at a time, and each change that makes
it fit is re-planned and verified (`suggestions`).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from peftplan.errors import BadInputError
from peftplan.planner.context import (
    DEEPSPEED_KNOBS,
    DEEPSPEED_SHARDS,
    MemoryBreakdown,
    TrainContext,
    deepspeed_overrides,
)
from peftplan.planner.fit import rank_cap, rank_kind
from peftplan.planner.memory import (
    GIB,
    StepModel,
    context_optimizer_bytes,
    price,
    sharded_units,
    step_model_from_terms,
    trainable_tensors,
)
from peftplan.planner.recommend import LITERATURE_LR, Recommendation, candidate_reasons, nothing_fits_reasons
from peftplan.planner.serving import ServingNeeds, ServingPlan, price_serving
from peftplan.planner.storage import adapter_file_bytes
from peftplan.planner.throughput import DEFAULT_MFU, Throughput, throughput, training_flops_per_token

if TYPE_CHECKING:
    from peftplan.budgets.budget import Budget
    from peftplan.methods.base import Method, MethodConfig
    from peftplan.models.spec import ModelSpec
    from peftplan.planner.weights import UnitBytes
    from peftplan.replay.terms import MemoryTerms

TOP = 3
EFFECTIVE_BATCH = 16  # sequences per optimizer step (micro-batch x accumulation x GPUs): QLoRA's recipe
MIN_SEQ = 256  # the shortest sequence a free --seq-len is shortened to
TARGET_PRESETS = ("all-linear", "mlp", "attn")
SEARCH_OPTIMIZERS = ("adamw8bit", "paged-adamw8bit")  # 8-bit AdamW matches 32-bit (Dettmers et al., 2022)
SHARDS = ("none", "fsdp", "zero2")

# The quality prior (docs/planner.md "Recommendation" cites each figure).
PRIOR_PROMPT, PRIOR_PROMPT_10B, PRIOR_PREFIX, PRIOR_BOTTLENECK, PRIOR_BITFIT = 0.8, 0.9, 0.85, 0.92, 0.8
PRIOR_QUANT = -0.01  # QLoRA matches 16-bit LoRA within noise (Dettmers et al., 2023)
PRIOR_MLP_ONLY, PRIOR_ATTN_ONLY, PRIOR_PARTIAL = -0.02, -0.10, -0.02  # LoRA Without Regret (2025)
PRIOR_RANK_HALVING = -0.03  # per halving below the rank the data needs (LoRA Without Regret)
PRIOR_SEQ_HALVING = -0.10  # per halving of a sequence the user did not fix: the data is truncated


def target_rank(examples: int | None) -> int:
    """The LoRA rank the data size calls for (docs/planner.md "Recommendation")."""
    if examples is None:
        return 16
    if examples <= 1000:
        return 4
    if examples <= 10_000:
        return 16
    if examples <= 100_000:
        return 32
    if examples <= 1_000_000:
        return 128
    return 256


def full_prior(examples: int | None) -> float:
    """Full fine-tuning's prior: below LoRA on small data, equal on medium, above on large data."""
    if examples is None or examples < 100_000:
        return 0.97  # LoRA learns less and forgets less (Biderman et al., 2024)
    return 1.0 if examples < 1_000_000 else 1.03  # LoRA matches until its capacity is the limit


@dataclass(frozen=True)
class Quality:
    score: float
    facts: dict[str, Any]  # what the reasons say about this configuration's prior


def quality(spec: ModelSpec, terms: MemoryTerms, cfg: MethodConfig, *, examples: int | None,
            seq_halvings: int = 0) -> Quality:
    """The literature's prior for one configuration (higher is better; LoRA r* on all-linear is 1.0)."""
    facts: dict[str, Any] = {"examples": examples}
    if terms.trainable_base == "all":
        score = full_prior(examples)
        facts["full"] = True
    elif terms.trainable_base == "biases":
        score = PRIOR_BITFIT
    elif terms.extra_tokens:
        score = PRIOR_PROMPT_10B if spec.total_params >= 10**10 else PRIOR_PROMPT
    elif terms.prefix_tokens:
        score = PRIOR_PREFIX
    elif terms.bottleneck:
        score = PRIOR_BOTTLENECK
    else:
        kinds = {a.kind for a in terms.linear_adapters.values()}
        score = min((kind.prior for kind in kinds), default=0.9)
    if terms.linear_adapters:
        roles = _roles(spec, terms)
        facts["roles"] = roles
        if roles == "mlp":
            score += PRIOR_MLP_ONLY
        elif roles == "attn":
            score += PRIOR_ATTN_ONLY
        elif roles == "partial":
            score += PRIOR_PARTIAL
    if terms.quant != "none":
        score += PRIOR_QUANT
        facts["quant"] = terms.quant
    kind = rank_kind(terms)
    if kind is not None and kind.low_rank:
        rank = int(getattr(cfg, "rank", 0))
        wanted = target_rank(examples)
        facts.update(rank=rank, target_rank=wanted)
        if rank < wanted:
            score += PRIOR_RANK_HALVING * math.log2(wanted / rank)
    if seq_halvings:
        score += PRIOR_SEQ_HALVING * seq_halvings
        facts["seq_halvings"] = seq_halvings
    return Quality(round(score, 4), facts)


def _roles(spec: ModelSpec, terms: MemoryTerms) -> str:
    """all (attention and MLP Linears of every block), mlp, attn, or partial."""
    linears = [lin for lin in spec.linears if lin.in_block and lin.role in ("attn", "mlp")]
    chosen = set(terms.linear_adapters)
    attn = {lin.name for lin in linears if lin.role == "attn"}
    mlp = {lin.name for lin in linears if lin.role == "mlp"}
    if attn <= chosen and mlp <= chosen:
        return "all"
    if mlp and mlp <= chosen and not (attn & chosen):
        return "mlp"
    if attn and attn <= chosen and not (mlp & chosen):
        return "attn"
    if not (mlp & chosen):
        return "attn"  # a subset of attention (e.g. q_proj, v_proj): attention-only
    return "partial"


# --- the search ------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One complete configuration, priced."""

    method: Method
    cfg: MethodConfig
    terms: MemoryTerms
    ctx: TrainContext  # batch_size is the micro-batch, seq_len the trained length
    accum: int
    memory: MemoryBreakdown
    moment: str
    budget_bytes: int
    serving: ServingPlan
    quality: Quality
    speed: Throughput
    gpu_name: str
    usd_per_million: float
    changes: list[tuple[str, str, str]]  # (flag, from, to) against the user's plan
    order: int  # the method's place in the plan (ties keep the user's order)
    notes: list[str] = field(default_factory=list)

    @property
    def fits_training(self) -> bool:
        return self.memory.total <= self.budget_bytes

    @property
    def fits(self) -> bool:
        return self.fits_training and self.serving.fits

    @property
    def overshoot(self) -> float:
        """How far from fitting: the larger of training total / budget and serving / serving budget."""
        return max(self.memory.total / self.budget_bytes, self.serving.gpu_bytes / self.serving.budget_bytes)

    def rank_key(self) -> tuple[Any, ...]:
        """Fit first, then the prior, training cost (10% buckets) and time, serving cost, fewer changes;
        configurations that do not fit rank by how close they come."""
        if not self.fits:
            return (True, round(self.overshoot, 4), -self.quality.score, self.order)
        cost = round(math.log(max(self.usd_per_million, 1e-12)) / math.log(1.1))
        serving = (round(self.serving.gpu_bytes / (GIB / 4)), self.serving.extra_flops_pct, self.serving.swap_seconds)
        return (False, -self.quality.score, cost, serving, -self.speed.tokens_per_second, len(self.changes), self.order)

    def knob_changes(self) -> int:
        """How many of the stack's knobs (checkpointing, optimizer, sharding) the search changed."""
        return sum(1 for flag, _, _ in self.changes if flag in ("--checkpointing", "--optimizer", "--shard"))

    def config_dict(self) -> dict[str, Any]:
        config = self.cfg.model_dump(mode="json")
        if "rank" in config:
            config.setdefault("lr", LITERATURE_LR)
        return config

    def training_dict(self) -> dict[str, Any]:
        ctx = self.ctx
        return {"seq_len": ctx.seq_len, "micro_batch": ctx.batch_size, "grad_accum": self.accum,
                "effective_batch": ctx.batch_size * self.accum * ctx.gpus, "checkpointing": ctx.checkpointing,
                "optimizer": ctx.optimizer, "gpus": ctx.gpus, "shard": ctx.shard}

    def flags(self) -> list[str]:
        """`peftplan plan` flags that pin this configuration."""
        out = ["--method", self.method.name]
        for name, value in self.cfg.model_dump(mode="json").items():
            if name in ("rank", "quant", "virtual_tokens", "bottleneck"):
                out += [f"--{name.replace('_', '-')}", str(value)]
            elif name == "alpha":
                out += ["--alpha", f"{value:g}"]
            elif name == "targets":
                out += ["--targets", ",".join(value)]
        t = self.training_dict()
        out += ["--seq-len", str(t["seq_len"]), "--batch-size", str(t["micro_batch"]),
                "--checkpointing", t["checkpointing"], "--optimizer", t["optimizer"]]
        if t["gpus"] > 1:
            out += ["--gpus", str(t["gpus"]), "--shard", t["shard"]]
        return out

    def to_dict(self) -> dict[str, Any]:
        speed = self.speed
        return {
            "method": self.method.name,
            "config": self.config_dict(),
            "training": self.training_dict(),
            "memory": self.memory.to_dict(),
            "peak_moment": self.moment,
            "fits": self.fits,
            "fits_training": self.fits_training,
            "headroom_bytes": self.budget_bytes - self.memory.total,
            "quality": self.quality.score,
            "throughput": {"tokens_per_second": round(speed.tokens_per_second, 1), "train_tokens": speed.train_tokens,
                           "hours": None if speed.hours is None else round(speed.hours, 4),
                           "cost_usd": None if speed.cost_usd is None else round(speed.cost_usd, 2),
                           "usd_per_million_tokens": round(self.usd_per_million, 4)},
            "serving": self.serving.to_dict(),
            "changes": [{"flag": flag, "from": old, "to": new} for flag, old, new in self.changes],
            "flags": self.flags(),
            "reasons": candidate_reasons(self),
        }


@dataclass
class Inputs:
    """What one search runs on (suggestions run it again with one thing changed)."""

    spec: ModelSpec
    chosen: list[tuple[Method, MethodConfig]]
    ctx: TrainContext  # the user's (seq_len and batch_size as given or defaulted)
    budget: Budget
    needs: ServingNeeds
    pinned: frozenset[str]
    examples: int | None = None
    train_tokens: int | None = None
    epochs: float = 1.0
    tokens_per_example: float | None = None
    mfu: float = DEFAULT_MFU
    min_seq: int = MIN_SEQ


def _cached_terms(cache: dict[tuple[str, str], MemoryTerms], spec: ModelSpec, method: Method,
                  cfg: MethodConfig) -> MemoryTerms:
    key = (method.name, cfg.model_dump_json())
    if key not in cache:
        cache[key] = method.memory_terms(spec, cfg)
    return cache[key]


class _Ladder:
    """A group's settings, the largest rank first; `ladder[i]` is (config, terms, prior). An entry's terms
    and prior are worked out when the search first reads it: bisection reads few of them (when nothing
    fits, only the smallest rank, for the closest miss). It shares the search's terms cache, not the
    search itself, so that no reference cycle keeps a finished search alive."""

    def __init__(self, terms: dict[tuple[str, str], MemoryTerms], spec: ModelSpec, method: Method,
                 configs: list[MethodConfig], examples: int | None) -> None:
        self._terms, self._spec, self._method, self._examples = terms, spec, method, examples
        self._configs = configs
        self._entries: list[tuple[MethodConfig, MemoryTerms, float] | None] = [None] * len(configs)

    def __len__(self) -> int:
        return len(self._configs)

    def __getitem__(self, index: int) -> tuple[MethodConfig, MemoryTerms, float]:
        entry = self._entries[index]
        if entry is None:
            cfg = self._configs[index]
            terms = _cached_terms(self._terms, self._spec, self._method, cfg)
            entry = self._entries[index] = (cfg, terms, quality(self._spec, terms, cfg, examples=self._examples).score)
        return entry


class Search:
    """Caches what does not change between searches of one plan (steps, terms, files, serving)."""

    def __init__(self) -> None:
        self._steps: dict[tuple[Any, ...], StepModel] = {}
        self._terms: dict[tuple[str, str], MemoryTerms] = {}
        self._optim: dict[tuple[int, str, bool, bool], Any] = {}
        self._units: dict[int, UnitBytes | None] = {}
        self._memo: dict[tuple[Any, ...], Any] = {}
        self._totals: dict[tuple[int, int, int], tuple[StepModel, int]] = {}

    # -- building blocks (cached) --

    def terms(self, spec: ModelSpec, method: Method, cfg: MethodConfig) -> MemoryTerms:
        return _cached_terms(self._terms, spec, method, cfg)

    def step(self, spec: ModelSpec, method: Method, cfg: MethodConfig, terms: MemoryTerms,
             ctx: TrainContext) -> StepModel:
        """The StepModel of (method, cfg) under `ctx`, built once per activation-relevant context."""
        master = ctx.optimizer == "adamw-fp32"
        neutral = replace(ctx, seq_len=1, batch_size=1, grad_checkpointing=False, ckpt_offload=False, gpus=1,
                          shard="none", cpu_offload=False, optimizer="adamw-fp32" if master else "adamw",
                          optimizer_in_bwd=False, optimizer_fused=False, offload_activations=False,
                          pinned=frozenset())
        key = (method.name, cfg.model_dump_json(), neutral)
        base = self._steps.get(key)
        if base is None:
            base = self._steps[key] = step_model_from_terms(spec, terms, neutral)
        return self.recontext(base, ctx)

    def recontext(self, model: StepModel, ctx: TrainContext) -> StepModel:
        """`model` priced under `ctx`, which differs only in knobs no activation depends on."""
        if ((ctx.optimizer == "adamw-fp32") != (model.ctx.optimizer == "adamw-fp32")
                or (ctx.precision, ctx.adapter_dtype) != (model.ctx.precision, model.ctx.adapter_dtype)):
            return step_model_from_terms(model.spec, model.terms, ctx)  # e.g. DeepSpeed's (TrainContext)
        key = (id(model), ctx.optimizer, ctx.optimizer_fused, ctx.deepspeed)
        if key not in self._optim:
            self._optim[key] = context_optimizer_bytes(trainable_tensors(model.spec, model.terms, ctx), ctx)
        units = model.units
        if units is None and ctx.gpus > 1 and ctx.shard != "none":  # built unsharded: the units under `ctx`
            # They depend on the model and the dtypes and k-bit preparation, which `ctx` shares with it.
            if id(model) not in self._units:
                self._units[id(model)] = sharded_units(model.spec, model.terms, ctx, model.weights.weights)
            units = self._units[id(model)]
        return replace(model, ctx=ctx, optimizer=self._optim[key], units=units)

    def total(self, model: StepModel, batch: int, seq: int) -> int:
        """`price(model, batch, seq)[0].total`, once per step model and shape: the searches of one plan
        (suggestions search again with a bigger GPU, say) price the same cached models again."""
        key = (id(model), batch, seq)
        cached = self._totals.get(key)
        if cached is None:  # the model is kept with its total, so its id is not reused
            cached = self._totals[key] = (model, price(model, batch, seq)[0].total)
        return cached[1]

    # -- one search --

    def run(self, inputs: Inputs) -> list[Candidate]:
        """The best configuration of each method (fitting or not), ranked best first."""
        best: list[Candidate] = []
        for order, (method, cfg) in enumerate(inputs.chosen):
            try:
                found = self._best_of_method(inputs, method, cfg, order)
            except BadInputError:
                continue  # the method cannot apply here (the plan lists it as skipped)
            if found is not None:
                best.append(found)
        return _dedupe(sorted(best, key=Candidate.rank_key))

    def _best_of_method(self, inputs: Inputs, method: Method, cfg: MethodConfig, order: int) -> Candidate | None:
        """The method's best configuration: per group (targets x quant), the largest rank of its ladder
        that fits at each sequence length, by bisection (memory grows with the rank); the best prior
        wins, ties by cost. Only the winners are priced in full (variants, micro-batch)."""
        from peftplan.planner.stacks import check_method

        check_method(inputs.ctx.stack, method.name)
        groups = self._groups(inputs, method, cfg)
        if not groups:
            return None
        seqs = self._seqs(inputs)
        picks: list[tuple[float, _Ladder, int, int]] = []
        best_score = -math.inf
        closest: tuple[float, MethodConfig, MemoryTerms, int] | None = None
        for ladder in sorted(groups, key=lambda g: -g[0][2]):
            if ladder[0][2] < best_score - 1e-9:
                break  # groups are in prior order: the rest cannot beat what fits
            for k, seq in enumerate(seqs):
                penalty = PRIOR_SEQ_HALVING * k
                if ladder[0][2] + penalty < best_score - 1e-9:
                    break
                found, near = self._largest_fitting(inputs, method, ladder, seq)
                if near is not None and (closest is None or near[0] < closest[0]):
                    closest = (near[0], *ladder[near[1]][:2], k)
                if found is None:
                    continue
                score = ladder[found][2] + penalty
                picks.append((score, ladder, found, k))
                best_score = max(best_score, score)
                if found == 0:
                    break  # the group's best rank fits: a shorter sequence only loses
        winners = [(ladder, i, k) for score, ladder, i, k in picks if score >= best_score - 1e-9]
        if not winners:
            assert closest is not None
            _, cfg_c, terms_c, k = closest
            return self._evaluate(inputs, method, cfg_c, terms_c, seqs[k], k, order)
        found_all = [self._evaluate(inputs, method, *ladder[i][:2], seqs[k], k, order) for ladder, i, k in winners]
        return min(found_all, key=Candidate.rank_key)

    def _largest_fitting(self, inputs: Inputs, method: Method, ladder: _Ladder,
                         seq: int) -> tuple[int | None, tuple[float, int] | None]:
        """The first (largest-rank) entry of `ladder` that fits at `seq`, by bisection; and the closest
        miss as (overshoot, index) when the smallest does not fit."""
        last = len(ladder) - 1
        over = self._overshoot(inputs, method, *ladder[last][:2], seq)
        if over > 1.0:
            return None, (over, last)
        if last == 0 or self._overshoot(inputs, method, *ladder[0][:2], seq) <= 1.0:
            return 0, None
        bad, good = 0, last
        while good - bad > 1:
            mid = (good + bad) // 2
            if self._overshoot(inputs, method, *ladder[mid][:2], seq) <= 1.0:
                good = mid
            else:
                bad = mid
        return good, None

    def _overshoot(self, inputs: Inputs, method: Method, cfg: MethodConfig, terms: MemoryTerms, seq: int) -> float:
        """max(training total / budget, serving / serving budget) at the friendliest context (<= 1 fits)."""
        key = ("over", method.name, cfg.model_dump_json(), seq, _fingerprint(inputs))
        cached = self._memo.get(key)
        if cached is not None:
            return float(cached)
        serving = self._serving(inputs, method, cfg, terms, exact=False)
        batch = inputs.ctx.batch_size if "batch_size" in inputs.pinned else 1
        friendly = self._models(inputs, method, cfg, terms, friendly=True)
        totals = [self.total(model, batch, seq) for _, model in friendly]
        over = max(min(totals) / inputs.budget.vram_bytes, serving.gpu_bytes / serving.budget_bytes)
        self._memo[key] = over
        return over

    def _models(self, inputs: Inputs, method: Method, cfg: MethodConfig, terms: MemoryTerms, *,
                friendly: bool = False) -> list[tuple[TrainContext, StepModel]]:
        """Every context variant the search may choose, with its step (stack rules applied); `friendly`:
        only the paged-optimizer variants, if any (paged states are outside the device total: where the
        optimizer is free, its variants are the friendliest). A variant's step is built when first asked for."""
        from peftplan.planner.method_plan import trainable_context

        key = ("models", method.name, cfg.model_dump_json(), inputs.ctx, inputs.budget.gpus, inputs.pinned)
        slots: list[list[Any]] | None = self._memo.get(key)
        if slots is None:
            ctx_m, notes = trainable_context(method, cfg, replace(inputs.ctx, gpus=inputs.budget.gpus))
            slots = self._memo[key] = [[v, None] for v in self._variants(inputs, ctx_m, method)]
            self._memo[("notes", method.name, cfg.model_dump_json(), inputs.ctx)] = notes
            self._memo[("trained", method.name, cfg.model_dump_json(), inputs.ctx)] = ctx_m
        chosen = [slot for slot in slots if slot[0].optimizer == "paged-adamw8bit"] if friendly else []
        out = []
        for slot in chosen or slots:
            if slot[1] is None:
                slot[1] = self.step(inputs.spec, method, cfg, terms, slot[0])
            out.append((slot[0], slot[1]))
        return out

    def _serving(self, inputs: Inputs, method: Method, cfg: MethodConfig, terms: MemoryTerms, *,
                 exact: bool) -> ServingPlan:
        """Serving priced for this configuration (`exact`: with the adapter file's exact size, which only
        load times and storage need)."""
        key = ("serving", method.name, cfg.model_dump_json(), exact, inputs.needs, inputs.ctx.dtype, inputs.ctx.seq_len)
        cached = self._memo.get(key)
        if cached is None:
            dtype = inputs.ctx.dtype
            size = self._adapter_bytes(inputs, method, cfg, terms) if exact else 4 * terms.adapter_params
            cached = price_serving(inputs.spec, method, terms, adapter_bytes=size, dtype=dtype, needs=inputs.needs,
                                   train_seq=inputs.ctx.seq_len)
            self._memo[key] = cached
        return cached  # type: ignore[no-any-return]

    def _adapter_bytes(self, inputs: Inputs, method: Method, cfg: MethodConfig, terms: MemoryTerms) -> int:
        """The adapter file's exact size (the same under every serving need)."""
        key = ("adapter_bytes", method.name, cfg.model_dump_json(), inputs.ctx.dtype)
        cached = self._memo.get(key)
        if cached is None:
            cached = self._memo[key] = adapter_file_bytes(inputs.spec, method, terms, dtype=inputs.ctx.dtype)
        return int(cached)

    def _groups(self, inputs: Inputs, method: Method,
                cfg: MethodConfig) -> list[_Ladder]:
        """The method's settings by group (target preset x base quantization), each a ladder of ranks from
        the one the data needs down to 1: [(config, terms, prior)], the largest rank first. Built once per
        search cache for what it depends on (suggestions search the same methods again)."""
        key = ("groups", method.name, cfg.model_dump_json(), inputs.pinned & {"targets", "quant", "rank", "alpha"},
               inputs.examples, tuple((m.name, c.model_dump_json()) for m, c in inputs.chosen))
        cached = self._memo.get(key)
        if cached is None:
            cached = self._memo[key] = self._build_groups(inputs, method, cfg)
        return list(cached)

    def _build_groups(self, inputs: Inputs, method: Method,
                      cfg: MethodConfig) -> list[_Ladder]:
        spec, pinned = inputs.spec, inputs.pinned
        fields = type(cfg).model_fields
        base = cfg.model_dump()
        targets: list[Any] = [None]
        if "targets" in fields and "targets" not in pinned:
            targets = [[preset] for preset in TARGET_PRESETS]
        quants: list[Any] = [None]
        if "quant" in fields and "quant" not in pinned and base.get("quant") == "none":
            quants = ["none", "nf4"]  # the 4-bit base QLoRA made standard; fp4 and int8 are not better
        groups = []
        for target in targets:
            for quant in quants:
                values = dict(base)
                if target is not None:
                    values["targets"] = target
                if quant is not None:
                    values["quant"] = quant
                try:
                    first = method.make_config(**values)
                    method.check(spec, first)
                    terms = self.terms(spec, method, first)
                except BadInputError:
                    continue  # this preset selects nothing here (or the method cannot take it)
                if quant not in (None, "none") and self._covered(inputs, method, first, terms):
                    continue
                ranked = "rank" in fields and "rank" not in pinned and _low_rank(terms)
                ranks = _ranks(target_rank(inputs.examples), rank_cap(spec, terms, first)) if ranked else [None]
                configs = []
                for rank in ranks:
                    update: dict[str, Any] = {}
                    if rank is not None:
                        update["rank"] = rank
                        if "alpha" in fields and "alpha" not in pinned:
                            update["alpha"] = float(2 * rank)  # alpha = 2r, the common recipe
                    configs.append(method.make_config(**{**values, **update}) if update else first)
                groups.append(_Ladder(self._terms, spec, method, configs, inputs.examples))
        return groups

    def _covered(self, inputs: Inputs, method: Method, cfg: MethodConfig, terms: MemoryTerms) -> bool:
        """Another planned method has this very configuration as its own default (lora at nf4 is qlora)."""
        for other, other_cfg in inputs.chosen:
            if other is method or other_cfg.model_dump().get("quant") != cfg.model_dump().get("quant"):
                continue
            try:
                same = other.make_config(**cfg.model_dump())
            except BadInputError:
                continue
            if self.terms(inputs.spec, other, same) == terms:
                return True
        return False

    def _seqs(self, inputs: Inputs) -> list[int]:
        seq = inputs.ctx.seq_len
        seqs = [seq]
        if "seq_len" not in inputs.pinned:
            while seqs[-1] // 2 >= inputs.min_seq:
                seqs.append(seqs[-1] // 2)
        return seqs

    def _variants(self, inputs: Inputs, ctx_m: TrainContext, method: Method) -> list[TrainContext]:
        pinned = inputs.pinned
        ckpts = [ctx_m.checkpointing]
        if "checkpointing" not in pinned and method.traits.checkpointing:
            ckpts = _unique([ctx_m.checkpointing, "none", "recompute"])
        elif not method.traits.checkpointing:
            ckpts = ["none"]
        optimizers = [ctx_m.optimizer] if "optimizer" in pinned else _unique([ctx_m.optimizer, *SEARCH_OPTIMIZERS])
        shards = [ctx_m.shard]
        if ctx_m.gpus > 1 and "shard" not in pinned:
            shards = _unique([ctx_m.shard, *SHARDS])
            if any(name in pinned and deepspeed_overrides(name, getattr(ctx_m, name)) for name in DEEPSPEED_KNOBS):
                shards = [shard for shard in shards if shard not in DEEPSPEED_SHARDS]  # the engine would override a pin
        out = []
        for ckpt in ckpts:
            for optimizer in optimizers:
                for shard in shards:
                    out.append(replace(ctx_m, grad_checkpointing=ckpt != "none", ckpt_offload=ckpt == "offload",
                                       optimizer=optimizer, shard=shard))  # type: ignore[arg-type]
        return out

    def _evaluate(self, inputs: Inputs, method: Method, cfg: MethodConfig, terms: MemoryTerms, seq: int,
                  halvings: int, order: int) -> Candidate:
        """One setting priced in full at `seq`: its best context variant and micro-batch (or, when none
        fits, the variant that comes closest)."""
        vram = inputs.budget.vram_bytes
        serving = self._serving(inputs, method, cfg, terms, exact=True)
        notes = list(self._memo.get(("notes", method.name, cfg.model_dump_json(), inputs.ctx), []))
        pinned_batch = inputs.ctx.batch_size if "batch_size" in inputs.pinned else 1
        trained = self._memo.get(("trained", method.name, cfg.model_dump_json(), inputs.ctx), inputs.ctx)
        fits: list[tuple[int, TrainContext, StepModel]] = []
        closest: tuple[int, TrainContext, StepModel] | None = None
        for variant, model in self._models(inputs, method, cfg, terms):
            total = self.total(model, pinned_batch, seq)
            if closest is None or total < closest[0]:
                closest = (total, variant, model)
            if total <= vram:  # with how many knobs it changes (what `Candidate.knob_changes` counts)
                knobs = sum(getattr(trained, knob) != getattr(variant, knob)
                            for knob in ("checkpointing", "optimizer", "shard"))
                fits.append((knobs, variant, model))
        if fits:
            # The stack's own checkpointing, optimizer and sharding are kept whenever they fit: they are the
            # user's training code; the search changes them only to make a configuration fit. So only the
            # variants that change the fewest knobs are priced in full.
            fewest = min(knobs for knobs, _, _ in fits)
            fitting: list[Candidate] = []
            for knobs, variant, model in fits:
                if knobs == fewest:
                    batch, accum = self._batch(inputs, model, seq, vram)
                    shaped = replace(variant, batch_size=batch, seq_len=seq)
                    fitting.append(self._candidate(inputs, method, cfg, terms, shaped, model, accum, serving,
                                                   halvings, order, notes))
            return min(fitting, key=lambda c: (c.knob_changes(), c.rank_key()))
        assert closest is not None
        _, variant, model = closest
        return self._candidate(inputs, method, cfg, terms, replace(variant, batch_size=pinned_batch, seq_len=seq),
                               model, 1, serving, halvings, order, notes)

    def _batch(self, inputs: Inputs, model: StepModel, seq: int, vram: int) -> tuple[int, int]:
        """(micro-batch, accumulation): the user's micro-batch, or the largest power of two up to the
        effective batch that fits; accumulation makes up the effective batch."""
        gpus = model.ctx.gpus
        per_step = max(1, EFFECTIVE_BATCH // gpus)
        if "batch_size" in inputs.pinned:
            batch = inputs.ctx.batch_size
        else:
            batch = 1
            while batch * 2 <= per_step and self.total(model, batch * 2, seq) <= vram:
                batch *= 2
        return batch, max(1, -(-EFFECTIVE_BATCH // (batch * gpus)))

    def _candidate(self, inputs: Inputs, method: Method, cfg: MethodConfig, terms: MemoryTerms, ctx: TrainContext,
                   model: StepModel, accum: int, serving: ServingPlan, halvings: int, order: int,
                   notes: list[str]) -> Candidate:
        from peftplan.models.arch import arch_of

        spec, budget = inputs.spec, inputs.budget
        memory, moment = price(model, ctx.batch_size, ctx.seq_len)
        flops = training_flops_per_token(spec, arch_of(spec), terms, ctx.seq_len, checkpointing=ctx.grad_checkpointing,
                                         batch=ctx.batch_size)
        tokens = inputs.train_tokens
        if tokens is None and inputs.examples is not None:
            per_example = inputs.tokens_per_example if inputs.tokens_per_example is not None else inputs.ctx.seq_len
            tokens = int(inputs.examples * min(per_example, ctx.seq_len) * inputs.epochs)
        gpu = budget.gpu
        speed = throughput(flops, tflops=gpu.bf16_tflops, gpus=ctx.gpus, mfu=inputs.mfu, train_tokens=tokens,
                           usd_per_hour=gpu.usd_per_hour)
        per_million = ctx.gpus * gpu.usd_per_hour / (speed.tokens_per_second * 3600) * 1e6
        return Candidate(
            method=method, cfg=cfg, terms=terms, ctx=ctx, accum=accum, memory=memory, moment=moment,
            budget_bytes=budget.vram_bytes, serving=serving,
            quality=quality(spec, terms, cfg, examples=inputs.examples, seq_halvings=halvings),
            speed=speed, gpu_name=gpu.name, usd_per_million=per_million,
            changes=_changes(inputs, method, cfg, ctx,
                             self._memo.get(("trained", method.name, cfg.model_dump_json(), inputs.ctx), inputs.ctx)),
            order=order, notes=list(notes),
        )


def _fingerprint(inputs: Inputs) -> tuple[Any, ...]:
    """What a memoised price depends on besides the configuration."""
    return (inputs.ctx, inputs.budget, inputs.needs, inputs.pinned)


def _ranks(wanted: int, cap: int) -> list[int]:
    """The rank the data needs and its halvings (the search never needs a larger rank: it costs more
    for the same prior), within what the layers allow."""
    top = min(wanted, cap)
    if top < wanted:
        top = 1 << int(math.log2(top))  # the largest power of two the layers allow
    ranks = [top]
    while ranks[-1] > 1:
        ranks.append(ranks[-1] // 2)
    return ranks


def _unique(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def _changes(inputs: Inputs, method: Method, cfg: MethodConfig, ctx: TrainContext,
             trained: TrainContext) -> list[tuple[str, str, str]]:
    """What differs from the plan the user asked for (their flags or the defaults); the knobs against the
    context the stack trains this method in (`trained`: its rules for quantized bases and full fine-tuning)."""
    user = inputs.ctx
    out: list[tuple[str, str, str]] = []
    given = dict(inputs.chosen)
    if method in given:
        before, after = given[method].model_dump(mode="json"), cfg.model_dump(mode="json")
        for name in ("rank", "alpha", "targets", "quant"):
            if name in before and before[name] != after.get(name):
                out.append((f"--{name}", _word(before[name]), _word(after[name])))
    if ctx.seq_len != user.seq_len:
        out.append(("--seq-len", str(user.seq_len), str(ctx.seq_len)))
    if ctx.batch_size != user.batch_size:
        out.append(("--batch-size", str(user.batch_size), str(ctx.batch_size)))
    for flag, was, now in (("--checkpointing", trained.checkpointing, ctx.checkpointing),
                           ("--optimizer", trained.optimizer, ctx.optimizer), ("--shard", trained.shard, ctx.shard)):
        if was != now:
            out.append((flag, str(was), str(now)))
    return out


def _word(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _dedupe(ranked: list[Candidate]) -> list[Candidate]:
    """Drop a configuration identical to a better-ranked one of another method (lora at nf4 is qlora),
    keeping the method whose own default it is."""
    out: list[Candidate] = []
    for cand in ranked:
        twin = next((o for o in out if o.cfg.model_dump() == cand.cfg.model_dump() and o.terms == cand.terms), None)
        if twin is None:
            out.append(cand)
            continue
        if _own_default(cand) and not _own_default(twin) and twin.quality.score == cand.quality.score:
            out[out.index(twin)] = cand
    return out


def _own_default(cand: Candidate) -> bool:
    default = cand.method.make_config().model_dump()
    return default.get("quant") == cand.cfg.model_dump().get("quant")


# --- the decision and the suggestions ---------------------------------------------------------------


def decide(inputs: Inputs, *, suggest: bool = True, search: Search | None = None) -> Recommendation:
    """Search, rank, and say why; when nothing fits, the smallest verified changes that make it fit."""
    with _collector_paused():
        return _decide(inputs, suggest=suggest, search=search)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while the search runs. The search's caches grow to ~10^5
    small objects that all live until it returns, and the collector's full passes scanned them again and
    again (four in a 70B plan with suggestions, each over a larger heap). Reference counting still frees
    everything as usual: the search makes no reference cycles (a finished search leaves none)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _decide(inputs: Inputs, *, suggest: bool, search: Search | None) -> Recommendation:
    from peftplan.budgets.budget import UNLIMITED

    search = search or Search()
    if inputs.budget.vram_bytes >= UNLIMITED:  # a pure prediction: no fit to size the micro-batch against
        inputs = replace(inputs, pinned=inputs.pinned | {"batch_size"})
    ranked = search.run(inputs)
    top = ranked[:TOP]
    chosen = top[0] if top and top[0].fits else None
    candidates = [c.to_dict() for c in top]
    suggestions: list[dict[str, Any]] = []
    if chosen is None and suggest:
        suggestions = suggestions_for(inputs, search, ranked)
    if chosen is None:
        return Recommendation(None, {}, nothing_fits_reasons(inputs, ranked, suggestions), candidates=candidates,
                              serving=None, suggestions=suggestions)
    return Recommendation(chosen.method.name, chosen.config_dict(), candidate_reasons(chosen),
                          candidates=candidates, serving=_serving_summary(chosen.serving),
                          suggestions=[], training=chosen.training_dict(), context=chosen.ctx)


def _serving_summary(serving: ServingPlan) -> dict[str, Any]:
    data = serving.to_dict()
    head = {key: data.pop(key) for key in ("gpu_bytes", "resident_adapters", "swap_seconds", "flags")}
    return {**head, **data}


@dataclass(frozen=True)
class Relaxation:
    """One change to the search's inputs, and the flags that say it."""

    flags: tuple[str, ...]
    inputs: Inputs
    free: tuple[str, ...] = ()  # pins this change lifts (the result's own values become flags)
    ladder: str = ""  # steps of one ladder (e.g. "gpus"): after one fits, the larger steps are not tried


def suggestions_for(inputs: Inputs, search: Search, ranked: list[Candidate], limit: int = 3) -> list[dict[str, Any]]:
    """The smallest changes that make something fit, in the order `_relaxations` prefers them (fewest
    flags first): each is searched, then re-planned and verified. A ladder (more GPUs, shorter
    sequences) stops at its first step that fits."""
    found: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    seen: set[tuple[str, ...]] = set()
    done_ladders: set[str] = set()
    for index, relax in enumerate(_relaxations(inputs, ranked)):
        if relax.ladder and relax.ladder in done_ladders:
            continue
        best = next(iter(search.run(relax.inputs)), None)
        if best is None:
            continue
        flags = list(relax.flags) + _lifted_flags(inputs, best, relax.free)
        key = tuple(flags)
        if key in seen or not flags:
            continue
        seen.add(key)
        verified = _verify(relax.inputs, best)
        entry = {"flags": flags, "total": verified["total"], "fits": verified["fits"], "method": best.method.name,
                 "config": best.config_dict(), "training": best.training_dict(),
                 "serving_bytes": verified["serving_bytes"], "serving_fits": verified["serving_fits"]}
        found.append(((not entry["fits"], index), entry))  # the order of `_relaxations`: smallest first
        if entry["fits"] and relax.ladder:
            done_ladders.add(relax.ladder)
        if sum(1 for _, e in found if e["fits"]) >= limit:
            break
    found.sort(key=lambda item: item[0])
    fitting = [entry for _, entry in found if entry["fits"]]
    return fitting[:limit] if fitting else [entry for _, entry in found[:1]]


def _lifted_flags(inputs: Inputs, best: Candidate, free: tuple[str, ...]) -> list[str]:
    """Flags for the values a lifted pin took (only those that differ from the setting in use)."""
    out: list[str] = []
    cfg = best.cfg.model_dump(mode="json")
    if "method" in free and best.method.name not in {m.name for m, _ in inputs.chosen}:
        out += ["--method", best.method.name]
    for name in ("quant", "rank", "targets"):
        if name in free and name in cfg:
            user = next((c.model_dump(mode="json").get(name) for m, c in inputs.chosen if m is best.method), None)
            if user != cfg[name]:
                out += [f"--{name}", _word(cfg[name])]
    ctx, user_ctx = best.ctx, inputs.ctx
    if "seq_len" in free and ctx.seq_len != user_ctx.seq_len:
        out += ["--seq-len", str(ctx.seq_len)]
    if "batch_size" in free and ctx.batch_size != user_ctx.batch_size:
        out += ["--batch-size", str(ctx.batch_size)]
    if "optimizer" in free and ctx.optimizer != user_ctx.optimizer:
        out += ["--optimizer", ctx.optimizer]
    if "checkpointing" in free and ctx.checkpointing != user_ctx.checkpointing:
        out += ["--checkpointing", ctx.checkpointing]
    if "shard" in free and ctx.shard != user_ctx.shard:
        out += ["--shard", ctx.shard]
    return out


def _relaxations(inputs: Inputs, ranked: list[Candidate]) -> list[Relaxation]:
    """One change at a time, smallest first: lift a pin, allow a shorter sequence, add GPUs, change a
    stack knob, ease the serving needs, a bigger GPU. Never a setting already in use. Besides lifting
    --method, each searches only the three methods that came closest."""
    from peftplan.methods import all_methods
    from peftplan.planner.stacks import get_stack

    out: list[Relaxation] = []
    pinned, ctx, needs = inputs.pinned, inputs.ctx, inputs.needs
    closest = {c.method.name for c in ranked[:TOP]}
    near = replace(inputs, chosen=[(m, c) for m, c in inputs.chosen if m.name in closest] or inputs.chosen)

    def lift(*names: str, **changes: Any) -> None:
        out.append(Relaxation((), replace(near, pinned=near.pinned - set(names), **changes), names))

    if "method" in pinned:
        chosen_names = {m.name for m, _ in inputs.chosen}
        knobs: dict[str, Any] = {}
        for _, cfg in inputs.chosen:  # the user's other knobs apply to every method that has them
            knobs.update({k: v for k, v in cfg.model_dump().items() if k in pinned and k not in knobs})
        others = []
        for m in all_methods():
            if m.name not in chosen_names:
                fields = m.config_cls.model_fields
                try:
                    others.append((m, m.make_config(**{k: v for k, v in knobs.items() if k in fields})))
                except BadInputError:
                    continue
        out.append(Relaxation((), replace(inputs, chosen=others, pinned=pinned - {"method"}), ("method",)))
    for name in ("quant", "rank", "targets", "optimizer", "checkpointing", "batch_size"):
        if name in pinned:
            lift(name)
    if "seq_len" in pinned or inputs.min_seq > 64:
        lift("seq_len", min_seq=min(inputs.min_seq, 64))
    # More GPUs of the same kind; sharding is the search's unless the user chose one.
    gpus = inputs.budget.gpus
    free = ("shard",) if "shard" not in pinned or ctx.shard == "none" else ()
    for more in (2 * gpus, 4 * gpus, 8 * gpus, 16 * gpus):
        if more <= 64:
            new = replace(near, budget=replace(inputs.budget, gpus=more), ctx=replace(ctx, gpus=more),
                          pinned=pinned - set(free), needs=replace(needs, gpus=max(needs.gpus, more)))
            out.append(Relaxation(("--gpus", str(more)), new, free, ladder="gpus"))
    # The stack's memory techniques (each a knob the user can set).
    stack = get_stack(ctx.stack)
    knob_changes: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    if ctx.kbit_prep == "peft" and "kbit_prep" not in pinned:
        knob_changes.append((("--kbit-prep", "none"), {"kbit_prep": "none"}))
    for loss in ("chunked", "fused"):
        if loss in stack.losses and ctx.loss != loss and "loss" not in pinned:
            knob_changes.append((("--loss", loss), {"loss": loss}))
    if not ctx.offload_activations and "offload_activations" not in pinned:
        knob_changes.append((("--offload-activations",), {"offload_activations": True}))
    for flags, change in knob_changes:
        new = replace(near, ctx=replace(ctx, **change, pinned=ctx.pinned | set(change)), pinned=pinned | set(change))
        out.append(Relaxation(flags, new))
    # The serving needs, when serving is what fails.
    if any(c.fits_training and not c.serving.fits for c in ranked[:TOP]):
        concurrency, context = needs.resolved_concurrency(), needs.resolved_context(ctx.seq_len)
        while concurrency > 1:
            concurrency //= 2
            out.append(Relaxation(("--serve-concurrency", str(concurrency)),
                                  replace(near, needs=replace(needs, concurrency=concurrency)), ladder="concurrency"))
        while context > 256:
            context //= 2
            out.append(Relaxation(("--serve-context", str(context)),
                                  replace(near, needs=replace(needs, context=context)), ladder="context"))
        for bigger in _bigger_gpus(needs.vram_bytes):
            out.append(Relaxation(("--serve-gpu", bigger.key),
                                  replace(near, needs=replace(needs, gpu=bigger, vram_bytes=bigger.vram_bytes)),
                                  ladder="serve-gpu"))
    # A bigger training GPU (serving follows it unless it has its own).
    for bigger in _bigger_gpus(inputs.budget.vram_bytes):
        budget = replace(inputs.budget, vram_bytes=bigger.vram_bytes, gpu=bigger, compute_from_profile=True)
        own = needs.vram_bytes != inputs.budget.vram_bytes
        new_needs = needs if own else replace(needs, gpu=bigger, vram_bytes=bigger.vram_bytes)
        out.append(Relaxation(("--gpu", bigger.key), replace(near, budget=budget, needs=new_needs), ladder="gpu"))
    return out


def _bigger_gpus(vram_bytes: int) -> list[Any]:
    """GPU profiles with more memory than `vram_bytes`, smallest first (the cheapest of each size)."""
    from peftplan.budgets.profiles import builtin_profiles

    by_size: dict[int, Any] = {}
    for profile in builtin_profiles()[0].values():
        if profile.vram_bytes > vram_bytes * 1.05:
            size = round(profile.vram_gib)
            if size not in by_size or profile.usd_per_hour < by_size[size].usd_per_hour:
                by_size[size] = profile
    return [by_size[size] for size in sorted(by_size)]


def _verify(inputs: Inputs, best: Candidate) -> dict[str, Any]:
    """Re-plan the found configuration with the planner itself: the total and whether both fit."""
    from peftplan.planner.method_plan import plan_method

    ctx = replace(best.ctx, pinned=best.ctx.pinned | {"optimizer", "checkpointing"})
    entry = plan_method(inputs.spec, best.method, best.cfg, ctx, inputs.budget, tasks=inputs.needs.tasks,
                        switching=inputs.needs.switching, fit_search=False, serving=inputs.needs)
    serving = entry.serving or {}
    return {"total": entry.memory.total, "fits": entry.fits and bool(serving.get("fits", True)),
            "serving_bytes": serving.get("gpu_bytes"), "serving_fits": serving.get("fits")}


# --- pins: what the user fixed ----------------------------------------------------------------------

# PlanRequest's field -> the pin it sets (the decision's names; --grad-ckpt and --lengths pin knobs).
PIN_OF = {"methods": "method", "rank": "rank", "alpha": "alpha", "targets": "targets", "quant": "quant",
          "virtual_tokens": "virtual_tokens", "bottleneck": "bottleneck", "seq_len": "seq_len",
          "lengths": "seq_len", "batch_size": "batch_size", "grad_ckpt": "checkpointing",
          "checkpointing": "checkpointing", "optimizer": "optimizer", "shard": "shard", "gpus": "gpus",
          "method": "method"}
_ADAPTER_PINS = ("method", "rank", "alpha", "targets", "quant", "virtual_tokens", "bottleneck")


def pins(given: Iterable[str], *, peft_config: bool = False, knobs: Iterable[str] = ()) -> frozenset[str]:
    """The decision's pins from the parameters the user gave (CLI: passed on the command line; Python:
    not None, or different from the default), plus the stack knobs they set."""
    out = {PIN_OF[name] for name in given if name in PIN_OF}
    if peft_config:
        out.update(_ADAPTER_PINS)  # the file is exactly one adapter
    return frozenset(out | set(knobs))


def check_contradictions(*, methods: Sequence[str] | None, quant: str | None, peft_config: bool,
                         method_knobs: dict[str, Any], grad_ckpt: bool | None, checkpointing: str | None) -> None:
    """Refuse pins that contradict each other, saying why (exit 2).

    Raises:
        BadInputError: e.g. `--method full --quant nf4`, `--peft-config` with `--rank`, `--no-grad-ckpt`
            with `--checkpointing recompute`.
    """
    from peftplan.methods import get_method, split_names

    if peft_config:
        given = [name for name, value in method_knobs.items() if value is not None]
        if given:
            flag = f"--{given[0].replace('_', '-')}"
            raise BadInputError(f"{flag} contradicts --peft-config: the file already sets the adapter "
                                f"({flag.removeprefix('--')} included); edit the file or drop {flag}")
    if quant is not None and quant != "none":
        for name in split_names(list(methods or [])):
            method = get_method(name)
            if method.traits.whole_base:
                raise BadInputError(f"--quant {quant} contradicts --method {method.name}: {method.name} trains every "
                                    f"base weight, and a {quant}-quantized base is frozen (use --method qlora, or lora "
                                    f"--quant {quant})")
    if grad_ckpt is not None and checkpointing is not None and grad_ckpt != (checkpointing != "none"):
        flag = "--grad-ckpt" if grad_ckpt else "--no-grad-ckpt"
        raise BadInputError(f"{flag} contradicts --checkpointing {checkpointing}: give one of them")


def _low_rank(terms: MemoryTerms) -> bool:
    """The method's rank sets a B·A update whose quality grows with it (LoRA's, DoRA's)."""
    kind = rank_kind(terms)
    return kind is not None and kind.low_rank
