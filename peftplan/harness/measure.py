"""Measurements of a trained trial: memory peak, forgetting, latency, adapter size, planner prediction.

Memory is the peak of one steady-state training step (the second: optimizer states exist, gradients were set
to None), which is the step the planner predicts. On CUDA, `torch.cuda.max_memory_allocated`/`max_memory_reserved`
over that step: the peak statistics are reset when it starts, so whatever happened before (loading the model,
FSDP's sharding of it) does not count. On CPU, the live-bytes tracker (`planner/livebytes.py`) counts every tensor
storage during that step; plus the process's peak RSS. A memory cap, when the suite sets one, is enforced on every step:
exceeding it raises `MemoryCapExceeded` at the allocation that crosses it, and the trial is `oom`.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


class MemoryCapExceeded(MemoryError):
    """A trial allocated more than the suite's `budget.memory_cap`."""


def rss_peak_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@dataclass
class MemoryPeak:
    source: str
    peak_allocated: int | None = None
    peak_reserved: int | None = None


class StepMemoryProbe:
    """Measures the peak memory of training steps (see the module docstring); a `train.StepProfiler`."""

    def __init__(self, model: nn.Module, device: str, *, cap: int | None = None, steps: int = 1,
                 sharded: bool = False, held: Callable[[], list[Any]] | None = None) -> None:
        """`sharded`: the model will be FSDP-sharded (parameters become DTensors; see `_capped_live_bytes`).
        `held()`: tensors kept between steps outside the model and the optimizer (`Method.state_tensors`)."""
        self.model = model
        self.held = held
        self.device = device
        self.cap = cap
        self.sharded = sharded
        self.measured_step = 1 if steps > 1 else 0
        self.peak: int | None = None
        self.peak_reserved: int | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.measured_shape = (0, 0)  # (batch, sequence) of the measured step's widest micro-batch
        self._cuda = device.startswith("cuda")
        if self._cuda and cap is not None:
            import torch

            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def record_batch(self, index: int, shape: tuple[int, ...]) -> None:
        if index == self.measured_step:
            self.measured_shape = (max(self.measured_shape[0], shape[0]), max(self.measured_shape[1], shape[1]))

    @contextlib.contextmanager
    def step(self, index: int) -> Iterator[None]:
        if self._cuda:
            with self._cuda_step(index):
                yield
            return
        if index != self.measured_step and self.cap is None:
            yield
            return
        tracker = _capped_live_bytes(self.cap, sharded=self.sharded)
        tracker.track(local_tensors(module_tensors(self.model)))
        if self.optimizer is not None:
            tracker.track(local_tensors(optimizer_state_tensors(self.optimizer)))
        if self.held is not None:
            tracker.track(local_tensors(self.held()))
        with tracker:
            yield
        if index == self.measured_step:
            self.peak = tracker.peak

    @contextlib.contextmanager
    def _cuda_step(self, index: int) -> Iterator[None]:
        """The measured step's own peak: reset when it starts (after the model was wrapped and sharded)."""
        if index != self.measured_step:
            yield
            return
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        torch.cuda.synchronize(self.device)
        self.peak = int(torch.cuda.max_memory_allocated(self.device))
        self.peak_reserved = int(torch.cuda.max_memory_reserved(self.device))

    def result(self) -> MemoryPeak:
        """The measured step's peak (None when training stopped before that step)."""
        return MemoryPeak("cuda" if self._cuda else "cpu-livebytes", self.peak, self.peak_reserved)


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    import torch

    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def module_tensors(model: nn.Module) -> list[torch.Tensor]:
    """A module's parameters, buffers and existing gradients."""
    params = list(model.parameters())
    return [*params, *model.buffers(), *(p.grad for p in params if p.grad is not None)]


def local_tensors(tensors: Iterable[Any]) -> list[Any]:
    """DTensors (FSDP2's sharded parameters, gradients, optimizer states) as the local shard they hold."""
    return [_local(t) for t in tensors]


def _local(tensor: Any) -> Any:
    local = getattr(tensor, "_local_tensor", None)  # a DTensor has no storage of its own; its shard has
    return local if local is not None else tensor


def _capped_live_bytes(cap: int | None, *, sharded: bool = False) -> Any:
    """The live-bytes tracker, raising `MemoryCapExceeded` above `cap`.

    `sharded` (FSDP2): DTensor outputs count as their local shards. And FSDP frees a block's gathered weights
    by resizing their storage to zero in place (`untyped_storage().resize_(0)`), which no dispatch mode sees;
    so before the live bytes may set a new peak (or cross the cap), every live storage is measured again.
    """
    from torch.utils._pytree import tree_leaves

    from peftplan.planner.livebytes import LiveBytes, storage_of

    class CappedLiveBytes(LiveBytes):
        remeasuring = False

        def _raise_peaks(self) -> None:
            if self.remeasuring:
                return  # mid-way through the corrections `current` is neither old nor new: no peak from it
            if sharded and (self.current > self.peak or (cap is not None and self.current > cap)):
                self._remeasure()
            super()._raise_peaks()
            if cap is not None and self.current > cap:
                raise MemoryCapExceeded(f"{self.current:,} live bytes exceed the memory cap of {cap:,} bytes")

        def _remeasure(self) -> None:
            self.remeasuring = True
            try:
                for record in list(self._live.values()):
                    storage = record.storage()
                    if storage is not None and self._round(int(storage.nbytes())) != record.nbytes:
                        self._add(storage)  # a known storage: `_add` applies the change in size
            finally:
                self.remeasuring = False

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if not sharded:
                return super().__torch_dispatch__(func, types, args, kwargs)
            out = func(*args, **(kwargs or {}))
            for leaf in tree_leaves(out):
                storage = storage_of(_local(leaf))
                if storage is not None:
                    self._add(storage)
            return out

    return CappedLiveBytes()


# -- forgetting --------------------------------------------------------------------------------------
def probe_windows(tokenizer: Any, text: str, *, tokens: int, window: int) -> list[list[int]]:
    """The first `tokens` tokens of `text`, cut into windows of `window` tokens."""
    ids = list(tokenizer(text, add_special_tokens=False).input_ids)[:tokens]
    return [ids[i : i + window] for i in range(0, len(ids) - 1, window) if len(ids[i : i + window]) > 1]


def probe_window_losses(model: nn.Module, windows: Sequence[list[int]], *, device: str,
                        autocast: str | None) -> list[tuple[float, int]]:
    """(Summed next-token loss, tokens) of each probe window: the units a forgetting interval resamples."""
    from peftplan.harness.tasks import Encoded
    from peftplan.harness.train import item_loss_sums

    items = [Encoded(w, list(w)) for w in windows]
    # Padding is masked out of attention and loss, so its id does not matter.
    return item_loss_sums(model, items, 0, batch_size=8, device=device, autocast=autocast)


def probe_loss(model: nn.Module, windows: Sequence[list[int]], *, device: str, autocast: str | None) -> float:
    """Mean per-token next-token loss over the probe windows."""
    sums = probe_window_losses(model, windows, device=device, autocast=autocast)
    return sum(total for total, _ in sums) / max(1, sum(count for _, count in sums))


def self_sampled_text(model: nn.Module, tokenizer: Any, *, tokens: int, window: int, device: str, seed: int) -> str:
    """Text the base model writes itself: the forgetting probe when no general text is available."""
    import torch

    starts = ["The", "In", "A", "It", "When", "There", "This", "One"]
    sequences = max(1, -(-tokens // window))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompts = [bos + list(tokenizer(starts[i % len(starts)], add_special_tokens=False).input_ids) for i in range(sequences)]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    torch.manual_seed(seed)
    model.eval()
    with torch.no_grad():
        out = model.generate(  # type: ignore[operator]
            input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, temperature=1.0,
            max_new_tokens=window, min_new_tokens=window, pad_token_id=pad,
        )
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return "\n".join(t.strip() for t in texts)


# -- latency -----------------------------------------------------------------------------------------
TARGET_HALF_WIDTH = 0.05  # repeat timings until each interval is within ±5% of its mean...
MIN_REPEATS = 3  # ...after at least this many (and the suite's `eval.latency.repeats`)...
MAX_REPEATS = 10  # ...but at most this many...
TIME_CAP_S = 15.0  # ...or for this long per variant (base, unmerged, merged): a busy machine rarely gets to ±5%.


@dataclass
class Speed:
    prefill_tokens_per_s: float
    decode_tokens_per_s: float | None  # None when background load made the difference meaningless
    prefill_ci: list[float | None] | None = None  # 95% interval, tokens/s; [low, None]: no upper bound
    decode_ci: list[float | None] | None = None
    repeats: int = 0


def measure_speed(model: nn.Module, prompt_ids: list[int], *, new_tokens: int, repeats: int, device: str,
                  max_repeats: int = MAX_REPEATS, time_cap_s: float = TIME_CAP_S) -> Speed:
    """Prefill and greedy decode tokens/s at batch 1: tokens over the mean time of repeated timings.

    Prefill is one forward over the prompt. Decode is the time `generate` takes for `new_tokens` more tokens than
    a one-token generate (which holds the same prefill), paired within each repeat, so both paths are the model's
    own. Timings repeat (at least `max(repeats, MIN_REPEATS)` times) until the 95% interval of both means is
    within ±5%, or `max_repeats` or `time_cap_s` is reached; the intervals are returned either way.
    """
    import torch

    from peftplan.stats import relative_half_width, t_interval

    ids = torch.tensor([prompt_ids], device=device)
    mask = torch.ones_like(ids)

    def generate(count: int) -> None:
        model.generate(  # type: ignore[operator]
            input_ids=ids, attention_mask=mask, do_sample=False,
            max_new_tokens=count, min_new_tokens=count, pad_token_id=0,
        )

    model.eval()
    prefill: list[float] = []
    decode: list[float] = []  # long generate minus short generate, per repeat
    least = max(repeats, MIN_REPEATS)
    started = time.perf_counter()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)  # warm-up
        generate(1)
        while len(prefill) < max(least, max_repeats):
            prefill.append(timed(model, input_ids=ids, attention_mask=mask)[1])
            short = timed(generate, 1)[1]
            decode.append(timed(generate, new_tokens + 1)[1] - short)
            if len(prefill) < least:
                continue
            precise = max(relative_half_width(t_interval(prefill)), relative_half_width(t_interval(decode)))
            if precise <= TARGET_HALF_WIDTH or time.perf_counter() - started >= time_cap_s:
                break
    tokens = len(prompt_ids)
    prefill_mean = sum(prefill) / len(prefill)
    decode_mean = sum(decode) / len(decode)
    return Speed(tokens / prefill_mean, new_tokens / decode_mean if decode_mean > 0 else None,
                 _rate_interval(tokens, t_interval(prefill)), _rate_interval(new_tokens, t_interval(decode)),
                 len(prefill))


def _rate_interval(tokens: int, seconds: tuple[float, float, float] | None) -> list[float | None] | None:
    """A time interval as a tokens/s interval. When the time's interval reaches zero (a few very noisy repeats),
    the rate has no upper bound: `[low, None]`, which no comparison can separate from anything above `low`."""
    if seconds is None or seconds[2] <= 0:
        return None
    return [tokens / seconds[2], tokens / seconds[1] if seconds[1] > 0 else None]


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - started


def directory_bytes(path: Any) -> int:
    """Bytes of the weight files in a saved adapter directory."""
    from pathlib import Path

    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin"))


# -- the planner's prediction ------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """The planner's per-GPU MemoryBreakdown (bytes) and its engine, or why there is none."""

    breakdown: dict[str, int] | None
    engine: str | None
    error: str | None = None  # `Type: message` of the planner's exception


def predict_memory(
    model_id: str,
    model_config: dict[str, Any] | None,
    method: str,
    method_config: dict[str, Any],
    *,
    seq_len: int,
    batch_size: int,
    grad_checkpointing: bool,
    optimizer: str,
    dtype: str,
    device: str,
    gpus: int = 1,
    shard: str = "none",
) -> Prediction:
    """The planner's prediction for exactly the measured step.

    `gpus` and `shard` ("none" for DDP, "fsdp") describe a multi-GPU trial: the prediction is one rank's.
    A planner that fails never fails the trial, and is never silent either: its error is returned, and the
    trial records it as `memory.prediction_error` (the report shows it).
    """
    try:
        from peftplan import plan
        from peftplan.harness.train import HARNESS_KNOBS

        result = plan(
            model_id, methods=[method], method_config=method_config, model_config=model_config,
            seq_len=seq_len, batch_size=batch_size, grad_checkpointing=grad_checkpointing,
            optimizer=optimizer, dtype=dtype, device="cuda" if device.startswith("cuda") else "cpu",
            gpus=gpus, shard=shard, fit_search=False, **HARNESS_KNOBS,
        )
        (entry,) = result.methods
        return Prediction({k: int(v) for k, v in entry.memory.to_dict().items()}, result.engine)
    except Exception as exc:  # a setting the planner does not model, or a planner bug: recorded either way
        return Prediction(None, None, f"{type(exc).__name__}: {exc}".strip()[:500])


def planner_prediction(model_id: str, model_config: dict[str, Any] | None, method: str, method_config: dict[str, Any],
                       **settings: Any) -> tuple[dict[str, int] | None, str | None]:
    """(breakdown, engine) of `predict_memory`; (None, None) when the planner failed (its error is dropped: the
    trial itself uses `predict_memory`)."""
    found = predict_memory(model_id, model_config, method, method_config, **settings)
    return found.breakdown, found.engine
