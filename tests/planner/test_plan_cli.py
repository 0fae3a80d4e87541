"""`peftplan plan`: the JSON contract, formats, exit codes 0/3/2, the Python API and the recommendation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import peftplan
from peftplan.cli import main
from peftplan.methods import method_names
from peftplan.planner.context import MemoryBreakdown
from tests.conftest import TINY_LLAMA

SMOL = "HuggingFaceTB/SmolLM2-135M"
# DESIGN.md's memory object: the parts of peak_allocated, then what the device shows.
MEMORY_FIELDS = {*MemoryBreakdown.COMPONENTS, "overhead", "peak_allocated", "reserved", "total"}
METHOD_FIELDS = {
    "method",
    "config",
    "trainable_params",
    "total_params",
    "memory",
    "predicts",
    "fits",
    "headroom_bytes",
    "max_batch_size",
    "max_seq_len",
    "adapter_bytes",
    "mergeable",
    "inference_overhead",
}


def run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main(["plan", *args, "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


def test_json_follows_the_design_contract(capsys: pytest.CaptureFixture[str]) -> None:
    code, data = run_json(["-m", SMOL, "--vram", "8", "--seq-len", "512"], capsys)
    assert code == 0
    assert {"id", "architecture", "total_params"} <= set(data["model"])
    assert data["model"]["total_params"] == 134_515_008
    assert {"vram_bytes", "gpus", "gpu"} <= set(data["budget"])
    assert data["budget"]["vram_bytes"] == 8 << 30
    assert {"seq_len", "batch_size", "grad_checkpointing", "optimizer", "dtype"} <= set(data["training"])
    assert {"method", "config", "reasons"} <= set(data["recommendation"])
    # Every registered method, in the registry's order, is planned or skipped with a reason.
    assert [s["method"] for s in data["skipped"]] == ["bitfit"]  # SmolLM2 has no biases
    assert [m["method"] for m in data["methods"]] == [name for name in method_names() if name != "bitfit"]
    for entry in data["methods"]:
        assert METHOD_FIELDS <= set(entry), entry["method"]
        # Fields may be added (paged optimizer states and host bytes are outside peak_allocated).
        assert set(entry["memory"]) == MEMORY_FIELDS | {"paged", "host"}
        assert entry["predicts"] == "peak_allocated"
        memory = entry["memory"]
        parts = sum(memory[k] for k in MemoryBreakdown.COMPONENTS)
        assert parts == memory["peak_allocated"]
        assert memory["total"] == memory["reserved"] + memory["overhead"]
        assert entry["fits"] == (memory["total"] <= data["budget"]["vram_bytes"])
        assert entry["headroom_bytes"] == data["budget"]["vram_bytes"] - memory["total"]
    assert data["recommendation"]["method"] == "lora"


def test_python_api_returns_the_same_plan(capsys: pytest.CaptureFixture[str]) -> None:
    _, data = run_json(["-m", SMOL, "--gpu", "l4", "--method", "lora,qlora", "--examples", "200"], capsys)
    plan = peftplan.plan(SMOL, gpu="l4", methods=["lora", "qlora"], examples=200)
    assert plan.to_dict() == data
    assert plan.method("qlora").memory.weights < plan.method("lora").memory.weights
    assert plan.recommendation.config["rank"] == 4  # a few hundred examples: r 1-4


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_table_and_markdown(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-m", SMOL, "--vram", "8", "--format", fmt, "--method", "lora,full"]) == 0
    out = capsys.readouterr().out
    assert "lora" in out and "full" in out and "Recommendation: lora" in out
    assert "█" in out  # the fit bar
    if fmt == "markdown":
        assert "| method |" in out


@pytest.mark.parametrize(("extra", "mode"), [([], "ddp"), (["--shard", "fsdp"], "fsdp")])
def test_title_names_the_parallel_mode(extra: list[str], mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-m", SMOL, "--vram", "8", "--gpus", "2", *extra, "--method", "lora"]) == 0
    assert f"GiB (vram, {mode})" in capsys.readouterr().out


def test_nothing_fits_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-m", "meta-llama/Llama-3.1-70B", "--vram", "24", "--format", "json"]) == 3
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert not any(m["fits"] for m in data["methods"])
    assert data["recommendation"]["method"] is None
    assert captured.err.count("\n") == 1 and "no method fits" in captured.err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-m", "meta-llama/Llama-3.1-8x", "--vram", "24"], "Did you mean"),
        (["-m", "llama-3.1-8b", "--vram", "24", "--method", "lorra"], "Did you mean: lora"),
        (["-m", "llama-3.1-8b", "--vram", "24", "--method", "lora", "--targets", "q_prj"], "Did you mean"),
        (["-m", "llama-3.1-8b", "--gpu", "h1000"], "Did you mean"),
        (["-m", "llama-3.1-8b", "--vram", "-4"], "positive"),
        (["-m", "llama-3.1-8b", "--vram", "0"], "positive"),
        (["-m", "llama-3.1-8b"], "--vram"),
        (["-m", "llama-3.1-8b", "--vram", "24", "--optimizer", "adamw9bit"], "Did you mean"),
        (["-m", "llama-3.1-8b", "--vram", "24", "--method", "bitfit"], "bias"),
        (["-m", "llama-3.1-8b", "--vram", "24", "--seq-len", "0"], "--seq-len"),
        (["-m", "llama-3.1-8b", "--vram", "24", "--switching", "hotswap"], "Did you mean"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("peftplan: error:") and needle in err


def test_peft_config_plans_exactly_that_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": 8,
                "lora_alpha": 16,
                "lora_dropout": 0.05,
                "target_modules": ["q_proj", "v_proj"],
                "bias": "none",
                "task_type": "CAUSAL_LM",
            }
        )
    )
    code, data = run_json(["-m", "llama-3.2-3b", "--vram", "24", "--peft-config", str(tmp_path)], capsys)
    assert code == 0
    assert [m["method"] for m in data["methods"]] == ["lora"]
    entry = data["methods"][0]
    assert entry["config"]["rank"] == 8 and entry["config"]["targets"] == ["q_proj", "v_proj"]
    assert entry["trainable_params"] == 2_293_760


def test_recommendation_follows_the_budget_and_the_data(capsys: pytest.CaptureFixture[str]) -> None:
    plan = peftplan.plan("llama-3.1-8b", vram=12, grad_checkpointing=True, seq_len=1024, fit_search=False)
    assert not plan.method("lora").fits and plan.method("qlora").fits
    assert plan.recommendation.method == "qlora"
    few = peftplan.plan(
        "llama-3.1-8b", vram=40, grad_checkpointing=True, seq_len=1024, examples=10, fit_search=False
    )
    assert any("hard to train" in r for r in few.recommendation.reasons)
    many = peftplan.plan(
        "llama-3.1-8b", vram=40, grad_checkpointing=True, seq_len=1024, examples=200_000, fit_search=False
    )
    assert many.recommendation.config["rank"] == 128
    served = peftplan.plan(
        "llama-3.1-8b",
        vram=40,
        grad_checkpointing=True,
        seq_len=1024,
        tasks=20,
        switching="multi-tenant",
        fit_search=False,
    )
    assert any("Multi-tenant" in r for r in served.recommendation.reasons)
    entry = served.method("lora").task_switching
    assert entry["serving_bytes"] > entry["storage_bytes"] - 20 * served.method("lora").adapter_bytes


def test_time_and_cost_follow_the_data_size() -> None:
    plan = peftplan.plan(
        "llama-3.1-8b",
        gpu="h100",
        gpus=2,
        shard="fsdp",
        train_tokens=10_000_000,
        methods="lora,full",
        grad_checkpointing=True,
        fit_search=False,
    )
    lora, full = plan.method("lora").throughput, plan.method("full").throughput
    assert lora["tokens_per_second"] > full["tokens_per_second"]  # 4N + adapters vs 6N per token
    assert lora["hours"] == pytest.approx(10_000_000 / lora["tokens_per_second"] / 3600, rel=1e-3)
    assert lora["cost_usd"] == pytest.approx(lora["hours"] * 2.70 * 2, rel=1e-2)


def test_engine_both_adds_the_trace_and_its_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    code, data = run_json(
        ["-m", str(tmp_path), "--vram", "1", "--method", "lora", "--seq-len", "64", "--engine", "both",
         "--no-grad-ckpt"],
        capsys,
    )
    assert code == 0
    trace = data["methods"][0]["trace"]
    assert set(trace["memory"]) == MEMORY_FIELDS | {"paged", "host"}
    assert trace["peak_phase"] in ("forward", "loss", "backward", "optimizer")
    assert abs(trace["error"]) < 0.05


def test_planning_a_catalog_model_imports_neither_torch_nor_transformers(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from peftplan.cli import main\n"
        "code = main(['plan', '-m', 'meta-llama/Llama-3.1-8B', '--vram', '24', '--format', 'json'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules]\n"
        "print(code, heavy, file=sys.stderr)\n"
        "assert not heavy, heavy\n"
    )
    env = {"PEFTPLAN_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
