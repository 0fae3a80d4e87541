"""`plan --emit` output loaded by the real stacks that install beside the pinned ones (trl, torchtune).

Axolotl, LLaMA-Factory, litgpt and Unsloth do not install beside transformers 5.23 / peft 0.21 /
pandas 3 here (see docs/planner.md "--emit"); their formats are checked field by field in test_emit.py.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest

import peftplan
from peftplan.cli import main

LLAMA_1B = "meta-llama/Llama-3.2-1B"


def _emit(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(["plan", "--no-fit-search", "--vram", "24", *argv])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def test_trl_script_builds_real_sft_and_lora_configs(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("trl")
    script = _emit(capsys, "-m", LLAMA_1B, "--method", "qlora", "--stack", "trl", "--seq-len", "1024",
                   "--batch-size", "4", "--optimizer", "paged-adamw8bit", "--rank", "8", "--emit", "trl")
    # TRL refuses bf16 on a machine without a GPU unless told to train on the CPU; nothing else changes.
    runnable = script.replace("training_args = SFTConfig(", "training_args = SFTConfig(use_cpu=True,")
    namespace: dict[str, Any] = {"__name__": "emitted"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(runnable, "emitted_trl.py", "exec"), namespace)
    from peft import LoraConfig
    from trl import SFTConfig

    args, lora = namespace["training_args"], namespace["peft_config"]
    assert isinstance(args, SFTConfig) and isinstance(lora, LoraConfig)
    assert (args.max_length, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1024, 4, 1)
    assert str(args.optim).endswith("PAGED_ADAMW_8BIT") or args.optim == "paged_adamw_8bit"
    assert args.loss_type == "nll" and args.packing is False
    assert args.model_init_kwargs["quantization_config"].bnb_4bit_quant_type == "nf4"
    assert lora.r == 8


TORCHTUNE_PYTHON = Path(__file__).resolve().parents[2] / ".venv-torchtune" / "bin" / "python"
CHECK = Path(__file__).resolve().parent / "stack_checks" / "torchtune_check.py"


@pytest.mark.parametrize(
    ("argv", "method"),
    [
        (["--method", "qlora", "--rank", "8", "--alpha", "16", "--targets", "q_proj,v_proj,o_proj,mlp"], "qlora"),
        (["--method", "lora", "--rank", "16", "--targets", "q_proj,k_proj,v_proj", "--optimizer", "adamw8bit"], "lora"),
        (["--method", "full"], "full"),
    ],
)
def test_torchtune_overrides_validate_and_build_the_planned_model(
    argv: list[str], method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # torchtune 0.6 needs torchao 0.15, with which peft 0.21 refuses to import: it lives in its own venv.
    if not TORCHTUNE_PYTHON.exists():
        pytest.skip("torchtune's venv is absent: `make stacks` could not install torchtune 0.6.1")
    text = _emit(capsys, "-m", LLAMA_1B, "--stack", "torchtune", *argv, "--emit", "torchtune")
    command = shlex.split(text.split("\n", 1)[1].replace("\\\n", " "))
    assert command[:3] == ["tune", "run", "full_finetune_single_device" if method == "full"
                           else "lora_finetune_single_device"]
    result = subprocess.run([str(TORCHTUNE_PYTHON), str(CHECK), command[4], *command[5:]],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    built = json.loads(result.stdout.strip().splitlines()[-1])
    assert built["absent"] == []  # torchtune adds unknown keys silently: every override must be one of its own
    plan = peftplan.plan(LLAMA_1B, stack="torchtune", methods=method, fit_search=False, **_plan_kwargs(argv))
    entry = plan.methods[0]
    counted = built["params"] if method == "full" else built["lora_params"]
    assert counted == entry.trainable_params
    assert built["max_seq_len"] == plan.ctx.seq_len and built["dtype"] == "bf16"
    if method == "full":  # the stack's full recipe: paged 8-bit AdamW stepped in backward, as priced
        assert entry.context is not None and entry.context.optimizer_in_bwd
        assert built["optimizer"] == "bitsandbytes.optim.PagedAdamW8bit" and built["optimizer_in_bwd"] is True


def test_torchtune_config_table_is_what_torchtune_ships() -> None:
    """Every config `--emit torchtune` may name exists in the installed torchtune 0.6.1, and the ones whose
    optimizer block sets `fused` are exactly those it drops for another optimizer."""
    from peftplan.planner.emit import TORCHTUNE_CONFIGS, TORCHTUNE_FUSED

    if not TORCHTUNE_PYTHON.exists():
        pytest.skip("torchtune's venv is absent: `make stacks` could not install torchtune 0.6.1")
    names = sorted({config for configs in TORCHTUNE_CONFIGS.values() for config in configs.values()})
    script = ("import json, sys, sysconfig\nfrom pathlib import Path\nimport yaml\n"
              "root = Path(sysconfig.get_paths()['purelib']) / 'recipes' / 'configs'\nout = {}\n"
              "for name in json.loads(sys.argv[1]):\n"
              "    path = root / (name + '.yaml')\n"
              "    out[name] = bool(yaml.safe_load(path.read_text()).get('optimizer', {}).get('fused')) "
              "if path.exists() else None\n"
              "print(json.dumps(out))")
    result = subprocess.run([str(TORCHTUNE_PYTHON), "-c", script, json.dumps(names)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    shipped = json.loads(result.stdout.strip().splitlines()[-1])
    assert [name for name, fused in shipped.items() if fused is None] == []
    assert {name for name, fused in shipped.items() if fused} == TORCHTUNE_FUSED


def test_a_torchtune_config_that_does_not_exist_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-m", "Qwen/Qwen2.5-7B", "--vram", "24", "--method", "qlora", "--stack", "torchtune",
                 "--emit", "torchtune"]) == 2
    err = capsys.readouterr().err
    assert "qwen2_5/7B_lora_single_device" in err and "\n" not in err.strip()


def _plan_kwargs(argv: list[str]) -> dict[str, Any]:
    names = {"--rank": "rank", "--alpha": "alpha", "--targets": "targets", "--optimizer": "optimizer",
             "--checkpointing": "checkpointing"}
    kwargs: dict[str, Any] = {}
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in names:
            kwargs[names[flag]] = float(value) if flag == "--alpha" else int(value) if re.fullmatch(r"\d+", value) else value
    return kwargs
