"""What a trial measures on its models: the base model before the method is applied (forgetting's probe and
reference, its latency), and the trained model after training (task metric, forgetting, adapter size and
timings, latency unmerged and merged). The measuring itself is `harness/measure.py`'s."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peftplan.harness.trial.adapter_timing import AdapterTimings, time_adapter
from peftplan.harness.trial.forgetting import ForgettingReference, measure_forgetting, reference_probe
from peftplan.results import Latency

if TYPE_CHECKING:
    from torch import nn

    from peftplan.harness.measure import Speed
    from peftplan.harness.trial.outcome import TrialOutcome
    from peftplan.harness.trial.recipe import TrialContext, TrialData


@dataclass
class BaseMeasurements:
    """What the base model measured, to set against the trained one."""

    forgetting: ForgettingReference = field(default_factory=ForgettingReference)
    speed: Speed | None = None  # its latency (None: the suite measures none)


def measure_base(ctx: TrialContext, data: TrialData, model: nn.Module, base: BaseMeasurements) -> None:
    """Measure the base model (before any method is applied) into `base`: pick the forgetting probe, time it."""
    base.forgetting = reference_probe(ctx, model)
    if ctx.suite.eval.latency is not None:
        ctx.channel.send("phase", name="latency-base")
        base.speed = _speed(ctx, data, model)


def measure_trained(ctx: TrialContext, data: TrialData, model: nn.Module, base: BaseMeasurements,
                    outcome: TrialOutcome) -> None:
    """Task metric, forgetting (against `base`), lm-eval, adapter size and latency of the trained model."""
    import torch

    from peftplan.harness.tasks import score_task

    suite, device, channel, metrics = ctx.suite, ctx.device, ctx.channel, outcome.metrics
    channel.send("phase", name="evaluate")
    model.eval()
    with torch.no_grad(), _autocast(device, ctx.autocast):
        score = score_task(model, data.formatter, data.scored, data.info, device=device,
                           batch_size=suite.training.batch_size, max_new_tokens=suite.eval.max_new_tokens)
    metrics.task_metric = score.value
    metrics.task_metric_ci = score.interval
    metrics.task_metric_name = score.name
    metrics.task_metrics = score.all
    metrics.task_metrics_ci = score.intervals
    outcome.forgetting = measure_forgetting(ctx, model, base.forgetting)
    channel.send("phase", name="save")
    adapter = time_adapter(ctx, model, outcome)
    unmerged = merged = None
    if suite.eval.latency is not None:
        channel.send("phase", name="latency")
        unmerged = _speed(ctx, data, model)
        if ctx.method.traits.mergeable and ctx.method.traits.inference_overhead != "none":
            merged = _speed(ctx, data, ctx.method.merge(model))
    outcome.latency = latency(base.speed, unmerged, merged, adapter)


def latency(base: Speed | None, unmerged: Speed | None, merged: Speed | None, adapter: AdapterTimings) -> Latency:
    """The result's latency: each variant's speeds (None where not measured) and the adapter's timings."""
    variants = {"base": base, "unmerged": unmerged, "merged": merged}
    return Latency(
        prefill_base=_prefill(base), prefill_unmerged=_prefill(unmerged), prefill_merged=_prefill(merged),
        decode_base=_decode(base), decode_unmerged=_decode(unmerged), decode_merged=_decode(merged),
        adapter_load_s=adapter.load_s, swap_s=adapter.swap_s,
        prefill_base_ci=_prefill_ci(base), prefill_unmerged_ci=_prefill_ci(unmerged),
        prefill_merged_ci=_prefill_ci(merged), decode_base_ci=_decode_ci(base),
        decode_unmerged_ci=_decode_ci(unmerged), decode_merged_ci=_decode_ci(merged),
        repeats={name: speed.repeats for name, speed in variants.items() if speed is not None},
    )


def _prefill(speed: Speed | None) -> float | None:
    return None if speed is None else speed.prefill_tokens_per_s


def _decode(speed: Speed | None) -> float | None:
    return None if speed is None else speed.decode_tokens_per_s


def _prefill_ci(speed: Speed | None) -> list[float | None] | None:
    return None if speed is None else speed.prefill_ci


def _decode_ci(speed: Speed | None) -> list[float | None] | None:
    return None if speed is None else speed.decode_ci


def _speed(ctx: TrialContext, data: TrialData, model: nn.Module) -> Speed:
    """Prefill and decode speed of `model` on the suite's latency prompt."""
    from peftplan.harness.measure import measure_speed

    section = ctx.suite.eval.latency
    assert section is not None
    prompt = data.latency_prompt
    ids = (prompt * (1 + section.prompt_tokens // max(len(prompt), 1)))[: section.prompt_tokens]
    return measure_speed(model, ids, new_tokens=section.new_tokens, repeats=section.repeats, device=ctx.device)


def _autocast(device: str, autocast: str | None) -> contextlib.AbstractContextManager[Any]:
    from peftplan.harness.train import autocast_context

    return autocast_context(device, autocast)
