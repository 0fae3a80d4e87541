"""The training loop: plain torch, readable top to bottom. No Trainer, no callbacks framework.

Mixed precision is autocast (bf16 on CPUs with avx512_bf16/AMX and on GPUs that support it) over fp32
or bf16 weights; peft keeps adapters in fp32. Every `eval_every` steps the loop measures the held-out
loss and asks its observer whether to stop (Optuna's pruner decides in the parent process).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from peftplan.harness.tasks import Encoded, batches_forever, chunks, collate

if TYPE_CHECKING:
    import torch
    from torch import nn


class TrainObserver(Protocol):
    def on_step(self, step: int, loss: float) -> None:
        """After each optimizer step (1-based)."""

    def on_eval(self, step: int, eval_loss: float) -> bool:
        """After each intermediate evaluation; return True to stop training (pruned)."""


class StepProfiler(Protocol):
    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once the optimizer exists (its states count towards memory)."""

    def record_batch(self, index: int, shape: tuple[int, ...]) -> None:
        """The shape of each micro-batch of step `index` (what the step's memory depends on)."""

    def step(self, index: int) -> contextlib.AbstractContextManager[Any]:
        """A context around optimizer step `index` (0-based), e.g. to measure its memory."""


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int
    grad_accum: int
    lr: float
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    optimizer: str = "adamw"
    eval_every: int = 10
    device: str = "cpu"
    autocast: str | None = "bf16"  # "bf16", "fp16" or None
    grad_checkpointing: bool = False
    seed: int = 0


@dataclass
class TrainStats:
    steps: int = 0
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens: int = 0
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    stopped_early: bool = False
    intermediate: list[tuple[int, float]] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)  # per optimizer step: for the throughput's interval
    step_times: list[float] = field(default_factory=list)  # seconds, evaluations excluded

    @property
    def tokens_per_s_ci(self) -> list[float] | None:
        """95% bootstrap interval of tokens/s over the steps."""
        from peftplan.harness.stats import ratio_ci

        return ratio_ci(self.step_tokens, self.step_times)

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.train_time_s if self.train_time_s > 0 else None


def cpu_supports_bf16() -> bool:
    """Native bf16 matmuls (avx512_bf16 or AMX); elsewhere bf16 autocast is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: str) -> str | None:
    """The autocast dtype a suite's `training.precision` means on this device (None: full fp32)."""
    if precision == "fp32":
        return None
    if device.startswith("cuda"):
        import torch

        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if precision == "auto":
        return "bf16" if cpu_supports_bf16() else None
    return precision


def autocast_context(device: str, dtype: str | None) -> contextlib.AbstractContextManager[Any]:
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


# What the loop below runs, as planner knobs: torch AdamW's default implementation, foreach (not fused).
HARNESS_KNOBS: dict[str, Any] = {"optimizer_fused": False}


def make_optimizer(name: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    import torch

    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    # torch's default implementation: foreach on CUDA (`HARNESS_KNOBS`: the planner prices it so).
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up, then linear decay to zero (the usual fine-tuning schedule)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def guard_quantized_eval(model: nn.Module) -> None:
    """Keep QLoRA gradients exact across eval forwards (the avx512_bf16 repacking pitfall, STACK.md)."""
    import sys

    if "bitsandbytes" not in sys.modules:  # never imported: nothing can be quantized (and importing costs 5 s)
        return
    from peftplan.methods.quantize import disable_cpu_repacking, has_quantized_linears

    if has_quantized_linears(model):
        disable_cpu_repacking(model)


def evaluate_loss(
    model: nn.Module, items: Sequence[Encoded], pad: int, *, batch_size: int, device: str, autocast: str | None
) -> float:
    """Mean per-token loss over the labelled tokens of `items` (eval mode, no gradients)."""
    total, count = loss_sums(model, items, pad, batch_size=batch_size, device=device, autocast=autocast)
    return total / max(count, 1)


def loss_sums(
    model: nn.Module, items: Sequence[Encoded], pad: int, *, batch_size: int, device: str, autocast: str | None
) -> tuple[float, int]:
    """(Summed per-token loss, labelled tokens) over `items`: sums add up across ranks' shares.

    A batch without labelled tokens (padding a rank's share, see `ranks.even_share`) still runs its forward.
    """
    import torch

    guard_quantized_eval(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad(), autocast_context(device, autocast):
            for group in chunks(items, batch_size):
                batch = {k: v.to(device) for k, v in collate(group, pad).items()}
                tokens = int((batch["labels"][:, 1:] != -100).sum())
                loss = model(**batch).loss
                if tokens:
                    total += float(loss) * tokens
                    count += tokens
    finally:
        model.train(was_training)
    return total, count


def item_loss_sums(
    model: nn.Module, items: Sequence[Encoded], pad: int, *, batch_size: int, device: str, autocast: str | None
) -> list[tuple[float, int]]:
    """(Summed per-token loss, labelled tokens) of each item: what a bootstrap over items resamples.

    The same next-token cross-entropy the model's own loss computes (fp32 logits, shifted labels), per row;
    positions a prompt-tuning model prepends are dropped.
    """
    import torch

    guard_quantized_eval(model)
    was_training = model.training
    model.eval()
    out: list[tuple[float, int]] = []
    try:
        with torch.no_grad(), autocast_context(device, autocast):
            for group in chunks(items, batch_size):
                batch = {k: v.to(device) for k, v in collate(group, pad).items()}
                width = batch["input_ids"].shape[1]
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                logits = logits[:, -width:, :].float()
                labels = batch["labels"][:, 1:]
                losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels,
                                                           ignore_index=-100, reduction="none")
                out += [(float(total), int(count)) for total, count in
                        zip(losses.sum(dim=1), (labels != -100).sum(dim=1), strict=True)]
    finally:
        model.train(was_training)
    return out


def train(
    model: nn.Module,
    train_items: Sequence[Encoded],
    eval_items: Sequence[Encoded],
    settings: TrainSettings,
    *,
    pad: int,
    observer: TrainObserver | None = None,
    profiler: StepProfiler | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    evaluate: Callable[[nn.Module, Sequence[Encoded]], float] | None = None,
    after_step: Callable[[nn.Module, int], None] | None = None,
) -> TrainStats:
    """Train `model`'s trainable parameters for `settings.steps` optimizer steps.

    `wrap` makes the module that trains, e.g. DDP or FSDP around `model` (`harness/ranks.py`); the optimizer is
    built on its parameters, which FSDP has replaced by shards. `evaluate(module, eval_items)` measures the
    held-out loss (default: `evaluate_loss`; several ranks each score a share, `ranks.mean_loss`).
    `after_step(model, step)` runs after each optimizer step (0-based), before the gradients are released: the
    method's `after_optimizer_step` (AdaLoRA's rank allocation).
    """
    import torch

    torch.manual_seed(settings.seed)
    if settings.grad_checkpointing:
        model.gradient_checkpointing_enable(  # type: ignore[operator]
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    trained = wrap(model) if wrap is not None else model
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = make_optimizer(settings.optimizer, params, settings.lr, settings.weight_decay)
    if profiler is not None:
        profiler.attach_optimizer(optimizer)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(settings.warmup_steps, settings.steps))
    batches: Iterator[list[Encoded]] = batches_forever(train_items, settings.batch_size, settings.seed)
    stats = TrainStats()
    scaler = torch.amp.GradScaler("cuda") if settings.autocast == "fp16" and settings.device.startswith("cuda") else None
    recent: list[float] = []
    trained.train()
    started = time.perf_counter()
    for step in range(settings.steps):
        step_started, tokens_before = time.perf_counter(), stats.tokens
        with profiler.step(step) if profiler is not None else contextlib.nullcontext():
            step_loss = 0.0
            for _ in range(settings.grad_accum):
                batch = {k: v.to(settings.device) for k, v in collate(next(batches), pad).items()}
                stats.tokens += int(batch["attention_mask"].sum())
                if profiler is not None:
                    profiler.record_batch(step, tuple(batch["input_ids"].shape))
                with autocast_context(settings.device, settings.autocast):
                    loss = trained(**batch).loss / settings.grad_accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
                step_loss += float(loss.detach())
            if scaler is not None:
                scaler.unscale_(optimizer)
            if settings.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            schedule.step()
            if after_step is not None:
                after_step(model, step)
            optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"training loss became {step_loss} at step {step + 1}")
        stats.step_times.append(time.perf_counter() - step_started)
        stats.step_tokens.append(stats.tokens - tokens_before)
        stats.steps = step + 1
        recent = (recent + [step_loss])[-10:]
        if observer is not None:
            observer.on_step(step + 1, step_loss)
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
            paused = time.perf_counter()
            if evaluate is not None:
                eval_loss = evaluate(trained, eval_items)
            else:
                eval_loss = evaluate_loss(trained, eval_items, pad, batch_size=settings.batch_size,
                                          device=settings.device, autocast=settings.autocast)
            stats.intermediate.append((step + 1, eval_loss))
            stats.eval_loss = eval_loss
            stop = observer.on_eval(step + 1, eval_loss) if observer is not None else False
            stats.eval_time_s += time.perf_counter() - paused
            if stop and step + 1 < settings.steps:
                stats.stopped_early = True
                break
    stats.train_time_s = time.perf_counter() - started - stats.eval_time_s
    stats.train_loss = sum(recent) / len(recent) if recent else None
    if settings.grad_checkpointing:
        model.gradient_checkpointing_disable()  # type: ignore[operator]
    return stats
