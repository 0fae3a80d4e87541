"""LoRA on mixture-of-experts models: fused experts and routers through peft's `target_parameters`.

The count from the spec equals the real peft apply on tiny random Mixtral-, Qwen3-MoE-, gpt-oss- and
DeepSeek-V2-style models; peftplan's `all-linear` builds the very adapter peft's own `all-linear`
builds where peft rewrites it (mixtral / qwen2_moe conversion types); bad targets exit 2.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from peftplan.errors import BadInputError, UnknownNameError, UnsupportedError
from peftplan.methods import get_method
from peftplan.methods.moe_targets import REWRITE_FUSED, REWRITE_MAPPING, REWRITE_TYPES
from peftplan.models import get_spec
from peftplan.models.spec import ModelSpec
from tests.models.test_moe import _tiny

TARGETS = [
    ["all-linear"], ["mlp"], ["attn"], ["experts.gate_up_proj", "experts.down_proj"], ["down_proj"],
    ["model.layers.2.mlp.experts.gate_up_proj"],
]


@pytest.fixture(scope="module")
def peft(hf: Any) -> Any:
    return pytest.importorskip("peft")


def _trainable(model: Any) -> list[tuple[str, tuple[int, ...]]]:
    return sorted((n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["mixtral", "qwen3-moe", "gpt-oss", "deepseek-v2"])
@pytest.mark.parametrize("targets", TARGETS, ids=lambda t: ",".join(t))
def test_count_equals_real_apply(peft: Any, name: str, targets: list[str]) -> None:
    model = _tiny(name)
    spec = ModelSpec.from_model(model)
    lora = get_method("lora")
    cfg = lora.make_config(rank=4, alpha=8, targets=targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapted = lora.apply(model, cfg)
    assert sum(p.numel() for p in adapted.parameters() if p.requires_grad) == lora.trainable_params(spec, cfg)
    assert lora.memory_terms(spec, cfg).adapter_params == lora.trainable_params(spec, cfg)


@pytest.mark.parametrize("name", ["mixtral", "qwen3-moe", "deepseek-v2"])
def test_all_linear_is_peft_s_own_all_linear(peft: Any, name: str) -> None:
    """Where peft rewrites all-linear (attention + router + gate_up at 2r + down_proj), ours is the same adapter."""
    lora = get_method("lora")
    ours = lora.apply(_tiny(name), lora.make_config(rank=4, alpha=8, targets=["all-linear"]))
    theirs = peft.get_peft_model(_tiny(name), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    assert _trainable(ours) == _trainable(theirs)
    assert any(".experts." in n for n, _ in _trainable(ours))


def test_gpt_oss_all_linear_includes_the_experts_where_peft_s_does_not(peft: Any) -> None:
    lora = get_method("lora")
    cfg = lora.make_config(rank=4, targets=["all-linear"])
    spec = ModelSpec.from_model(_tiny("gpt-oss"))
    theirs = peft.get_peft_model(_tiny("gpt-oss"), peft.LoraConfig(r=4, target_modules="all-linear"))
    assert not any(".experts." in n for n, _ in _trainable(theirs))  # peft: attention only
    terms = lora.memory_terms(spec, cfg)
    ranks = {name.rsplit(".", 1)[-1]: a.rank for name, a in terms.param_adapters.items()}
    assert ranks == {"gate_up_proj": 8, "down_proj": 4, "weight": 4}  # the router's weight at r


def test_adapted_moe_trains(peft: Any) -> None:
    import torch

    lora = get_method("lora")
    model = lora.apply(_tiny("mixtral"), lora.make_config(rank=4, targets=["all-linear"]))
    ids = torch.randint(0, 256, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any(".experts." in n and g.abs().sum() > 0 for n, g in grads.items())


def test_rewrite_tables_are_peft_s() -> None:
    conversion = pytest.importorskip("peft.utils.transformers_weight_conversion")
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    assert conversion._MOE_TARGET_MODULE_MAPPING == REWRITE_MAPPING
    assert {k: tuple(v) for k, v in conversion._MOE_FUSED_TARGETS["mixtral"].items()} == REWRITE_FUSED["mixtral"]
    assert {k: tuple(v) for k, v in conversion._MOE_FUSED_TARGETS["qwen2_moe"].items()} == REWRITE_FUSED["qwen2_moe"]
    types = {t: p for t, p in conversion._MODEL_TO_CONVERSION_PATTERN.items()
             if p in REWRITE_MAPPING and get_checkpoint_conversion_mapping(t) is not None}
    assert types == REWRITE_TYPES


def test_mixtral_8x7b_counts() -> None:
    spec = get_spec("mistralai/Mixtral-8x7B-v0.1")
    lora = get_method("lora")
    attn = lora.trainable_params(spec, lora.make_config(targets=["attn"]))
    assert attn == 13_631_488
    experts = lora.trainable_params(spec, lora.make_config(targets=["experts.gate_up_proj", "experts.down_proj"]))
    assert experts == 32 * (16 * 8 * (4096 + 28672) + 16 * 8 * (4096 + 14336))
    everything = lora.trainable_params(spec, lora.make_config(targets=["all-linear"]))
    router = 32 * 16 * (4096 + 8)
    assert everything == attn + router + 32 * (32 * 8 * (4096 + 28672) + 16 * 8 * (4096 + 14336))


def test_unknown_expert_target_suggests() -> None:
    spec = get_spec("mistralai/Mixtral-8x7B-v0.1")
    lora = get_method("lora")
    with pytest.raises(UnknownNameError) as info:
        lora.trainable_params(spec, lora.make_config(targets=["experts.gate_up_prj"]))
    assert info.value.exit_code == 2
    assert "experts.gate_up_proj" in info.value.suggestions


def test_refusals_are_one_line() -> None:
    spec = get_spec("Qwen/Qwen3-30B-A3B")
    lora, dora = get_method("lora"), get_method("dora")
    with pytest.raises(UnsupportedError, match="dropout"):
        lora.check(spec, lora.make_config(dropout=0.05))
    lora.check(spec, lora.make_config(dropout=0.05, targets=["attn"]))  # Linears only: fine
    with pytest.raises(UnsupportedError, match="DoRA"):
        dora.trainable_params(spec, dora.make_config(targets=["experts.down_proj"]))
    with pytest.raises(UnsupportedError, match="fuses gate_proj and up_proj"):
        lora.trainable_params(spec, lora.make_config(targets=["gate_proj"]))
    # DoRA's presets keep to the Linears it can adapt (attention here).
    assert dora.trainable_params(spec, dora.make_config()) > 0
    with pytest.raises(BadInputError):
        dora.trainable_params(spec, dora.make_config(targets=["mlp"]))


def test_reads_a_peft_config_with_target_parameters(peft: Any, tmp_path: Any) -> None:
    from peftplan.methods.peft_config import read_peft_config

    peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                    target_parameters=["experts.gate_up_proj", "experts.down_proj"]).save_pretrained(str(tmp_path))
    method, cfg = read_peft_config(tmp_path)
    targets = cfg.model_dump()["targets"]
    # peft keeps target_modules as a set: its saved order follows the string hash, so compare the modules as a set.
    assert method.name == "lora" and sorted(targets[:2]) == ["q_proj", "v_proj"]
    assert targets[2:] == ["experts.gate_up_proj", "experts.down_proj"]
    model = _tiny("mixtral")
    spec = ModelSpec.from_model(model)
    real = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                     target_parameters=["experts.gate_up_proj", "experts.down_proj"]))
    assert method.trainable_params(spec, cfg) == sum(p.numel() for p in real.parameters() if p.requires_grad)
