"""The analytic planner is held to the trace: |error| of peak_allocated within 5% on a reduced matrix.

The full matrix (6 architectures x 14 methods x checkpointing x 2 seq x 2 batch) is
`benchmarks/calibration_matrix.py`; this CI slice covers a GQA model with tied embeddings, a
256k-vocabulary model, an untied model with biases, GPT-2's Conv1D layers and an encoder, every method
at least once, checkpointing on and off, and two shapes (the analytic side is asked for CPU dispatch
rules, as the trace runs them). Where a cell misses, fix the analytic model.
"""

from __future__ import annotations

import warnings

import pytest

from peftplan.planner.context import TrainContext
from peftplan.planner.trace_calibrate import calibration_cell

TOLERANCE = 0.05
SHAPES = ((256, 2), (512, 1))
MATRIX = {
    "meta-llama/Llama-3.2-1B": ("lora", "qlora", "prefix"),
    "google/gemma-2-2b": ("full", "dora", "vera"),
    "microsoft/phi-2": ("bitfit", "ia3", "loha"),
    "openai-community/gpt2": ("adapter", "prompt", "rslora"),
    "FacebookAI/roberta-base": ("lokr", "qdora", "lora"),
}
# Each method once; checkpointing and shape alternate (prefix tuning cannot be checkpointed).
CELLS = [
    (model_id, method, method != "prefix" and (j + i) % 2 == 1, SHAPES[i % 2])
    for j, (model_id, methods) in enumerate(MATRIX.items())
    for i, method in enumerate(methods)
]


@pytest.mark.parametrize(("model_id", "method", "ckpt", "shape"), CELLS)
def test_analytic_within_tolerance_of_trace(
    model_id: str, method: str, ckpt: bool, shape: tuple[int, int]
) -> None:
    seq, batch = shape
    ctx = TrainContext(seq_len=seq, batch_size=batch, grad_checkpointing=ckpt, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cell = calibration_cell(model_id, method, ctx)
    assert not cell.skipped, cell.skipped
    assert abs(cell.error) <= TOLERANCE, f"analytic {cell.error:+.2%} off the trace ({cell.peak_phase} peak)"
