"""OFT: the method contract (`tests/methods/contract.py`), peft 0.21's block-size rules, and peft's own
files read (`--peft-config`) and written (`--emit peft`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from peftplan.cli import main
from peftplan.errors import BadInputError
from peftplan.methods import get_method
from peftplan.methods.oft import layer_blocks
from peftplan.methods.peft_config import read_peft_config
from peftplan.models import get_spec, spec_from_config
from peftplan.models.build import build_model
from tests.conftest import TINY_LLAMA
from tests.methods.contract import MethodContract

peft = pytest.importorskip("peft")

LLAMA_3B = "meta-llama/Llama-3.2-3B"


class TestOft(MethodContract):
    name = "oft"
    # Every way of sizing the blocks and every preset: 48 divides no targeted width (peft moves it to
    # a divisor), and the exact Cayley transform with one shared block.
    rows = (
        {"block_size": 32, "targets": "attn"},
        {"block_size": 0, "blocks": 8, "targets": "mlp"},
        {"block_size": 48, "targets": "all-linear"},
        {"block_size": 16, "block_share": True, "use_cayley_neumann": False, "targets": "all-linear"},
    )
    tiny = {"block_size": 16}

    def test_exactly_one_of_block_size_and_blocks(self) -> None:
        for values in ({"block_size": 0}, {"block_size": 32, "blocks": 4}):
            with pytest.raises(BadInputError, match="exactly one of block_size"):
                self.method.make_config(**values)

    def test_block_size_moves_to_the_nearest_divisor_as_in_peft(self) -> None:
        from peft.tuners.oft.layer import OFTLayer

        cfg = self.method.make_config
        for in_features in (7, 64, 768, 2304, 3584, 5120, 18944):
            for value in (1, 3, 5, 32, 48, 100, 4096, 30000):
                by_size = layer_blocks(in_features, cfg(block_size=value))
                by_blocks = layer_blocks(in_features, cfg(block_size=0, blocks=value))
                if in_features % value or value > in_features:
                    expected = OFTLayer.adjust_oft_parameters(None, in_features, value)
                    assert by_size[1] == expected and by_blocks[0] == expected, (in_features, value)
                else:
                    assert by_size == (in_features // value, value) and by_blocks == (value, in_features // value)

    def test_gpt2_conv1d_is_refused_in_one_line(self) -> None:
        method = self.method
        with pytest.raises(BadInputError, match="cannot adapt GPT-2 style Conv1D layers"):
            method.check(get_spec("openai-community/gpt2"), method.make_config())

    def test_blocks_of_one_feature_train_nothing_and_are_refused(self) -> None:
        method, spec = self.method, get_spec(LLAMA_3B)
        for values in ({"block_size": 1}, {"block_size": 0, "blocks": 3072, "targets": "attn"}):
            with pytest.raises(BadInputError, match="trains nothing"):
                method.check(spec, method.make_config(**values))


def _peft_trainable(model_config: dict[str, Any], peft_cfg: Any, device: str = "meta") -> tuple[Any, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(build_model(model_config, device=device), peft_cfg)
    return model, sum(p.numel() for p in model.parameters() if p.requires_grad)


SAVED = [
    peft.OFTConfig(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    peft.OFTConfig(r=4, oft_block_size=0, target_modules="all-linear", coft=True, eps=1e-4),
    peft.OFTConfig(oft_block_size=8, target_modules=["down_proj"], block_share=True, use_cayley_neumann=False),
    peft.OFTConfig(oft_block_size=24, target_modules=["q_proj", "down_proj"], num_cayley_neumann_terms=7),
]


@pytest.mark.parametrize("peft_cfg", SAVED, ids=["default", "r4-coft", "shared-cayley", "adjusted-7terms"])
def test_a_file_peft_wrote_plans_what_peft_builds(tmp_path: Path, peft_cfg: Any) -> None:
    model, real = _peft_trainable(TINY_LLAMA, peft_cfg, device="cpu")
    model.save_pretrained(str(tmp_path))  # every field, as peft writes it
    method, cfg = read_peft_config(tmp_path)
    assert method.name == "oft"
    assert method.trainable_params(spec_from_config(TINY_LLAMA, cache=False), cfg) == real
    for field in ("coft", "block_share", "use_cayley_neumann", "num_cayley_neumann_terms"):
        assert getattr(cfg, field) == getattr(peft_cfg, field)


def test_peft_method_comparison_config_on_llama_3b(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shape of peft's MetaMathQA `oft/llama-3.2-3B-rank32` experiment (written by a peft before 0.17:
    no Cayley-Neumann fields, empty rank/alpha patterns): 32 blocks of 96 on q_proj and v_proj."""
    config = {"peft_type": "OFT", "r": 32, "oft_block_size": 0, "target_modules": ["q_proj", "v_proj"],
              "module_dropout": 0.0, "coft": False, "eps": 6e-05, "block_share": False, "bias": "none",
              "init_weights": True, "fan_in_fan_out": False, "rank_pattern": {}, "alpha_pattern": {},
              "layers_to_transform": None, "layers_pattern": None, "modules_to_save": None, "task_type": None}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    spec = get_spec(LLAMA_3B)
    _, real = _peft_trainable(spec.config, peft.OFTConfig(r=32, oft_block_size=0, target_modules=["q_proj", "v_proj"]))
    assert real == 28 * 2 * 32 * (96 * 95 // 2) == 8_171_520
    code = main(["plan", "-m", "llama-3.2-3b", "--vram", "24", "--no-fit-search", "--peft-config", str(tmp_path),
                 "--format", "json"])
    (entry,) = json.loads(capsys.readouterr().out)["methods"]
    assert code == 0 and entry["method"] == "oft" and entry["trainable_params"] == real
    assert entry["config"]["blocks"] == 32 and entry["config"]["use_cayley_neumann"] is True  # peft 0.21's default


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"peft_type": "OFT", "r": 8, "target_modules": ["q_proj"]}, "peft < 0.14"),  # no oft_block_size
        ({"peft_type": "OFT", "r": 8, "oft_block_size": 32, "target_modules": ["q_proj"]}, "exactly one of"),
        ({"peft_type": "OFT", "oft_block_size": 32, "target_modules": ["q_proj"], "bias": "oft_only"},
         'bias="oft_only"'),
        ({"peft_type": "OFT", "oft_block_size": 32, "target_modules": None}, "target_modules=null"),
    ],
)
def test_a_file_that_cannot_be_planned_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: dict[str, Any], needle: str
) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    assert main(["plan", "-m", "llama-3.2-3b", "--vram", "24", "--peft-config", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert needle in err and len(err.strip().splitlines()) == 1 and out == "", err


def test_emit_peft_builds_exactly_the_planned_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "--no-fit-search", "-m", "HuggingFaceTB/SmolLM2-135M", "--vram", "8", "--method", "oft",
                 "--targets", "q_proj,v_proj,down_proj", "--emit", "peft"])
    out = capsys.readouterr().out
    assert code == 0
    (tmp_path / "adapter_config.json").write_text(out)
    config = peft.OFTConfig.from_pretrained(str(tmp_path))
    assert (config.oft_block_size, config.r, config.use_cayley_neumann) == (32, 0, True)
    spec = get_spec("HuggingFaceTB/SmolLM2-135M")
    _, real = _peft_trainable(spec.config, config)
    method = get_method("oft")
    assert real == method.trainable_params(spec, method.make_config(targets="q_proj,v_proj,down_proj"))
