"""The report's tables against the result files they come from."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from peftplan.reports.advice import when_to_pick
from peftplan.reports.fmt import fmt_bytes, fmt_count, fmt_num, fmt_pct
from peftplan.reports.pareto import pareto_mask
from peftplan.reports.tables import display_comparison, display_trials
from tests.reports.fixtures import expected_results


def _best_per_method(raw: list[dict]) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for r in raw:
        if r["status"] == "success" and (r["method"] not in best or
                                         r["metrics"]["task_metric"] > best[r["method"]]["metrics"]["task_metric"]):
            best[r["method"]] = r
    return best


def test_summary(report, run_dir: Path) -> None:
    raw = expected_results(run_dir)
    s = report.summary
    assert s.models == ["HuggingFaceTB/SmolLM2-135M-Instruct"] and s.tasks == ["sst2"]
    assert s.suites == [("smoke", json.loads((run_dir / "run.json").read_text())["suite_hash"])]
    assert s.devices == ["cpu (2 cores)"] and s.probes == ["wikitext2-valid"]
    assert s.status_counts == {"success": 8, "pruned": 2, "oom": 1, "failed": 1, "timeout": 1}
    assert {k: v for k, v in s.status_counts.items() if v} == dict(Counter(r["status"] for r in raw))
    assert s.started == min(r["provenance"]["started_at"] for r in raw)
    assert s.finished == max(r["provenance"]["finished_at"] for r in raw)
    assert s.metric_name == "accuracy" and s.higher_is_better
    # The best config shows the searched parameters of the best trial.
    assert s.best_configs["lora"] == {"rank": 8, "alpha": 16, "lr": 3.0e-4, "targets": "attn"}
    assert s.best_configs["prompt"] == {"lr": 3.0e-2, "virtual_tokens": 20}


def test_comparison_numbers_are_the_best_trials(report, run_dir: Path) -> None:
    best = _best_per_method(expected_results(run_dir))
    comp = report.comparison.set_index("method")
    assert set(comp.index) == set(best) == {"lora", "qlora", "ia3", "prompt"}
    assert list(comp.index) == sorted(best, key=lambda m: -best[m]["metrics"]["task_metric"])
    for method, r in best.items():
        row = comp.loc[method]
        assert row["trial"] == r["trial_number"]
        assert row["metric"] == r["metrics"]["task_metric"]
        assert row["forgetting"] == r["forgetting"]["delta"]
        assert row["peak"] == r["memory"]["peak_allocated"]
        predicted = r["memory"]["predicted"]["peak_allocated"]
        assert row["predicted"] == predicted
        assert row["pred_err_pct"] == pytest.approx(100 * (predicted - row["peak"]) / row["peak"])
        assert row["train_tps"] == r["metrics"]["train_tokens_per_s"]
        assert row["decode_unmerged"] == r["latency"]["decode_unmerged"]
        assert (pd.isna(row["decode_merged"]) if r["latency"]["decode_merged"] is None
                else row["decode_merged"] == r["latency"]["decode_merged"])
        assert row["adapter_bytes"] == r["metrics"]["adapter_bytes"]
        assert row["trainable"] == r["metrics"]["trainable_params"]
    assert comp.loc["lora", "trials"] == "3/4 ok (1 pruned)"
    assert comp.loc["prompt", "trials"] == "1/3 ok (1 pruned, 1 failed)"


def test_when_to_pick_is_derived_from_the_data(report) -> None:
    when = report.comparison.set_index("method")["when"]
    assert "best accuracy" in when["lora"]
    assert "only method under 768 MiB" in when["qlora"]  # qlora 574 MiB, next lowest 780 MiB
    assert "lowest forgetting" in when["prompt"] and "smallest adapter" in when["prompt"]


def test_when_to_pick_rules() -> None:
    comp = pd.DataFrame([
        {"method": "a", "metric_name": "accuracy", "metric": 0.9, "peak": 7.5 * 2**30, "forgetting": 0.1,
         "train_tps": 100.0, "decode_merged": None, "decode_unmerged": 10.0, "adapter_bytes": 5e6},
        {"method": "b", "metric_name": "accuracy", "metric": 0.8, "peak": 9 * 2**30, "forgetting": 0.2,
         "train_tps": 90.0, "decode_merged": None, "decode_unmerged": 9.0, "adapter_bytes": 6e6},
        {"method": "c", "metric_name": "accuracy", "metric": 0.85, "peak": 12 * 2**30, "forgetting": 0.3,
         "train_tps": 80.0, "decode_merged": None, "decode_unmerged": 8.0, "adapter_bytes": 7e6},
        {"method": "d", "metric_name": "accuracy", "metric": None, "peak": None, "forgetting": None,
         "train_tps": None, "decode_merged": None, "decode_unmerged": None, "adapter_bytes": None},
    ])
    when = when_to_pick(comp)
    assert when["a"].startswith("best accuracy; only method under 8 GiB")
    assert when["b"] == "dominated by a (better accuracy, less memory)"
    assert when["d"] == "no successful trial"
    lower = when_to_pick(comp.assign(metric_name="loss"), higher_is_better=False)
    assert lower["b"].startswith("best loss")


def test_pareto_mask() -> None:
    assert pareto_mask([0.9, 0.8, 0.85, 0.7], [10, 5, 20, 5]) == [True, True, False, False]
    assert pareto_mask([1.0, 1.0], [3, 3]) == [True, True]  # equal points are both on the front
    assert pareto_mask([0.5, 0.4], [3, 2], higher_is_better=False) == [False, True]
    with pytest.raises(ValueError):
        pareto_mask([1.0], [])


def test_display_tables(report) -> None:
    comp = display_comparison(report.comparison, "accuracy")
    assert list(comp.columns)[:4] == ["method", "accuracy", "forgetting (Δ loss)", "peak memory"]
    assert "when to pick it" in comp.columns
    trials = display_trials(report.trials, "accuracy")
    assert len(trials) == 13 and "run" not in trials.columns
    oom = trials[trials["status"] == "oom"].iloc[0]
    assert "CUDA out of memory" in oom["params"] and oom["peak memory"] == "—"
    assert display_trials(report.trials, "accuracy", with_run=True).columns[0] == "run"


def test_formatting() -> None:
    assert fmt_bytes(912 * 2**20) == "912 MiB" and fmt_bytes(1.5 * 2**30) == "1.5 GiB" and fmt_bytes(None) == "—"
    assert fmt_count(27_648) == "27,648" and fmt_count(1_843_200) == "1.84M" and fmt_count(8.03e9) == "8.03B"
    assert fmt_num(0.874) == "0.874" and fmt_num(1e-4) == "1.00e-04" and fmt_num(float("nan")) == "—"
    assert fmt_pct(-2.16) == "-2.2%" and fmt_pct(3.0) == "+3.0%"
