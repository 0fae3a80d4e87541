"""Hold the analytic memory model to the trace: one cell per (model, method, setting), with the % error.

Both engines predict `peak_allocated` of the same steady-state step; the cell compares those. The
analytic `total` adds the planner's CUDA-context overhead and allocator slack, which the trace does not
model, so it is not the compared figure. The trace runs under this torch's CPU dispatch, so the
analytic model is asked for the same (`TrainContext.device="cpu"`: CPU autocast rules, SDPA's math
kernel under attention dropout, float dropout masks); its CUDA rules are not covered by this matrix.
Used by `benchmarks/calibration_matrix.py` and by the CI tests (`tests/planner/calibration/`), which run every cell.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from peftplan.errors import BadInputError
from peftplan.planner.context import MemoryBreakdown, TrainContext

__all__ = ["ARCHITECTURES", "KNOWN_LIMITS", "Cell", "calibration_cells", "calibration_cell", "seq_lens_for"]

# A GQA model with tied embeddings, a large-vocabulary model, an untied model with biases and parallel
# blocks, GPT-2's Conv1D layers, and an encoder.
ARCHITECTURES = (
    "meta-llama/Llama-3.2-1B",
    "google/gemma-2-2b",
    "Qwen/Qwen2.5-0.5B",
    "microsoft/phi-2",
    "openai-community/gpt2",
    "FacebookAI/roberta-base",
)

# Why a cell can be n/a: what the real stack refuses (the trace says so rather than guess).
KNOWN_LIMITS = (
    "prefix tuning cannot train with gradient checkpointing",
    "bitfit needs bias terms",
    "cannot adapt GPT-2 style Conv1D layers",
)
POSITION_MARGIN = 64  # room for prompt tuning's virtual tokens in a learned position table


@dataclass(frozen=True)
class Cell:
    """One comparison; `skipped` holds the reason when the method cannot run in this setting."""

    model_id: str
    method: str
    ctx: TrainContext
    traced: MemoryBreakdown | None = None
    analytic: MemoryBreakdown | None = None
    peak_phase: str = ""
    skipped: str = ""

    @property
    def error(self) -> float:
        """(analytic - traced) / traced for peak_allocated; NaN when skipped."""
        if self.traced is None or self.analytic is None:
            return float("nan")
        return (self.analytic.peak_allocated - self.traced.peak_allocated) / self.traced.peak_allocated


def calibration_cell(model_id: str, method_name: str, ctx: TrainContext) -> Cell:
    """Trace and estimate one cell (a method's default config; bitfit etc. may be skipped)."""
    from peftplan.methods import get_method
    from peftplan.models import get_spec
    from peftplan.planner.memory import estimate_memory
    from peftplan.planner.trace import trace_memory

    spec = get_spec(model_id)
    method = get_method(method_name)
    cfg = method.make_config()
    try:
        traced = trace_memory(spec, method, cfg, ctx)
    except BadInputError as exc:
        return Cell(model_id, method_name, ctx, skipped=str(exc))
    analytic = estimate_memory(spec, method, cfg, ctx)
    return Cell(model_id, method_name, ctx, traced.memory, analytic, traced.peak_phase)


def seq_lens_for(model_id: str, seq_lens: Iterable[int]) -> list[int]:
    """`seq_lens`, scaled down (same ratios, multiples of 16) when the longest would overrun a
    learned position table: GPT-2 and RoBERTa then get two lengths they can run, not one."""
    from peftplan.models import get_spec
    from peftplan.planner.trace import position_table_limit

    wanted = list(seq_lens)
    limit = position_table_limit(get_spec(model_id))
    if limit is None or max(wanted) + POSITION_MARGIN <= limit:
        return wanted
    longest = (limit - POSITION_MARGIN) // 16 * 16
    return [max(16, seq * longest // max(wanted) // 16 * 16) for seq in wanted]


def calibration_cells(
    models: Iterable[str],
    methods: Iterable[str],
    *,
    seq_lens: Iterable[int] = (512, 2048),
    batch_sizes: Iterable[int] = (1, 4),
    checkpointing: Iterable[bool] = (False, True),
) -> Iterator[Cell]:
    """Every cell of the matrix, in order: model, method, checkpointing, sequence length, batch size.

    Sequence lengths are per model (`seq_lens_for`); cells the real stack refuses come back skipped.
    """
    methods, seq_lens, batch_sizes, checkpointing = (
        list(methods),
        list(seq_lens),
        list(batch_sizes),
        list(checkpointing),
    )
    for model_id in models:
        model_seq_lens = seq_lens_for(model_id, seq_lens)
        for method_name in methods:
            for ckpt in checkpointing:
                for seq in model_seq_lens:
                    for batch in batch_sizes:
                        ctx = TrainContext(
                            seq_len=seq, batch_size=batch, grad_checkpointing=ckpt, device="cpu"
                        )
                        yield calibration_cell(model_id, method_name, ctx)
