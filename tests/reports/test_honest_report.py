"""A report never shows a missing measurement as a number: it is '—', and the reason is in the Notes. A result
file written before intervals, prediction errors and confirmation runs existed still renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from peftplan.reports.build import build_report
from peftplan.reports.fmt import MISSING
from peftplan.reports.html import render_report_html
from peftplan.reports.markdown import write_markdown
from peftplan.reports.rundir import load_run
from peftplan.reports.tables import display_comparison, display_trials
from tests.reports.fixtures import make_run_dir


def edit_result(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def honest_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_run_dir(tmp_path_factory.mktemp("honest") / "run", with_study=False)

    def lm_eval_only(data: dict[str, Any]) -> None:  # what a trial with only lm-eval forgetting tasks writes now
        data["forgetting"] = {"probe": "lm-eval", "tokens": None, "loss_base": None, "loss_adapted": None,
                              "delta": None, "lm_eval": {"hellaswag/acc_norm": -0.01}}

    def planner_failed(data: dict[str, Any]) -> None:
        data["memory"].update(predicted=None, predicted_engine=None,
                              prediction_error="ZeroDivisionError: a planner bug")

    for number in (0, 1, 3):  # every successful LoRA trial
        edit_result(run / "trials" / f"lora-{number}.json", lm_eval_only)
    edit_result(run / "trials" / "ia3-2.json", planner_failed)
    return run


def test_missing_forgetting_shows_a_dash_and_earns_no_claim(honest_run: Path) -> None:
    report = build_report(load_run([honest_run]), with_studies=False)
    comp = report.comparison.set_index("method")
    assert comp.loc["lora", "forgetting"] is None or comp.loc["lora", "forgetting"] != comp.loc["lora", "forgetting"]
    shown = display_comparison(report.comparison, "accuracy").set_index("method")
    assert shown.loc["lora", "forgetting (Δ loss)"] == MISSING == "—"
    assert "lowest forgetting" not in shown.loc["lora", "when to pick it"]
    trials = display_trials(report.trials, "accuracy")
    lora = trials[trials["method"] == "lora"]
    assert set(lora[lora["status"] == "success"]["forgetting"]) == {"—"}


def test_a_planner_failure_is_shown_with_its_error(honest_run: Path, tmp_path: Path) -> None:
    report = build_report(load_run([honest_run]), with_studies=False)
    shown = display_comparison(report.comparison, "accuracy").set_index("method")
    assert shown.loc["ia3", "planner (error)"] == "— (planner failed)"  # ia3's best trial is #2
    trials = display_trials(report.trials, "accuracy")
    assert trials[(trials["method"] == "ia3") & (trials["#"] == "2")]["planner error"].item() == "planner failed"
    assert "planner prediction failed for ia3 #2: ZeroDivisionError: a planner bug" in report.notes
    markdown = write_markdown(report, tmp_path).read_text()
    assert "planner prediction failed for ia3 #2: ZeroDivisionError: a planner bug" in markdown
    assert "ZeroDivisionError: a planner bug" in render_report_html(report)


# A result file exactly as `peftplan bench` wrote it before this change (schema 1, no intervals, no
# prediction_error, forgetting numbers required).
OLD_RESULT: dict[str, Any] = {
    "schema_version": 1, "suite_name": "smoke", "suite_hash": "0123456789abcdef", "study_name": "smoke/lora",
    "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "task": "sst2", "method": "lora", "trial_number": 0,
    "config": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "task": "sst2", "method": "lora",
               "config": {"rank": 16, "alpha": 32.0, "targets": ["all-linear"], "dropout": 0.0, "quant": "none"},
               "lr": 0.0001, "params": {"lr": 0.0001}, "training": {"steps": 30, "batch_size": 8}},
    "config_hash": "fedcba9876543210", "label": "lora", "params": {"lr": 0.0001}, "retry_of": None,
    "status": "success", "error": None,
    "metrics": {"task_metric": 0.66, "task_metric_name": "accuracy", "eval_loss": 0.71, "train_loss": 0.69,
                "train_tokens_per_s": 262.0, "train_time_s": 11.2, "wall_time_s": 40.1, "steps": 30,
                "trainable_params": 4884480, "total_params": 139399488, "adapter_bytes": 19560000,
                "task_metrics": {"accuracy": 0.66, "macro_f1": 0.6}, "train_tokens": 2934, "startup_s": 1.0,
                "load_time_s": 2.4, "threads": 2},
    "forgetting": {"probe": "wikitext2-test", "tokens": 512, "loss_base": 3.1, "loss_adapted": 3.2, "delta": 0.1,
                   "lm_eval": {}, "base_reference": "adapter-disabled"},
    "latency": {"prefill_base": 900.0, "prefill_unmerged": 700.0, "prefill_merged": 880.0, "decode_base": 6.6,
                "decode_unmerged": 9.0, "decode_merged": 11.8, "adapter_load_s": 0.05, "swap_s": 0.001},
    "memory": {"source": "cpu-livebytes", "peak_allocated": 836763648, "peak_reserved": None, "rss_peak": 2e9,
               "predicted": {"weights": 269030016, "peak_allocated": 820000000, "total": 820000000},
               "predicted_engine": "analytic", "measured_batch": 8, "measured_seq_len": 96, "ranks": None},
    "distributed": None, "intermediate": [{"step": 10, "eval_loss": 0.9}, {"step": 30, "eval_loss": 0.71}],
    "provenance": {"peftplan_version": "0.1.0", "packages": {"torch": "2.13.0"}, "python": "3.11.7",
                   "platform": "Linux", "device": "cpu", "device_name": "cpu (2 cores)", "hostname": "h",
                   "git_commit": None, "started_at": "2026-12-01T10:00:00+00:00",
                   "finished_at": "2026-12-01T10:01:00+00:00"},
}


def test_a_result_written_before_this_change_still_renders(tmp_path: Path) -> None:
    run = tmp_path / "old-run"
    (run / "trials").mkdir(parents=True)
    ia3 = json.loads(json.dumps(OLD_RESULT))
    ia3.update(method="ia3", label="ia3", study_name="smoke/ia3")
    ia3["metrics"]["task_metric"] = 0.79
    ia3["latency"]["decode_merged"] = 7.0
    for result in (OLD_RESULT, ia3):
        (run / "trials" / f"{result['label']}-0.json").write_text(json.dumps(result))
    report = build_report(load_run([run]), with_studies=False)
    html = render_report_html(report)
    markdown = write_markdown(report, tmp_path / "out").read_text()
    assert "0.66" in markdown and "0.79" in markdown and "<table" in html
    shown = display_comparison(report.comparison, "accuracy").set_index("method")
    assert shown.loc["lora", "forgetting (Δ loss)"] == "0.1"
