"""Seed arithmetic of the analytic model: bytes per parameter, bitsandbytes storage, known totals."""

from __future__ import annotations

import pytest

from peftplan.methods import get_method
from peftplan.models import get_spec
from peftplan.planner.context import TrainContext
from peftplan.planner.memory import step_model
from peftplan.planner.weights import bits_per_param, quantized_linear_bytes

GIB = 1 << 30


def persistent_bytes_per_param(model_id: str, method: str, ctx: TrainContext) -> float:
    """Weights + gradients + optimizer states after a step, per model parameter."""
    spec = get_spec(model_id)
    m = get_method(method)
    sm = step_model(spec, m, m.make_config(), ctx)
    return (sm.weights.weights + sm.gradients + sm.optimizer.states) / spec.total_params


@pytest.mark.parametrize(
    ("dtype", "optimizer", "expected", "how"),
    [
        (
            "bf16",
            "adamw-fp32",
            16,
            "fp32 master weights 4 + fp32 grads 4 + m 4 + v 4 (bf16 autocast copies are transient)",
        ),
        ("fp32", "adamw", 16, "fp32 weights 4 + grads 4 + m 4 + v 4"),
        ("bf16", "adamw", 8, "pure bf16: weights 2 + grads 2 + m 2 + v 2"),
        ("bf16", "sgd-momentum", 6, "weights 2 + grads 2 + momentum 2"),
        ("bf16", "sgd", 4, "weights 2 + grads 2"),
    ],
)
def test_full_fine_tuning_bytes_per_param(dtype: str, optimizer: str, expected: float, how: str) -> None:
    ctx = TrainContext(dtype=dtype, optimizer=optimizer)  # type: ignore[arg-type]
    assert persistent_bytes_per_param("meta-llama/Llama-3.2-1B", "full", ctx) == pytest.approx(expected), how


def test_eight_bit_adamw_keeps_two_bytes_of_state_plus_block_constants() -> None:
    per_param = persistent_bytes_per_param(
        "meta-llama/Llama-3.2-1B", "full", TrainContext(optimizer="adamw8bit")
    )
    # bf16 weights 2 + grads 2 + two uint8 states 2 + two fp32 absmax per 256 values (0.03125).
    assert per_param == pytest.approx(6.03125, abs=1e-3)


def test_llama_3_2_3b_full_bf16_adamw_is_about_24_gib() -> None:
    """PEFT's own benchmark measured ~24 GiB allocated for this after a step."""
    spec = get_spec("meta-llama/Llama-3.2-3B")
    full = get_method("full")
    sm = step_model(spec, full, full.make_config(), TrainContext(dtype="bf16", optimizer="adamw"))
    assert (sm.weights.weights + sm.gradients + sm.optimizer.states) / GIB == pytest.approx(24.0, rel=0.02)


def test_qlora_70b_base_is_about_35_gb_of_4bit_weights_plus_constants() -> None:
    spec = get_spec("meta-llama/Llama-3.1-70B")
    qlora = get_method("qlora")
    sm = step_model(spec, qlora, qlora.make_config(), TrainContext())
    packed = sm.weights.quantized_params
    assert packed / 2 / 1e9 == pytest.approx(34.2, abs=0.1)  # two weights per byte: ~35 GB
    assert sm.weights.quant_constants / packed * 8 == pytest.approx(
        0.127, abs=0.002
    )  # bits/param of constants
    # Embeddings, norms and the LM head stay unquantized, in fp32 after peft's k-bit preparation.
    assert sm.weights.weights == packed // 2 + 4 * (spec.total_params - packed)


def test_double_quantization_saves_about_0_37_bits_per_param() -> None:
    single = bits_per_param("nf4", double_quant=False)
    double = bits_per_param("nf4", double_quant=True)
    assert single == pytest.approx(4.5, abs=1e-3)  # 4 bits + an fp32 absmax per 64 weights
    assert single - double == pytest.approx(0.373, abs=0.005)


def test_bitsandbytes_layouts() -> None:
    # NF4, one 4096 x 4096 matrix: 8 MiB packed; 262,144 8-bit absmax; 1,024 fp32 second-level constants.
    data, constants = quantized_linear_bytes(4096 * 4096, 4096, "nf4")
    assert data == 4096 * 4096 // 2
    assert constants == 262_144 + 1_024 * 4 + 256 * 4 + 4 + 16 * 4
    # int8: one byte per weight plus an fp32 absmax per output row.
    assert quantized_linear_bytes(4096 * 11008, 11008, "int8") == (4096 * 11008, 11008 * 4)


def test_peft_adapters_are_fp32_on_a_bf16_base() -> None:
    spec = get_spec("meta-llama/Llama-3.2-3B")
    lora = get_method("lora")
    cfg = lora.make_config(rank=32, targets="q_proj,v_proj")
    sm = step_model(spec, lora, cfg, TrainContext())
    assert lora.trainable_params(spec, cfg) == 9_175_040
    assert sm.weights.adapter == 4 * 9_175_040
    assert sm.gradients == 4 * 9_175_040
    assert sm.optimizer.states == 8 * 9_175_040
    assert sm.weights.weights == 2 * spec.total_params


def test_logits_dominate_the_lora_peak_at_the_loss() -> None:
    """fp32 log-softmax output plus two fp32 gradients: 12 bytes per token per vocabulary entry."""
    spec = get_spec("meta-llama/Llama-3.1-8B")
    lora = get_method("lora")
    ctx = TrainContext(seq_len=1024, grad_checkpointing=True)
    memory = step_model(spec, lora, lora.make_config(), ctx).breakdown(1, 1024)
    assert memory.logits == 12 * 1024 * spec.vocab_size
    assert memory.logits > memory.activations
    assert memory.component_sum() == memory.peak_allocated
