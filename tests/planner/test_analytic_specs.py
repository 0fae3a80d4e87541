"""The ModelSpecs shipped for catalog models (peftplan/models/specs) are current and rebuild identically."""

from __future__ import annotations

import pytest

from peftplan.models import config_digest, get_spec, shipped_spec, shipped_spec_path
from peftplan.models.catalog import catalog_config_dict, catalog_ids
from tests.scripts import load_script


@pytest.mark.parametrize("model_id", catalog_ids())
def test_every_catalog_model_ships_a_current_spec(model_id: str) -> None:
    assert shipped_spec_path(model_id).is_file(), "run scripts/build_model_specs.py"
    spec = shipped_spec(model_id, catalog_config_dict(model_id))
    assert spec is not None, (
        f"{model_id}: the catalog changed since the spec was built; run scripts/build_model_specs.py"
    )
    assert spec.model_id == model_id
    assert get_spec(model_id) == spec


@pytest.mark.parametrize(
    "model_id", ["HuggingFaceTB/SmolLM2-135M", "google/gemma-2-2b", "openai-community/gpt2"]
)
def test_rebuilding_gives_the_shipped_bytes(model_id: str) -> None:
    assert load_script("scripts/build_model_specs.py", "build_model_specs").spec_file_bytes(model_id) == shipped_spec_path(model_id).read_bytes()


def test_a_changed_config_does_not_use_the_shipped_spec() -> None:
    config = catalog_config_dict("HuggingFaceTB/SmolLM2-135M")
    config["num_hidden_layers"] = 3
    assert shipped_spec("HuggingFaceTB/SmolLM2-135M", config) is None
    assert config_digest(config) != config_digest(catalog_config_dict("HuggingFaceTB/SmolLM2-135M"))


def test_known_totals_from_shipped_specs() -> None:
    assert get_spec("meta-llama/Llama-3.1-8B").total_params == 8_030_261_248
    assert get_spec("meta-llama/Llama-3.2-3B").total_params == 3_212_749_824
    assert get_spec("HuggingFaceTB/SmolLM2-135M").total_params == 134_515_008
