"""The forgetting probe: held-out general text scored with and without the adapter, and lm-eval tasks set
against the base model's scores, each difference with its paired interval.

The reference is the adapter turned off, for methods that can turn it off (peft's `disable_adapter`); a
method without a switch is scored before training instead (`score_untrained`). What was not measured is
None, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftplan.harness.trial.recipe import adapter_switch
from peftplan.results import Forgetting

if TYPE_CHECKING:
    from torch import nn

    from peftplan.harness.lmeval import LmEvalRun
    from peftplan.harness.suite import LoadedSuite
    from peftplan.harness.trial.recipe import TrialContext

PROBE_SELF_SAMPLED = "self-sampled"


class ProbeWindows:
    def __init__(self, name: str, windows: list[list[int]]) -> None:
        self.name, self.windows = name, windows
        self.tokens = sum(len(w) for w in windows)


@dataclass
class ForgettingReference:
    """What the base model scored, to set the trained model against."""

    probe: ProbeWindows | None = None
    probe_losses: list[tuple[float, int]] | None = None  # per window; methods without a switch: before training
    lm_eval: LmEvalRun | None = None  # likewise


def reference_probe(ctx: TrialContext, base: nn.Module) -> ForgettingReference:
    """The probe the trial scores, picked (or sampled) with the base model; its scores come later."""
    return ForgettingReference(probe=_probe_windows(base, ctx.tokenizer, ctx.loaded, ctx.run_dir, ctx.device))


def score_untrained(ctx: TrialContext, adapted: nn.Module, reference: ForgettingReference) -> None:
    """A method without an adapter switch cannot be turned off after training: score its adapted model before
    training as the reference. With a switch, nothing to do (the reference is scored after training)."""
    if adapter_switch(adapted) is not None:
        return
    if reference.probe is not None:
        reference.probe_losses = window_losses(adapted, reference.probe, ctx.device, ctx.autocast)
    if ctx.suite.eval.lm_eval is not None:
        from peftplan.harness.lmeval import lm_eval_run

        reference.lm_eval = lm_eval_run(adapted, ctx.tokenizer, ctx.suite.eval.lm_eval, ctx.loaded, ctx.device)


def measure_forgetting(ctx: TrialContext, model: nn.Module, reference: ForgettingReference) -> Forgetting | None:
    """The trained model's forgetting against `reference` (scored now with the adapter off, where it can be)."""
    switch = adapter_switch(model)
    forgetting = None
    if reference.probe is not None:
        ctx.channel.send("phase", name="forgetting")
        adapted = window_losses(model, reference.probe, ctx.device, ctx.autocast)
        if switch is not None:
            with switch.disable_adapter():
                reference.probe_losses = window_losses(model, reference.probe, ctx.device, ctx.autocast)
        assert reference.probe_losses is not None
        forgetting = probe_forgetting(reference.probe, adapted, reference.probe_losses,
                                      "adapter-disabled" if switch is not None else "before-training")
    if ctx.suite.eval.lm_eval is not None:
        from peftplan.harness.lmeval import lm_eval_run

        ctx.channel.send("phase", name="lm-eval")
        section = ctx.suite.eval.lm_eval
        adapted_run = lm_eval_run(model, ctx.tokenizer, section, ctx.loaded, ctx.device)
        if switch is not None:
            with switch.disable_adapter():
                reference.lm_eval = lm_eval_run(model, ctx.tokenizer, section, ctx.loaded, ctx.device)
        assert reference.lm_eval is not None
        if forgetting is None:  # no probe text was scored: its numbers are missing, not zero
            forgetting = Forgetting(probe="lm-eval")
        forgetting.lm_eval, forgetting.lm_eval_ci = lm_eval_deltas(adapted_run, reference.lm_eval)
    return forgetting


def window_losses(model: nn.Module, probe: ProbeWindows, device: str, autocast: str | None) -> list[tuple[float, int]]:
    """(Summed loss, tokens) of each probe window."""
    from peftplan.harness.measure import probe_window_losses

    return probe_window_losses(model, probe.windows, device=device, autocast=autocast)


def probe_forgetting(probe: ProbeWindows, adapted: list[tuple[float, int]], base: list[tuple[float, int]],
                     base_reference: str) -> Forgetting:
    """Per-token probe loss with and without the adapter, their difference, and its paired bootstrap interval."""
    from peftplan.harness.stats import paired_ratio_delta_ci

    tokens = sum(count for _, count in base)
    loss_base = sum(total for total, _ in base) / max(tokens, 1)
    loss_adapted = sum(total for total, _ in adapted) / max(tokens, 1)
    interval = paired_ratio_delta_ci([t for t, _ in adapted], [t for t, _ in base], [c for _, c in base])
    return Forgetting(probe=probe.name, tokens=probe.tokens, loss_base=loss_base, loss_adapted=loss_adapted,
                      delta=loss_adapted - loss_base, delta_ci=interval, base_reference=base_reference)


def lm_eval_deltas(adapted: LmEvalRun, base: LmEvalRun) -> tuple[dict[str, float], dict[str, list[float]]]:
    """lm-eval scores adapted minus base, and their paired bootstrap intervals over the documents both scored."""
    from peftplan.harness.stats import paired_mean_delta_ci

    deltas = {k: adapted.scores[k] - base.scores[k] for k in adapted.scores if k in base.scores}
    intervals = {}
    for key in deltas:
        mine, theirs = adapted.per_doc.get(key, {}), base.per_doc.get(key, {})
        docs = sorted(set(mine) & set(theirs))
        interval = paired_mean_delta_ci([mine[d] for d in docs], [theirs[d] for d in docs])
        if interval is not None:
            intervals[key] = interval
    return deltas, intervals


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

    from peftplan.atomic import atomic_write_text
    from peftplan.harness.measure import self_sampled_text

    section = loaded.suite.eval.forgetting
    assert section is not None
    path = run_dir / "data" / "probe-self-sampled.txt"
    with open(run_dir / "data" / ".probe.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            text = self_sampled_text(model, tokenizer, tokens=section.tokens, window=section.window,
                                     device=device, seed=loaded.suite.training.seed)
            atomic_write_text(path, text)
    return path.read_text()
