"""Calibration of the loss knobs on output layers unlike Llama's: analytic peak_allocated within ±3% of the trace.

Tiny configs of three architectures whose heads differ from the Llama-style models of test_matrix_stacks.py:
GPT-NeoX (Pythia: an untied output layer named `embed_out`, parallel blocks, partial rotary), GPT-2 (the
output layer tied to `wte`, Conv1D blocks, learned positions) and Phi (a bias on the output layer). Their
4,096-entry vocabulary against a 64-wide hidden state puts the peak at the loss, so each cell holds the
loss knob's own pricing: every loss (`full` without the upcast or as before transformers 4.45, torchtune's
chunks, litgpt's held chunks, TRL's checkpointed chunks, Liger's fused loss), with and without
checkpointing, mixed and pure precision. TRL's chunks run at 16 tokens (the fp32 copy of the output weight
dominates), 64, and 4,096 (more than the batch's 256 tokens: one chunk of every token, whose
vocabulary-sized tensors dominate). GPT-2's dropout is off: with it, CPU attention falls back to the math
kernel and the peak moves into the blocks (test_matrix_gpt2.py covers those at GPT-2's real width).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from peftplan.methods import get_method
from peftplan.models import spec_from_config
from peftplan.models.catalog import catalog_config_dict
from peftplan.planner.context import TrainContext
from peftplan.planner.memory import estimate_memory
from peftplan.planner.trace import trace_memory
from tests.planner.calibration.matrix import TOLERANCE

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 256,
        "vocab_size": 4096}
TINY_NEOX = {**catalog_config_dict("EleutherAI/pythia-1b"), **TINY}
TINY_GPT2 = {**catalog_config_dict("openai-community/gpt2"), "n_layer": 2, "n_embd": 64, "n_head": 4,
             "vocab_size": 4096, "attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0}
TINY_PHI = {**catalog_config_dict("microsoft/phi-2"), **TINY, "num_key_value_heads": 4}
CONFIGS = {"neox": TINY_NEOX, "gpt2": TINY_GPT2, "phi": TINY_PHI}
SEQ, BATCH = 128, 2
PURE = {"precision": "pure", "adapter_dtype": "dtype"}
TRL = {"loss": "chunked", "loss_recompute": True}

LOSSES: list[dict[str, Any]] = [
    {"loss": "chunked"},  # torchtune 0.6.1: 8 chunks
    {"loss": "chunked", "loss_fp32": False},
    {"loss": "chunked", "loss_chunk_tokens": 4096},  # chunks longer than the sequence: one per sequence
    {"loss": "chunked", "keep_logits": True, "loss_chunk_tokens": 32, "loss_fp32": False, **PURE},  # litgpt
    {**TRL, "loss_chunk_tokens": 16},
    {**TRL, "loss_chunk_tokens": 64, **PURE},
    {**TRL, "loss_chunk_tokens": 4096},
    {**TRL, "loss_chunk_tokens": 4096, **PURE},
    TRL,  # `loss_chunks` equal chunks
    {"loss": "fused"},  # Liger
    {"loss": "full", "loss_fp32": False},
    {"loss": "full", "loss_fp32": False, **PURE},
    {"loss": "full", "legacy_loss": True},
]
# A trainable output layer: the chunks then make and sum its gradient too (torchtune's and litgpt's after every
# chunk's loss, TRL's inside each chunk's backward).
FULL = [
    {"loss": "chunked", **PURE},
    {"loss": "chunked", "keep_logits": True, "loss_chunk_tokens": 32, "loss_fp32": False, **PURE},
    {"loss": "chunked", "keep_logits": True, "loss_chunk_tokens": 4096, "loss_fp32": False, **PURE},
    {**TRL, "loss_chunk_tokens": 16},
    {**TRL, "loss_chunk_tokens": 4096},
]


def _id(knobs: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in knobs.items())


CELLS = [
    pytest.param(arch, "lora", ckpt, knobs, id=f"{arch}-lora-{'ckpt' if ckpt else 'nockpt'}-{_id(knobs)}")
    for arch in CONFIGS
    for ckpt in (False, True)
    for knobs in LOSSES
] + [
    pytest.param(arch, "full", True, knobs, id=f"{arch}-full-ckpt-{_id(knobs)}")
    for arch in CONFIGS
    for knobs in FULL
]


def loss_cell_error(config: dict[str, Any], method_name: str, ctx: TrainContext) -> tuple[float, str]:
    """(analytic - traced) / traced for peak_allocated of a config's step, and where the trace peaks."""
    spec = spec_from_config(config, model_id=f"tiny-{config['model_type']}")
    method = get_method(method_name)
    cfg = method.make_config()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = trace_memory(spec, method, cfg, ctx)
    analytic = estimate_memory(spec, method, cfg, ctx)
    return (analytic.peak_allocated - traced.memory.peak_allocated) / traced.memory.peak_allocated, traced.peak_segment


@pytest.mark.parametrize(("arch", "method", "ckpt", "knobs"), CELLS)
def test_loss_knob_within_tolerance_of_trace(arch: str, method: str, ckpt: bool, knobs: dict[str, Any]) -> None:
    ctx = TrainContext(seq_len=SEQ, batch_size=BATCH, grad_checkpointing=ckpt, device="cpu", **knobs)
    error, segment = loss_cell_error(CONFIGS[arch], method, ctx)
    assert abs(error) <= TOLERANCE, f"analytic {error:+.2%} off the trace ({segment} peak)"


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_trl_chunk_priced_at_every_shape(arch: str) -> None:
    """One step model prices TRL's 64-token chunks at any shape: at 1 x 32 (one chunk of 32 tokens) and at
    2 x 128 (four chunks), each against its own trace. A chunk never exceeds the batch's tokens."""
    from peftplan.planner.memory import step_model

    config = CONFIGS[arch]
    spec = spec_from_config(config, model_id=f"tiny-{config['model_type']}")
    method = get_method("lora")
    cfg = method.make_config()
    model = step_model(spec, method, cfg, TrainContext(device="cpu", **TRL, loss_chunk_tokens=64))
    for batch, seq in ((1, 32), (2, 128)):
        ctx = TrainContext(seq_len=seq, batch_size=batch, device="cpu", **TRL, loss_chunk_tokens=64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = trace_memory(spec, method, cfg, ctx).memory.peak_allocated
        error = (model.breakdown(batch, seq).peak_allocated - traced) / traced
        assert abs(error) <= TOLERANCE, f"{batch} x {seq}: analytic {error:+.2%} off the trace"
