"""The traced memory engine: run one real training step on fake tensors and report what it held.

`trace_memory(model, method, cfg, ctx)` builds the real transformers architecture on the meta device,
applies the real method (peft, or the hand-written module; quantized bases per `trace_quant.py`),
swaps every tensor for a fake one and runs a steady-state step (`trace_step.py`) under FakeTensorMode
with the live-bytes tracker. No weights and no GPU are needed. Deep models are traced at 3 and 4
blocks and extrapolated to full depth (`trace_extrapolate.py`); that is exact for stacks of identical
blocks, which the tests check against full-depth traces.

What it predicts is `peak_allocated`: what `torch.cuda.max_memory_allocated()` would report for the
step, with each storage rounded to the CUDA caching allocator's 512 bytes. It sees every tensor an op
returns under this torch's CPU dispatch; kernel-internal workspaces (cuBLAS, flash-attention) and the
allocator's slack are not tensors and are the planner's `overhead` and `reserved` lines (see
docs/trace.md). The trace itself sets `reserved = total = peak_allocated` and `overhead = 0`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peftplan.errors import PeftplanError, UnsupportedError
from peftplan.planner.context import MemoryBreakdown, TrainContext

if TYPE_CHECKING:
    from peftplan.methods.base import Method, MethodConfig
    from peftplan.models.spec import ModelSpec
    from peftplan.planner.trace_step import StepTrace

__all__ = [
    "TraceError",
    "TraceResult",
    "check_stack_knobs",
    "check_traceable",
    "trace_memory",
    "trace_step_at_depth",
]

GRANULARITY = 512  # bytes: the CUDA caching allocator's block rounding


class TraceError(PeftplanError):
    """The real step could not run on fake tensors (exit 1): a library path the trace cannot follow."""


@dataclass
class TraceResult:
    """A traced step: its memory at the peak, where the peak is, and which modules hold the most."""

    model_id: str
    method: str
    config: dict[str, Any]
    trainable_params: int
    total_params: int
    memory: MemoryBreakdown
    peak_phase: str  # forward | loss | backward | optimizer
    peak_segment: str  # finer: e.g. "backward:layer:79", "loss"
    top_modules: list[tuple[str, int]] = field(default_factory=list)
    depths: tuple[int, ...] = ()
    extrapolated: bool = False
    seconds: float = 0.0
    dispatch: str = "cpu"  # whose kernels and autocast rules the traced step followed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the same `memory` shape as the analytic plan, plus where the peak is."""
        return {
            "method": self.method,
            "config": self.config,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "memory": self.memory.to_dict(),
            "predicts": "peak_allocated",
            "peak_phase": self.peak_phase,
            "peak_segment": self.peak_segment,
            "top_modules": [{"module": name, "bytes": nbytes} for name, nbytes in self.top_modules],
            "detail": dict(self.memory.extra),
            "depths": list(self.depths),
            "extrapolated": self.extrapolated,
            "dispatch": self.dispatch,
            "seconds": round(self.seconds, 3),
        }


def _resolve(model: str | dict[str, Any] | ModelSpec) -> tuple[str, dict[str, Any]]:
    from peftplan.models.spec import ModelSpec

    if isinstance(model, ModelSpec):
        return model.model_id, model.config
    if isinstance(model, dict):
        return str(model.get("_name_or_path", "")), model
    from peftplan.models import resolve_model

    resolved = resolve_model(model)
    return resolved.model_id, resolved.config


def trace_step_at_depth(
    config: dict[str, Any],
    method: Method,
    cfg: MethodConfig,
    ctx: TrainContext,
    depth: int,
    *,
    granularity: int = GRANULARITY,
    real: bool = False,
    seed: int = 0,
) -> StepTrace:
    """Trace one steady-state step of the model cut to `depth` blocks, on fake tensors.

    With `real`, the same step runs for real on CPU with random weights (seeded by `seed`; real bnb): what
    the trace is checked against, the live-bytes tracker over real tensors. Small models only.
    """
    from peftplan.planner.trace_build import build_trained_model, config_at_depth, make_fake
    from peftplan.planner.trace_step import run_step

    if real:
        import torch

        torch.manual_seed(seed)
    model = build_trained_model(config_at_depth(config, depth), method, cfg, ctx, device="cpu" if real else "meta")
    mode = None
    if not real:
        from torch._subclasses.fake_tensor import FakeTensorMode

        # Real tensors may meet fake ones: bitsandbytes' optimizer code maps are built from real data.
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        make_fake(model, mode)
    quantized = getattr(cfg, "quant", "none") != "none"
    return run_step(model, ctx, depth=depth, fake_mode=mode, decompose_bnb=quantized, granularity=granularity,
                    seed=seed, method=method)


def position_table_limit(spec: ModelSpec) -> int | None:
    """Longest sequence a learned absolute position table allows (None for rotary/relative positions)."""
    tables = [m for m in spec.embeddings if m.name.endswith(("position_embeddings", ".wpe")) and m.shape]
    if not tables:
        return None
    rows = tables[0].shape[0]
    if spec.model_type in ("roberta", "xlm-roberta", "camembert"):  # positions start after the padding id
        rows -= int(spec.text_config.get("pad_token_id") or 1) + 1
    return rows


def check_traceable(
    method: Method, cfg: MethodConfig, ctx: TrainContext, spec: ModelSpec | None = None
) -> None:
    """Refuse combinations the real stack cannot run, with the reason.

    Raises:
        UnsupportedError: prefix tuning under gradient checkpointing; a sequence (with virtual tokens)
            longer than a learned position table, which the real model cannot index; a stack knob the
            model or the other knobs rule out (`check_stack_knobs`).
        BadInputError: offloaded checkpoints without checkpointing.
    """
    check_stack_knobs(ctx, spec)
    if ctx.bnb_fp16_state and getattr(cfg, "quant", "none") != "none":
        raise UnsupportedError("the trace quantizes in the model's dtype and runs bitsandbytes 0.50's fused forward; "
                               "--bnb-fp16-state (Lightning's fp16 quantization) is priced analytically: --no-bnb-fp16-state")
    if not method.traits.checkpointing and ctx.grad_checkpointing:
        raise UnsupportedError(
            "prefix tuning cannot train with gradient checkpointing: transformers drops the prefix "
            "key/values in checkpointed blocks and the real step fails; use --no-grad-ckpt"
        )
    limit = position_table_limit(spec) if spec is not None else None
    tokens = ctx.seq_len + int(getattr(cfg, "virtual_tokens", 0) or 0)
    if limit is not None and tokens > limit:
        raise UnsupportedError(
            f"{spec.model_id or spec.architecture} has learned positions for {limit} tokens; "  # type: ignore[union-attr]
            f"a step of {tokens} tokens cannot run (use --seq-len {limit - tokens + ctx.seq_len} or less)"
        )


def check_stack_knobs(ctx: TrainContext, spec: ModelSpec | None = None) -> None:
    """Refuse knob combinations the traced step cannot run (it never drops a knob silently).

    A loss's own sub-knobs (`loss_chunks`, `loss_chunk_tokens`, `loss_recompute`, `keep_logits` with a
    chunked loss, `legacy_loss` with the full one) mean nothing for another loss, and the fused loss
    computes in fp32 whatever `loss_fp32` says, as Liger's kernel does. Triton-only kernels whose memory
    the trace does not reproduce are refused: Unsloth's fused block kernels, TRL 1.16's fused LM head; so is
    bitsandbytes before 0.43.2 (`bnb_keeps_input`), which the installed bitsandbytes is not.
    """
    from peftplan.errors import BadInputError

    if ctx.kernels != "torch":
        raise UnsupportedError(f"the trace runs the model's torch modules; {ctx.kernels}'s fused block kernels are "
                               "Triton-only (trace with --kernels torch)")
    if ctx.loss == "fused" and ctx.loss_chunk_tokens:
        raise UnsupportedError("TRL's fused LM head (--loss fused with --loss-chunk-tokens) runs a Triton tile kernel "
                               "the trace does not reproduce; it traces Liger's fused loss (--loss-chunk-tokens 0)")
    if ctx.compile_loss:
        raise UnsupportedError("the trace runs on fake tensors, which torch.compile's inductor does not take; "
                               "--compile-loss is checked against a real compiled step (tests/planner/test_compile_loss.py)")
    if ctx.bnb_keeps_input:
        raise UnsupportedError("the trace runs bitsandbytes 0.50, whose MatMul4Bit keeps no input (since 0.43.2); "
                               "--bnb-keeps-input is priced from 0.42's code (tests/planner/test_bnb_legacy.py)")
    if ctx.model_code != "transformers":
        raise UnsupportedError(f"the trace runs the model's transformers modules; {ctx.model_code}'s own model code is "
                               "priced analytically and checked against a trace of litgpt 0.5.13 "
                               "(tests/planner/test_litgpt_model.py): trace with --model-code transformers")
    if ctx.output_fp32 and (ctx.legacy_loss or ctx.loss == "fused" or (ctx.loss == "chunked" and not ctx.keep_logits)):
        raise UnsupportedError("--output-fp32 (Fabric's fp32 output cast) is litgpt's: it goes with the full loss or "
                               "litgpt's chunked loss (--keep-logits)")
    if ctx.ckpt_offload and not ctx.grad_checkpointing:
        raise BadInputError("offloaded checkpoints need checkpointing: use --checkpointing offload")
    stack_loss = ctx.loss != "full" or not ctx.loss_fp32 or ctx.legacy_loss
    if stack_loss and spec is not None and spec.kind not in ("decoder", "vlm"):
        what = f"the {ctx.loss} loss" if ctx.loss != "full" else "a loss without the fp32 upcast"
        raise UnsupportedError(f"{what} is a causal-LM loss; {spec.model_id or spec.architecture} is an encoder")
    if ctx.loss == "chunked" and ctx.loss_recompute and not ctx.loss_fp32:
        raise UnsupportedError("TRL's checkpointed chunked loss (--loss-recompute) always computes in fp32; "
                               "drop --no-loss-fp32")


def trace_memory(
    model: str | dict[str, Any] | ModelSpec,
    method: Method | str,
    cfg: MethodConfig | None = None,
    ctx: TrainContext | None = None,
    *,
    extrapolate: bool = True,
    granularity: int = GRANULARITY,
    top: int = 10,
) -> TraceResult:
    """Trace one steady-state training step and return its peak memory and breakdown.

    Args:
        model: a catalog id, local path or Hub id, a config dict, or a ModelSpec.
        method: a registered method or its name; `cfg` defaults to the method's defaults.
        ctx: the training setting (seq len, batch, checkpointing, optimizer, dtype, attention).
        extrapolate: trace 3 and 4 blocks and extrapolate (exact for identical blocks); False traces
            the full depth.
        granularity: storage rounding in bytes (512: the CUDA caching allocator; 1: exact bytes).
        top: how many modules to list at the peak.

    Raises:
        BadInputError: unknown model or method, or a method that cannot apply (exit 2).
        TraceError: the step failed on fake tensors (exit 1).
    """
    from peftplan.methods import get_method
    from peftplan.models import ModelSpec, spec_from_config
    from peftplan.planner.trace_build import depth_of

    started = time.perf_counter()
    quiet_libraries()
    method = get_method(method) if isinstance(method, str) else method
    cfg = cfg if cfg is not None else method.make_config()
    ctx = ctx if ctx is not None else TrainContext()
    model_id, config = _resolve(model)
    spec = model if isinstance(model, ModelSpec) else spec_from_config(config, model_id=model_id)
    method.check(spec, cfg)
    check_traceable(method, cfg, ctx, spec)
    depth = depth_of(config)
    try:
        with _quiet():
            segment, total, categories, modules, depths = _trace(
                config, method, cfg, ctx, depth, extrapolate, granularity
            )
    except PeftplanError:
        raise
    except (RuntimeError, ValueError, TypeError, NotImplementedError, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"tracing {method.name} on {model_id or 'the model'} failed: {reason}") from exc
    memory = _breakdown(total, categories, paged=ctx.optimizer.startswith("paged-"))
    return TraceResult(
        model_id=model_id,
        method=method.name,
        config=cfg.model_dump(mode="json"),
        trainable_params=method.trainable_params(spec, cfg),
        total_params=spec.total_params,
        memory=memory,
        peak_phase=segment.split(":")[0],
        peak_segment=segment,
        top_modules=sorted(modules.items(), key=lambda kv: -kv[1])[:top],
        depths=depths,
        extrapolated=len(depths) == 2,
        seconds=time.perf_counter() - started,
    )


def _trace(
    config: dict[str, Any],
    method: Method,
    cfg: MethodConfig,
    ctx: TrainContext,
    depth: int,
    extrapolate: bool,
    granularity: int,
) -> tuple[str, int, dict[str, int], dict[str, int], tuple[int, ...]]:
    """(peak segment, peak bytes, categories, module bytes, traced depths)."""
    from peftplan.planner.trace_extrapolate import MIN_DEPTH, normalise_modules
    from peftplan.planner.trace_extrapolate import extrapolate as extrapolate_traces

    if extrapolate and depth > MIN_DEPTH + 1:
        shallow = trace_step_at_depth(config, method, cfg, ctx, MIN_DEPTH, granularity=granularity)
        deep = trace_step_at_depth(config, method, cfg, ctx, MIN_DEPTH + 1, granularity=granularity)
        result = extrapolate_traces(shallow, deep, depth)
        return result.segment, result.total, result.categories, result.modules, (MIN_DEPTH, MIN_DEPTH + 1)
    full = trace_step_at_depth(config, method, cfg, ctx, depth, granularity=granularity)
    segment = full.peak_segment
    peak = full.segments[segment]
    return segment, peak.total, peak.categories, normalise_modules(peak, full.layers_path), (depth,)


def quiet_libraries() -> None:
    """bitsandbytes logs a warning about an optional CPU kernel package on import; it is harmless here."""
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence deprecation and advice notices of transformers/peft/bnb: they say nothing about memory."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def _breakdown(total: int, categories: dict[str, int], *, paged: bool = False) -> MemoryBreakdown:
    """The traced peak as a MemoryBreakdown. Paged optimizer states (constant through the step) live in
    unified memory, which `max_memory_allocated` never counts: they move to the `paged` line."""
    paged_bytes = 0
    if paged:
        categories = dict(categories)
        paged_bytes, categories["optimizer"] = categories["optimizer"], 0
        total -= paged_bytes
    memory = MemoryBreakdown(
        weights=categories["weights"],
        quant_constants=categories["quant_constants"],
        adapter=categories["adapter"],
        gradients=categories["gradients"],
        optimizer=categories["optimizer"],
        activations=categories["activations"] + categories["temporaries"],
        logits=categories["logits"],
        overhead=0,
        peak_allocated=total,
        reserved=total,
        total=total,
        paged=paged_bytes,
        extra={"saved_activations": categories["activations"], "temporaries": categories["temporaries"]},
    )
    if memory.component_sum() != total:
        raise RuntimeError(f"internal: trace components sum to {memory.component_sum()}, not {total}")
    return memory
