"""A tiny random Llama suite for harness tests, written as YAML with per-test changes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import TINY_LLAMA

# The shared tiny Llama (tests/conftest.py) with biases (so BitFit applies), a vocabulary that fits the built-in
# byte tokenizer (259 tokens, `harness.loading.byte_tokenizer`) and its special-token ids, and room for longer sequences.
TINY_MODEL: dict[str, Any] = {
    **TINY_LLAMA,
    "vocab_size": 260,
    "max_position_embeddings": 256,
    "attention_bias": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

TINY_SUITE: dict[str, Any] = {
    "name": "tiny-test",
    "model": {"config": TINY_MODEL, "tokenizer": "bytes"},
    "task": {"train": {"generated": "parity", "size": 240}, "holdout": 32},
    "methods": [{"name": "lora"}],
    "search": {"trials": 1},
    "training": {"steps": 4, "batch_size": 8, "seq_len": 48, "eval_every": 2, "seed": 0},
    "eval": {
        "task_examples": 16,
        "loss_examples": 16,
        "forgetting": {"probe": "self-sampled", "tokens": 64, "window": 32},
        "latency": {"prompt_tokens": 8, "new_tokens": 2, "repeats": 1},
    },
    "storage": {"heartbeat_interval": 1, "grace_period": 2},
}


def deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def write_suite(directory: Path, changes: dict[str, Any] | None = None, name: str = "suite.yaml") -> Path:
    """The tiny suite with `changes` merged in (dicts merge, everything else replaces), as a YAML file."""
    path = directory / name
    path.write_text(yaml.safe_dump(deep_update(TINY_SUITE, changes or {}), sort_keys=False))
    return path
