"""The report shows intervals and claims a difference only when they separate; merged and base decode speeds
must agree; parameter importances need enough trials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from peftplan.reports.advice import parity_mismatches, unclaimed, when_to_pick
from peftplan.reports.build import build_report
from peftplan.reports.markdown import write_markdown
from peftplan.reports.rundir import load_run
from peftplan.reports.tables import display_comparison
from tests.reports.fixtures import make_run_dir

GiB = 2**30


def comparison(**changes: dict[str, Any]) -> pd.DataFrame:
    """Two methods with intervals; `changes` per method."""
    rows = {
        "a": {"method": "a", "metric_name": "accuracy", "metric": 0.80, "metric_ci": [0.72, 0.88], "peak": 1 * GiB,
              "forgetting": 0.10, "forgetting_ci": [0.05, 0.15], "train_tps": 300.0, "train_tps_ci": [290.0, 310.0],
              "decode_base": 40.0, "decode_base_ci": [38.0, 42.0], "decode_merged": 39.0,
              "decode_merged_ci": [37.0, 41.0], "decode_unmerged": 30.0, "decode_unmerged_ci": [29.0, 31.0],
              "quantized": False, "adapter_bytes": 7e6},
        "b": {"method": "b", "metric_name": "accuracy", "metric": 0.76, "metric_ci": [0.68, 0.84],
              "peak": 1.2 * GiB, "forgetting": 0.30, "forgetting_ci": [0.25, 0.35], "train_tps": 295.0,
              "train_tps_ci": [280.0, 305.0], "decode_base": 40.0, "decode_base_ci": [38.0, 42.0],
              "decode_merged": None, "decode_merged_ci": None, "decode_unmerged": 36.0,
              "decode_unmerged_ci": [35.0, 36.5], "quantized": False, "adapter_bytes": 6e6},
    }
    for method, change in changes.items():
        rows[method].update(change)
    return pd.DataFrame(list(rows.values()))


def test_a_difference_is_claimed_only_when_the_intervals_separate() -> None:
    when = when_to_pick(comparison())
    assert "best accuracy" not in when["a"]  # 0.80 [0.72, 0.88] against 0.76 [0.68, 0.84]
    assert "fastest training" not in when["a"]  # 300 [290, 310] against 295 [280, 305]
    assert "lowest forgetting" in when["a"]  # 0.10 [0.05, 0.15] against 0.30 [0.25, 0.35]
    assert "fastest decoding" in when["a"]  # merged 39 [37, 41] against b's unmerged 36 [35, 36.5]
    notes = unclaimed(comparison())
    assert any(n.startswith("no 'best accuracy' claimed: the 95% intervals overlap (a 0.8 [0.72, 0.88], b 0.76")
               for n in notes)
    assert any("no 'fastest training' claimed" in n for n in notes)
    separated = when_to_pick(comparison(b={"metric_ci": [0.66, 0.71]}))
    assert "best accuracy" in separated["a"]
    # Without intervals (results written before them) the point estimates decide, as before.
    old = comparison(a={"metric_ci": None}, b={"metric_ci": None})
    assert "best accuracy" in when_to_pick(old)["a"]


def test_a_merged_decode_that_disagrees_with_the_base_is_flagged_not_awarded() -> None:
    # The demo's numbers: the same weights timed twice on a busy CPU, merged 11.8 against base 6.6 tok/s.
    noisy = comparison(a={"decode_base": 6.6, "decode_base_ci": [6.2, 7.0], "decode_merged": 11.8,
                          "decode_merged_ci": [11.0, 12.6]})
    assert set(parity_mismatches(noisy)) == {"a"}
    when = when_to_pick(noisy)
    assert "fastest decoding" not in when["a"] and when["a"].endswith("⚠ merged/base decode mismatch")
    # Overlapping intervals agree; a quantized base is dequantized by merging, so it is not held to parity.
    assert parity_mismatches(comparison()) == {}
    assert parity_mismatches(noisy.assign(quantized=True)) == {}
    # Without intervals: more than 10% apart.
    bare = noisy.assign(decode_base_ci=None, decode_merged_ci=None)
    assert set(parity_mismatches(bare)) == {"a"}
    assert parity_mismatches(comparison(a={"decode_base": 6.6, "decode_base_ci": None, "decode_merged": 7.0,
                                           "decode_merged_ci": None})) == {}


def test_the_comparison_shows_intervals() -> None:
    full = comparison().assign(predicted=None, pred_err_pct=None, pred_error=None, trainable=1000, trials="1/1 ok",
                               when="")
    shown = display_comparison(full, "accuracy").set_index("method")
    assert shown.loc["a", "accuracy"] == "0.8 [0.72, 0.88]"
    assert shown.loc["a", "forgetting (Δ loss)"] == "0.1 [0.05, 0.15]"
    assert shown.loc["a", "train tok/s"] == "300 ±3%"
    assert shown.loc["a", "decode tok/s merged"] == "39.0 ±5%"


def add_intervals(run: Path) -> None:
    """Give the fixture's results the intervals a trial now records (around their own values)."""
    for path in (run / "trials").glob("*.json"):
        data = json.loads(path.read_text())
        metric = data["metrics"]["task_metric"]
        if metric is not None:
            data["metrics"]["task_metric_ci"] = [metric - 0.03, metric + 0.03]
        if data["forgetting"] is not None:
            delta = data["forgetting"]["delta"]
            data["forgetting"]["delta_ci"] = [delta - 0.002, delta + 0.002]
        if data["latency"] is not None:
            for key in ("decode_base", "decode_merged", "decode_unmerged"):
                value = data["latency"][key]
                data["latency"][f"{key}_ci"] = None if value is None else [value * 0.97, value * 1.03]
        path.write_text(json.dumps(data))


def test_a_report_with_intervals(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", with_study=False)
    add_intervals(run)
    report = build_report(load_run([run]))
    when = report.comparison.set_index("method")["when"]
    # lora 0.874 ± 0.03 and qlora 0.858 ± 0.03 overlap: no best accuracy; prompt's forgetting separates.
    assert "best accuracy" not in when["lora"] and "lowest forgetting" in when["prompt"]
    assert any(c.startswith("no 'best accuracy' claimed") for c in report.caveats)
    text = write_markdown(report, tmp_path / "out").read_text()
    assert "### Read with care" in text and "0.874 \\[0.844, 0.904\\]" in text
    assert "95% intervals" in text


def test_parameter_importances_need_ten_trials() -> None:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    from peftplan.reports.studies import MIN_TRIALS_FOR_IMPORTANCE, StudyView, _importances, study_charts

    dists = {"lr": FloatDistribution(1e-5, 1e-2, log=True), "rank": CategoricalDistribution([4, 8, 16])}
    trials = [create_trial(state=TrialState.COMPLETE, value=0.5 + 40 * lr, params={"lr": lr, "rank": rank},
                           distributions=dists)
              for lr, rank in zip([1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 5e-3, 8e-3, 2e-5, 2e-4, 2e-3, 6e-3],
                                  [4, 8, 16] * 4, strict=True)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    importances, note = _importances(trials, maximize=True)
    assert note == "" and max(importances, key=importances.get) == "lr"
    few, why = _importances(trials[:MIN_TRIALS_FOR_IMPORTANCE - 1], maximize=True)
    assert few == {} and why.startswith("parameter importances left out: 9 completed trials, and fANOVA needs at "
                                        "least 10")
    charts, notes = study_charts([StudyView("lora", "s/lora", True, "accuracy", history=[(0, 0.5)],
                                            importances={}, note=why)])
    assert [c.key for c in charts] == ["history-lora"] and notes == [f"lora: {why}"]


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_old_results_render_with_the_new_report(run_dir: Path, tmp_path: Path, fmt: str) -> None:
    """The session fixture's results carry no intervals: every table still renders, values alone."""
    from peftplan.reports.html import render_report_html

    report = build_report(load_run([run_dir]))
    text = write_markdown(report, tmp_path).read_text() if fmt == "md" else render_report_html(report)
    assert "0.874" in text and "0.874 [" not in text and "0.874 \\[" not in text


def test_a_timing_without_an_upper_bound_supports_no_claim() -> None:
    """Three noisy repeats may not bound a time away from zero: the rate's interval is [low, None]."""
    from peftplan.reports.fmt import fmt_rate_interval

    assert fmt_rate_interval(469.7, [92.4, None]) == "470 [92.4, ∞)"
    # a's merged 39 [30, ∞) overlaps b's unmerged 36 [35, 36.5]: nobody is the fastest.
    open_ended = comparison(a={"decode_merged_ci": [30.0, None]})
    assert "fastest decoding" not in when_to_pick(open_ended)["a"]
    assert parity_mismatches(comparison(a={"decode_merged": 60.0, "decode_merged_ci": [30.0, None]})) == {}
