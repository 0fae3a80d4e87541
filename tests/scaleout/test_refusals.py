"""Refusals: pickle checkpoints, custom model code without --trust-remote-code, and code-executing YAML."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from peftplan.cli import main
from tests.harness.tiny import TINY_MODEL, write_suite


class _Canary:
    """Unpickling this runs code: it creates the file its path names."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.path}",))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) <= 1 and "Traceback" not in err, err
    return code, err


@pytest.fixture
def pickle_model(tmp_path: Path) -> tuple[Path, Path]:
    """A model directory whose only weights are a pickle that would run code when loaded."""
    model = tmp_path / "pickled-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_MODEL))
    canary = tmp_path / "canary"
    torch.save({"model.embed_tokens.weight": _Canary(str(canary))}, model / "pytorch_model.bin")
    return model, canary


def test_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path: Path, pickle_model: tuple[Path, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    model, canary = pickle_model
    suite = write_suite(tmp_path, {"model": {"config": None, "id": str(model), "tokenizer": "bytes"}})
    for argv in (["validate", str(suite)], ["bench", str(suite), "--run-dir", str(tmp_path / "run")]):
        code, err = run(argv, capsys)
        assert code == 2 and "pickle checkpoints are refused" in err, err
    adapter = tmp_path / "adapter_model.bin"
    torch.save({"lora_A": _Canary(str(canary))}, adapter)
    code, err = run(["plan", "--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--vram", "24",
                     "--peft-config", str(adapter)], capsys)
    assert code == 2, err
    assert not canary.exists(), "a pickle was loaded"


@pytest.fixture
def remote_code_model(tmp_path: Path) -> Path:
    model = tmp_path / "custom-model"
    model.mkdir()
    config = {**TINY_MODEL, "model_type": "peftplan_custom_arch", "architectures": ["CustomForCausalLM"],
              "auto_map": {"AutoConfig": "modeling_custom.CustomConfig",
                           "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}}
    (model / "config.json").write_text(json.dumps(config))
    (model / "modeling_custom.py").write_text(f"open({str(tmp_path / 'canary')!r}, 'w').close()\n")
    return model


def test_custom_code_is_refused_without_the_flag(tmp_path: Path, remote_code_model: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["plan", "--model", str(remote_code_model), "--vram", "24"], capsys)
    assert code == 2 and "--trust-remote-code" in err, err
    config = json.loads((remote_code_model / "config.json").read_text())
    suite = write_suite(tmp_path, {"model": {"config": config}})
    code, err = run(["validate", str(suite)], capsys)
    assert code == 2 and "--trust-remote-code" in err, err
    # A suite cannot opt itself in: whoever runs it must pass the flag.
    opted_in = write_suite(tmp_path, {"model": {"config": config, "trust_remote_code": True}}, name="opt-in.yaml")
    for argv in (["validate", str(opted_in)], ["bench", str(opted_in), "--run-dir", str(tmp_path / "run")]):
        code, err = run(argv, capsys)
        assert code == 2 and "--trust-remote-code" in err, err
    assert not (tmp_path / "canary").exists(), "custom model code ran"


def test_yaml_object_tags_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    canary = tmp_path / "canary"
    suite = tmp_path / "evil.yaml"
    suite.write_text(f"name: !!python/object/apply:os.system ['touch {canary}']\n")
    code, err = run(["validate", str(suite)], capsys)
    assert code == 2 and "YAML" in err, err
    assert not canary.exists()
