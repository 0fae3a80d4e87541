"""Trace equals reality: the fake-tensor step holds exactly the bytes the same step holds for real.

Each case builds the model twice, on meta (then fake) and on CPU with random weights (real bitsandbytes
for quantized bases), runs the identical steady-state step under the live-bytes tracker, and compares
every segment's peak and its split by category, byte for byte. The model is a 2-block Llama with
SmolLM2-135M widths (hidden 576, 9 heads, 3 kv heads, vocab 49,152; the settings matrix uses a
4,096 vocabulary to keep the real runs quick), plus small GPT-2, BERT and Mixtral shapes for Conv1D
layers, an encoder and mixture-of-experts blocks. `test_stack_technique` runs each training-stack
technique of planner/trace_stack.py once (its losses, offloading, the optimizer in backward, k-bit
preparations and pure precision), host copies kept out of the count on both sides; TRL's and torchtune's
chunked losses also on GPT-NeoX's and Phi's heads (those of the loss-knob calibration) and GPT-2's tied one.
"""

from __future__ import annotations

import warnings

import pytest

from peftplan.methods import get_method, method_names
from peftplan.models.catalog import catalog_config_dict
from peftplan.planner.context import TrainContext
from peftplan.planner.trace import trace_step_at_depth
from tests.planner.calibration.test_matrix_loss_heads import CONFIGS as TINY_LOSS_HEADS

SMOL = catalog_config_dict("HuggingFaceTB/SmolLM2-135M")
SMOL_BIASED = {**SMOL, "attention_bias": True}  # BitFit needs biases
SMOL_SMALL_VOCAB = {
    **SMOL,
    "vocab_size": 4096,
}  # the same blocks, a cheaper real head for the settings matrix
SMALL = TrainContext(seq_len=32, batch_size=2)


def assert_same_step(
    config: dict, method_name: str, ctx: TrainContext, depth: int = 2, **values: object
) -> int:
    method = get_method(method_name)
    cfg = method.make_config(**values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fake = trace_step_at_depth(config, method, cfg, ctx, depth)
        real = trace_step_at_depth(config, method, cfg, ctx, depth, real=True)
    assert fake.peak == real.peak
    assert list(fake.segments) == list(real.segments)
    for name, segment in fake.segments.items():
        assert segment.categories == real.segments[name].categories, name
        assert segment.modules == real.segments[name].modules, name
    return fake.peak


@pytest.mark.parametrize("method_name", method_names())
def test_every_method_bf16_adamw(method_name: str) -> None:
    config = SMOL_BIASED if method_name == "bitfit" else SMOL
    assert assert_same_step(config, method_name, SMALL) > 0


@pytest.mark.parametrize(
    ("method_name", "ctx", "values"),
    [
        (
            "lora",
            TrainContext(
                seq_len=32, batch_size=2, dtype="fp32", grad_checkpointing=True, optimizer="sgd-momentum"
            ),
            {},
        ),
        ("qlora", TrainContext(seq_len=32, batch_size=2, dtype="fp32", grad_checkpointing=True), {}),
        ("full", TrainContext(seq_len=32, batch_size=2, grad_checkpointing=True, optimizer="adamw-fp32"), {}),
        (
            "lora",
            TrainContext(seq_len=32, batch_size=2, dtype="fp16", optimizer="adamw8bit"),
            {"quant": "int8"},
        ),
        ("lora", TrainContext(seq_len=32, batch_size=2, optimizer="paged-adamw8bit"), {"quant": "fp4"}),
        ("full", TrainContext(seq_len=32, batch_size=2, optimizer="adafactor"), {}),
        ("ia3", TrainContext(seq_len=32, batch_size=2, attention="eager", optimizer="sgd"), {}),
    ],
    ids=[
        "lora-fp32-ckpt-sgdm",
        "qlora-fp32-ckpt",
        "full-master-ckpt",
        "lora-int8-fp16-8bit",
        "lora-fp4-paged",
        "full-adafactor",
        "ia3-eager-sgd",
    ],
)
def test_settings(method_name: str, ctx: TrainContext, values: dict) -> None:
    assert_same_step(SMOL_SMALL_VOCAB, method_name, ctx, **values)


TINY_GPT2 = {**catalog_config_dict("openai-community/gpt2"), "n_embd": 64, "n_head": 4, "vocab_size": 512}
TINY_BERT = {
    **catalog_config_dict("FacebookAI/roberta-base"),
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 512,
}
TINY_MIXTRAL = {
    **catalog_config_dict("mistralai/Mixtral-8x7B-v0.1"),
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
}


@pytest.mark.parametrize(
    ("config", "method_name"),
    [
        (TINY_GPT2, "full"),
        (TINY_BERT, "prompt"),
        (TINY_MIXTRAL, "lora"),
    ],
    ids=["gpt2-full", "roberta-prompt", "mixtral-lora"],
)
def test_other_architectures(config: dict, method_name: str) -> None:
    assert_same_step(config, method_name, TrainContext(seq_len=32, batch_size=2, grad_checkpointing=True))


TINY_GEMMA2 = {
    **catalog_config_dict("google/gemma-2-2b"),
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "vocab_size": 512,
}
PURE = {"precision": "pure", "adapter_dtype": "dtype"}
# The loss-knob calibration's heads: GPT-NeoX's untied `embed_out`, Phi's biased output layer.
TINY_NEOX, TINY_PHI = TINY_LOSS_HEADS["neox"], TINY_LOSS_HEADS["phi"]


@pytest.mark.parametrize(
    ("config", "method_name", "knobs"),
    [
        (SMOL_SMALL_VOCAB, "lora", {"loss": "chunked"}),  # torchtune 0.6.1
        (SMOL_SMALL_VOCAB, "lora", {"loss": "chunked", "keep_logits": True, "loss_chunk_tokens": 8,
                                    "loss_fp32": False, **PURE}),  # litgpt
        (SMOL_SMALL_VOCAB, "lora", {"loss": "chunked", "loss_recompute": True, "loss_chunk_tokens": 16}),  # TRL
        (SMOL_SMALL_VOCAB, "lora", {"loss": "full", "loss_fp32": False, "keep_logits": True}),
        (SMOL_SMALL_VOCAB, "lora", {"loss": "full", "legacy_loss": True}),
        (SMOL_SMALL_VOCAB, "lora", {"loss": "fused"}),  # Liger's semantics
        (TINY_GEMMA2, "full", {"loss": "fused"}),  # soft-capping, a trainable tied head
        (SMOL_SMALL_VOCAB, "lora", {"grad_checkpointing": True, "ckpt_offload": True}),  # Unsloth
        (SMOL_SMALL_VOCAB, "lora", {"offload_activations": True}),  # save_on_cpu
        (SMOL_SMALL_VOCAB, "lora", {"grad_checkpointing": True, "offload_activations": True}),
        (SMOL_SMALL_VOCAB, "full", {"optimizer_in_bwd": True}),  # torchtune
        (SMOL_SMALL_VOCAB, "lora", {"optimizer_in_bwd": True, "grad_checkpointing": True}),
        (SMOL_SMALL_VOCAB, "qlora", {"kbit_prep": "none"}),
        (SMOL_SMALL_VOCAB, "qlora", {"kbit_prep": "torchtune", **PURE, "loss": "chunked"}),
        (SMOL_SMALL_VOCAB, "qlora", {"kbit_prep": "all-linear", "loss": "chunked", "keep_logits": True,
                                     "loss_chunk_tokens": 8, "optimizer": "paged-adamw"}),
        (SMOL_SMALL_VOCAB, "full", {"precision": "pure"}),
        (TINY_PHI, "lora", {"loss": "chunked", "loss_recompute": True, "loss_chunk_tokens": 16}),  # TRL, head bias
        (TINY_NEOX, "lora", {"loss": "chunked", "loss_recompute": True, "loss_chunk_tokens": 4096, **PURE}),
        (TINY_GPT2, "lora", {"loss": "chunked", "loss_chunk_tokens": 4096}),  # tied head, one chunk a row
    ],
    ids=[
        "torchtune-chunked",
        "litgpt-chunked-held",
        "trl-chunked-recompute",
        "full-no-upcast-held",
        "legacy-loss",
        "fused-liger",
        "gemma2-full-fused",
        "unsloth-offloaded-checkpoint",
        "save-on-cpu",
        "save-on-cpu-checkpointed",
        "full-optimizer-in-backward",
        "lora-optimizer-in-backward",
        "qlora-kbit-none",
        "qlora-kbit-torchtune-pure",
        "qlora-all-linear-litgpt",
        "full-pure",
        "phi-trl-chunked-recompute",
        "neox-trl-one-chunk-pure",
        "gpt2-chunked-one-per-row",
    ],
)
def test_stack_technique(config: dict, method_name: str, knobs: dict) -> None:
    assert assert_same_step(config, method_name, TrainContext(seq_len=32, batch_size=2, **knobs)) > 0
