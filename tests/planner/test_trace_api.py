"""The traced engine's API and the `peftplan trace` command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from peftplan.cli import main
from peftplan.errors import BadInputError, UnsupportedError
from peftplan.models import get_spec
from peftplan.models.catalog import catalog_config_dict
from peftplan.planner.context import MemoryBreakdown, TrainContext
from peftplan.planner.trace import trace_memory

MODEL = "HuggingFaceTB/SmolLM2-135M"
CTX = TrainContext(seq_len=64, batch_size=2)


@pytest.fixture(scope="module")
def lora() -> object:
    return trace_memory(MODEL, "lora", ctx=CTX)


def test_breakdown_adds_up_to_the_peak(lora: object) -> None:
    memory = lora.memory  # type: ignore[attr-defined]
    assert memory.component_sum() == memory.peak_allocated == memory.total > 0
    assert memory.peak_allocated % 512 == 0  # every storage rounded like the CUDA allocator
    assert memory.weights > 0 and memory.adapter > 0 and memory.optimizer == 2 * memory.adapter  # AdamW, fp32
    assert memory.extra["saved_activations"] + memory.extra["temporaries"] == memory.activations
    assert lora.peak_phase in ("forward", "loss", "backward", "optimizer")  # type: ignore[attr-defined]


def test_top_modules_and_json(lora: object) -> None:
    data = lora.to_dict()  # type: ignore[attr-defined]
    assert set(MemoryBreakdown().to_dict()) == set(data["memory"])
    assert data["predicts"] == "peak_allocated"
    sizes = [m["bytes"] for m in data["top_modules"]]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 0
    assert any(m["module"].startswith("model.layers.*.") for m in data["top_modules"])
    assert data["trainable_params"] == 4_884_480  # r16 all-linear on SmolLM2-135M: the spec's exact count
    json.dumps(data)


def test_model_given_as_id_config_or_spec_agree(lora: object) -> None:
    from_config = trace_memory(catalog_config_dict(MODEL), "lora", ctx=CTX)
    from_spec = trace_memory(get_spec(MODEL), "lora", ctx=CTX)
    assert from_config.memory == from_spec.memory == lora.memory  # type: ignore[attr-defined]


def test_memory_moves_the_right_way() -> None:
    base = trace_memory(MODEL, "lora", ctx=TrainContext(seq_len=128, batch_size=2))
    longer = trace_memory(MODEL, "lora", ctx=TrainContext(seq_len=256, batch_size=2))
    ckpt = trace_memory(MODEL, "lora", ctx=TrainContext(seq_len=256, batch_size=2, grad_checkpointing=True))
    exact = trace_memory(MODEL, "lora", ctx=TrainContext(seq_len=128, batch_size=2), granularity=1)
    assert longer.memory.peak_allocated > base.memory.peak_allocated
    assert ckpt.memory.peak_allocated < longer.memory.peak_allocated
    assert ckpt.memory.activations < longer.memory.activations
    assert exact.memory.peak_allocated <= base.memory.peak_allocated


def test_refusals_are_bad_input() -> None:
    with pytest.raises(UnsupportedError, match="bias"):
        trace_memory(MODEL, "bitfit", ctx=CTX)
    with pytest.raises(UnsupportedError, match="checkpointing"):
        trace_memory(MODEL, "prefix", ctx=TrainContext(seq_len=64, grad_checkpointing=True))
    with pytest.raises(BadInputError, match="Did you mean"):
        trace_memory(MODEL, "lorra", ctx=CTX)


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["trace", "--model", MODEL, "--method", "lora,ia3", "--seq-len", "64", "--format", "json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["engine"] == "trace"
    assert [m["method"] for m in data["methods"]] == ["lora", "ia3"]
    assert data["training"]["seq_len"] == 64 and data["model"]["id"] == MODEL
    assert all(m["memory"]["peak_allocated"] == m["memory"]["total"] > 0 for m in data["methods"])


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_cli_tables(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--model", MODEL, "--method", "prompt", "--seq-len", "32", "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "prompt" in out and "peak" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "lorx"], "Did you mean"),
        (["--optimizer", "adam"], "Did you mean"),
        (["--dtype", "bf61"], "Unknown dtype"),
        (["--attn", "flash2"], "attention kernel"),
        (["--format", "yaml"], "format"),
        (["--seq-len", "0"], "positive"),
        (["--method", "prefix", "--grad-ckpt"], "checkpointing"),
        (["--method", "bitfit"], "bias"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trace", "--model", MODEL, "--seq-len", "32", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_fast_path_imports_no_torch() -> None:
    code = "import sys, peftplan.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
