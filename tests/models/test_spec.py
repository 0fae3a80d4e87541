"""ModelSpec: totals equal the meta model's numel (tied counted once); the disk cache round-trips."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from peftplan.errors import BadInputError, UnknownNameError
from peftplan.models import ModelSpec, get_spec, resolve_model, spec_from_config
from peftplan.models.build import build_model


@pytest.mark.parametrize(
    ("model_id", "total"),
    [
        ("meta-llama/Llama-3.1-8B", 8_030_261_248),
        ("meta-llama/Llama-3.2-3B", 3_212_749_824),
        ("HuggingFaceTB/SmolLM2-135M", 134_515_008),
    ],
)
def test_totals_match_published_counts(model_id: str, total: int) -> None:
    spec = get_spec(model_id)
    assert spec.total_params == total
    model = build_model(spec.config)
    assert spec.total_params == sum(p.numel() for p in model.parameters())


def test_spec_inventory_of_llama() -> None:
    spec = get_spec("meta-llama/Llama-3.1-8B")
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (4096, 32, 32, 8, 128)
    assert (spec.vocab_size, spec.intermediate_size, spec.kind) == (128256, 14336, "decoder")
    assert spec.layers_path == "model.layers"
    q = next(lin for lin in spec.linears if lin.name == "model.layers.0.self_attn.k_proj")
    assert (q.in_features, q.out_features, q.bias, q.role) == (4096, 1024, False, "attn")
    assert [lin.name for lin in spec.linears if lin.role == "output"] == ["lm_head"]
    assert spec.embeddings[0].shape == (128256, 4096)
    assert len(spec.norms) == 2 * 32 + 1


def test_tied_embeddings_counted_once() -> None:
    spec = get_spec("HuggingFaceTB/SmolLM2-135M")
    assert spec.tie_word_embeddings
    tied = [p for p in spec.params if p.tied_to is not None]
    assert [(p.name, p.tied_to) for p in tied] == [("lm_head.weight", "model.embed_tokens.weight")]


def test_kinds() -> None:
    assert get_spec("FacebookAI/roberta-base").kind == "encoder"
    assert get_spec("Qwen/Qwen2-VL-7B-Instruct").kind == "vlm"
    assert get_spec("openai-community/gpt2").linears[0].conv1d


def test_cache_is_fast_and_identical(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PEFTPLAN_CACHE_DIR", str(tmp_path))
    config = resolve_model("Qwen/Qwen2.5-0.5B").config
    first = spec_from_config(config, model_id="q")
    assert list((tmp_path / "specs").glob("*.json"))
    start = time.perf_counter()
    second = spec_from_config(config, model_id="q")
    assert time.perf_counter() - start < 0.5
    assert second == first
    assert ModelSpec.from_json(first.to_json()) == first


def test_torn_cache_file_is_rebuilt(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PEFTPLAN_CACHE_DIR", str(tmp_path))
    config = resolve_model("openai-community/gpt2").config
    spec_from_config(config, model_id="g")
    (cache_file,) = (tmp_path / "specs").glob("*.json")
    cache_file.write_text('{"model_id": ')
    assert spec_from_config(config, model_id="g").total_params == 124_439_808


def test_local_directory_and_file(tmp_path, shared_dir) -> None:
    source = shared_dir / "model-configs" / "HuggingFaceTB" / "SmolLM2-135M"
    assert get_spec(str(source)).total_params == 134_515_008
    assert get_spec(str(source / "config.json")).total_params == 134_515_008


def test_malformed_local_config(tmp_path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        resolve_model(str(bad))
    bad.write_text('{"hidden_size": 4}')
    with pytest.raises(BadInputError, match="model_type"):
        resolve_model(str(tmp_path))


def test_unknown_model_suggests_catalog_ids() -> None:
    with pytest.raises(UnknownNameError) as info:
        resolve_model("lama-3.1-8b")
    assert "Did you mean" in str(info.value)


def test_hub_id_offline_fails_clearly(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BadInputError, match="offline catalog") as info:
        resolve_model("meta-llama/Llama-3.1-8B-Instructt")
    assert "meta-llama/Llama-3.1-8B" in str(info.value)


def test_remote_code_is_refused_without_flag() -> None:
    config = {"model_type": "my_custom_arch", "auto_map": {"AutoConfig": "x.Y"}, "architectures": ["MyModel"]}
    with pytest.raises(BadInputError, match="trust-remote-code"):
        spec_from_config(config, cache=False)


def test_models_package_stays_light() -> None:
    code = "import peftplan.models, peftplan.methods, peftplan.cli, sys; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hub_id_without_network_fails_fast(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    start = time.perf_counter()
    with pytest.raises(BadInputError, match="unreachable"):
        resolve_model("someone/some-model")
    assert time.perf_counter() - start < 10
