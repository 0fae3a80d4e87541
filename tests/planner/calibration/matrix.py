"""The calibration matrix in CI: the analytic planner's peak_allocated within ±3% of the trace, every cell.

Cells: 6 architectures (Llama-3.2-1B: GQA, tied embeddings; Gemma-2-2B: 256k vocabulary; Qwen2.5-0.5B:
qkv biases; Phi-2: parallel blocks, partial rotary; GPT-2: Conv1D, learned positions; RoBERTa: an
encoder) x every registered method x checkpointing off/on x 2 sequence lengths x batch 1/4, traced
with depth extrapolation. One test file per architecture, so the xdist workers share the matrix.
A cell the real stack refuses must be refused for a known reason (`KNOWN_LIMITS`). Where a cell
misses, fix the analytic model, not the tolerance. `benchmarks/calibration_matrix.py` prints it all.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from peftplan.methods import method_names
from peftplan.planner.context import TrainContext
from peftplan.planner.trace_calibrate import KNOWN_LIMITS, calibration_cell, seq_lens_for

TOLERANCE = 0.03
SEQ_LENS = (512, 2048)
BATCH_SIZES = (1, 4)


def cells(model_id: str) -> list[pytest.ParameterSet]:
    """(method, checkpointing, seq, batch) for every cell of `model_id`, with readable ids."""
    return [
        pytest.param(method, ckpt, seq, batch, id=f"{method}-{'ckpt' if ckpt else 'nockpt'}-{seq}x{batch}")
        for method in method_names()
        for ckpt in (False, True)
        for seq in seq_lens_for(model_id, SEQ_LENS)
        for batch in BATCH_SIZES
    ]


def check_cell(model_id: str, method: str, ckpt: bool, seq: int, batch: int, **setting: Any) -> None:
    """Trace and estimate one cell (`setting`: other TrainContext fields); assert it is within TOLERANCE."""
    ctx = TrainContext(seq_len=seq, batch_size=batch, grad_checkpointing=ckpt, device="cpu", **setting)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cell = calibration_cell(model_id, method, ctx)
    if cell.skipped:
        assert any(limit in cell.skipped for limit in KNOWN_LIMITS), f"refused for a new reason: {cell.skipped}"
        return
    assert abs(cell.error) <= TOLERANCE, f"analytic {cell.error:+.2%} off the trace ({cell.peak_phase} peak)"


def check_spec_cell(spec: Any, method_name: str, cfg: Any, ctx: TrainContext) -> None:
    """Trace and estimate `method_name` with `cfg` on a spec built outside the catalog (a tiny MoE or VLM
    written to a directory); assert the counts agree and the peak is within TOLERANCE."""
    from peftplan.methods import get_method
    from peftplan.planner.memory import estimate_memory
    from peftplan.planner.trace import trace_memory

    method = get_method(method_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced: Any = trace_memory(spec, method, cfg, ctx)
    analytic = estimate_memory(spec, method, cfg, ctx)
    assert traced.trainable_params == method.trainable_params(spec, cfg)
    error = (analytic.peak_allocated - traced.memory.peak_allocated) / traced.memory.peak_allocated
    assert abs(error) <= TOLERANCE, f"analytic {error:+.2%} off the trace ({traced.peak_segment} peak)"
