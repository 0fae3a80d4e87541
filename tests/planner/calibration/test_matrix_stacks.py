"""Calibration of the training-stack knobs: the analytic peak_allocated within ±3% of the trace, every cell.

Every knob value the traced engine runs (planner/trace_stack.py), on three architectures whose heads
differ: Llama-3.2-1B (GQA, tied embeddings, 128k vocabulary), Gemma-2-2B (final logit soft-capping,
256k vocabulary) and GPT-2 (Conv1D, LayerNorm, learned positions, tied). Then the seven stacks' own
default knob sets, with each stack's rules for quantized bases and full fine-tuning, as `plan` and
`trace` resolve them. At 512 x 2 tokens (GPT-2: 240 x 2), depth extrapolated, like the settings matrix.
Two stack defaults run Triton-only kernels the trace refuses (`test_triton_only_defaults_are_refused`);
their cells trace the nearest traceable knob: Unsloth with `kernels=torch`, TRL with Liger's fused loss.
litgpt's 4-bit weights are quantized from fp16 (Lightning's plugin), which the trace's bitsandbytes 0.50
does not reproduce (`test_fp16_quant_state_is_refused`): its QLoRA cell traces `bnb_fp16_state=False`.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import pytest

from peftplan.planner.context import TrainContext
from peftplan.planner.trace_calibrate import calibration_cell, seq_lens_for
from tests.planner.calibration.matrix import TOLERANCE

LLAMA, GEMMA, GPT2 = "meta-llama/Llama-3.2-1B", "google/gemma-2-2b", "openai-community/gpt2"
MODELS = (LLAMA, GEMMA, GPT2)
BATCH = 2
PURE = {"precision": "pure", "adapter_dtype": "dtype"}
# PEFT's method_comparison suite: a bf16 base without autocast (use_amp=False), peft's fp32 adapters
# (autocast_adapter_dtype=True), so each adapter casts its input to fp32 (`_cast_input_dtype`).
BF16_BASE_FP32_ADAPTERS = {"precision": "pure", "adapter_dtype": "fp32"}

# (method, checkpointing, knobs): one knob (or one stack's pairing of knobs) at a time. The losses run
# with and without checkpointing on Llama and GPT-2, with it on Gemma-2 (the blocks do not change the loss).
LOSSES = [
    ("lora", ckpt, knobs)
    for ckpt in (False, True)
    for knobs in (
        {"loss": "full", "loss_fp32": False},
        {"loss": "full", "keep_logits": True},
        {"loss": "full", "legacy_loss": True},
        {"loss": "chunked"},  # torchtune 0.6.1
        {"loss": "chunked", "loss_fp32": False},
        {"loss": "chunked", "keep_logits": True, "loss_chunk_tokens": 128, "loss_fp32": False, **PURE},  # litgpt
        {"loss": "chunked", "loss_recompute": True, "loss_chunk_tokens": 256},  # TRL before 1.16
        {"loss": "fused"},  # Liger
    )
] + [("full", True, {"loss": "fused"}), ("full", True, {"loss": "chunked", **PURE})]
KNOBS = [
    *(("qlora", True, {"kbit_prep": prep}) for prep in ("peft", "none", "torchtune", "all-linear")),
    ("qlora", False, {"kbit_prep": "all-linear"}),
    ("lora", True, PURE),
    ("qlora", True, {**PURE, "kbit_prep": "none"}),
    ("full", True, {"precision": "pure"}),
    *((method, False, BF16_BASE_FP32_ADAPTERS) for method in ("lora", "ia3", "prompt", "prefix")),
    ("lora", True, {"ckpt_offload": True}),
    ("qlora", True, {"ckpt_offload": True, "kbit_prep": "none"}),
    ("lora", False, {"offload_activations": True}),
    ("lora", True, {"offload_activations": True}),
    ("full", False, {"optimizer_in_bwd": True}),
    ("full", True, {"optimizer_in_bwd": True}),
    ("lora", False, {"optimizer_in_bwd": True}),
    ("lora", True, {"optimizer_in_bwd": True, "optimizer": "adamw8bit"}),
    ("full", True, {"optimizer": "paged-adamw8bit"}),
    ("full", True, {"optimizer_fused": True}),  # torch AdamW's fused kernel (transformers' adamw_torch_fused)
    ("qlora", True, {"optimizer": "paged-adamw"}),
]
KNOB_CELLS = [
    pytest.param(model, method, ckpt, knobs,
                 id=f"{model.split('/')[1]}-{method}-{'ckpt' if ckpt else 'nockpt'}-"
                    + "-".join(f"{k}={v}" for k, v in knobs.items()))
    for model in MODELS
    for method, ckpt, knobs in [cell for cell in LOSSES if cell[1] or model != GEMMA] + KNOBS
]

# Each stack with the methods it trains; torchtune's and LLaMA-Factory's full fine-tuning switch optimizers.
STACK_METHODS = {
    "hf": ("lora", "qlora"),
    "trl": ("lora", "qlora"),
    "unsloth": ("lora", "qlora"),
    "axolotl": ("lora", "qlora"),
    "llama-factory": ("qlora", "full"),
    "torchtune": ("qlora", "full"),
    "litgpt": ("lora", "qlora"),
}
# The default knobs the trace cannot run, and what the cells trace instead.
TRITON_ONLY = {"unsloth": {"kernels": "torch"}, "trl": {"loss_chunk_tokens": 0}}
TRACEABLE = {**TRITON_ONLY, "litgpt": {"bnb_fp16_state": False, "model_code": "transformers"}}
STACK_CELLS = [
    pytest.param(LLAMA, stack, method, id=f"Llama-3.2-1B-{stack}-{method}")
    for stack, methods in STACK_METHODS.items()
    for method in methods
] + [
    pytest.param(model, stack, methods[0], id=f"{model.split('/')[1]}-{stack}-{methods[0]}")
    for model in (GEMMA, GPT2)
    for stack, methods in STACK_METHODS.items()
    if model != GPT2 or stack != "unsloth"  # Unsloth trains Llama-style blocks
]


def _check(model_id: str, method: str, ctx: TrainContext) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cell = calibration_cell(model_id, method, ctx)
    assert not cell.skipped, cell.skipped
    assert abs(cell.error) <= TOLERANCE, f"analytic {cell.error:+.2%} off the trace ({cell.peak_phase} peak)"


def _seq(model_id: str) -> int:
    return seq_lens_for(model_id, (512, 2048))[0]


@pytest.mark.parametrize(("model_id", "method", "ckpt", "knobs"), KNOB_CELLS)
def test_knob_within_tolerance_of_trace(model_id: str, method: str, ckpt: bool, knobs: dict[str, Any]) -> None:
    ctx = TrainContext(seq_len=_seq(model_id), batch_size=BATCH, grad_checkpointing=ckpt, device="cpu", **knobs)
    _check(model_id, method, ctx)


def stack_context(stack: str, method: str, model_id: str, **overrides: Any) -> TrainContext:
    """The context `plan --stack` trains `method` in (its defaults, then its method rules)."""
    from peftplan.api import train_context
    from peftplan.methods import get_method
    from peftplan.planner.method_plan import trainable_context
    from peftplan.planner.stacks import KNOB_NAMES

    ctx = train_context(stack=stack, knobs=dict.fromkeys(KNOB_NAMES), grad_ckpt=None, seq_len=_seq(model_id),
                        batch_size=BATCH, optimizer=None, dtype="bf16", attn="sdpa", gpus=1, shard="none",
                        cpu_offload=False, device="cpu")
    m = get_method(method)
    ctx, _ = trainable_context(m, m.make_config(), ctx)
    return replace(ctx, **overrides)


@pytest.mark.parametrize(("model_id", "stack", "method"), STACK_CELLS)
def test_stack_defaults_within_tolerance_of_trace(model_id: str, stack: str, method: str) -> None:
    _check(model_id, method, stack_context(stack, method, model_id, **TRACEABLE.get(stack, {})))


@pytest.mark.parametrize("stack", sorted(TRITON_ONLY))
def test_triton_only_defaults_are_refused(stack: str) -> None:
    """The exact defaults of Unsloth (its fused block kernels) and TRL 1.16 (its fused LM head tiles) are
    refused with the reason, never traced as something else."""
    cell = calibration_cell(LLAMA, "lora", stack_context(stack, "lora", LLAMA))
    assert "Triton" in cell.skipped and "\n" not in cell.skipped


def test_fp16_quant_state_is_refused() -> None:
    """litgpt's QLoRA default (weights quantized from fp16, dequantized to fp16 then cast) is refused in one
    line, never traced as the model-dtype quantization the trace runs; its LoRA default still traces."""
    default = calibration_cell(LLAMA, "qlora", stack_context("litgpt", "qlora", LLAMA))
    assert "--model-code transformers" in default.skipped and "\n" not in default.skipped  # litgpt's own blocks
    ctx = replace(stack_context("litgpt", "qlora", LLAMA), model_code="transformers")
    cell = calibration_cell(LLAMA, "qlora", ctx)
    assert "--bnb-fp16-state" in cell.skipped and "\n" not in cell.skipped
    assert stack_context("litgpt", "lora", LLAMA).bnb_fp16_state  # the knob is on; LoRA has nothing quantized
