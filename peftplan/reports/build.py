"""Assemble a `Report` from a loaded run: the tables and charts both renderers (HTML, Markdown) share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peftplan.reports.chart import Chart

if TYPE_CHECKING:
    import pandas as pd

    from peftplan.reports.rundir import Run
    from peftplan.reports.tables import Summary


@dataclass
class Report:
    """Everything a report shows, as data."""

    summary: Summary
    comparison: pd.DataFrame  # raw numbers, one row per method
    trials: pd.DataFrame  # raw numbers, one row per trial
    charts: list[Chart]  # only charts with data
    notes: list[str] = field(default_factory=list)  # skipped inputs and charts left out, with the reason
    caveats: list[str] = field(default_factory=list)  # read the comparison with these: warnings, unclaimed gaps

    @property
    def multi_run(self) -> bool:
        return self.trials["run"].nunique() > 1


def build_report(run: Run, *, with_studies: bool = True) -> Report:
    """Compute tables and charts for a run.

    Args:
        run: The loaded (possibly merged) run.
        with_studies: Read the Optuna studies for history and importance charts.
    """
    from peftplan.reports.charts import result_charts
    from peftplan.reports.frame import search_trials, trials_frame
    from peftplan.reports.studies import load_study_views, study_charts
    from peftplan.reports.tables import method_comparison, summarize

    frame = trials_frame(run)
    summary = summarize(run, frame)
    comparison = method_comparison(frame)
    notes = list(summary.notes) + planner_failures(frame)
    charts = []
    searched = search_trials(frame)  # confirmation runs repeat configurations: the charts show the search
    for chart in result_charts(searched, comparison, summary.metric_name, summary.higher_is_better):
        if chart.points:
            charts.append(chart)
        else:
            notes.append(f"chart '{chart.title}' left out: no trial has the data it needs")
    if with_studies:
        views, study_notes = load_study_views(run.storages, [r for r in run.results if r.confirm_of is None],
                                              objective=summary.metric_name)
        more, view_notes = study_charts(views)
        charts.extend(c for c in more if c.points)
        notes.extend(study_notes + view_notes)
    return Report(summary=summary, comparison=comparison, trials=frame, charts=charts, notes=notes,
                  caveats=caveats(comparison, summary.higher_is_better))


def caveats(comparison: pd.DataFrame, higher_is_better: bool) -> list[str]:
    """Warnings on the comparison (forgetting, decode parity), then the differences its intervals do not support."""
    from peftplan.reports.advice import forgetting_warnings, parity_mismatches, unclaimed

    found = forgetting_warnings(comparison)
    found += [f"{method}: {text}" for method, text in parity_mismatches(comparison).items()]
    return found + unclaimed(comparison, higher_is_better=higher_is_better)


def planner_failures(frame: pd.DataFrame) -> list[str]:
    """One note per distinct planner error, naming the trials it cost their prediction."""
    failed: dict[str, list[str]] = {}
    for row in frame.itertuples():
        error = getattr(row, "pred_error", None)
        if isinstance(error, str) and error:
            failed.setdefault(error, []).append(f"{row.method} #{row.trial}")
    return [f"planner prediction failed for {', '.join(trials)}: {error}" for error, trials in failed.items()]
