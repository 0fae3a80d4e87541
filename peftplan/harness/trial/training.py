"""A trial's training: this rank's share of the batches, with the memory of a steady-state step measured, then
the memory and training figures gathered from every rank, next to the planner's prediction for the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peftplan.results import Distributed, IntermediateValue, MemoryMeasurement, RankMemory, RankTraining

if TYPE_CHECKING:
    from torch import nn

    from peftplan.harness.channel import TrialChannel
    from peftplan.harness.measure import MemoryPeak, Prediction
    from peftplan.harness.ranks import Ranks
    from peftplan.harness.suite import LoadedSuite, Suite
    from peftplan.harness.tasks import Encoded
    from peftplan.harness.train import TrainStats
    from peftplan.harness.trial.outcome import TrialOutcome
    from peftplan.harness.trial.recipe import TrialContext, TrialData


class ChannelObserver:
    """Forwards training progress to the runner; asks it whether to prune after each eval.

    Only rank 0 holds the channel; `ranks.agree` hands its decision to every rank.
    """

    def __init__(self, channel: TrialChannel, outcome: TrialOutcome, pruning: bool, ranks: Ranks) -> None:
        self.channel, self.outcome, self.pruning, self.ranks = channel, outcome, pruning, ranks

    def on_step(self, step: int, loss: float) -> None:
        self.outcome.metrics.steps = step
        self.channel.send("step", step=step, loss=loss)

    def on_eval(self, step: int, eval_loss: float) -> bool:
        self.outcome.intermediate.append(IntermediateValue(step=step, eval_loss=eval_loss))
        prune = self.channel.ask_prune(step, eval_loss) if self.ranks.is_main else False
        return self.ranks.agree(prune and self.pruning)


def memory_source(device: str) -> str:
    """How a peak is measured on `device`: CUDA's allocator, or the live-bytes tracker on the CPU."""
    return "cuda" if device.startswith("cuda") else "cpu-livebytes"


def train_share(ctx: TrialContext, data: TrialData, model: nn.Module, ranks: Ranks,
                outcome: TrialOutcome) -> tuple[TrainStats, MemoryPeak, tuple[int, int]]:
    """Train this rank's share; returns the stats, the measured step's peak and its (batch, sequence) shape."""
    from peftplan.harness.measure import StepMemoryProbe
    from peftplan.harness.ranks import mean_loss
    from peftplan.harness.train import TrainSettings, train

    suite, training = ctx.suite, ctx.suite.training
    steps = trial_steps(suite, len(data.all_train), ranks.world_size)
    # The suite's training section as it is, but for what the trial resolved: steps, lr, device and dtype.
    same = ("batch_size", "grad_accum", "weight_decay", "warmup_steps", "max_grad_norm", "optimizer", "eval_every",
            "grad_checkpointing")
    settings = TrainSettings(steps=steps, lr=ctx.spec.lr, device=ctx.device, autocast=ctx.autocast, seed=ctx.seed,
                             **{name: getattr(training, name) for name in same})
    outcome.memory = MemoryMeasurement(source=memory_source(ctx.device))
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


@dataclass
class RankFigures:
    """One rank's measured step and training, gathered on every rank."""

    rank: int
    source: str
    peak_allocated: int | None
    peak_reserved: int | None
    rss_peak: int
    measured_batch: int
    measured_seq_len: int
    train_tokens: int
    train_time_s: float
    train_loss: float | None
    trainable_checksum: float | None = None  # several ranks only

    @property
    def shape(self) -> tuple[int, int]:
        return self.measured_batch, self.measured_seq_len


def record_training(ctx: TrialContext, outcome: TrialOutcome, ranks: Ranks, model: nn.Module, stats: TrainStats,
                    peak: MemoryPeak, shape: tuple[int, int], weight_dtype: str) -> None:
    """The trial's memory and training figures, from every rank (gathered on each; rank 0's outcome keeps them).

    The trial's peak is the highest rank's (what must fit each GPU), and the planner's prediction is for that
    rank's measured shape (each rank pads its batch to its own longest example). Throughput is all ranks' tokens
    over the slowest rank's time; the training loss is the ranks' mean, weighted by their tokens.
    """
    from peftplan.harness.measure import Prediction, rss_peak_bytes

    memory = outcome.memory
    assert memory is not None  # set when training started
    mine = RankFigures(rank=ranks.rank, source=memory.source, peak_allocated=peak.peak_allocated,
                       peak_reserved=peak.peak_reserved, rss_peak=rss_peak_bytes(), measured_batch=shape[0],
                       measured_seq_len=shape[1], train_tokens=stats.tokens, train_time_s=stats.train_time_s,
                       train_loss=stats.train_loss)
    if ranks.world_size > 1:
        from peftplan.harness.ranks import trainable_checksum

        mine.trainable_checksum = trainable_checksum(model)
    everyone = ranks.gather(mine)
    reported = max(everyone, key=lambda r: (r.peak_allocated or 0, -r.rank))  # ties: the lowest rank
    predictions = _predictions(ctx, ranks, weight_dtype, {r.shape for r in everyone}) if ranks.is_main else {}
    prediction = predictions.get(reported.shape, Prediction(None, None))
    reserved = [r.peak_reserved for r in everyone if r.peak_reserved is not None]
    memory.peak_allocated = reported.peak_allocated
    memory.peak_reserved = max(reserved, default=None)
    memory.predicted = prediction.breakdown
    memory.predicted_engine = prediction.engine
    memory.prediction_error = prediction.error
    memory.measured_batch, memory.measured_seq_len = reported.shape
    tokens, slowest = sum(r.train_tokens for r in everyone), max(r.train_time_s for r in everyone)
    losses = [(loss, r.train_tokens) for r in everyone if (loss := r.train_loss) is not None]
    metrics = outcome.metrics
    metrics.steps = stats.steps
    metrics.eval_loss = stats.eval_loss
    metrics.train_tokens = tokens
    metrics.train_time_s = slowest
    metrics.train_tokens_per_s = tokens / slowest if slowest > 0 else None
    metrics.train_tokens_per_s_ci = stats.tokens_per_s_ci if ranks.world_size == 1 else None
    metrics.train_loss = sum(loss * n for loss, n in losses) / max(1, sum(n for _, n in losses)) if losses else None
    if ranks.world_size == 1:
        return
    memory.ranks = [RankMemory(
        rank=r.rank, source=r.source, peak_allocated=r.peak_allocated, peak_reserved=r.peak_reserved,
        rss_peak=r.rss_peak, measured_batch=r.measured_batch, measured_seq_len=r.measured_seq_len,
        predicted_peak_allocated=(predictions.get(r.shape, Prediction(None, None)).breakdown or {}).get(
            "peak_allocated"),
    ) for r in everyone]
    described = ranks.describe() or Distributed(world_size=ranks.world_size, parallel=ranks.parallel)
    described.ranks = [_rank_training(r) for r in everyone]
    outcome.distributed = described


def _rank_training(figures: RankFigures) -> RankTraining:
    assert figures.trainable_checksum is not None  # every rank of several computes it
    return RankTraining(rank=figures.rank, train_tokens=figures.train_tokens, train_time_s=figures.train_time_s,
                        train_loss=figures.train_loss, trainable_checksum=figures.trainable_checksum)


def _predictions(ctx: TrialContext, ranks: Ranks, weight_dtype: str,
                 shapes: set[tuple[int, int]]) -> dict[tuple[int, int], Prediction]:
    """The planner's per-GPU prediction for each measured (batch, sequence) shape."""
    from peftplan.harness.measure import predict_memory

    training = ctx.suite.training
    return {(batch, seq): predict_memory(
        ctx.suite.model.display_id, _model_config(ctx.loaded), ctx.spec.method, ctx.spec.method_config,
        seq_len=max(seq, 1), batch_size=max(batch, 1), grad_checkpointing=training.grad_checkpointing,
        optimizer=training.optimizer, dtype=planner_dtype(weight_dtype, ctx.autocast), device=ctx.device,
        gpus=ranks.world_size, shard="fsdp" if ranks.parallel == "fsdp" else "none",
    ) for batch, seq in shapes}


def trial_steps(suite: Suite, n_train: int, world_size: int = 1) -> int:
    """Optimizer steps: the suite's `training.steps`, else its epochs over the training examples."""
    training = suite.training
    if training.epochs is None:  # the suite sets exactly one of the two (steps: 100 by default)
        assert training.steps is not None
        return training.steps
    per_step = training.batch_size * training.grad_accum * world_size  # examples per optimizer step
    return max(1, int(training.epochs * n_train / per_step + 0.999))


def _model_config(loaded: LoadedSuite) -> dict[str, Any] | None:
    from peftplan.harness.loading import model_config

    try:
        return model_config(loaded.suite.model, loaded)
    except Exception:
        return None


def planner_dtype(weight_dtype: str, autocast: str | None) -> str:
    """The planner's `dtype` for this run: 16-bit weights as they are, else the autocast dtype (or fp32).

    fp32 weights under bf16 autocast has no planner context of its own: it is planned as bf16, which
    leaves out the fp32 copy of the weights (use `model.dtype: bf16` for a like-for-like comparison).
    """
    named = {"bfloat16": "bf16", "float16": "fp16"}
    return named.get(weight_dtype) or autocast or "fp32"
