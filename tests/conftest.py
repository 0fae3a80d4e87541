"""Shared fixtures: tiny models built from configs, paths to ../shared, an isolated cache, quiet transformers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"

# Tests never touch the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests run many tiny torch ops; on 2 cores, one intra-op thread per process is far faster for them
# (and pytest-xdist, when used, already keeps both cores busy).
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY_LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}

TINY_BERT = {
    "model_type": "bert",
    "architectures": ["BertForMaskedLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 256,
    "max_position_embeddings": 128,
}


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each test session gets its own spec cache, so tests never depend on a developer's cache."""
    os.environ["PEFTPLAN_CACHE_DIR"] = str(tmp_path_factory.mktemp("peftplan-cache"))


@pytest.fixture(scope="module")
def hf() -> Any:
    """transformers (imported once, quiet), for the tests that build configs and models; skips without torch."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (the shared data and model configs) is not beside the project")
    return SHARED
