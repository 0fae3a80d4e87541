"""One trial, run in its own subprocess: `python -m peftplan.harness.trial work/<method>-<n>/spec.json`.

`run_trial` reads top to bottom: load the base, measure it, apply the method, train, then measure the
trained model (task metric, forgetting, latency, adapter size). It writes `outcome.json` next to the
spec, whatever happens: an out-of-memory becomes status `oom`, any other error `failed`, and what was
measured until then is kept. The runner turns the outcome into the trial's result file.

With `training.gpus: N > 1` this process launches N ranks of itself through `accelerate launch`
(`harness/multigpu.py`). Every rank runs `run_trial` on its share of the batches (`harness/ranks.py`);
after training, rank 0 alone measures the trained model, so the outcome has the same shape, plus every
rank's memory peak.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from peftplan.harness.channel import LAUNCHED_AT_ENV, RANKS_OF_ENV, TrialChannel
from peftplan.harness.provenance import now_iso, provenance
from peftplan.harness.ranks import SingleProcess, launched_rank, rank_outcome_name

if TYPE_CHECKING:
    from torch import nn

    from peftplan.harness.suite import LoadedSuite

OUTCOME = "outcome.json"
SPEC = "spec.json"
PROBE_SELF_SAMPLED = "self-sampled"


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


class Outcome:
    """What a trial measured so far; written as `outcome.json` when the trial ends, however it ends."""

    def __init__(self, device: str) -> None:
        self.data: dict[str, Any] = {
            "status": "failed",
            "error": None,
            "metrics": {},
            "forgetting": None,
            "latency": None,
            "memory": None,
            "distributed": None,
            "intermediate": [],
            "provenance": provenance(device, now_iso()),
        }

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def write(self, path: Path) -> None:
        self.data["provenance"]["finished_at"] = now_iso()
        from peftplan.harness.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.data, indent=2, default=float))


class ChannelObserver:
    """Forwards training progress to the runner; asks it whether to prune after each eval.

    Only rank 0 holds the channel; `ranks.agree` hands its decision to every rank.
    """

    def __init__(self, channel: TrialChannel, outcome: Outcome, pruning: bool, ranks: SingleProcess) -> None:
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


def run_trial(spec: TrialSpec, channel: TrialChannel, outcome: Outcome, device: str,
              ranks: SingleProcess | None = None) -> None:
    """Train and measure one config; fills `outcome` as it goes. `ranks`: see `harness/ranks.py`."""
    import torch

    from peftplan.harness.data import read_task
    from peftplan.harness.loading import WeightsSource, load_base
    from peftplan.harness.measure import StepMemoryProbe, planner_prediction
    from peftplan.harness.tasks import PromptFormatter, pad_id, score_task
    from peftplan.harness.train import TrainSettings, autocast_dtype, train
    from peftplan.methods import get_method

    ranks = ranks or SingleProcess()
    main = ranks.is_main
    loaded = loaded_suite(spec)
    suite = loaded.suite
    run_dir = Path(spec.run_dir)
    metrics = outcome["metrics"]
    started = time.perf_counter()
    if os.environ.get(LAUNCHED_AT_ENV):  # interpreter start and imports, before any work
        metrics["startup_s"] = time.time() - float(os.environ[LAUNCHED_AT_ENV])
    if spec.threads:  # the cores the runner gave this trial, shared by its ranks
        torch.set_num_threads(max(1, spec.threads // ranks.world_size))
    metrics["threads"] = torch.get_num_threads()
    autocast = autocast_dtype(suite.training.precision, device)

    # 1. The base model and the data, exactly as every other trial of this run sees them.
    channel.send("phase", name="load")
    source = WeightsSource(**spec.weights)
    model, tokenizer = load_base(source, suite.model, loaded, device=device, seed=suite.training.seed)
    weight_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    metrics["load_time_s"] = time.perf_counter() - started
    task = read_task(run_dir / "data")
    formatter = PromptFormatter(tokenizer, task.info, suite.training.seq_len)
    with_eos = task.info.kind == "generation"
    all_train = [formatter.encode(e, with_eos=with_eos) for e in task.train]
    train_items = ranks.shard(all_train)  # several ranks: each trains on its own share
    loss_items = [formatter.encode(e, with_eos=with_eos) for e in task.eval[: suite.eval.loss_examples]]
    scored = task.eval[: suite.eval.task_examples]
    pad = pad_id(tokenizer)
    probe = _probe_windows(model, tokenizer, loaded, run_dir, device) if main else None
    latency_prompt = _latency_prompt(formatter, task.eval)
    latency: dict[str, Any] = {}
    if suite.eval.latency is not None and main:
        channel.send("phase", name="latency-base")
        _measure_speed_into(latency, "base", model, latency_prompt, loaded, device)

    # 2. The method, as the registry builds it (peft, bitsandbytes, or a hand-written module).
    method = get_method(spec.method)
    cfg = method.make_config(**spec.method_config)
    model = _apply_seeded(method, model, cfg, suite.training.seed + spec.trial_number)
    metrics["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    metrics["total_params"] = sum(p.numel() for p in model.parameters())
    adapter_switch = _has_adapter_switch(model)
    base_probe = None
    if probe is not None and not adapter_switch:  # no switch to turn the method off: measure before training
        base_probe = evaluate_loss_windows(model, probe, device, autocast)
    base_lm_eval = None
    if suite.eval.lm_eval is not None and not adapter_switch and main:
        from peftplan.harness.lmeval import lm_eval_scores

        base_lm_eval = lm_eval_scores(model, tokenizer, suite.eval.lm_eval, loaded, device)

    # 3. Train, measuring the memory of a steady-state step.
    steps = _steps(suite, len(all_train), ranks.world_size)
    settings = TrainSettings(
        steps=steps,
        batch_size=suite.training.batch_size,
        grad_accum=suite.training.grad_accum,
        lr=spec.lr,
        weight_decay=suite.training.weight_decay,
        warmup_steps=suite.training.warmup_steps,
        max_grad_norm=suite.training.max_grad_norm,
        optimizer=suite.training.optimizer,
        eval_every=suite.training.eval_every,
        device=device,
        autocast=autocast,
        grad_checkpointing=suite.training.grad_checkpointing,
        seed=suite.training.seed + spec.trial_number,
    )
    outcome["memory"] = {"source": "cuda" if device.startswith("cuda") else "cpu-livebytes"}
    memory = StepMemoryProbe(model, device, cap=suite.budget.memory_cap, steps=steps,
                             sharded=ranks.parallel == "fsdp")
    channel.send("phase", name="train", steps=steps)
    stats = train(model, train_items, loss_items, settings, pad=pad,
                  observer=ChannelObserver(channel, outcome, spec.pruning, ranks), profiler=memory, wrap=ranks.wrap)
    peak = memory.result()
    batch, seq = memory.measured_shape
    predicted, engine = planner_prediction(
        suite.model.display_id, _model_config(loaded), spec.method, spec.method_config,
        seq_len=max(seq, 1), batch_size=max(batch, 1), grad_checkpointing=suite.training.grad_checkpointing,
        optimizer=suite.training.optimizer, dtype=_planner_dtype(weight_dtype, autocast), device=device,
        gpus=ranks.world_size, shard="fsdp" if ranks.parallel == "fsdp" else "none",
    ) if main else (None, None)
    outcome["memory"].update(peak_allocated=peak.peak_allocated, peak_reserved=peak.peak_reserved,
                             predicted=predicted, predicted_engine=engine,
                             measured_batch=batch, measured_seq_len=seq)
    metrics.update(
        steps=stats.steps, train_loss=stats.train_loss, eval_loss=stats.eval_loss,
        train_tokens_per_s=stats.tokens_per_s, train_time_s=stats.train_time_s, train_tokens=stats.tokens,
    )
    if ranks.world_size > 1:
        _record_ranks(outcome, ranks, model, peak, stats)
    if stats.stopped_early:
        outcome["status"] = "pruned"
        return
    trained = ranks.trained_model(model, lambda: _rebuilt(spec, loaded, method, cfg, device))
    if trained is None:  # a rank other than 0: its part is done
        outcome["status"] = "success"
        return
    model = trained

    # 4. Measure the trained model (rank 0 alone, when there are several).
    channel.send("phase", name="evaluate")
    model.eval()
    with torch.no_grad(), _autocast(device, autocast):
        score = score_task(model, formatter, scored, task.info, device=device,
                           batch_size=suite.training.batch_size, max_new_tokens=suite.eval.max_new_tokens)
    metrics.update(task_metric=score.value, task_metric_name=score.name, task_metrics=score.all)
    if probe is not None:
        channel.send("phase", name="forgetting")
        adapted = evaluate_loss_windows(model, probe, device, autocast)
        if adapter_switch:
            with model.disable_adapter():  # type: ignore[operator]
                base_probe = evaluate_loss_windows(model, probe, device, autocast)
        assert base_probe is not None
        outcome["forgetting"] = {
            "probe": probe.name, "tokens": probe.tokens, "loss_base": base_probe, "loss_adapted": adapted,
            "delta": adapted - base_probe,
            "base_reference": "adapter-disabled" if adapter_switch else "before-training",
            "lm_eval": {},
        }
    if suite.eval.lm_eval is not None:
        from peftplan.harness.lmeval import lm_eval_scores

        channel.send("phase", name="lm-eval")
        adapted_scores = lm_eval_scores(model, tokenizer, suite.eval.lm_eval, loaded, device)
        if adapter_switch:
            with model.disable_adapter():  # type: ignore[operator]
                base_lm_eval = lm_eval_scores(model, tokenizer, suite.eval.lm_eval, loaded, device)
        assert base_lm_eval is not None
        deltas = {k: adapted_scores[k] - base_lm_eval[k] for k in adapted_scores if k in base_lm_eval}
        if outcome["forgetting"] is None:
            outcome["forgetting"] = {"probe": "lm-eval", "tokens": 0, "loss_base": 0.0, "loss_adapted": 0.0,
                                     "delta": 0.0, "lm_eval": {}}
        outcome["forgetting"]["lm_eval"] = deltas
    channel.send("phase", name="save")
    _adapter_measurements(model, method, cfg, metrics, latency, spec, run_dir, loaded.suite.eval.keep_adapters)
    if suite.eval.latency is not None:
        channel.send("phase", name="latency")
        _measure_speed_into(latency, "unmerged", model, latency_prompt, loaded, device)
        if method.mergeable and method.inference_overhead != "none":
            merged = method.merge(model)
            _measure_speed_into(latency, "merged", merged, latency_prompt, loaded, device)
    outcome["latency"] = latency or None
    outcome["status"] = "success"


def _apply_seeded(method: Any, model: nn.Module, cfg: Any, seed: int) -> nn.Module:
    """Apply the method with its random initial weights fixed by the seed (so every rank starts equal)."""
    import torch

    torch.manual_seed(seed)
    adapted: nn.Module = method.apply(model, cfg)
    return adapted


def _rebuilt(spec: TrialSpec, loaded: LoadedSuite, method: Any, cfg: Any, device: str) -> nn.Module:
    """A fresh copy of the trial's model (base + method) for FSDP's gathered weights to be loaded into."""
    from peftplan.harness.loading import WeightsSource, load_base

    base, _ = load_base(WeightsSource(**spec.weights), loaded.suite.model, loaded, device=device,
                        seed=loaded.suite.training.seed)
    return _apply_seeded(method, base, cfg, loaded.suite.training.seed + spec.trial_number)


def _record_ranks(outcome: Outcome, ranks: SingleProcess, model: nn.Module, peak: Any, stats: Any) -> None:
    """Every rank's peak and share of the training, gathered on every rank (rank 0's outcome keeps them).

    The trial's own peak is the highest rank's (what must fit each GPU); throughput is all ranks' tokens
    over the slowest rank's time.
    """
    from peftplan.harness.measure import rss_peak_bytes

    mine = {"rank": ranks.rank, "source": outcome["memory"]["source"], "peak_allocated": peak.peak_allocated,
            "peak_reserved": peak.peak_reserved, "rss_peak": rss_peak_bytes(), "train_tokens": stats.tokens,
            "train_time_s": stats.train_time_s, "train_loss": stats.train_loss,
            "trainable_checksum": ranks.trainable_checksum(model)}
    everyone = ranks.gather(mine)
    memory = outcome["memory"]
    memory["ranks"] = [{k: r[k] for k in ("rank", "source", "peak_allocated", "peak_reserved", "rss_peak")}
                       for r in everyone]
    for key in ("peak_allocated", "peak_reserved"):
        values = [r[key] for r in everyone if r[key] is not None]
        memory[key] = max(values) if values else None
    tokens, slowest = sum(r["train_tokens"] for r in everyone), max(r["train_time_s"] for r in everyone)
    outcome["metrics"].update(train_tokens=tokens, train_tokens_per_s=tokens / slowest if slowest > 0 else None)
    outcome["distributed"] = {
        **(ranks.describe() or {}),
        "ranks": [{k: r[k] for k in ("rank", "train_tokens", "train_time_s", "train_loss", "trainable_checksum")}
                  for r in everyone],
    }


class ProbeWindows:
    def __init__(self, name: str, windows: list[list[int]]) -> None:
        self.name, self.windows = name, windows
        self.tokens = sum(len(w) for w in windows)


def evaluate_loss_windows(model: nn.Module, probe: ProbeWindows, device: str, autocast: str | None) -> float:
    from peftplan.harness.measure import probe_loss

    return probe_loss(model, probe.windows, device=device, autocast=autocast)


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
            from peftplan.harness.atomic import atomic_write_text

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


def die_with_parent() -> None:
    """Ask Linux to kill this process when the runner dies (kill -9 included), so no trial outlives it."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of the trial subprocess (and of each rank of a multi-GPU trial); returns 0 when an
    outcome was written."""
    die_with_parent()
    args = sys.argv[1:] if argv is None else argv
    spec_path = Path(args[0])
    spec = TrialSpec.model_validate_json(spec_path.read_text())
    from peftplan.harness.suite import Suite

    training = Suite.model_validate(spec.suite).training
    in_rank = bool(os.environ.get(RANKS_OF_ENV))
    device = pick_device(training.device)
    if training.gpus > 1 and not in_rank:
        from peftplan.harness.multigpu import run_ranks

        run_ranks(spec_path, processes=training.gpus, device=device, threads=spec.threads)
        return 0
    rank = launched_rank() if in_rank else 0
    outcome = Outcome(device)
    ranks = SingleProcess()
    try:
        if in_rank:
            ranks = _join_ranks(training.parallel, device)
            device = ranks.device or device
        channel = TrialChannel.from_env() if ranks.is_main else TrialChannel(None, None)
        run_trial(spec, channel, outcome, device, ranks)
    except BaseException as exc:  # every ending is recorded; SystemExit/KeyboardInterrupt too
        outcome["status"] = "oom" if is_oom(exc) else "failed"
        outcome["error"] = f"{type(exc).__name__}: {exc}".strip()[:2000]
        traceback.print_exc()
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            outcome["status"] = "failed"
    finally:
        ranks.close()
    from peftplan.harness.measure import rss_peak_bytes

    source = "cuda" if device.startswith("cuda") else "cpu-livebytes"
    outcome["memory"] = {"source": source, **(outcome["memory"] or {}), "rss_peak": rss_peak_bytes()}
    outcome.write(spec_path.parent / rank_outcome_name(rank))
    return 0


def _join_ranks(parallel: str, device: str) -> SingleProcess:
    """Join the trial's process group; the launcher stops the other ranks with SIGTERM when one fails."""
    import signal

    from peftplan.harness.ranks import DataParallelRanks

    def stopped(signum: int, frame: Any) -> None:
        raise SystemExit("stopped by the launcher (another rank failed)")

    signal.signal(signal.SIGTERM, stopped)
    return DataParallelRanks(parallel, cpu=not device.startswith("cuda"))


if __name__ == "__main__":
    sys.exit(main())
