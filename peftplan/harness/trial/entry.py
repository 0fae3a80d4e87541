"""A trial process's entry point: `python -m peftplan.harness.trial.entry work/<method>-<n>/spec.json`.

`main` runs the trial (`run_trial`), or launches its ranks, or runs one rank, and writes the outcome whatever
happens; `run_trial` is the trial body, read top to bottom. See the package's docstring for the whole story.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftplan.harness.channel import LAUNCHED_AT_ENV, RANKS_OF_ENV, TrialChannel
from peftplan.harness.lifeline import die_with_parent, exit_if_orphaned_rank
from peftplan.harness.provenance import provenance
from peftplan.harness.ranks import Ranks, SingleProcess, launched_rank, rank_outcome_name
from peftplan.harness.trial.forgetting import score_untrained
from peftplan.harness.trial.measure_trial import BaseMeasurements, measure_base, measure_trained
from peftplan.harness.trial.outcome import FINISHED, OUTCOME, TrialOutcome
from peftplan.harness.trial.recipe import TrialContext, TrialData, TrialSpec, loaded_suite, read_data
from peftplan.harness.trial.training import memory_source, record_training, train_share, trial_steps
from peftplan.results import MemoryMeasurement, TrialStatus

if TYPE_CHECKING:
    from torch import nn

    from peftplan.harness.suite import Suite


def run_trial(spec: TrialSpec, channel: TrialChannel, outcome: TrialOutcome, device: str,
              ranks: Ranks | None = None) -> None:
    """Train and measure one config; fills `outcome` as it goes. `ranks`: see `harness/ranks.py`."""
    import torch

    from peftplan.harness.loading import WeightsSource, load_base
    from peftplan.harness.train import autocast_dtype
    from peftplan.methods import get_method

    ranks = ranks or SingleProcess()
    loaded = loaded_suite(spec)
    suite = loaded.suite
    metrics = outcome.metrics
    started = time.perf_counter()
    if os.environ.get(LAUNCHED_AT_ENV):  # interpreter start and imports, before any work
        metrics.startup_s = time.time() - float(os.environ[LAUNCHED_AT_ENV])
    if spec.threads:  # the cores the runner gave this trial, shared by its ranks
        torch.set_num_threads(max(1, spec.threads // ranks.world_size))
    metrics.threads = torch.get_num_threads()

    # 1. The base model and the data, exactly as every other trial of this run sees them. An FSDP rank loads
    #    the base on the CPU: sharding moves it to its GPU block by block, so it never needs to fit one GPU.
    #    A quantized base (QLoRA) is loaded quantized, as its users load it, and its base latency is the quantized one.
    channel.send("phase", name="load")
    model, tokenizer = load_base(WeightsSource(**spec.weights), suite.model, loaded, device=device,
                                 seed=suite.training.seed, place="cpu" if ranks.parallel == "fsdp" else None,
                                 quant=spec.quant)
    weight_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    metrics.load_time_s = time.perf_counter() - started
    method = get_method(spec.method)
    ctx = TrialContext(spec, loaded, device, autocast_dtype(suite.training.precision, device), channel, tokenizer,
                       method, method.make_config(**spec.method_config))
    metrics.seed = ctx.seed
    data = read_data(ctx, ranks)
    ctx.cfg = method.for_steps(ctx.cfg, trial_steps(suite, len(data.all_train), ranks.world_size))  # AdaLoRA's total_step

    # 2. The base measurements, then the method, as the registry builds it (peft, bitsandbytes, or a hand-written
    #    module). DDP's peers wait for rank 0 meanwhile (up to the process group's timeout, `_group_timeout`).
    #    FSDP's rank 0 measures the base after training instead, on the whole model it rebuilds then.
    base = BaseMeasurements()
    if ranks.is_main and ranks.parallel != "fsdp":
        model = _measured_then_adapted(ctx, data, model, base)
    else:
        model = ctx.apply(model)
    metrics.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    metrics.total_params = sum(p.numel() for p in model.parameters())

    # 3. Train, measuring the memory of a steady-state step.
    stats, peak, shape = train_share(ctx, data, model, ranks, outcome)
    record_training(ctx, outcome, ranks, model, stats, peak, shape, weight_dtype)
    if stats.stopped_early:
        outcome.status = TrialStatus.PRUNED
        return

    # 4. Measure the trained model (rank 0 alone, when there are several).
    trained = ranks.trained_model(model, lambda: _measured_then_adapted(ctx, data, ctx.fresh_base(), base))
    if trained is not None:
        measure_trained(ctx, data, trained, base, outcome)
    outcome.status = TrialStatus.SUCCESS


def _measured_then_adapted(ctx: TrialContext, data: TrialData, model: nn.Module,
                           base: BaseMeasurements) -> nn.Module:
    """Measure the base `model` into `base`, then apply the method; returns the adapted, untrained model.

    A method without an adapter switch cannot be turned off after training, so its reference for forgetting is
    the adapted model before training, scored here too.
    """
    measure_base(ctx, data, model, base)
    adapted = ctx.apply(model)
    score_untrained(ctx, adapted, base.forgetting)
    return adapted


def pick_device(name: str) -> str:
    if name == "cpu":
        return "cpu"  # without importing torch, which the process launching a multi-GPU trial's ranks never needs
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return "cuda:0"
    return "cpu"


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
    outcome = TrialOutcome.start(device)
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
        record_failure(outcome, exc)
    _ended(outcome, device).write(spec_path.parent / OUTCOME)
    channel.close()
    return 0


def _run_rank(spec: TrialSpec, spec_path: Path, suite: Suite, device: str) -> int:
    """One rank: join the process group, run the trial, write `outcome-rank<r>.json`, then leave the group."""
    outcome = TrialOutcome.start(device)
    ranks: Ranks | None = None
    channel = TrialChannel(None, None)
    try:
        ranks = _join_ranks(suite.training.parallel, device, _group_timeout(suite.budget.trial_timeout))
        if ranks.device is not None and ranks.device != device:
            device = ranks.device
            outcome.provenance = provenance(device, outcome.provenance.started_at)
        channel = TrialChannel.from_env() if ranks.is_main else TrialChannel(None, None)
        run_trial(spec, channel, outcome, device, ranks)
    except BaseException as exc:
        record_failure(outcome, exc)
    _ended(outcome, device).write(spec_path.parent / rank_outcome_name(launched_rank()))
    channel.close()  # rank 0's copies of the runner's pipe (the trial process holds it until the merge)
    finished = outcome.status in FINISHED and ranks is not None
    if finished and ranks is not None:
        ranks.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not a normal exit, even after a clean finish: the interpreter's shutdown runs process-group and thread
    # destructors, which may wait on peers, and a rank done before rank 0 (which still measures the trained
    # adapter) was seen to abort there on gloo ("terminate called without an active exception", SIGABRT);
    # the launcher then stops rank 0 and the trial fails. Its outcome is written; nothing is left to run.
    os._exit(0 if finished else 1)


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


def record_failure(outcome: TrialOutcome, exc: BaseException) -> None:
    """The trial ended with `exc`: `oom` for an out-of-memory, else `failed`, with its one-line error."""
    oom = is_oom(exc) and not isinstance(exc, KeyboardInterrupt | SystemExit)
    outcome.status = TrialStatus.OOM if oom else TrialStatus.FAILED
    outcome.error = f"{type(exc).__name__}: {exc}".strip()[:2000]
    traceback.print_exception(exc)


def _ended(outcome: TrialOutcome, device: str) -> TrialOutcome:
    """The outcome as the process ends: its end time, and the process's resident-set peak in its memory (made
    if training never started)."""
    from peftplan.harness.measure import rss_peak_bytes

    if outcome.memory is None:
        outcome.memory = MemoryMeasurement(source=memory_source(device))
    outcome.memory.rss_peak = rss_peak_bytes()
    return outcome.end()


if __name__ == "__main__":
    sys.exit(main())
