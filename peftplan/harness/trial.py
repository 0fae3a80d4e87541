"""One trial, run in its own subprocess: `python -m peftplan.harness.trial work/<method>-<n>/spec.json`.

`run_trial` reads top to bottom: load the base, measure it, apply the method, train, then measure the
trained model (task metric, forgetting, latency, adapter size). It writes `outcome.json` next to the
spec, whatever happens: an out-of-memory becomes status `oom`, any other error `failed`, and what was
measured until then is kept. The runner turns the outcome into the trial's result file.

With `training.gpus: N > 1` this process launches N ranks of itself through `accelerate launch`
(`harness/multigpu.py`) and writes `outcome.json` from what they wrote. Every rank runs `run_trial` on its
share of the batches (`harness/ranks.py`) and writes `outcome-rank<r>.json`; after training, rank 0 alone
measures the trained model, so the outcome has the same shape, plus every rank's memory peak. A rank that
fails exits non-zero once its outcome is written, which makes the launcher stop the others.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from peftplan.harness.channel import LAUNCHED_AT_ENV, RANKS_OF_ENV, TrialChannel
from peftplan.harness.lifeline import die_with_parent, exit_if_orphaned_rank
from peftplan.harness.outcome import OUTCOME, Outcome
from peftplan.harness.provenance import provenance
from peftplan.harness.ranks import Ranks, SingleProcess, launched_rank, mean_loss, rank_outcome_name

if TYPE_CHECKING:
    from torch import nn

    from peftplan.harness.data import TaskInfo
    from peftplan.harness.lmeval import LmEvalRun
    from peftplan.harness.measure import MemoryPeak, Prediction
    from peftplan.harness.suite import LoadedSuite, Suite
    from peftplan.harness.tasks import Encoded, PromptFormatter
    from peftplan.harness.train import TrainStats

SPEC = "spec.json"
PROBE_SELF_SAMPLED = "self-sampled"
FINISHED = ("success", "pruned")


class TrialSpec(BaseModel):
    """Everything a trial subprocess needs; written by the runner as `spec.json`."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str
    suite: dict[str, Any]
    suite_dir: str
    method_key: str
    method: str
    method_config: dict[str, Any]
    lr: float
    trial_number: int
    pruning: bool
    weights: dict[str, Any]
    threads: int | None = None  # torch CPU threads; None: torch's default
    seed: int | None = None  # the method's initial weights and the batch order; None: training.seed + trial_number

    @property
    def quant(self) -> str:
        """The base's bitsandbytes quantization (QLoRA and friends), or 'none'."""
        return str(self.method_config.get("quant") or "none")


class ChannelObserver:
    """Forwards training progress to the runner; asks it whether to prune after each eval.

    Only rank 0 holds the channel; `ranks.agree` hands its decision to every rank.
    """

    def __init__(self, channel: TrialChannel, outcome: Outcome, pruning: bool, ranks: Ranks) -> None:
        self.channel, self.outcome, self.pruning, self.ranks = channel, outcome, pruning, ranks

    def on_step(self, step: int, loss: float) -> None:
        self.outcome["metrics"]["steps"] = step
        self.channel.send("step", step=step, loss=loss)

    def on_eval(self, step: int, eval_loss: float) -> bool:
        self.outcome["intermediate"].append({"step": step, "eval_loss": eval_loss})
        prune = self.channel.ask_prune(step, eval_loss) if self.ranks.is_main else False
        return self.ranks.agree(prune and self.pruning)


def pick_device(name: str) -> str:
    if name == "cpu":
        return "cpu"  # without importing torch, which the process launching a multi-GPU trial's ranks never needs
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return "cuda:0"
    return "cpu"


def loaded_suite(spec: TrialSpec) -> LoadedSuite:
    from peftplan.harness.suite import LoadedSuite, Suite

    suite_dir = Path(spec.suite_dir)
    return LoadedSuite(Suite.model_validate(spec.suite), suite_dir / "suite.yaml", suite_dir)


@dataclass
class TrialContext:
    """What every part of a trial needs: its spec and suite, where it runs, the tokenizer and the method."""

    spec: TrialSpec
    loaded: LoadedSuite
    device: str
    autocast: str | None
    channel: TrialChannel
    tokenizer: Any
    method: Any
    cfg: Any

    @property
    def suite(self) -> Suite:
        return self.loaded.suite

    @property
    def run_dir(self) -> Path:
        return Path(self.spec.run_dir)

    @property
    def seed(self) -> int:
        """The trial's seed: the suite's seed plus the trial number, unless the spec gives one (confirmation runs)."""
        return self.spec.seed if self.spec.seed is not None else self.suite.training.seed + self.spec.trial_number

    def apply(self, base: nn.Module) -> nn.Module:
        """The method on `base`, its random initial weights fixed by the trial's seed (so every rank, and every
        rebuild, starts equal)."""
        import torch

        torch.manual_seed(self.seed)
        adapted: nn.Module = self.method.apply(base, self.cfg)
        return adapted

    def fresh_base(self) -> nn.Module:
        """Another copy of the base model, on this process's device."""
        from peftplan.harness.loading import WeightsSource, load_base

        base, _ = load_base(WeightsSource(**self.spec.weights), self.suite.model, self.loaded, device=self.device,
                            seed=self.suite.training.seed, quant=self.spec.quant)
        return base


@dataclass
class TrialData:
    """The run's data split, encoded: every rank reads the same, then trains on its share."""

    info: TaskInfo
    formatter: PromptFormatter
    all_train: list[Encoded]
    train_items: list[Encoded]  # this rank's share
    loss_items: list[Encoded]  # the intermediate eval loss
    scored: list[Any]  # examples for the task metric
    pad: int
    latency_prompt: list[int]


@dataclass
class BaseMeasurements:
    """What the base model measured, to set against the trained one."""

    probe: ProbeWindows | None = None
    probe_losses: list[tuple[float, int]] | None = None  # per window; methods without a switch: before training
    lm_eval: LmEvalRun | None = None  # likewise
    latency: dict[str, Any] = field(default_factory=dict)


def run_trial(spec: TrialSpec, channel: TrialChannel, outcome: Outcome, device: str,
              ranks: Ranks | None = None) -> None:
    """Train and measure one config; fills `outcome` as it goes. `ranks`: see `harness/ranks.py`."""
    import torch

    from peftplan.harness.loading import WeightsSource, load_base
    from peftplan.harness.train import autocast_dtype
    from peftplan.methods import get_method

    ranks = ranks or SingleProcess()
    loaded = loaded_suite(spec)
    suite = loaded.suite
    metrics = outcome["metrics"]
    started = time.perf_counter()
    if os.environ.get(LAUNCHED_AT_ENV):  # interpreter start and imports, before any work
        metrics["startup_s"] = time.time() - float(os.environ[LAUNCHED_AT_ENV])
    if spec.threads:  # the cores the runner gave this trial, shared by its ranks
        torch.set_num_threads(max(1, spec.threads // ranks.world_size))
    metrics["threads"] = torch.get_num_threads()

    # 1. The base model and the data, exactly as every other trial of this run sees them. An FSDP rank loads
    #    the base on the CPU: sharding moves it to its GPU block by block, so it never needs to fit one GPU.
    #    A quantized base (QLoRA) is loaded quantized, as its users load it, and its base latency is the quantized one.
    channel.send("phase", name="load")
    model, tokenizer = load_base(WeightsSource(**spec.weights), suite.model, loaded, device=device,
                                 seed=suite.training.seed, place="cpu" if ranks.parallel == "fsdp" else None,
                                 quant=spec.quant)
    weight_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    metrics["load_time_s"] = time.perf_counter() - started
    method = get_method(spec.method)
    ctx = TrialContext(spec, loaded, device, autocast_dtype(suite.training.precision, device), channel, tokenizer,
                       method, method.make_config(**spec.method_config))
    metrics["seed"] = ctx.seed
    data = _read_data(ctx, ranks)
    ctx.cfg = method.for_steps(ctx.cfg, _steps(suite, len(data.all_train), ranks.world_size))  # AdaLoRA's total_step

    # 2. The base measurements, then the method, as the registry builds it (peft, bitsandbytes, or a hand-written
    #    module). DDP's peers wait for rank 0 meanwhile (up to the process group's timeout, `_group_timeout`).
    #    FSDP's rank 0 measures the base after training instead, on the whole model it rebuilds then.
    base = BaseMeasurements()
    model = _measure_base(ctx, data, model, base) if ranks.is_main and ranks.parallel != "fsdp" else ctx.apply(model)
    metrics["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    metrics["total_params"] = sum(p.numel() for p in model.parameters())

    # 3. Train, measuring the memory of a steady-state step.
    stats, peak, shape = _train(ctx, data, model, ranks, outcome)
    _record_training(ctx, outcome, ranks, model, stats, peak, shape, weight_dtype)
    if stats.stopped_early:
        outcome["status"] = "pruned"
        return

    # 4. Measure the trained model (rank 0 alone, when there are several).
    trained = ranks.trained_model(model, lambda: _measure_base(ctx, data, ctx.fresh_base(), base))
    if trained is not None:
        _measure_trained(ctx, data, trained, base, outcome)
    outcome["status"] = "success"


def _read_data(ctx: TrialContext, ranks: Ranks) -> TrialData:
    from peftplan.harness.checks import check_rank_shares
    from peftplan.harness.data import read_task
    from peftplan.harness.tasks import PromptFormatter, pad_id

    suite = ctx.suite
    task = read_task(ctx.run_dir / "data")
    formatter = PromptFormatter(ctx.tokenizer, task.info, suite.training.seq_len)
    with_eos = task.info.kind == "generation"
    all_train = [formatter.encode(e, with_eos=with_eos) for e in task.train]
    if ranks.world_size > 1:
        check_rank_shares(suite.training, len(all_train))  # every rank alike, so all of them stop
    return TrialData(
        info=task.info,
        formatter=formatter,
        all_train=all_train,
        train_items=list(ranks.shard(all_train)),  # several ranks: each trains on its own share
        loss_items=[formatter.encode(e, with_eos=with_eos) for e in task.eval[: suite.eval.loss_examples]],
        scored=task.eval[: suite.eval.task_examples],
        pad=pad_id(ctx.tokenizer),
        latency_prompt=_latency_prompt(formatter, task.eval),
    )


def _measure_base(ctx: TrialContext, data: TrialData, model: nn.Module, base: BaseMeasurements) -> nn.Module:
    """Measure the base model into `base`, then apply the method; returns the adapted, untrained model.

    A method without an adapter switch cannot be turned off after training, so its base for forgetting is the
    adapted model before training, measured here too.
    """
    suite, device = ctx.suite, ctx.device
    base.probe = _probe_windows(model, ctx.tokenizer, ctx.loaded, ctx.run_dir, device)
    if suite.eval.latency is not None:
        ctx.channel.send("phase", name="latency-base")
        _measure_speed_into(base.latency, "base", model, data.latency_prompt, ctx.loaded, device)
    model = ctx.apply(model)
    if _has_adapter_switch(model):
        return model
    if base.probe is not None:
        base.probe_losses = window_losses(model, base.probe, device, ctx.autocast)
    if suite.eval.lm_eval is not None:
        from peftplan.harness.lmeval import lm_eval_run

        base.lm_eval = lm_eval_run(model, ctx.tokenizer, suite.eval.lm_eval, ctx.loaded, device)
    return model


def _train(ctx: TrialContext, data: TrialData, model: nn.Module, ranks: Ranks,
           outcome: Outcome) -> tuple[TrainStats, MemoryPeak, tuple[int, int]]:
    """Train this rank's share; returns the stats, the measured step's peak and its (batch, sequence) shape."""
    from peftplan.harness.measure import StepMemoryProbe
    from peftplan.harness.train import TrainSettings, train

    suite, training = ctx.suite, ctx.suite.training
    steps = _steps(suite, len(data.all_train), ranks.world_size)
    settings = TrainSettings(
        steps=steps,
        batch_size=training.batch_size,
        grad_accum=training.grad_accum,
        lr=ctx.spec.lr,
        weight_decay=training.weight_decay,
        warmup_steps=training.warmup_steps,
        max_grad_norm=training.max_grad_norm,
        optimizer=training.optimizer,
        eval_every=training.eval_every,
        device=ctx.device,
        autocast=ctx.autocast,
        grad_checkpointing=training.grad_checkpointing,
        seed=ctx.seed,
    )
    outcome["memory"] = {"source": "cuda" if ctx.device.startswith("cuda") else "cpu-livebytes"}
    memory = StepMemoryProbe(model, ctx.device, cap=suite.budget.memory_cap, steps=steps,
                             sharded=ranks.parallel == "fsdp", held=lambda: ctx.method.state_tensors(model))

    def evaluate(module: nn.Module, items: Sequence[Encoded]) -> float:  # each rank scores a share of the items
        return mean_loss(ranks, module, items, data.pad, batch_size=training.batch_size, device=ctx.device,
                         autocast=ctx.autocast)

    ctx.channel.send("phase", name="train", steps=steps)
    stats = train(model, data.train_items, data.loss_items, settings, pad=data.pad,
                  observer=ChannelObserver(ctx.channel, outcome, ctx.spec.pruning, ranks), profiler=memory,
                  wrap=ranks.wrap, evaluate=evaluate, after_step=ctx.method.after_optimizer_step)
    return stats, memory.result(), memory.measured_shape


def _record_training(ctx: TrialContext, outcome: Outcome, ranks: Ranks, model: nn.Module, stats: TrainStats,
                     peak: MemoryPeak, shape: tuple[int, int], weight_dtype: str) -> None:
    """The trial's memory and training figures, from every rank (gathered on each; rank 0's outcome keeps them).

    The trial's peak is the highest rank's (what must fit each GPU), and the planner's prediction is for that
    rank's measured shape (each rank pads its batch to its own longest example). Throughput is all ranks' tokens
    over the slowest rank's time; the training loss is the ranks' mean, weighted by their tokens.
    """
    from peftplan.harness.measure import Prediction, rss_peak_bytes

    mine = {"rank": ranks.rank, "source": outcome["memory"]["source"], "peak_allocated": peak.peak_allocated,
            "peak_reserved": peak.peak_reserved, "rss_peak": rss_peak_bytes(), "measured_batch": shape[0],
            "measured_seq_len": shape[1], "train_tokens": stats.tokens, "train_time_s": stats.train_time_s,
            "train_loss": stats.train_loss}
    if ranks.world_size > 1:
        from peftplan.harness.ranks import trainable_checksum

        mine["trainable_checksum"] = trainable_checksum(model)
    everyone = ranks.gather(mine)
    reported = max(everyone, key=lambda r: (r["peak_allocated"] or 0, -r["rank"]))  # ties: the lowest rank
    predictions = _predictions(ctx, ranks, weight_dtype, {(r["measured_batch"], r["measured_seq_len"])
                                                          for r in everyone}) if ranks.is_main else {}
    prediction = predictions.get((reported["measured_batch"], reported["measured_seq_len"]), Prediction(None, None))
    reserved = [r["peak_reserved"] for r in everyone if r["peak_reserved"] is not None]
    outcome["memory"].update(peak_allocated=reported["peak_allocated"], peak_reserved=max(reserved, default=None),
                             predicted=prediction.breakdown, predicted_engine=prediction.engine,
                             prediction_error=prediction.error, measured_batch=reported["measured_batch"],
                             measured_seq_len=reported["measured_seq_len"])
    tokens, slowest = sum(r["train_tokens"] for r in everyone), max(r["train_time_s"] for r in everyone)
    losses = [(r["train_loss"], r["train_tokens"]) for r in everyone if r["train_loss"] is not None]
    outcome["metrics"].update(
        steps=stats.steps, eval_loss=stats.eval_loss, train_tokens=tokens, train_time_s=slowest,
        train_tokens_per_s=tokens / slowest if slowest > 0 else None,
        train_tokens_per_s_ci=stats.tokens_per_s_ci if ranks.world_size == 1 else None,
        train_loss=sum(loss * n for loss, n in losses) / max(1, sum(n for _, n in losses)) if losses else None,
    )
    if ranks.world_size == 1:
        return
    memory_keys = ("rank", "source", "peak_allocated", "peak_reserved", "rss_peak", "measured_batch",
                   "measured_seq_len")
    outcome["memory"]["ranks"] = [
        {**{k: r[k] for k in memory_keys}, "predicted_peak_allocated": (
            predictions.get((r["measured_batch"], r["measured_seq_len"]), Prediction(None, None)).breakdown or {}
        ).get("peak_allocated")}
        for r in everyone]
    outcome["distributed"] = {
        **(ranks.describe() or {}),
        "ranks": [{k: r[k] for k in ("rank", "train_tokens", "train_time_s", "train_loss", "trainable_checksum")}
                  for r in everyone],
    }


def _predictions(ctx: TrialContext, ranks: Ranks, weight_dtype: str,
                 shapes: set[tuple[int, int]]) -> dict[tuple[int, int], Prediction]:
    """The planner's per-GPU prediction for each measured (batch, sequence) shape."""
    from peftplan.harness.measure import predict_memory

    training = ctx.suite.training
    return {(batch, seq): predict_memory(
        ctx.suite.model.display_id, _model_config(ctx.loaded), ctx.spec.method, ctx.spec.method_config,
        seq_len=max(seq, 1), batch_size=max(batch, 1), grad_checkpointing=training.grad_checkpointing,
        optimizer=training.optimizer, dtype=_planner_dtype(weight_dtype, ctx.autocast), device=ctx.device,
        gpus=ranks.world_size, shard="fsdp" if ranks.parallel == "fsdp" else "none",
    ) for batch, seq in shapes}


def _measure_trained(ctx: TrialContext, data: TrialData, model: nn.Module, base: BaseMeasurements,
                     outcome: Outcome) -> None:
    """Task metric, forgetting (against `base`), lm-eval, adapter size and latency of the trained model."""
    import torch

    from peftplan.harness.tasks import score_task

    suite, device, channel, metrics = ctx.suite, ctx.device, ctx.channel, outcome["metrics"]
    channel.send("phase", name="evaluate")
    model.eval()
    with torch.no_grad(), _autocast(device, ctx.autocast):
        score = score_task(model, data.formatter, data.scored, data.info, device=device,
                           batch_size=suite.training.batch_size, max_new_tokens=suite.eval.max_new_tokens)
    metrics.update(task_metric=score.value, task_metric_ci=score.interval, task_metric_name=score.name,
                   task_metrics=score.all, task_metrics_ci=score.intervals)
    adapter_switch = _has_adapter_switch(model)
    if base.probe is not None:
        channel.send("phase", name="forgetting")
        adapted = window_losses(model, base.probe, device, ctx.autocast)
        if adapter_switch:
            with model.disable_adapter():  # type: ignore[operator]
                base.probe_losses = window_losses(model, base.probe, device, ctx.autocast)
        assert base.probe_losses is not None
        outcome["forgetting"] = {
            **forgetting_numbers(adapted, base.probe_losses), "probe": base.probe.name, "tokens": base.probe.tokens,
            "base_reference": "adapter-disabled" if adapter_switch else "before-training", "lm_eval": {},
        }
    if suite.eval.lm_eval is not None:
        from peftplan.harness.lmeval import lm_eval_run

        channel.send("phase", name="lm-eval")
        adapted_run = lm_eval_run(model, ctx.tokenizer, suite.eval.lm_eval, ctx.loaded, device)
        if adapter_switch:
            with model.disable_adapter():  # type: ignore[operator]
                base.lm_eval = lm_eval_run(model, ctx.tokenizer, suite.eval.lm_eval, ctx.loaded, device)
        assert base.lm_eval is not None
        if outcome["forgetting"] is None:  # no probe text was scored: its numbers are missing, not zero
            outcome["forgetting"] = {"probe": "lm-eval", "tokens": None, "loss_base": None, "loss_adapted": None,
                                     "delta": None, "lm_eval": {}}
        outcome["forgetting"].update(lm_eval_deltas(adapted_run, base.lm_eval))
    channel.send("phase", name="save")
    latency = base.latency
    _adapter_measurements(model, ctx.method, ctx.cfg, metrics, latency, ctx.spec, ctx.run_dir,
                          suite.eval.keep_adapters)
    if suite.eval.latency is not None:
        channel.send("phase", name="latency")
        _measure_speed_into(latency, "unmerged", model, data.latency_prompt, ctx.loaded, device)
        if ctx.method.mergeable and ctx.method.inference_overhead != "none":
            merged = ctx.method.merge(model)
            _measure_speed_into(latency, "merged", merged, data.latency_prompt, ctx.loaded, device)
    outcome["latency"] = latency or None


class ProbeWindows:
    def __init__(self, name: str, windows: list[list[int]]) -> None:
        self.name, self.windows = name, windows
        self.tokens = sum(len(w) for w in windows)


def window_losses(model: nn.Module, probe: ProbeWindows, device: str, autocast: str | None) -> list[tuple[float, int]]:
    """(Summed loss, tokens) of each probe window."""
    from peftplan.harness.measure import probe_window_losses

    return probe_window_losses(model, probe.windows, device=device, autocast=autocast)


def forgetting_numbers(adapted: list[tuple[float, int]], base: list[tuple[float, int]]) -> dict[str, Any]:
    """Per-token probe loss with and without the adapter, their difference, and its paired bootstrap interval."""
    from peftplan.harness.stats import paired_ratio_delta_ci

    tokens = sum(count for _, count in base)
    loss_base = sum(total for total, _ in base) / max(tokens, 1)
    loss_adapted = sum(total for total, _ in adapted) / max(tokens, 1)
    interval = paired_ratio_delta_ci([t for t, _ in adapted], [t for t, _ in base], [c for _, c in base])
    return {"loss_base": loss_base, "loss_adapted": loss_adapted, "delta": loss_adapted - loss_base,
            "delta_ci": interval}


def lm_eval_deltas(adapted: LmEvalRun, base: LmEvalRun) -> dict[str, Any]:
    """lm-eval scores adapted minus base, with a paired bootstrap interval over the documents both scored."""
    from peftplan.harness.stats import paired_mean_delta_ci

    deltas = {k: adapted.scores[k] - base.scores[k] for k in adapted.scores if k in base.scores}
    intervals = {}
    for key in deltas:
        mine, theirs = adapted.per_doc.get(key, {}), base.per_doc.get(key, {})
        docs = sorted(set(mine) & set(theirs))
        interval = paired_mean_delta_ci([mine[d] for d in docs], [theirs[d] for d in docs])
        if interval is not None:
            intervals[key] = interval
    return {"lm_eval": deltas, "lm_eval_ci": intervals}


def _probe_windows(model: nn.Module, tokenizer: Any, loaded: LoadedSuite, run_dir: Path, device: str) -> ProbeWindows | None:
    """The forgetting probe: the suite's text file, else (when allowed) text the base model samples itself."""
    from peftplan.harness.measure import probe_windows

    section = loaded.suite.eval.forgetting
    if section is None:
        return None
    path = loaded.resolve_path(section.probe) if section.probe != PROBE_SELF_SAMPLED else None
    if path is not None and path.is_file():
        name = section.name or f"{path.parent.name}-{path.stem}"
        text = path.read_text(errors="replace")[: section.tokens * 16]
    elif path is not None and section.fallback == "none":
        return None
    else:
        name = PROBE_SELF_SAMPLED
        text = _self_sampled(model, tokenizer, loaded, run_dir, device)
    return ProbeWindows(name, probe_windows(tokenizer, text, tokens=section.tokens, window=section.window))


def _self_sampled(model: nn.Module, tokenizer: Any, loaded: LoadedSuite, run_dir: Path, device: str) -> str:
    """Sampled once per run (under a lock) and kept in `data/probe-self-sampled.txt`."""
    import fcntl

    from peftplan.harness.measure import self_sampled_text

    section = loaded.suite.eval.forgetting
    assert section is not None
    path = run_dir / "data" / "probe-self-sampled.txt"
    with open(run_dir / "data" / ".probe.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            text = self_sampled_text(model, tokenizer, tokens=section.tokens, window=section.window,
                                     device=device, seed=loaded.suite.training.seed)
            from peftplan.atomic import atomic_write_text

            atomic_write_text(path, text)
    return path.read_text()


def _latency_prompt(formatter: Any, examples: list[Any]) -> list[int]:
    ids: list[int] = []
    for example in examples:
        ids += formatter.prompt_ids(example.prompt)
        if len(ids) >= 4096:
            break
    return ids


def _measure_speed_into(latency: dict[str, Any], variant: str, model: nn.Module, prompt: list[int],
                        loaded: LoadedSuite, device: str) -> None:
    from peftplan.harness.measure import measure_speed

    section = loaded.suite.eval.latency
    assert section is not None
    ids = (prompt * (1 + section.prompt_tokens // max(len(prompt), 1)))[: section.prompt_tokens]
    speed = measure_speed(model, ids, new_tokens=section.new_tokens, repeats=section.repeats, device=device)
    latency[f"prefill_{variant}"] = speed.prefill_tokens_per_s
    latency[f"decode_{variant}"] = speed.decode_tokens_per_s
    latency[f"prefill_{variant}_ci"] = speed.prefill_ci
    latency[f"decode_{variant}_ci"] = speed.decode_ci
    latency.setdefault("repeats", {})[variant] = speed.repeats


def _has_adapter_switch(model: nn.Module) -> bool:
    """peft models can turn their adapter off (`disable_adapter`); hand-written methods cannot."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def _adapter_measurements(model: nn.Module, method: Any, cfg: Any, metrics: dict[str, Any], latency: dict[str, Any],
                          spec: TrialSpec, run_dir: Path, keep: bool) -> None:
    """Save the trained adaptation (its size), then time loading it back and switching to it."""
    from peftplan.harness.measure import directory_bytes, timed

    target = run_dir / "adapters" / f"{spec.method_key}-{spec.trial_number}" if keep else None
    with tempfile.TemporaryDirectory(prefix="peftplan-adapter-") as scratch:
        directory = target or Path(scratch)
        method.save(model, directory, cfg)
        metrics["adapter_bytes"] = directory_bytes(directory)
        if _has_adapter_switch(model):
            _, latency["adapter_load_s"] = timed(model.load_adapter, str(directory), adapter_name="reloaded")  # type: ignore[operator]
            _, latency["swap_s"] = timed(model.set_adapter, "reloaded")  # type: ignore[operator]
            model.set_adapter("default")  # type: ignore[operator]
            model.delete_adapter("reloaded")  # type: ignore[operator]
        else:
            _, latency["adapter_load_s"] = timed(_load_saved_tensors, model, directory)


def _load_saved_tensors(model: nn.Module, directory: Path) -> None:
    """Copy a saved adaptation's tensors into the model (what loading it onto a resident base costs)."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(directory / "adaptation.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            if name in params:
                params[name].copy_(tensor)


def _steps(suite: Any, n_train: int, world_size: int = 1) -> int:
    if suite.training.steps is not None:
        return int(suite.training.steps)
    per_step = suite.training.batch_size * suite.training.grad_accum * world_size  # examples per optimizer step
    return max(1, int(suite.training.epochs * n_train / per_step + 0.999))


def _model_config(loaded: LoadedSuite) -> dict[str, Any] | None:
    from peftplan.harness.loading import model_config

    try:
        return model_config(loaded.suite.model, loaded)
    except Exception:
        return None


def _planner_dtype(weight_dtype: str, autocast: str | None) -> str:
    """The planner's `dtype` for this run: 16-bit weights as they are, else the autocast dtype (or fp32).

    fp32 weights under bf16 autocast has no planner context of its own: it is planned as bf16, which
    leaves out the fp32 copy of the weights (use `model.dtype: bf16` for a like-for-like comparison).
    """
    named = {"bfloat16": "bf16", "float16": "fp16"}
    return named.get(weight_dtype) or autocast or "fp32"


def _autocast(device: str, autocast: str | None) -> contextlib.AbstractContextManager[Any]:
    from peftplan.harness.train import autocast_context

    return autocast_context(device, autocast)


def is_oom(exc: BaseException) -> bool:
    """An out-of-memory of any kind: the suite's cap, CUDA, or the host allocator."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the trial subprocess, and of each rank of a multi-GPU trial.

    The trial process returns 0 once `outcome.json` is written, whatever the trial's status. A rank returns 0
    when it finished (success or pruned); a rank that failed exits 1 as soon as its outcome is written, because
    the launcher stops the other ranks only when one exits non-zero (they would wait for it in a collective).
    """
    ranks_of = os.environ.get(RANKS_OF_ENV)
    die_with_parent()
    if ranks_of:
        exit_if_orphaned_rank(int(ranks_of))  # its launcher died before the line above: nobody would stop it
    args = sys.argv[1:] if argv is None else argv
    spec_path = Path(args[0])
    spec = TrialSpec.model_validate_json(spec_path.read_text())
    from peftplan.harness.suite import Suite

    suite = Suite.model_validate(spec.suite)
    device = pick_device(suite.training.device)
    if ranks_of:
        return _run_rank(spec, spec_path, suite, device)
    outcome = Outcome(device)
    # Held until the outcome is written: the runner takes the pipe's closing for the trial's end.
    channel = TrialChannel(None, None)
    try:
        if suite.training.gpus > 1:
            from peftplan.harness.multigpu import run_ranks

            run_ranks(spec_path, suite.training, device=device, threads=spec.threads)  # writes outcome.json
            return 0
        channel = TrialChannel.from_env()
        run_trial(spec, channel, outcome, device)
    except BaseException as exc:  # every ending is recorded; SystemExit/KeyboardInterrupt too
        _record_failure(outcome, exc)
    _with_rss(outcome, device).write(spec_path.parent / OUTCOME)
    channel.close()
    return 0


def _run_rank(spec: TrialSpec, spec_path: Path, suite: Suite, device: str) -> int:
    """One rank: join the process group, run the trial, write `outcome-rank<r>.json`, then leave the group."""
    outcome = Outcome(device)
    ranks: Ranks | None = None
    channel = TrialChannel(None, None)
    try:
        ranks = _join_ranks(suite.training.parallel, device, _group_timeout(suite.budget.trial_timeout))
        if ranks.device is not None and ranks.device != device:
            device = ranks.device
            outcome["provenance"] = provenance(device, outcome["provenance"]["started_at"])
        channel = TrialChannel.from_env() if ranks.is_main else TrialChannel(None, None)
        run_trial(spec, channel, outcome, device, ranks)
    except BaseException as exc:
        _record_failure(outcome, exc)
    _with_rss(outcome, device).write(spec_path.parent / rank_outcome_name(launched_rank()))
    channel.close()  # rank 0's copies of the runner's pipe (the trial process holds it until the merge)
    if outcome["status"] in FINISHED and ranks is not None:
        ranks.close()
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # not sys.exit: the interpreter's shutdown runs process-group destructors, which may wait on peers


def _join_ranks(parallel: str, device: str, timeout: timedelta) -> Ranks:
    """Join the trial's process group. When another rank fails, the launcher stops this one with SIGTERM."""
    import signal

    from peftplan.harness.ranks import DataParallelRanks

    def stopped(signum: int, frame: Any) -> None:
        raise SystemExit("stopped by the launcher (another rank failed)")

    signal.signal(signal.SIGTERM, stopped)
    return DataParallelRanks(parallel, cpu=not device.startswith("cuda"), timeout=timeout)


def _group_timeout(trial_timeout: float | None) -> timedelta:
    """How long a rank waits for its peers in one collective (torch's default is 10 minutes on NCCL).

    Longer than the trial's own time limit, so a legitimate wait (rank 0 measuring the base model alone, its
    lm-eval included) is never cut short, and a stuck trial ends as `timeout` by the runner. Without a limit, a day.
    """
    return timedelta(seconds=trial_timeout + 60 if trial_timeout is not None else 24 * 3600)


def _record_failure(outcome: Outcome, exc: BaseException) -> None:
    outcome["status"] = "oom" if is_oom(exc) and not isinstance(exc, KeyboardInterrupt | SystemExit) else "failed"
    outcome["error"] = f"{type(exc).__name__}: {exc}".strip()[:2000]
    traceback.print_exception(exc)


def _with_rss(outcome: Outcome, device: str) -> Outcome:
    from peftplan.harness.measure import rss_peak_bytes

    source = "cuda" if device.startswith("cuda") else "cpu-livebytes"
    outcome["memory"] = {"source": source, **(outcome["memory"] or {}), "rss_peak": rss_peak_bytes()}
    return outcome


if __name__ == "__main__":
    sys.exit(main())
