"""benchmarks/published_memory.py accounts for every published dev row and its summary adds up.

No accuracy threshold here: the script is a benchmark, its numbers move as stack pricing lands. What
must hold is that no row is silently dropped (each is scored, an outcome, or listed with a reason)
and that the per-group counts are the row counts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.scripts import load_script

BENCH = load_script("benchmarks/published_memory.py", "published_memory")
CSV: Path = BENCH.DEFAULT_CSV

pytestmark = pytest.mark.skipif(not CSV.is_file(), reason=f"{CSV} (the published dev rows) is not beside the project")


# The stack-aware scoring only: `--hf-only` is the script's before-state view, and its fit searches
# over the Unsloth boundaries take over a minute on this machine.
@pytest.fixture(scope="module", params=["stack-aware"])
def result(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(BENCH.score(CSV, stack_aware=request.param == "stack-aware"))


def test_every_dev_row_has_a_recipe_or_a_reason() -> None:
    numbers = {int(row["row"]) for row in BENCH.read_rows(CSV)}
    assert not set(BENCH.RECIPES) & set(BENCH.UNPLANNABLE)
    assert numbers <= set(BENCH.RECIPES) | set(BENCH.UNPLANNABLE), "dev rows without a recipe or a reason"
    assert all(reason.strip() for reason in BENCH.UNPLANNABLE.values())


def test_every_row_is_scored_or_listed_with_a_reason(result: dict[str, Any]) -> None:
    numbers = [int(row["row"]) for row in BENCH.read_rows(CSV)]
    rows = result["rows"]
    assert [r["row"] for r in rows] == numbers  # each row once, in the file's order
    broken = {r["row"]: r["reason"] for r in rows if r["status"] in ("refused", "failed")}
    assert not broken, f"rows the planner refused or failed on: {broken}"
    for r in rows:
        assert r["status"] in ("scored", "outcome", "unplannable"), r
        if r["status"] == "unplannable":
            assert r["reason"].strip()
        elif r["status"] == "scored":
            assert r["compare"] in ("peak_allocated", "reserved", "total") and r["unit"] in ("GiB", "GB")
            assert all(math.isfinite(r[k]) for k in ("predicted", "measured", "error_pct"))
            assert r["predicted"] > 0 and r["measured"] > 0
        else:
            assert r["kind"] == r["compare"] and isinstance(r["agree"], bool)


def test_summary_counts_add_up(result: dict[str, Any]) -> None:
    summary, rows = result["summary"], result["rows"]
    counts = summary["counts"]
    assert sum(counts.values()) == summary["rows"] == len(rows)
    assert summary["overall"]["scored"] == counts["scored"]
    assert summary["overall"]["outcomes"] == counts["outcome"] == summary["fit_agreement"]["total"]
    fit = summary["fit_agreement"]
    assert fit["oom"][1] + fit["fit"][1] == fit["total"]
    assert fit["oom"][0] + fit["fit"][0] == fit["agree"] <= fit["total"]
    for key, groups in summary["by"].items():
        assert sum(g["rows"] for g in groups.values()) == counts["scored"] + counts["outcome"], key
        assert sum(g["scored"] for g in groups.values()) == counts["scored"], key
        assert sum(g["outcomes"] for g in groups.values()) == counts["outcome"], key
        assert sum(g["outcomes_agree"] for g in groups.values()) == fit["agree"], key


def test_the_report_prints_every_row(result: dict[str, Any]) -> None:
    text = BENCH.render(result)
    for r in result["rows"]:
        assert f"\n| {r['row']} |" in text
    assert "overall median absolute error" in text and "fit/no-fit agreement" in text


def test_a_missing_csv_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert BENCH.main(["--csv", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.csv" in err


def test_every_knob_a_recipe_sets_is_passed(result: dict[str, Any]) -> None:
    """A knob `peftplan.plan` stopped accepting would be dropped silently and change every score."""
    assert result["summary"]["knobs_not_accepted"] == []
