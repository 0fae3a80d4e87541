"""`--peft-config` plans exactly the file (issue 12, item 2), checked against peft itself.

IA3's `feedforward_modules` is modelled (those vectors scale the input); every other field that
changes the trainable count or the memory, and that peftplan does not model, is refused in one line
naming it. Fields at peft's own defaults, and fields that change neither, are accepted.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from peftplan.cli import main
from peftplan.methods.peft_config import read_peft_config
from peftplan.models import get_spec, spec_from_config
from peftplan.models.build import build_model
from tests.conftest import TINY_LLAMA

peft = pytest.importorskip("peft")

LLAMA_3B = "meta-llama/Llama-3.2-3B"
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["down_proj", "gate_proj", "up_proj"]


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps(config))
    return path


def peft_count(model_config: dict[str, Any], peft_cfg: Any, device: str = "meta") -> tuple[Any, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(build_model(model_config, device=device), peft_cfg)
    return model, sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- IA3's feedforward_modules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target_modules", "feedforward_modules", "expected"),
    [
        (["k_proj", "v_proj", "down_proj"], ["down_proj"], 286_720),  # peft's Llama default
        ([*ATTN, *MLP], MLP, 630_784),  # peft's method_comparison ia3 "all-attn" config; was planned as 917,504
        ([*ATTN, *MLP], ["down_proj"], 917_504),
        ("all-linear", ["up_proj"], None),
        (r".*\.(q_proj|down_proj)", ".*down_proj", None),  # regexes: fullmatch, as peft
        (["q_proj", "down_proj"], [], None),  # no feed-forward module: every vector scales the output
    ],
)
def test_ia3_feedforward_modules_count_as_peft_builds(
    tmp_path: Path, target_modules: Any, feedforward_modules: Any, expected: int | None
) -> None:
    spec = get_spec(LLAMA_3B)
    _, real = peft_count(spec.config, peft.IA3Config(target_modules=target_modules, feedforward_modules=feedforward_modules))
    if expected is not None:
        assert real == expected
    method, cfg = read_peft_config(write(tmp_path, {"peft_type": "IA3", "target_modules": target_modules,
                                                    "feedforward_modules": feedforward_modules}))
    assert method.trainable_params(spec, cfg) == real
    # peftplan's own apply (through its peft config) builds the same adapter.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        applied = method.apply(build_model(spec.config), cfg)
    assert sum(p.numel() for p in applied.parameters() if p.requires_grad) == real


def test_ia3_memory_terms_follow_feedforward_modules(tmp_path: Path) -> None:
    spec = get_spec(LLAMA_3B)
    method, cfg = read_peft_config(write(tmp_path, {"peft_type": "IA3", "target_modules": [*ATTN, *MLP],
                                                    "feedforward_modules": MLP}))
    kinds = {name.rsplit(".", 1)[-1]: a.kind.name for name, a in method.memory_terms(spec, cfg).linear_adapters.items()}
    assert kinds == {**dict.fromkeys(ATTN, "ia3_out"), **dict.fromkeys(MLP, "ia3_in")}


def test_plan_of_peft_all_attn_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"auto_mapping": None, "base_model_name_or_path": None, "exclude_modules": None,
                            "fan_in_fan_out": False, "feedforward_modules": MLP, "inference_mode": False,
                            "init_ia3_weights": True, "modules_to_save": None, "peft_type": "IA3",
                            "revision": None, "target_modules": [*ATTN, *MLP], "task_type": None})
    code = main(["plan", "-m", "llama-3.2-3b", "--vram", "24", "--peft-config", str(path), "--format", "json"])
    (entry,) = json.loads(capsys.readouterr().out)["methods"]
    assert code == 0 and entry["trainable_params"] == 630_784
    assert entry["config"]["feedforward"] == MLP


def test_feedforward_modules_must_be_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"peft_type": "IA3", "target_modules": ["q_proj"], "feedforward_modules": ["down_proj"]})
    assert main(["plan", "-m", "llama-3.2-3b", "--vram", "24", "--peft-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "feedforward" in err and "down_proj" in err and len(err.strip().splitlines()) == 1


# --- a file peft itself wrote round-trips, for every planned peft type ---------------------------------

SAVED = [
    peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    peft.LoraConfig(r=4, target_modules="all-linear", use_dora=True, init_lora_weights="gaussian"),
    peft.LoHaConfig(r=4, target_modules=["q_proj", "down_proj"]),
    peft.LoKrConfig(r=4, target_modules=["q_proj", "down_proj"], decompose_both=True),
    peft.VeraConfig(r=16, target_modules=["q_proj", "v_proj"]),
    peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
    peft.PrefixTuningConfig(num_virtual_tokens=7, task_type="CAUSAL_LM"),
    peft.PromptTuningConfig(num_virtual_tokens=7, task_type="CAUSAL_LM"),
]


@pytest.mark.parametrize("peft_cfg", SAVED, ids=lambda c: f"{type(c).__name__}")
def test_saved_adapter_config_round_trips(tmp_path: Path, peft_cfg: Any) -> None:
    model, real = peft_count(TINY_LLAMA, peft_cfg, device="cpu")
    model.save_pretrained(str(tmp_path))  # every field, as peft writes it (prompt learning: filled from the model)
    method, cfg = read_peft_config(tmp_path)
    assert method.trainable_params(spec_from_config(TINY_LLAMA, cache=False), cfg) == real


@pytest.mark.parametrize("peft_type", ["LORA", "LOHA", "LOKR", "VERA", "IA3", "PREFIX_TUNING", "PROMPT_TUNING"])
def test_every_field_at_peft_default_is_accepted(tmp_path: Path, peft_type: str) -> None:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    cls = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    default = cls()
    config = {f.name: json.loads(json.dumps(getattr(default, f.name), default=str)) for f in dataclasses.fields(cls)}
    config |= {"peft_type": peft_type, "target_modules": ["q_proj"], "feedforward_modules": [],
               "num_virtual_tokens": 5}
    config = {k: v for k, v in config.items() if k in {f.name for f in dataclasses.fields(cls)} | {"peft_type"}}
    method, _ = read_peft_config(write(tmp_path, config))
    assert method.name == {"LORA": "lora", "LOHA": "loha", "LOKR": "lokr", "VERA": "vera", "IA3": "ia3",
                           "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt"}[peft_type]


def test_fields_that_change_nothing_are_accepted(tmp_path: Path) -> None:
    method, cfg = read_peft_config(write(tmp_path, {
        "peft_type": "LORA", "r": 8, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "meta-llama/Llama-3.2-3B", "revision": "main", "inference_mode": True,
        "peft_version": "0.99.0", "init_lora_weights": "pissa_niter_4", "fan_in_fan_out": True,
        "runtime_config": {"ephemeral_gpu_offload": True},
    }))
    assert method.name == "lora" and cfg.rank == 8  # type: ignore[attr-defined]


# --- everything else is refused, naming the field ---------------------------------------------------------

LORA = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"]}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({**LORA, "use_bdlora": {"target_modules_bd_a": ["q_proj"], "nblocks": 2}}, "use_bdlora="),  # BD-LoRA
        ({**LORA, "init_lora_weights": "mica"}, "init_lora_weights='mica'"),  # MiCA freezes lora_B
        ({**LORA, "init_lora_weights": "eva", "eva_config": {"rho": 2.0}}, "eva_config="),
        ({**LORA, "lora_bias": True}, "lora_bias=true"),
        ({**LORA, "bias": "all"}, 'bias="all"'),
        ({**LORA, "modules_to_save": ["lm_head"]}, "modules_to_save="),
        ({**LORA, "task_type": "SEQ_CLS"}, "task_type='SEQ_CLS'"),
        ({**LORA, "layer_replication": [[0, 4], [2, 6]]}, "layer_replication="),
        ({**LORA, "rank_pattern": {"q_proj": 4}}, "rank_pattern="),
        ({**LORA, "exclude_modules": ["v_proj"]}, "exclude_modules="),
        ({**LORA, "trainable_token_indices": [1, 2]}, "trainable_token_indices="),
        ({**LORA, "use_qalora": True}, "use_qalora=true"),
        ({**LORA, "a_field_from_the_future": 3}, "a_field_from_the_future=3"),
        ({**LORA, "target_modules": None}, "target_modules=null"),
        ({"peft_type": "IA3", "target_modules": ["k_proj"], "feedforward_modules": None}, "feedforward_modules=null"),
        ({"peft_type": "LOHA", "r": 4, "target_modules": ["q_proj"], "rank_dropout": 0.1}, "rank_dropout=0.1"),
        ({"peft_type": "VERA", "r": 4, "target_modules": ["q_proj"], "save_projection": False}, "save_projection=false"),
        ({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4, "prefix_projection": True}, "prefix_projection=true"),
        ({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4, "num_transformer_submodules": 2},
         "num_transformer_submodules=2"),
        ({"peft_type": "PROMPT_TUNING"}, "num_virtual_tokens=null"),
    ],
)
def test_unmodelled_fields_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: dict[str, Any], field: str
) -> None:
    path = write(tmp_path, config)
    assert main(["plan", "-m", "llama-3.2-3b", "--vram", "24", "--peft-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1, err
    assert field in err and "cannot plan this adapter exactly" in err, err
    assert out == ""


def test_target_parameters_are_modelled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """LoRA on parameters is planned (tests/methods/test_moe_lora.py); a dense model has no experts to name."""
    path = write(tmp_path, {**LORA, "target_parameters": ["experts.gate_up_proj"]})
    assert main(["plan", "-m", "llama-3.2-3b", "--vram", "24", "--peft-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Unknown target module 'experts.gate_up_proj'" in err
