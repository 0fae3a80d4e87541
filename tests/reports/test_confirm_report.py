"""Confirmation runs in the report: methods ranked on the mean over seeds, with the sd shown; the search's
charts and best configs stay the search's own."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from peftplan.reports.build import build_report
from peftplan.reports.markdown import write_markdown
from peftplan.reports.rundir import load_run
from peftplan.reports.tables import display_comparison, display_trials
from tests.reports.fixtures import make_run_dir

# Per method: (search trial confirmed, its accuracy over three seeds). The search ranked lora first (0.874, a
# lucky trial); confirmed, qlora is ahead on the mean.
CONFIRMED = {"lora": [(1, [0.842, 0.851, 0.836]), (3, [0.829, 0.845, 0.833])],
             "qlora": [(2, [0.857, 0.861, 0.853])]}


@pytest.fixture(scope="module")
def confirmed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_run_dir(tmp_path_factory.mktemp("confirm") / "run")
    number = {"lora": 0, "qlora": 0}
    for method, configs in CONFIRMED.items():
        for trial, values in configs:
            source = json.loads((run / "trials" / f"{method}-{trial}.json").read_text())
            for seed, value in enumerate(values, start=1):
                result = {**source, "trial_number": number[method], "confirm_of": trial,
                          "study_name": f"smoke/{method}+confirm"}
                result["metrics"] = {**source["metrics"], "task_metric": value, "seed": 100_000 * seed + trial}
                (run / "trials" / f"{method}+confirm-{number[method]}.json").write_text(json.dumps(result))
                number[method] += 1
    return run


def test_methods_are_ranked_on_the_confirmed_mean_with_its_sd(confirmed_run: Path) -> None:
    report = build_report(load_run([confirmed_run]))
    comp = report.comparison.set_index("method")
    assert list(report.comparison["method"][:2]) == ["qlora", "lora"]  # confirmed first, on the mean
    assert comp.loc["lora", "confirmed_trial"] == 1  # lora's better confirmed configuration
    assert comp.loc["lora", "confirmed_mean"] == pytest.approx(statistics.fmean([0.842, 0.851, 0.836]))
    assert comp.loc["lora", "confirmed_sd"] == pytest.approx(statistics.stdev([0.842, 0.851, 0.836]))
    assert comp.loc["lora", "metric"] == 0.874  # the search's best trial is still shown as such
    shown = display_comparison(report.comparison, "accuracy").set_index("method")
    assert shown.loc["qlora", "accuracy confirmed (mean ± sd)"] == "0.857 ± 0.004 (3 seeds of #2)"
    assert shown.loc["ia3", "accuracy confirmed (mean ± sd)"] == "—"
    assert list(shown.columns[:2]) == ["accuracy confirmed (mean ± sd)", "accuracy"]
    # qlora's mean 0.857 [0.847, 0.867] against lora's 0.843 [0.824, 0.862]: the t-intervals overlap.
    assert "best accuracy" not in comp.loc["qlora", "when"]
    assert any(c.startswith("no 'best accuracy (confirmed over seeds)' claimed") for c in report.caveats)


def test_the_search_views_leave_confirmation_runs_out(confirmed_run: Path, tmp_path: Path) -> None:
    report = build_report(load_run([confirmed_run]))
    pareto = next(c for c in report.charts if c.key == "pareto")
    assert sum(len(s.x) for s in pareto.series if s.name == "lora") == 3  # lora's three successful search trials
    assert report.summary.best_configs["lora"] == {"rank": 8, "alpha": 16, "lr": 3.0e-4, "targets": "attn"}
    assert report.comparison.set_index("method").loc["lora", "trials"] == "3/4 ok (1 pruned)"
    trials = display_trials(report.trials, "accuracy")
    rows = trials[trials["#"].str.startswith("confirm")]
    assert len(rows) == 9 and rows["params"].str.startswith("confirms #").all()
    history = next(c for c in report.charts if c.key == "history-lora")
    assert len(history.series[0].x) == 3  # the study's completed search trials, no confirmation rows
    text = write_markdown(report, tmp_path).read_text()
    assert "confirms #1 (seed 100001)" in text
