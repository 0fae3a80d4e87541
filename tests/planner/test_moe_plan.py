"""Plans of MoE models: QLoRA as transformers + bitsandbytes load it (fused experts unquantized, upcast to
fp32 by peft's k-bit preparation), said in a note with what helps; LoRA on the experts said in a note;
an unknown expert target exits 2 with a did-you-mean."""

from __future__ import annotations

import json

import pytest

from peftplan.cli import main

MIXTRAL = "mistralai/Mixtral-8x7B-v0.1"
EXPERTS = 45_097_156_608  # 32 blocks x (gate_up [8, 28672, 4096] + down [8, 4096, 14336])


def _plan(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    main(["plan", "--model", MIXTRAL, "--vram", "80", *args, "--format", "json"])
    return {m["method"]: m for m in json.loads(capsys.readouterr().out)["methods"]}


def test_qlora_prices_and_says_the_unquantized_experts(capsys: pytest.CaptureFixture[str]) -> None:
    peft = _plan(["--method", "lora,qlora", "--targets", "attn"], capsys)
    none = _plan(["--method", "qlora", "--targets", "attn", "--kbit-prep", "none"], capsys)
    qlora, lora = peft["qlora"], peft["lora"]
    note = next(n for n in qlora["notes"] if "not quantized by bitsandbytes" in n)
    assert "45.1B fused expert parameters" in note and "fp32: 168.0 GiB" in note and "--kbit-prep none" in note
    assert not any("not quantized by bitsandbytes" in n for n in lora["notes"])
    # fp32 experts under peft's preparation, bf16 with --kbit-prep none: the difference is 2 bytes each.
    assert qlora["memory"]["weights"] - none["qlora"]["memory"]["weights"] >= 2 * EXPERTS
    assert qlora["memory"]["weights"] > 2 * lora["memory"]["weights"] * 0.95
    assert any("stay in bf16" in n for n in none["qlora"]["notes"])


def test_lora_on_experts_is_said(capsys: pytest.CaptureFixture[str]) -> None:
    lora = _plan(["--method", "lora"], capsys)["lora"]
    assert lora["trainable_params"] == 359_665_664
    note = next(n for n in lora["notes"] if "target_parameters" in n)
    assert "experts.gate_up_proj at rank 32" in note and "experts.down_proj at rank 16" in note


def test_unknown_expert_target_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", MIXTRAL, "--vram", "80", "--method", "lora", "--targets", "experts.gate_up"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Did you mean: experts.gate_up_proj" in err
