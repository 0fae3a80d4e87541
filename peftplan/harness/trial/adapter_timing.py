"""The trained adaptation as users ship it: saved (its size), loaded back onto the resident model and
switched to, each timed. Kept under `adapters/` when the suite asks (`eval.keep_adapters`)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peftplan.harness.trial.recipe import adapter_switch

if TYPE_CHECKING:
    from torch import nn

    from peftplan.harness.trial.outcome import TrialOutcome
    from peftplan.harness.trial.recipe import TrialContext


@dataclass
class AdapterTimings:
    load_s: float  # loading the saved adaptation onto the resident model
    swap_s: float | None  # switching to it (None: the method has no adapter switch)


def time_adapter(ctx: TrialContext, model: nn.Module, outcome: TrialOutcome) -> AdapterTimings:
    """Save the trained adaptation (its size goes into `outcome` at once), then time loading it back and
    switching to it."""
    from peftplan.harness.measure import directory_bytes, timed

    spec = ctx.spec
    keep = ctx.suite.eval.keep_adapters
    target = ctx.run_dir / "adapters" / f"{spec.method_key}-{spec.trial_number}" if keep else None
    with tempfile.TemporaryDirectory(prefix="peftplan-adapter-") as scratch:
        directory = target or Path(scratch)
        ctx.method.save(model, directory, ctx.cfg)
        outcome.metrics.adapter_bytes = directory_bytes(directory)
        switch = adapter_switch(model)
        if switch is None:
            _, load_s = timed(_load_saved_tensors, model, directory)
            return AdapterTimings(load_s, None)
        _, load_s = timed(switch.load_adapter, str(directory), adapter_name="reloaded")
        _, swap_s = timed(switch.set_adapter, "reloaded")
        switch.set_adapter("default")
        switch.delete_adapter("reloaded")
        return AdapterTimings(load_s, swap_s)


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
