"""The attention and routing facts `Arch` reads for gpt-oss and DeepSeek-V2, against transformers 5.23.

The calibration cells (`calibration/test_matrix_moe.py`) check the memory; these check the facts they rest on.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from peftplan.models.arch import LOW_WEIGHTS_TYPES, NO_SDPA_TYPES, arch_of
from peftplan.models.catalog import catalog_config_dict
from tests.planner.calibration.test_matrix_moe import TINY

# Model types whose default attention is SDPA, beside those that have none.
_SDPA_TYPES = ("llama", "mixtral", "qwen3_moe", "deepseek_v2")


@pytest.mark.parametrize("model_type", sorted(NO_SDPA_TYPES) + list(_SDPA_TYPES))
def test_sdpa_support_matches_transformers(model_type: str) -> None:
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    pretrained = next(getattr(module, name) for name in dir(module) if name.endswith("PreTrainedModel")
                      and name != "PreTrainedModel")
    assert pretrained._supports_sdpa is (model_type not in NO_SDPA_TYPES)


def _arch(name: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    from peftplan.models import get_spec

    base, overrides = TINY[name]
    (tmp_path / "config.json").write_text(json.dumps({**catalog_config_dict(base), **overrides}))
    return arch_of(get_spec(str(tmp_path)))


def test_gpt_oss_facts(tmp_path: Path) -> None:
    a = _arch("gpt-oss", tmp_path)
    assert (a.sdpa, a.attn_sinks, a.attn_masks, a.mla) == (False, True, 2, None)
    assert (a.moe_topk_then_softmax, a.moe_expert_bias, a.moe_clamped_gate, a.moe_router_fp32) == (True, True, True, False)


def test_deepseek_v2_facts(tmp_path: Path) -> None:
    a = _arch("deepseek-v2-lite", tmp_path)
    assert a.sdpa and not a.attn_sinks and a.norms_per_layer == 2  # kv_a_layernorm is not a block norm
    assert a.mla is not None
    assert (a.mla.q_lora_rank, a.mla.kv_lora_rank, a.mla.qk_head, a.mla.v_head) == (0, 64, 48, 32)
    assert a.moe_router_fp32 and not (a.moe_topk_then_softmax or a.moe_expert_bias or a.moe_clamped_gate)


@pytest.mark.parametrize("model_type", sorted(LOW_WEIGHTS_TYPES) + ["mixtral", "deepseek_v2", "gpt_oss"])
def test_low_precision_routing_weights_match_transformers(model_type: str) -> None:
    """The routers that cast the top-k weights back to the logits' dtype, read from the installed modelling code."""
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    source = Path(str(module.__file__)).read_text()
    assert ("router_top_value = router_top_value.to(router_logits.dtype)" in source) is (
        model_type in LOW_WEIGHTS_TYPES)


def test_routing_weights_dtype(tmp_path: Path) -> None:
    for name, low in (("qwen3-moe", True), ("mixtral", False)):
        (tmp_path / name).mkdir()
        assert _arch(name, tmp_path / name).moe_low_weights is low
