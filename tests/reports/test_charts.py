"""Every chart has data, and its data are the result files' numbers (and the study's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftplan.reports.chart import Chart, Series, series_colors
from peftplan.reports.plotly_json import figure, figure_json
from tests.reports.fixtures import expected_results

MiB = 2.0**20
EXPECTED_CHARTS = {"pareto", "forgetting", "latency", "memory", "rank", "history-lora", "history-qlora",
                   "history-ia3", "history-prompt"}  # importances need 10 trials (test_intervals_report.py)


def _chart(report, key: str) -> Chart:
    return next(c for c in report.charts if c.key == key)


def _points(chart: Chart) -> set[tuple[str, float, float]]:
    return {(s.name, round(x, 9), round(y, 9)) for s in chart.series if not s.emphasis and not s.dashed
            for x, y in zip(s.x, s.y, strict=True)}


def test_every_chart_is_there_and_has_data(report) -> None:
    assert {c.key for c in report.charts} == EXPECTED_CHARTS
    assert all(c.points > 0 for c in report.charts)
    # lora has three completed trials: no importances, and the report says why.
    assert any("lora: parameter importances left out: 3 completed trials" in n for n in report.notes)


def test_pareto_points_are_every_measured_trial(report, run_dir: Path) -> None:
    raw = [r for r in expected_results(run_dir) if r["status"] == "success"]
    chart = _chart(report, "pareto")
    assert _points(chart) == {(r["method"], round(r["memory"]["peak_allocated"] / MiB, 9),
                               round(r["metrics"]["task_metric"], 9)) for r in raw}
    front = next(s for s in chart.series if s.name == "Pareto front")
    # lora #1 (0.874 @ 868 MiB) and qlora #2 (0.858 @ 574 MiB) dominate every other trial.
    assert front.x == pytest.approx([574.0, 868.0]) and front.y == pytest.approx([0.858, 0.874])


def test_forgetting_and_rank_charts(report, run_dir: Path) -> None:
    raw = [r for r in expected_results(run_dir) if r["status"] == "success"]
    assert _points(_chart(report, "forgetting")) == {
        (r["method"], round(r["forgetting"]["delta"], 9), round(r["metrics"]["task_metric"], 9)) for r in raw}
    rank = _chart(report, "rank")
    assert {s.name for s in rank.series} == {"lora", "qlora"}
    assert rank.x_ticks == [8, 16, 32]
    assert _points(rank) == {(r["method"], float(r["config"]["rank"]), round(r["metrics"]["task_metric"], 9))
                             for r in raw if "rank" in r["config"]}


def test_latency_bars_are_the_best_trials(report) -> None:
    chart = _chart(report, "latency")
    bars = {s.name: dict(zip(s.x, s.y, strict=True)) for s in chart.series}
    assert set(bars) == {"base", "merged", "unmerged"}
    assert bars["unmerged"] == {"lora": 33.0, "qlora": 21.0, "ia3": 38.0, "prompt": 36.0}
    assert bars["merged"]["qlora"] is None and bars["merged"]["lora"] == 39.6


def test_memory_prediction_chart_has_the_identity_line(report, run_dir: Path) -> None:
    chart = _chart(report, "memory")
    raw = [r for r in expected_results(run_dir) if r["memory"]]
    assert _points(chart) == {(r["method"], round(r["memory"]["peak_allocated"] / MiB, 9),
                               round(r["memory"]["predicted"]["peak_allocated"] / MiB, 9)) for r in raw}
    line = next(s for s in chart.series if s.dashed)
    assert line.x == line.y and line.x[0] < min(p[1] for p in _points(chart))


def test_optuna_history_and_importances_come_from_the_study(report, run_dir: Path) -> None:
    import optuna

    study = optuna.load_study(study_name="smoke/lora", storage=f"sqlite:///{run_dir / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    history = _chart(report, "history-lora")
    objective, best = history.series
    assert objective.x == [t.number for t in complete] and objective.y == [t.value for t in complete]
    assert best.y == [0.861, 0.874, 0.874]  # best so far, maximised


def test_plotly_figures_are_valid(report) -> None:
    import plotly.graph_objects as go

    colors = series_colors(report.charts)
    for chart in report.charts:
        go.Figure(figure(chart, colors))  # raises on any invalid property
        text = figure_json(chart, colors)
        assert "<" not in text and ">" not in text


def test_plotly_text_is_escaped() -> None:
    chart = Chart(key="k", title="<b>t</b>", x_title="x", y_title="y",
                  series=[Series(name="<script>", x=[1], y=[2], text=["a&b"])])
    fig = figure(chart, {})
    assert fig["layout"]["title"]["text"] == "&lt;b&gt;t&lt;/b&gt;"
    assert fig["data"][0]["name"] == "&lt;script&gt;" and fig["data"][0]["text"] == ["a&amp;b"]


def test_series_checks_lengths() -> None:
    with pytest.raises(ValueError, match="2 x values but 1 y"):
        Series(name="s", x=[1, 2], y=[1])


def test_one_study_shared_by_several_methods(run_dir: Path, tmp_path: Path) -> None:
    """A study holding every method's trials is split by each trial's `method` attribute."""
    import optuna

    from peftplan.reports.studies import load_study_views
    from peftplan.results import read_result

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    shared = optuna.create_study(study_name="all", storage=url, direction="maximize")
    results = []
    for method in ("lora", "ia3"):
        source = optuna.load_study(study_name=f"smoke/{method}", storage=f"sqlite:///{run_dir / 'study.db'}")
        shared.add_trials(source.trials)
        results += [read_result(p).model_copy(update={"study_name": "all"})
                    for p in sorted((run_dir / "trials").glob(f"{method}-*.json"))]
    views, notes = load_study_views([url], results, objective="accuracy")
    by_method = {v.method: v for v in views}
    assert set(by_method) == {"lora", "ia3"} and notes == []
    assert [v for _, v in by_method["lora"].history] == [0.861, 0.874, 0.868]
    assert [v for _, v in by_method["ia3"].history] == [0.801, 0.823]
    assert by_method["ia3"].importances == {} and "fANOVA needs at least 10" in by_method["ia3"].note
