"""What a new user must be able to find out from the CLI itself (issue 12, items 6-8): the legend of
the plan's short headers, the hint for '-' hours, the GPU profiles, the version, the suite schema, the
trace in the table, and a complete HTML plan page."""

from __future__ import annotations

import io
import json
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from rich.console import Console

import peftplan
from peftplan.cli import main
from peftplan.planner.render import print_table
from peftplan.reports.plan_html import render_plan_html
from tests.conftest import TINY_LLAMA

ROOT = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table_text(plan: object, width: int = 120) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    print_table(plan, console=console)  # type: ignore[arg-type]
    return console.file.getvalue()  # type: ignore[attr-defined]


def legend(out: str) -> str:
    return " ".join(out.split("\nLegend\n", 1)[1].split())


def test_version(capsys) -> None:
    code, out, err = run(capsys, "--version")
    assert code == 0 and not err
    assert out == f"peftplan {version('peftplan')}\n"
    assert re.fullmatch(r"peftplan \d+\.\d+\.\d+\S*\n", out)


def test_bare_peftplan_prints_the_help(capsys) -> None:
    code, out, _ = run(capsys)
    assert code == 0
    assert "Commands:" in out and "\n  gpus " in out and "--version" in out


def test_the_legend_explains_every_short_header(capsys) -> None:
    plan = peftplan.plan("llama-3.1-8b", vram=24, methods="lora,ia3,prefix", tasks=3, switching="hot-swap")
    text = legend(table_text(plan))
    assert "swap ms: milliseconds to switch to another task" in text
    assert "unmerge the previous adapter and merge the next" in text  # --switching hot-swap
    assert "storage 3 tasks: disk for the --tasks 3: the base model once plus one adapter per task" in text
    assert "'0 if merged': none once merged into the base weights" in text
    for term in ("peak:", "total:", "fit:", "max batch, max seq, max rank:", "quant consts, optim states:",
                 "grads, activ, logits:", "peaks at:", "tokens/s:", "GFLOP/token:", "hours, cost USD:",
                 "adapter file:", "serving weights:", "inference:"):
        assert term in text, term


def test_hours_hint_only_without_a_data_size() -> None:
    without = table_text(peftplan.plan("llama-3.1-8b", vram=24, methods="lora"))
    assert "hint: hours and cost show '-' without the data size: pass --examples N" in " ".join(without.split())
    with_data = peftplan.plan("llama-3.1-8b", vram=24, methods="lora", train_tokens=10_000_000)
    out = table_text(with_data)
    assert "hint:" not in out
    assert f"{with_data.method('lora').throughput['hours']:,.2f}" in out


def test_method_notes_are_shown_once_per_note() -> None:
    plan = peftplan.plan("llama-3.1-8b", vram=24, methods="prefix,prompt,qlora")
    out = " ".join(table_text(plan).split())
    assert "note (prefix, prompt): cannot be merged; it runs unmerged" in out
    assert "note (qlora): bitsandbytes dequantizes each weight per matmul" in out


def test_gpus_lists_the_profiles(capsys, tmp_path) -> None:
    from peftplan.budgets import builtin_profiles

    profiles, aliases = builtin_profiles()
    code, out, _ = run(capsys, "gpus", "--format", "json")
    assert code == 0
    rows = {row["key"]: row for row in json.loads(out)}
    assert set(profiles) <= set(rows)
    h100 = rows["h100-80gb"]
    assert (h100["vram_gib"], h100["bf16_tflops"], h100["usd_per_hour"]) == (
        profiles["h100-80gb"].vram_gib, profiles["h100-80gb"].bf16_tflops, profiles["h100-80gb"].usd_per_hour)
    assert h100["aliases"] == sorted(a for a, k in aliases.items() if k == "h100-80gb")

    extra = tmp_path / "mine.toml"
    extra.write_text('[my-card]\nname = "My Card"\nvram_gib = 12\nbf16_tflops = 50\nmem_bw_gbs = 400\n'
                     'pcie_gbs = 16\nusd_per_hour = 0.1\n')
    code, out, _ = run(capsys, "gpus", "--gpu-profiles", str(extra), "--format", "markdown")
    assert code == 0
    assert "| key | aliases | name | VRAM GiB | bf16 TFLOP/s | memory GB/s | PCIe GB/s | USD/hour |" in out
    assert "| my-card | - | My Card | 12 | 50 | 400 | 16 | 0.10 |" in out

    code, out, _ = run(capsys, "gpus")
    assert code == 0 and "rtx-4090" in out and "peftplan plan --gpu" in out


@pytest.mark.parametrize(("argv", "needle"), [
    (["gpus", "--format", "jsno"], "Did you mean: json"),
    (["gpus", "--gpu-profiles", "/no/such.toml"], "does not exist"),
])
def test_gpus_bad_input_is_one_line(capsys, argv: list[str], needle: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and not out


def test_validate_help_points_to_the_suite_schema(capsys) -> None:
    code, out, _ = run(capsys, "validate", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert 'docs/harness.md (sections "The suite" and "Tasks")' in text
    doc = (ROOT / "docs" / "harness.md").read_text()
    assert "\n## The suite\n" in doc and "\n## Tasks\n" in doc
    for path in ("suites/quick.yaml", "suites/smoke.yaml", "peftplan/harness/suite.py"):
        assert path in text and (ROOT / path).is_file()


def test_engine_both_shows_the_trace_in_the_table(tmp_path) -> None:
    from peftplan.planner.render import to_markdown

    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    plan = peftplan.plan(str(tmp_path), vram=1, methods="lora", seq_len=64, engine="both", grad_checkpointing=False)
    entry = plan.to_dict()["methods"][0]
    trace = entry["trace"]
    out = table_text(plan)
    assert "Traced step (--engine both)" in out
    row = next(line for line in out.splitlines() if line.startswith("lora ") and trace["peak_phase"] in line)
    mib = 2**20
    assert row.split() == ["lora", f"{entry['memory']['peak_allocated'] / mib:.2f}",
                           f"{trace['memory']['peak_allocated'] / mib:.2f}", f"{trace['error'] * 100:+.1f}%",
                           trace["peak_phase"], f"{trace['seconds']:.1f}"]
    assert "error: (analytic peak - traced peak) / traced peak" in out
    assert "| method | analytic peak MiB | traced peak MiB | error | traced peaks at | trace s |" in to_markdown(plan)


def test_html_plan_page_has_speed_cost_switching_and_rank(capsys) -> None:
    code, out, _ = run(capsys, "plan", "-m", "llama-3.1-8b", "--gpu", "rtx-4090", "--method", "lora,prefix",
                       "--examples", "5000", "--tasks", "4", "--format", "json")
    assert code == 0
    plan = json.loads(out)
    page = render_plan_html(plan)
    for header in ("tokens/s", "GFLOP/token", "hours", "cost (USD)", "swap (ms)", "storage for 4 tasks",
                   "serving weights", "max rank", "inference overhead"):
        assert f'<th scope="col">{header}</th>' in page, header
    lora = next(m for m in plan["methods"] if m["method"] == "lora")
    assert f">{lora['throughput']['tokens_per_second']:,.0f}<" in page
    assert f">{lora['throughput']['hours']:,.2f}<" in page
    assert f">{lora['throughput']['cost_usd']:,.2f}<" in page
    assert f">{lora['task_switching']['swap_seconds'] * 1000:,.0f}<" in page
    assert f">{lora['max_rank']}<" in page
    assert '<section id="legend">' in page and "<dt>swap (ms)</dt>" in page
    assert "hours and cost show" not in page  # the data size was given


def test_html_plan_page_escapes_every_user_string() -> None:
    from tests.reports.fixtures import plan_json

    plan = plan_json()
    plan["notes"] = ["<img src=x onerror=alert(1)>"]
    plan["skipped"] = [{"method": "<b>m</b>", "reason": "<script>x()</script>"}]
    plan["methods"][1]["notes"] = ["<i>n</i>"]
    plan["training"]["stack"] = "<svg/onload=alert(2)>"
    page = render_plan_html(plan)
    for raw in ("<img src=x", "<b>m</b>", "<script>x()</script>", "<i>n</i>", "<svg/onload"):
        assert raw not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;i&gt;n&lt;/i&gt;" in page
