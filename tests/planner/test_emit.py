"""`plan --emit FORMAT`: the planned configuration in each stack's own format, exactly as priced.

The peft format is loaded with real peft and built on the model: its trainable count is the plan's.
Every other format is checked for the knobs that were priced; formats whose library installs here are
also loaded by that library (tests/planner/test_emit_libraries.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import peftplan
from peftplan.cli import main
from peftplan.planner.emit import emit_plan

SMOL = "HuggingFaceTB/SmolLM2-135M"
LLAMA = "meta-llama/Llama-3.1-8B"


def _emit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["plan", "--no-fit-search", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_peft_config_builds_exactly_the_planned_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from peft import LoraConfig, get_peft_model

    from peftplan.models import get_spec
    from peftplan.models.build import build_model

    code, out, _ = _emit(capsys, "-m", SMOL, "--vram", "8", "--method", "lora", "--rank", "8",
                         "--targets", "q_proj,v_proj,down_proj", "--emit", "peft")
    assert code == 0
    (tmp_path / "adapter_config.json").write_text(out)
    config = LoraConfig.from_pretrained(str(tmp_path))
    assert config.r == 8  # targets are a regex that selects exactly the planned modules (counted below)
    model = get_peft_model(build_model(get_spec(SMOL).config), config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    plan = peftplan.plan(SMOL, methods="lora", rank=8, targets="q_proj,v_proj,down_proj", fit_search=False)
    assert trainable == plan.methods[0].trainable_params


def test_the_recommendation_is_emitted_when_several_methods_are_planned() -> None:
    plan = peftplan.plan(LLAMA, vram=24, methods=["lora", "qlora", "ia3"], fit_search=False)
    data = json.loads(emit_plan(plan, "peft"))
    assert data["peft_type"] == ("LORA" if plan.recommendation.method in ("lora", "qlora") else "IA3")
    assert data["r"] == plan.recommendation.config["rank"]


def test_trl_script_carries_the_priced_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _emit(capsys, "-m", LLAMA, "--vram", "24", "--method", "qlora", "--stack", "trl",
                         "--seq-len", "4096", "--batch-size", "2", "--optimizer", "paged-adamw8bit", "--emit", "trl")
    assert code == 0
    for needle in ("max_length=4096", "per_device_train_batch_size=2", 'optim="paged_adamw_8bit"',
                   'loss_type="nll"', "gradient_checkpointing=True", 'bnb_4bit_quant_type="nf4"',
                   '"dtype": "bfloat16"'):
        assert needle in out, needle
    compile(out, "emitted.py", "exec")  # it is Python


def test_axolotl_yaml_carries_the_priced_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _emit(capsys, "-m", LLAMA, "--vram", "24", "--method", "qlora", "--stack", "axolotl",
                         "--checkpointing", "offload", "--loss", "fused", "--rank", "32", "--emit", "axolotl")
    assert code == 0
    data = yaml.safe_load(out)
    assert data["adapter"] == "qlora" and data["load_in_4bit"] is True
    assert data["lora_r"] == 32 and data["gradient_checkpointing"] == "offload"
    assert data["cut_cross_entropy"] is True
    assert set(data["lora_target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"}


def test_llama_factory_yaml_carries_the_priced_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _emit(capsys, "-m", LLAMA, "--vram", "24", "--method", "qlora", "--stack", "llama-factory",
                         "--seq-len", "1024", "--emit", "llama-factory")
    assert code == 0
    data = yaml.safe_load(out)
    assert data["quantization_bit"] == 4 and data["double_quantization"] is True
    assert data["cutoff_len"] == 1024 and data["disable_gradient_checkpointing"] is False
    assert data["finetuning_type"] == "lora"


def test_torchtune_command_carries_the_priced_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _emit(capsys, "-m", LLAMA, "--vram", "24", "--method", "qlora", "--stack", "torchtune",
                         "--targets", "q_proj,v_proj,o_proj,mlp", "--rank", "8", "--emit", "torchtune")
    assert code == 0
    assert "tune run lora_finetune_single_device --config llama3_1/8B_qlora_single_device" in out
    for needle in ("'model.lora_attn_modules=[q_proj,v_proj,output_proj]'", "'model.apply_lora_to_mlp=True'",
                   "'model.lora_rank=8'", "'loss._component_=torchtune.modules.loss.CEWithChunkedOutputLoss'",
                   "'dtype=bf16'", "'tokenizer.max_seq_len=2048'"):
        assert needle in out, needle


@pytest.mark.parametrize(("fused", "optim"), [("--optimizer-fused", "adamw_torch_fused"),
                                              ("--no-optimizer-fused", "adamw_torch")])
def test_fused_adamw_is_emitted_as_priced(capsys: pytest.CaptureFixture[str], fused: str, optim: str) -> None:
    code, out, _ = _emit(capsys, "-m", LLAMA, "--vram", "24", "--method", "qlora", "--stack", "llama-factory",
                         "--optimizer", "adamw", fused, "--emit", "llama-factory")
    assert code == 0
    assert yaml.safe_load(out)["optim"] == optim
    code, out, _ = _emit(capsys, "-m", LLAMA, "--vram", "24", "--method", "qlora", "--stack", "torchtune",
                         "--optimizer", "adamw", fused, "--emit", "torchtune")
    assert code == 0
    assert f"'optimizer.fused={fused == '--optimizer-fused'}'" in out


def test_unsloth_script_uses_offloaded_checkpointing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _emit(capsys, "-m", LLAMA, "--vram", "24", "--method", "qlora", "--stack", "unsloth",
                         "--emit", "unsloth")
    assert code == 0
    assert 'use_gradient_checkpointing="unsloth"' in out and "load_in_4bit=True" in out
    assert 'optim="adamw_bnb_8bit"' in out  # the stack's default optimizer, as priced
    compile(out, "emitted.py", "exec")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--method", "qlora", "--emit", "axolotl"], "plan with --stack axolotl"),
        (["--method", "qlora", "--stack", "torchtune", "--targets", "q_proj,gate_proj", "--emit", "torchtune"],
         "cannot express targets"),
        (["--method", "ia3", "--stack", "trl", "--emit", "trl"], "cannot express method 'ia3'"),
        (["--method", "lora", "--stack", "trl", "--offload-activations", "--optimizer", "adamw-fp32", "--emit", "trl"],
         "cannot express optimizer=adamw-fp32"),
        (["--method", "lora", "--emit", "deepspeed"], "Unknown emit format"),
    ],
)
def test_what_a_format_cannot_run_as_priced_is_refused(argv: list[str], needle: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _emit(capsys, "-m", LLAMA, "--vram", "24", *argv)
    assert code == 2
    assert needle in err and err.count("\n") == 1
    assert out == ""
