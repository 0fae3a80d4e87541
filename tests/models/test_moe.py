"""Mixture-of-experts models: the expert inventory of ModelSpec, total and active parameters.

The published figures and where they come from are cited in peftplan/models/catalog.toml and
docs/models.md. Publishers count "active" two ways: Mistral and Qwen count the input embedding table,
OpenAI and DeepSeek leave it out (a token reads one row of it); `ModelSpec.active_params` and
`ModelSpec.active_params_excluding_embedding` give the two, and each test uses the publisher's own.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from peftplan.models import ModelSpec, get_spec
from peftplan.models.arch import arch_of, block_linears
from peftplan.models.build import build_model
from peftplan.models.catalog import catalog_config_dict

# Total parameters: the meta build equals the exact published count (safetensors metadata).
PUBLISHED_TOTALS = {
    "Qwen/Qwen3-30B-A3B": 30_532_122_624,  # card: 30.5B
    "openai/gpt-oss-20b": 20_914_757_184,  # model card: 20.91B (bf16 checkpoint's safetensors)
    "mistralai/Mixtral-8x22B-v0.1": 140_630_071_296,  # Mistral: 141B (32768-token vocabulary)
    "deepseek-ai/DeepSeek-V2-Lite": 15_706_484_224,  # card: 15.7B
    "mistralai/Mixtral-8x7B-v0.1": 46_702_792_704,  # Mistral: 46.7B
}

# Active parameters: (model, counts the embedding?, exact count of ours, published figure, low, high).
# [low, high) is what the published figure covers, given how its publisher rounds:
# - Qwen3-30B-A3B "3.3B" (model card): 3.353B truncated to one decimal, so [3.3B, 3.4B).
# - gpt-oss-20b "3.61B" (OpenAI's model card, parameter table; "3.6B" in the text): rounded to 10M.
# - Mixtral-8x22B "39B" (Mistral's announcement): rounded to 1B.
# - DeepSeek-V2-Lite "2.4B" (model card, DeepSeek-V2 paper): 2.451B truncated to one decimal, [2.4B, 2.5B).
# - Mixtral-8x7B "12.9B" (Mistral's announcement): rounded to 100M.
PUBLISHED_ACTIVE = [
    ("Qwen/Qwen3-30B-A3B", True, 3_353_032_704, "3.3B", 3.30e9, 3.40e9),
    ("openai/gpt-oss-20b", False, 3_608_307_264, "3.61B", 3.605e9, 3.615e9),
    ("mistralai/Mixtral-8x22B-v0.1", True, 39_161_468_928, "39B", 38.5e9, 39.5e9),
    ("deepseek-ai/DeepSeek-V2-Lite", False, 2_451_435_008, "2.4B", 2.40e9, 2.50e9),
    ("mistralai/Mixtral-8x7B-v0.1", True, 12_879_925_248, "12.9B", 12.85e9, 12.95e9),
]


@pytest.mark.parametrize("model_id", sorted(PUBLISHED_TOTALS))
def test_meta_build_equals_the_published_total(hf: Any, model_id: str) -> None:
    model = build_model(catalog_config_dict(model_id))
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_TOTALS[model_id]
    spec = get_spec(model_id)
    assert spec.total_params == PUBLISHED_TOTALS[model_id]
    assert spec == ModelSpec.from_model(model, model_id=model_id)  # the shipped spec is this build's


@pytest.mark.parametrize(("model_id", "with_embedding", "exact", "published", "low", "high"), PUBLISHED_ACTIVE)
def test_active_params_match_the_published_figure(
    model_id: str, with_embedding: bool, exact: int, published: str, low: float, high: float
) -> None:
    spec = get_spec(model_id)
    ours = spec.active_params if with_embedding else spec.active_params_excluding_embedding
    assert ours == exact
    assert low <= ours < high, f"{model_id}: {ours:,} is not {published}"


def test_the_embedding_convention_matters_where_the_test_says_so() -> None:
    """With the other convention, gpt-oss and DeepSeek would miss their published figures."""
    assert not 3.605e9 <= get_spec("openai/gpt-oss-20b").active_params < 3.615e9  # 4.19B
    assert not 2.40e9 <= get_spec("deepseek-ai/DeepSeek-V2-Lite").active_params < 2.50e9  # 2.66B


def test_inventory_of_the_catalog_models() -> None:
    qwen = get_spec("Qwen/Qwen3-30B-A3B").moe
    assert qwen is not None
    assert (qwen.num_experts, qwen.top_k, qwen.expert_intermediate, qwen.shared_intermediate) == (128, 8, 768, 0)
    assert (len(qwen.layers), qwen.dense_layers, qwen.fused) == (48, (), True)
    first = qwen.layers[0]
    assert [(p.name, p.shape) for p in first.experts] == [
        ("model.layers.0.mlp.experts.gate_up_proj", (128, 1536, 2048)),
        ("model.layers.0.mlp.experts.down_proj", (128, 2048, 768)),
    ]
    assert first.router is not None and (first.router.name, first.router.linear) == ("model.layers.0.mlp.gate", False)

    oss = get_spec("openai/gpt-oss-20b").moe
    assert oss is not None and (oss.num_experts, oss.top_k, oss.expert_intermediate) == (32, 4, 2880)
    assert [p.shape for p in oss.layers[0].experts] == [(32, 2880, 5760), (32, 5760), (32, 2880, 2880), (32, 2880)]
    assert oss.layers[0].router is not None and oss.layers[0].router.bias

    deepseek = get_spec("deepseek-ai/DeepSeek-V2-Lite").moe
    assert deepseek is not None
    assert (deepseek.num_experts, deepseek.top_k, deepseek.expert_intermediate) == (64, 6, 1408)
    assert (deepseek.shared_intermediate, deepseek.dense_layers, len(deepseek.layers)) == (2816, (0,), 26)
    assert deepseek.layers[0].shared == tuple(
        f"model.layers.1.mlp.shared_experts.{leaf}" for leaf in ("gate_proj", "up_proj", "down_proj")
    )
    assert deepseek.shared_params == 26 * 3 * 2048 * 2816

    mixtral = get_spec("mistralai/Mixtral-8x22B-v0.1").moe
    assert mixtral is not None and (mixtral.num_experts, mixtral.top_k, mixtral.expert_intermediate) == (8, 2, 16384)


def test_dense_models_have_no_experts() -> None:
    spec = get_spec("meta-llama/Llama-3.1-8B")
    assert spec.moe is None
    assert spec.active_params == spec.total_params
    assert spec.active_params_excluding_embedding == spec.total_params - 128256 * 4096
    tied = get_spec("HuggingFaceTB/SmolLM2-135M")  # the tied table is the output head too: kept
    assert tied.active_params_excluding_embedding == tied.total_params


# --- the inventory against the real tiny model --------------------------------------------------------

_TINY = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
         "vocab_size": 256}
TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "mixtral": ("mistralai/Mixtral-8x7B-v0.1",
                {**_TINY, "intermediate_size": 96, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3-moe": ("Qwen/Qwen3-30B-A3B",  # block 3 dense by mlp_only_layers
                  {**_TINY, "head_dim": 16, "intermediate_size": 80, "moe_intermediate_size": 24,
                   "num_experts": 6, "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [3]}),
    "qwen3-moe-step2": ("Qwen/Qwen3-30B-A3B",  # blocks 0 and 2 dense by decoder_sparse_step
                        {**_TINY, "head_dim": 16, "intermediate_size": 80, "moe_intermediate_size": 24,
                         "num_experts": 4, "num_experts_per_tok": 1, "decoder_sparse_step": 2}),
    "deepseek-v2": ("deepseek-ai/DeepSeek-V2-Lite",
                    {**_TINY, "num_key_value_heads": 4, "intermediate_size": 96, "moe_intermediate_size": 24,
                     "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 2, "first_k_dense_replace": 2,
                     "kv_lora_rank": 16, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16}),
    "gpt-oss": ("openai/gpt-oss-20b",
                {**_TINY, "head_dim": 16, "intermediate_size": 48, "num_local_experts": 4, "num_experts_per_tok": 2,
                 "experts_per_token": 2, "pad_token_id": 0, "eos_token_id": 1,
                 "layer_types": ["sliding_attention", "full_attention"] * 2}),
}
# The blocks each tiny config makes dense, by the modelling code's own rule.
EXPECTED_DENSE = {"mixtral": (), "qwen3-moe": (3,), "qwen3-moe-step2": (0, 2), "deepseek-v2": (0, 1), "gpt-oss": ()}


def _tiny(name: str) -> Any:
    base, overrides = TINY_CONFIGS[name]
    return build_model({**catalog_config_dict(base), **copy.deepcopy(overrides)}, device="cpu")


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_inventory_matches_named_parameters(hf: Any, name: str) -> None:
    model = _tiny(name)
    spec = ModelSpec.from_model(model, model_id=name)
    moe = spec.moe
    assert moe is not None
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    experts = {n: s for n, s in params.items() if ".experts." in n}
    assert {p.name: p.shape for layer in moe.layers for p in layer.experts} == experts
    assert all(s[0] == moe.num_experts for n, s in experts.items())
    config = model.config
    assert moe.num_experts == next(getattr(config, k) for k in ("num_local_experts", "num_experts") if hasattr(config, k))
    assert moe.top_k == config.num_experts_per_tok

    moe_blocks = sorted({int(re.search(r"layers\.(\d+)\.", n).group(1)) for n in experts})  # type: ignore[union-attr]
    assert [layer.index for layer in moe.layers] == moe_blocks
    assert moe.dense_layers == EXPECTED_DENSE[name]
    assert set(moe.dense_layers) | set(moe_blocks) == set(range(config.num_hidden_layers))

    for layer in moe.layers:
        assert layer.router is not None
        assert params[f"{layer.router.name}.weight"] == (moe.num_experts, spec.hidden_size)
        assert layer.router.bias == (f"{layer.router.name}.bias" in params)
        shared = {n.rsplit(".", 1)[0] for n in params if n.startswith(f"{layer.path}.shared_expert")}
        assert set(layer.shared) == shared
        experts_module = model.get_submodule(layer.experts_path)
        width = getattr(experts_module, "intermediate_dim", None) or experts_module.intermediate_size  # gpt-oss
        assert moe.expert_intermediate == width

    # Totals, independently of the inventory: everything once, routed experts at top_k / E.
    total = sum(p.numel() for p in model.parameters())
    routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert spec.total_params == total
    assert moe.routed_params == routed
    assert spec.active_params == total - routed + routed * moe.top_k // moe.num_experts
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_tiny_deepseek_shared_experts_and_arch(hf: Any) -> None:
    spec = ModelSpec.from_model(_tiny("deepseek-v2"))
    assert spec.moe is not None and spec.moe.shared_intermediate == 2 * 24
    arch = arch_of(spec)
    assert (arch.moe_experts, arch.moe_top_k, arch.intermediate, arch.dense_intermediate) == (4, 2, 24, 96)
    assert (arch.moe_shared_intermediate, arch.moe_dense_layers) == (48, (0, 1))
    assert not arch.is_moe_layer(1) and arch.is_moe_layer(2)
    dense, routed = block_linears(spec, 0), block_linears(spec, 2)
    assert [lin.leaf for lin in dense.mlp_in] == ["gate_proj", "up_proj"] and not dense.shared
    assert not routed.mlp_in and routed.mlp_out is None
    assert [lin.leaf for lin in routed.shared] == ["gate_proj", "up_proj", "down_proj"]


# --- Arch for the catalog MoE models ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "experts", "top_k", "width", "shared", "dense", "router_bias"),
    [
        ("mistralai/Mixtral-8x7B-v0.1", 8, 2, 14336, 0, (), False),
        ("mistralai/Mixtral-8x22B-v0.1", 8, 2, 16384, 0, (), False),
        ("Qwen/Qwen3-30B-A3B", 128, 8, 768, 0, (), False),
        ("openai/gpt-oss-20b", 32, 4, 2880, 0, (), True),
        ("deepseek-ai/DeepSeek-V2-Lite", 64, 6, 1408, 2816, (0,), False),
    ],
)
def test_arch_of_moe_models(
    model_id: str, experts: int, top_k: int, width: int, shared: int, dense: tuple[int, ...], router_bias: bool
) -> None:
    spec = get_spec(model_id)
    arch = arch_of(spec)
    assert (arch.moe_experts, arch.moe_top_k, arch.intermediate) == (experts, top_k, width)
    assert (arch.moe_shared_intermediate, arch.moe_dense_layers, arch.moe_router_bias) == (shared, dense, router_bias)
    assert arch.dense_intermediate == spec.intermediate_size
    assert arch.gated


def test_arch_of_a_dense_model_has_no_experts() -> None:
    arch = arch_of(get_spec("meta-llama/Llama-3.1-8B"))
    assert (arch.moe_experts, arch.moe_top_k, arch.moe_shared_intermediate, arch.moe_dense_layers) == (0, 2, 0, ())
    assert arch.intermediate == arch.dense_intermediate == 14336
    assert not arch.is_moe_layer(0)


# --- what peft 0.21 counts for LoRA on the experts (docs/models.md) -----------------------------------


@pytest.mark.parametrize("name", ["mixtral", "qwen3-moe", "gpt-oss"])
def test_lora_target_parameters_count_from_the_inventory(hf: Any, name: str) -> None:
    """peft's `target_parameters` LoRA on a fused [E, d1, d2] parameter trains r * E * (d1 + d2)."""
    peft = pytest.importorskip("peft")
    model = _tiny(name)
    spec = ModelSpec.from_model(model)
    assert spec.moe is not None
    r, targets = 4, ["experts.gate_up_proj", "experts.down_proj"]
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=r, target_modules=[], target_parameters=targets))
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    expected = sum(r * p.shape[0] * (p.shape[1] + p.shape[2]) for layer in spec.moe.layers for p in layer.experts
                   if p.name.endswith(("experts.gate_up_proj", "experts.down_proj")))
    assert trainable == expected
