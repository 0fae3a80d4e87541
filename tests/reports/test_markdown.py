"""The Markdown report: pandas tables, PNGs beside it, and text that renders literally."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from peftplan.reports.markdown import md_escape, write_markdown


@pytest.fixture(scope="module")
def markdown(report, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = write_markdown(report, tmp_path_factory.mktemp("md"))
    return path, path.read_text()


def _table_after(text: str, heading: str) -> list[list[str]]:
    block = text.split(heading, 1)[1].split("\n\n", 2)[1]
    rows = [line for line in block.splitlines() if line.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows[:1] + rows[2:]]


def test_sections_and_tables(markdown, report) -> None:
    _, text = markdown
    for heading in ("## Summary", "### Best config per method", "## Method comparison", "## Plots",
                    "## Optuna studies", "## Trials", "## Notes"):
        assert f"\n{heading}\n" in text or text.startswith(heading)
    comparison = _table_after(text, "## Method comparison")
    assert comparison[0][:3] == ["method", "accuracy", "forgetting (Δ loss)"]
    assert [row[0] for row in comparison[1:]] == list(report.comparison["method"])
    lora = next(row for row in comparison if row[0] == "lora")
    assert lora[1] == "0.874" and lora[3] == "868 MiB" and "best accuracy" in lora[-1]
    trials = _table_after(text, "## Trials")
    assert len(trials) == 1 + 13
    assert "trials           | 13: 8 success, 2 pruned, 1 oom, 1 failed, 1 timeout" in text


def test_every_chart_is_a_linked_png(markdown, report) -> None:
    path, text = markdown
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", text)
    assert sorted(links) == sorted(f"figures/{c.key}.png" for c in report.charts)
    for link in links:
        data = (path.parent / link).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_markdown_escaping() -> None:
    assert md_escape("a|b") == "a\\|b"
    assert md_escape("<script>x</script>") == "&lt;script&gt;x&lt;/script&gt;"
    assert md_escape("[x](javascript:1)") == "\\[x\\](javascript:1)"
    assert md_escape("two\nlines") == "two lines"


def test_hostile_strings_render_as_text(hostile_run_dir: Path, tmp_path: Path) -> None:
    from peftplan.reports.build import build_report
    from peftplan.reports.rundir import load_run

    text = write_markdown(build_report(load_run([hostile_run_dir]), with_studies=False), tmp_path).read_text()
    assert "<script" not in text and "<img" not in text
    assert "&lt;script&gt;window.\\_\\_xss = 1&lt;/script&gt;" in text
