"""The offline model catalog: lookups, suggestions, and agreement with the real config.json files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peftplan.errors import UnknownNameError
from peftplan.models import catalog
from peftplan.models.catalog import (
    catalog_aliases,
    catalog_config_dict,
    catalog_entry,
    catalog_ids,
    figure_keys,
    suggest_model_ids,
)

# ../shared/model-configs next to the repository (see its INDEX.md); read at test time, never copied.
MODEL_CONFIGS = Path(__file__).resolve().parents[3] / "shared" / "model-configs"
NO_MODEL_CONFIGS = f"{MODEL_CONFIGS} not found (the shared config.json files are not in this checkout)"

# config.json keys that are metadata, not architecture: the catalog leaves them out.
METADATA_KEYS = frozenset(
    {
        "transformers_version",
        "torch_dtype",
        "_name_or_path",
        "use_cache",
        "auto_map",
        "task_specific_params",
        "gradient_checkpointing",
    }
)

# Where the HF config built from the catalog deliberately differs from the one built from the file.
# falcon-7b: multi_query means one kv head; the file leaves num_kv_heads to default to the head count,
# which the modelling code ignores when multi_query is set (same weights either way).
KNOWN_CONFIG_DIFFERENCES: dict[str, dict[str, tuple[Any, Any]]] = {
    "tiiuae/falcon-7b": {"num_kv_heads": (71, 1)}
}

# sum(p.numel() for p in model.parameters()) of the catalog architecture built on the meta device
# ("params (meta build)" in ../shared/model-configs/INDEX.md; tied matrices counted once).
META_PARAMS = {
    "EleutherAI/pythia-1b": 1_011_781_632,
    "FacebookAI/roberta-base": 124_697_433,
    "FacebookAI/roberta-large": 355_412_057,
    "HuggingFaceTB/SmolLM2-1.7B": 1_711_376_384,
    "HuggingFaceTB/SmolLM2-135M": 134_515_008,
    "HuggingFaceTB/SmolLM2-135M-Instruct": 134_515_008,
    "HuggingFaceTB/SmolLM2-360M": 361_821_120,
    "Qwen/Qwen2-VL-7B-Instruct": 8_291_375_616,
    "Qwen/Qwen2.5-0.5B": 494_032_768,
    "Qwen/Qwen2.5-1.5B": 1_543_714_304,
    "Qwen/Qwen2.5-14B": 14_770_033_664,
    "Qwen/Qwen2.5-32B": 32_763_876_352,
    "Qwen/Qwen2.5-72B": 72_706_203_648,
    "Qwen/Qwen2.5-7B": 7_615_616_512,
    "Qwen/Qwen3-30B-A3B": 30_532_122_624,
    "Qwen/Qwen3-8B": 8_190_735_360,
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": 1_100_048_384,
    "allenai/olmOCR-7B-0225-preview": 8_291_375_616,
    "deepseek-ai/DeepSeek-V2-Lite": 15_706_484_224,
    "google-bert/bert-base-uncased": 109_514_298,
    "google/gemma-2-2b": 2_614_341_888,
    "google/gemma-2-9b": 9_241_705_984,
    "google/gemma-7b": 8_537_680_896,
    "meta-llama/Llama-2-13b-hf": 13_015_864_320,
    "meta-llama/Llama-2-70b-hf": 68_976_648_192,
    "meta-llama/Llama-2-7b-hf": 6_738_415_616,
    "meta-llama/Llama-3.1-405B": 405_853_388_800,
    "meta-llama/Llama-3.1-70B": 70_553_706_496,
    "meta-llama/Llama-3.1-8B": 8_030_261_248,
    "meta-llama/Llama-3.2-1B": 1_235_814_400,
    "meta-llama/Llama-3.2-3B": 3_212_749_824,
    "microsoft/Phi-3-mini-4k-instruct": 3_821_079_552,
    "microsoft/deberta-v2-xxlarge": 1_567_041_636,
    "microsoft/phi-2": 2_779_683_840,
    "mistralai/Mistral-7B-v0.1": 7_241_732_096,
    "mistralai/Mixtral-8x22B-v0.1": 140_630_071_296,
    "mistralai/Mixtral-8x7B-v0.1": 46_702_792_704,
    "openai-community/gpt2": 124_439_808,
    "openai/gpt-oss-20b": 20_914_757_184,
    "tiiuae/falcon-7b": 6_921_720_704,
}


def _config_file(model_id: str) -> Path:
    return MODEL_CONFIGS / model_id / "config.json"


def _ids_with_file() -> list[str]:
    if not MODEL_CONFIGS.is_dir():
        return catalog_ids()  # each one skips, with the reason
    return [model_id for model_id in catalog_ids() if _config_file(model_id).is_file()]


def _read_file_config(model_id: str) -> dict[str, Any]:
    if not MODEL_CONFIGS.is_dir():
        pytest.skip(NO_MODEL_CONFIGS)
    return json.loads(_config_file(model_id).read_text())


def _mismatch(built: Any, expected: Any, where: str) -> str | None:
    """Where `built` differs from `expected` (same JSON types, floats exact), or None."""
    if type(built) is not type(expected):
        return f"{where}: {built!r} ({type(built).__name__}) != {expected!r} ({type(expected).__name__})"
    if isinstance(expected, dict):
        if set(built) != set(expected):
            return f"{where}: keys {sorted(built)} != {sorted(expected)}"
        for key in expected:
            found = _mismatch(built[key], expected[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list):
        if len(built) != len(expected):
            return f"{where}: {built!r} != {expected!r}"
        for i, (b, e) in enumerate(zip(built, expected, strict=True)):
            found = _mismatch(b, e, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if built == expected else f"{where}: {built!r} != {expected!r}"


# --- agreement with the real config.json files -------------------------------------------------------


def test_every_shared_config_has_a_catalog_entry() -> None:
    if not MODEL_CONFIGS.is_dir():
        pytest.skip(NO_MODEL_CONFIGS)
    shared = sorted(str(p.parent.relative_to(MODEL_CONFIGS)) for p in MODEL_CONFIGS.glob("*/*/config.json"))
    assert len(shared) >= 35
    missing = [model_id for model_id in shared if model_id not in catalog_ids()]
    assert not missing, f"no catalog entry for {missing}"


@pytest.mark.parametrize("model_id", _ids_with_file())
def test_catalog_matches_config_file(model_id: str) -> None:
    file_config = _read_file_config(model_id)
    built = catalog_config_dict(model_id)
    for key in sorted(set(built) & set(file_config)):
        found = _mismatch(built[key], file_config[key], key)
        assert found is None, f"{model_id}: {found}"
    absent = sorted(set(file_config) - set(built) - METADATA_KEYS)
    assert not absent, f"{model_id}: keys of config.json missing from the catalog: {absent}"
    leaked = sorted(set(built) & METADATA_KEYS)
    assert not leaked, f"{model_id}: metadata keys in the catalog: {leaked}"


@pytest.mark.parametrize("model_id", _ids_with_file())
def test_same_hf_config_as_config_file(hf: Any, model_id: str) -> None:
    """Keys the file leaves to defaults (e.g. gpt2's tying) must not change the transformers config."""
    file_config = {k: v for k, v in _read_file_config(model_id).items() if k not in METADATA_KEYS}
    built = catalog_config_dict(model_id)
    if "architectures" not in file_config:
        built.pop("architectures")
    from_file = hf.AutoConfig.for_model(**file_config).to_dict()
    from_catalog = hf.AutoConfig.for_model(**built).to_dict()
    diff = {
        key: (from_file.get(key), from_catalog.get(key))
        for key in set(from_file) | set(from_catalog)
        if from_file.get(key, "<absent>") != from_catalog.get(key, "<absent>")
    }
    assert diff == KNOWN_CONFIG_DIFFERENCES.get(model_id, {})


# --- meta-device builds ------------------------------------------------------------------------------


def test_every_entry_has_an_expected_count() -> None:
    assert sorted(META_PARAMS) == catalog_ids()


@pytest.mark.parametrize("model_id", sorted(META_PARAMS))
def test_meta_build_param_count(hf: Any, model_id: str) -> None:
    import torch

    config = catalog_config_dict(model_id)
    hf_config = hf.AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = getattr(hf, config["architectures"][0])(hf_config)
    assert sum(p.numel() for p in model.parameters()) == META_PARAMS[model_id]
    # A tied matrix shows up twice when duplicates are kept.
    with_duplicates = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert (with_duplicates > META_PARAMS[model_id]) == catalog_entry(model_id).tied  # type: ignore[union-attr]


# --- the catalog itself ------------------------------------------------------------------------------


def test_ids_are_sorted_and_complete() -> None:
    ids = catalog_ids()
    assert ids == sorted(ids)
    assert len(ids) == 40
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in ids


def test_entry_fields_and_config_dict() -> None:
    entry = catalog_entry("meta-llama/Llama-3.1-8B")
    assert entry is not None
    assert (entry.model_type, entry.architecture, entry.license) == ("llama", "LlamaForCausalLM", "llama3.1")
    assert (entry.hidden, entry.layers, entry.heads, entry.kv_heads) == (4096, 32, 32, 8)
    assert (entry.intermediate, entry.vocab, entry.tied, entry.max_positions) == (
        14336,
        128256,
        False,
        131072,
    )
    assert entry.extra["rope_scaling"]["rope_type"] == "llama3"
    config = catalog_config_dict("meta-llama/Llama-3.1-8B")
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] == 8
    assert config["rope_theta"] == 500000.0


def test_types_without_a_key_leave_the_figure_out() -> None:
    gpt2 = catalog_entry("gpt2")
    assert gpt2 is not None
    assert (gpt2.kv_heads, gpt2.intermediate) == (None, None)  # no kv heads; n_inner None means 4 * hidden
    config = catalog_config_dict("gpt2")
    assert (config["n_embd"], config["n_layer"], config["n_head"], config["n_positions"]) == (
        768,
        12,
        12,
        1024,
    )
    assert "n_inner" not in config and "hidden_size" not in config
    assert config["summary_activation"] is None  # a JSON null, listed under `nulls` in the TOML
    assert figure_keys("gpt2")["kv_heads"] is None
    assert figure_keys("llama")["kv_heads"] == "num_key_value_heads"


def test_instruct_shares_the_base_architecture() -> None:
    base = catalog_config_dict("HuggingFaceTB/SmolLM2-135M")
    instruct = catalog_config_dict("HuggingFaceTB/SmolLM2-135M-Instruct")
    token_ids = {"bos_token_id", "eos_token_id", "pad_token_id"}
    assert {k: v for k, v in base.items() if k not in token_ids} == {
        k: v for k, v in instruct.items() if k not in token_ids
    }
    assert (instruct["bos_token_id"], instruct["eos_token_id"], instruct["pad_token_id"]) == (1, 2, 2)


def test_config_dict_is_a_fresh_copy() -> None:
    first = catalog_config_dict("meta-llama/Llama-3.1-8B")
    first["rope_scaling"]["factor"] = 1.0
    first["hidden_size"] = 1
    again = catalog_config_dict("meta-llama/Llama-3.1-8B")
    assert again["rope_scaling"]["factor"] == 8.0 and again["hidden_size"] == 4096


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B"),
        ("META-LLAMA/llama-3.1-8b", "meta-llama/Llama-3.1-8B"),
        ("  meta-llama/Llama-3.1-8B ", "meta-llama/Llama-3.1-8B"),
        ("llama-3.1-8b", "meta-llama/Llama-3.1-8B"),
        ("meta-llama/Meta-Llama-3.1-8B", "meta-llama/Llama-3.1-8B"),
        ("GPT2", "openai-community/gpt2"),
        ("bert-base-uncased", "google-bert/bert-base-uncased"),
        ("roberta-base", "FacebookAI/roberta-base"),
    ],
)
def test_lookup(name: str, expected: str) -> None:
    entry = catalog_entry(name)
    assert entry is not None and entry.id == expected


def test_unknown_names() -> None:
    assert catalog_entry("meta-llama/Llama-9-1T") is None
    with pytest.raises(UnknownNameError, match="Llama-9-1T"):
        catalog_config_dict("meta-llama/Llama-9-1T")


def test_aliases_point_to_entries() -> None:
    aliases = catalog_aliases()
    assert aliases["gpt2"] == "openai-community/gpt2"
    ids_lower = {model_id.lower() for model_id in catalog_ids()}
    for alias, target in aliases.items():
        assert alias == alias.lower() and alias not in ids_lower
        assert target in catalog_ids()


@pytest.mark.parametrize(
    ("typo", "expected"),
    [
        ("meta-llama/Llama-3.1-8b", "meta-llama/Llama-3.1-8B"),
        ("Llama-3.1-8", "meta-llama/Llama-3.1-8B"),
        ("meta-lama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B"),
        ("Qwen2.5-7", "Qwen/Qwen2.5-7B"),
        ("gpt-2", "openai-community/gpt2"),
        ("SmolLM2-135M-Instrct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ],
)
def test_suggestions(typo: str, expected: str) -> None:
    suggestions = suggest_model_ids(typo)
    assert suggestions[0] == expected
    assert len(suggestions) <= 3 and len(set(suggestions)) == len(suggestions)


def test_suggestions_limits() -> None:
    assert suggest_model_ids("zzzzzzzzzzzz") == []
    assert suggest_model_ids("Llama-3.1-8", n=0) == []
    assert len(suggest_model_ids("meta-llama/Llama", n=10)) <= 10


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"typo": 1}, "unknown keys"),
        ({"hidden": None}, "missing"),
        ({"kv_heads": 4, "model_type": "gpt2"}, "no HF key for 'kv_heads'"),
        ({"extra": {"hidden_size": 1}}, "repeats a figure key"),
        ({"nulls": ["rope_scaling"], "extra": {"rope_scaling": {}}}, "both in nulls and in extra"),
    ],
)
def test_malformed_entries_are_rejected(table: dict[str, Any], message: str) -> None:
    good: dict[str, Any] = {
        "model_type": "llama",
        "architecture": "LlamaForCausalLM",
        "hidden": 64,
        "layers": 2,
        "heads": 4,
        "vocab": 128,
        "tied": False,
        "max_positions": 256,
        "license": "mit",
    }
    merged = {k: v for k, v in {**good, **table}.items() if v is not None}
    if merged["model_type"] == "gpt2":
        merged["architecture"] = "GPT2LMHeadModel"
    with pytest.raises(ValueError, match=message):
        catalog._parse_entry("x/y", merged)


def test_catalog_does_not_import_torch_or_transformers() -> None:
    code = (
        "import sys, peftplan.models.catalog as c; c.catalog_config_dict('gpt2'); c.suggest_model_ids('gpt'); "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
