"""Every table reads whole at 80 and at 160 columns: no ellipsis, no value or header cut, no title split
inside a value (issue 12, item 5)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

import peftplan
from peftplan.cli import main
from peftplan.planner.render import plan_tables, print_table, title_segments, to_markdown

WIDTHS = (80, 160)

PLANS = {
    "8b-on-24": dict(model="llama-3.1-8b", vram=24),
    "70b-fsdp-offload-paged": dict(model="llama-3.1-70b", gpu="h100", gpus=8, shard="fsdp", cpu_offload=True,
                                   optimizer="paged-adamw8bit", examples=200_000, tasks=100,
                                   switching="multi-tenant"),
    "smol-with-cost": dict(model="HuggingFaceTB/SmolLM2-135M", gpu="l4", train_tokens=123_456_789, tasks=12,
                           switching="hot-swap"),
}


@pytest.fixture(scope="module", params=sorted(PLANS))
def plan(request: pytest.FixtureRequest) -> object:
    args = dict(PLANS[request.param])
    return peftplan.plan(args.pop("model"), **args)


def render(plan: object, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    print_table(plan, console=console)  # type: ignore[arg-type]
    return console.file.getvalue()  # type: ignore[attr-defined]


def assert_whole(out: str, width: int, cells: list[str]) -> None:
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= width
    lines = out.splitlines()
    for cell in cells:
        assert any(cell in line for line in lines), f"{cell!r} is not whole on one line at {width} columns"


@pytest.mark.parametrize("width", WIDTHS)
def test_plan_tables_keep_every_value_and_header_whole(plan, width: int) -> None:
    out = render(plan, width)
    cells: list[str] = []
    for table in plan_tables(plan):
        for column in table.columns:
            cells += column.header.split("\n")
        for row in table.rows:
            for column, cell in zip(table.columns, row, strict=True):
                cells += cell.split() if column.wrap else [cell]  # prose wraps between words only
    assert_whole(out, width, cells)
    for entry in plan.methods:  # type: ignore[attr-defined]
        assert f"{entry.throughput['tokens_per_second']:,.0f}" in out
        assert f"{entry.memory.total / 2**30:.2f}" in out


@pytest.mark.parametrize("width", WIDTHS)
def test_the_title_breaks_only_between_values(plan, width: int) -> None:
    out = render(plan, width)
    for group in title_segments(plan):
        for segment in group:
            assert any(segment in line for line in out.splitlines()), segment


def test_a_narrow_terminal_gets_two_tables_not_cut_ones() -> None:
    """The paged and host columns make the memory table wider than 80: it splits, method repeated."""
    args = dict(PLANS["70b-fsdp-offload-paged"])
    plan = peftplan.plan(args.pop("model"), **args)
    narrow, wide = render(plan, 80), render(plan, 160)
    assert "(continued)" in narrow.split("Bytes per model parameter")[0]
    assert "(continued)" not in wide
    memory = narrow.split("Bytes per model parameter")[0]
    assert memory.count("\nqlora ") == 2  # the key column starts both halves


@pytest.mark.parametrize("width", WIDTHS)
def test_plan_through_the_cli_honours_columns(width: int, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(["plan", "-m", "llama-3.1-8b", "--vram", "24", "--examples", "5000"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= width
    for word in ("swap", "ms", "storage", "1 task", "0 if merged", "loss-bwd"):
        assert word in out


@pytest.mark.parametrize("width", WIDTHS)
def test_models_shows_whole_ids(width: int, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(["models", "--format", "json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert_whole(out, width, [e["id"] for e in entries] + [e["architecture"] for e in entries]
                 + [e["license"] for e in entries])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("extra", [[], ["--model", "openai-community/gpt2"]])
def test_methods_tables_are_whole(width: int, extra: list[str], monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(["methods", *extra, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["methods"]
    assert main(["methods", *extra]) == 0
    out = capsys.readouterr().out
    cells = [r["method"] for r in rows] + [r["inference_overhead"] for r in rows]
    cells += [f"{r['trainable_params']:,}" for r in rows if r.get("trainable_params") is not None]
    assert_whole(out, width, cells)


@pytest.mark.parametrize("width", WIDTHS)
def test_gpus_table_is_whole(width: int, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(["gpus", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert main(["gpus"]) == 0
    out = capsys.readouterr().out
    cells = [r["key"] for r in rows] + [f"{r['bf16_tflops']:g}" for r in rows] + [f"{r['usd_per_hour']:.2f}" for r in rows]
    cells += [alias for r in rows for alias in r["aliases"]]
    assert_whole(out, width, cells)


def test_markdown_carries_units() -> None:
    plan = peftplan.plan("llama-3.1-8b", gpu="rtx-4090", methods="lora,qlora", examples=1000)
    text = to_markdown(plan)
    header_lines = [line for line in text.splitlines() if line.startswith("| method |")]
    headers = " ".join(header_lines)
    for unit in ("peak GiB", "total GiB", "tokens/s", "GFLOP/token", "cost USD", "swap ms", "storage 1 task"):
        assert unit in headers, unit
    assert "### Bytes per model parameter" in text  # the bytes table's unit is its heading
    assert "hours and cost show '-'" not in text  # the data size was given
    lora = plan.method("lora")
    assert f"| {lora.throughput['hours']:,.2f} |" in text
