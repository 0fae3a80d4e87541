"""A model named by its config.json path is the same model as its catalog id (issue 12, item 3).

The real config.json files of ../shared/model-configs are used where they exist (read in place,
never copied); falcon-7b's leaves `num_kv_heads` out and says `multi_query: true`, deberta-v2-xxlarge's
names no architecture.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

import peftplan
from peftplan.models import get_spec, spec_from_config
from peftplan.models.catalog import catalog_ids

MODEL_CONFIGS = Path(__file__).resolve().parents[3] / "shared" / "model-configs"


def _config_path(model_id: str) -> Path:
    if not MODEL_CONFIGS.is_dir():
        pytest.skip(f"{MODEL_CONFIGS} not found (the shared config.json files are not beside the project)")
    path = MODEL_CONFIGS / model_id / "config.json"
    if not path.is_file():
        pytest.skip(f"no shared config.json for {model_id}")
    return path


def _ids_with_a_file() -> list[str]:
    """Catalog ids with a shared config.json (one id, which then skips with the reason, without them)."""
    if not MODEL_CONFIGS.is_dir():
        return ["tiiuae/falcon-7b"]
    return [m for m in catalog_ids() if (MODEL_CONFIGS / m / "config.json").is_file()]


@pytest.mark.parametrize("model_id", _ids_with_a_file())
def test_path_and_catalog_id_build_the_same_spec(model_id: str) -> None:
    by_path = get_spec(str(_config_path(model_id)))
    by_id = get_spec(model_id)
    assert by_path.total_params == by_id.total_params
    assert by_path.num_kv_heads == by_id.num_kv_heads
    # Everything the planner reads, except the name and the raw config it was built from.
    path_fields, id_fields = asdict(by_path), asdict(by_id)
    for name in ("model_id", "config"):
        path_fields.pop(name), id_fields.pop(name)
    assert path_fields == id_fields


def test_falcon_by_path_has_one_kv_head_and_the_same_plan() -> None:
    path = _config_path("tiiuae/falcon-7b")
    spec = get_spec(str(path))
    assert (spec.num_heads, spec.num_kv_heads) == (71, 1)  # multi_query: true; transformers' key says 71
    by_path = peftplan.plan(str(path), vram=24, fit_search=False).to_dict()
    by_id = peftplan.plan("falcon-7b", vram=24, fit_search=False).to_dict()
    for data in (by_path, by_id):
        data["model"].pop("id")
        data.pop("skipped")  # the reasons name the model as it was given
    assert by_path == by_id


def test_a_config_without_architectures_builds_the_catalogs_model() -> None:
    spec = get_spec(str(_config_path("microsoft/deberta-v2-xxlarge")))  # used to be a traceback
    assert spec.architecture == "DebertaV2ForMaskedLM" == get_spec("microsoft/deberta-v2-xxlarge").architecture


# Tiny configs (no shared files needed): kv heads follow the weights, whatever the config calls them.
TINY_FALCON = {
    "model_type": "falcon",
    "architectures": ["FalconForCausalLM"],
    "hidden_size": 64,
    "num_attention_heads": 8,
    "num_hidden_layers": 2,
    "vocab_size": 128,
    "new_decoder_architecture": False,
}


@pytest.mark.parametrize(
    ("config", "kv_heads"),
    [
        ({**TINY_FALCON, "multi_query": True}, 1),
        ({**TINY_FALCON, "multi_query": False}, 8),
        ({**TINY_FALCON, "new_decoder_architecture": True, "num_kv_heads": 2}, 2),
        ({"model_type": "gpt_bigcode", "architectures": ["GPTBigCodeForCausalLM"], "n_embd": 64, "n_head": 8,
          "n_layer": 2, "vocab_size": 128, "multi_query": True}, 1),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
          "num_attention_heads": 8, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 128}, 2),
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 64, "n_head": 8, "n_layer": 2,
          "vocab_size": 128}, 8),
    ],
)
def test_kv_heads_are_read_off_the_built_attention(config: dict, kv_heads: int) -> None:
    assert spec_from_config(config, cache=False).num_kv_heads == kv_heads
