"""Depth extrapolation equals a full-depth trace, segment by segment, category by category.

Traces at 4 and 5 blocks predict every segment of a 7-block trace (every block index, not only the
peak) of real catalog architectures: Llama (GQA), Gemma-2 (alternating sliding/full attention, tied,
256k vocabulary), GPT-2 (Conv1D), RoBERTa (encoder), DeBERTa-v2 (a convolution between blocks 0 and 1),
Phi-2 (parallel attention and MLP) and Mixtral (mixture of experts). The difference must be zero.
"""

from __future__ import annotations

import warnings

import pytest

from peftplan.methods import get_method
from peftplan.models.catalog import catalog_config_dict
from peftplan.planner.context import TrainContext
from peftplan.planner.trace import trace_memory, trace_step_at_depth
from peftplan.planner.trace_extrapolate import MIN_DEPTH, extrapolate, predict_segments, segment_vector

DEPTH = 7
CASES = [
    ("HuggingFaceTB/SmolLM2-135M", "full", False),
    ("HuggingFaceTB/SmolLM2-135M", "qlora", True),
    ("google/gemma-2-2b", "lora", False),
    ("openai-community/gpt2", "lora", True),
    ("FacebookAI/roberta-base", "prompt", False),
    ("microsoft/deberta-v2-xxlarge", "full", False),
    ("microsoft/phi-2", "dora", True),
    ("mistralai/Mixtral-8x7B-v0.1", "lora", False),
]


def nonzero(vector: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in vector.items() if v}


@pytest.mark.parametrize(("model_id", "method_name", "ckpt"), CASES)
def test_every_segment_matches_a_full_depth_trace(model_id: str, method_name: str, ckpt: bool) -> None:
    config = catalog_config_dict(model_id)
    method = get_method(method_name)
    cfg = method.make_config()
    ctx = TrainContext(seq_len=64, batch_size=2, grad_checkpointing=ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shallow, deep, full = (
            trace_step_at_depth(config, method, cfg, ctx, d) for d in (MIN_DEPTH, MIN_DEPTH + 1, DEPTH)
        )
    predicted = predict_segments(shallow, deep, DEPTH, every_block=True)
    for name, peak in full.segments.items():
        if name == "":  # before the step: weights and states only, covered by every later segment
            continue
        assert nonzero(predicted[name]) == nonzero(segment_vector(peak, full.layers_path)), name
    result = extrapolate(shallow, deep, DEPTH)
    assert result.total == full.peak
    assert result.categories == full.segments[full.peak_segment].categories


def test_the_peak_can_sit_inside_the_blocks() -> None:
    """Long sequences, a small vocabulary and no checkpointing: the peak is in a block's backward."""
    config = {**catalog_config_dict("HuggingFaceTB/SmolLM2-135M"), "vocab_size": 1024}
    method = get_method("lora")
    ctx = TrainContext(seq_len=2048, batch_size=1, attention="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shallow, deep, full = (
            trace_step_at_depth(config, method, method.make_config(), ctx, d) for d in (4, 5, 8)
        )
    result = extrapolate(shallow, deep, 8)
    assert result.segment.startswith(("forward:layer", "backward:layer"))
    assert (result.total, result.segment) == (full.peak, full.peak_segment)


def test_trace_memory_extrapolates_deep_models_and_traces_shallow_ones_fully() -> None:
    ctx = TrainContext(seq_len=64, batch_size=1)
    deep = trace_memory("HuggingFaceTB/SmolLM2-135M", "lora", ctx=ctx)
    assert deep.extrapolated and deep.depths == (MIN_DEPTH, MIN_DEPTH + 1)
    exact = trace_memory("HuggingFaceTB/SmolLM2-135M", "lora", ctx=ctx, extrapolate=False)
    assert not exact.extrapolated and exact.depths == (30,)
    assert deep.memory == exact.memory
    assert deep.peak_segment == exact.peak_segment


def test_extrapolate_rejects_unusable_depths() -> None:
    config = catalog_config_dict("HuggingFaceTB/SmolLM2-135M")
    method = get_method("ia3")
    ctx = TrainContext(seq_len=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        three, five = (trace_step_at_depth(config, method, method.make_config(), ctx, d) for d in (3, 5))
    with pytest.raises(ValueError):
        extrapolate(three, five, 30)
