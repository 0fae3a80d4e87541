"""Throughput on mixture-of-experts models counts active parameters: top_k of the E routed experts in
each MoE block only, the router, and dense blocks and shared experts in full."""

from __future__ import annotations

import pytest

from peftplan.methods import get_method
from peftplan.models import get_spec
from peftplan.models.arch import arch_of
from peftplan.planner.throughput import matmul_params, training_flops_per_token

MOE = ["mistralai/Mixtral-8x7B-v0.1", "Qwen/Qwen3-30B-A3B", "deepseek-ai/DeepSeek-V2-Lite", "openai/gpt-oss-20b"]


@pytest.mark.parametrize("model_id", MOE)
def test_matmul_params_are_the_active_weights(model_id: str) -> None:
    """Active parameters without the input embedding are the matmul weights plus norms, biases and sinks."""
    spec = get_spec(model_id)
    weights = matmul_params(spec, arch_of(spec))
    active = spec.active_params_excluding_embedding
    assert weights <= active
    assert (active - weights) / active < 1e-3


def test_deepseek_routes_in_its_moe_blocks_only() -> None:
    spec = get_spec("deepseek-ai/DeepSeek-V2-Lite")
    moe = spec.moe
    assert moe is not None and moe.dense_layers == (0,)
    linears = sum(lin.in_features * lin.out_features for lin in spec.linears)  # dense MLP and shared experts too
    routed = 26 * 6 * 3 * 2048 * 1408  # 26 MoE blocks, top-6 experts of width 1408
    assert matmul_params(spec, arch_of(spec)) == linears + routed + 26 * 64 * 2048


def test_lora_on_experts_costs_the_active_experts_weight_gradients() -> None:
    spec = get_spec("mistralai/Mixtral-8x7B-v0.1")
    lora = get_method("lora")
    arch = arch_of(spec)
    attn = lora.memory_terms(spec, lora.make_config(targets=["attn"]))
    experts = lora.memory_terms(spec, lora.make_config(targets=["attn", "experts.down_proj"]))
    extra = (training_flops_per_token(spec, arch, experts, 2048, checkpointing=False, batch=4)
             - training_flops_per_token(spec, arch, attn, 2048, checkpointing=False, batch=4))
    down = 32 * 8 * 4096 * 14336
    assert extra == pytest.approx(2 * down * 2 / 8 + 6 * 16 * down / (2048 * 4))
