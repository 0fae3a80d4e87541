"""The Markdown report: pandas (tabulate) tables and matplotlib PNGs linked from `figures/`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftplan.reports.chart import series_colors
from peftplan.reports.fmt import MISSING, fmt_num, fmt_params

if TYPE_CHECKING:
    import pandas as pd

    from peftplan.reports.build import Report

FIGURES = "figures"
INTERVALS_LINE = ("Brackets and ± are 95% intervals (bootstrap over the eval examples; timings: repeated until ±5% "
                  "or a cap). A method is called best at something only when its interval clears every other's.")
_SPECIAL = re.compile(r"[&<>|\[\]`\\*_]")


def md_escape(text: Any) -> str:
    """Text that renders literally in GitHub Markdown, table cells included (no HTML, no '|')."""
    entities = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
    flat = " ".join(str(text).split())
    return _SPECIAL.sub(lambda m: entities.get(m.group(), "\\" + m.group()), flat)


def md_table(frame: pd.DataFrame) -> str:
    escaped = frame.rename(columns=md_escape).map(md_escape)
    return str(escaped.to_markdown(index=False, disable_numparse=True))


def _summary_rows(report: Report) -> list[tuple[str, str]]:
    s = report.summary
    counts = ", ".join(f"{n} {status}" for status, n in s.status_counts.items())
    rows = [
        ("model", ", ".join(s.models)),
        ("task", ", ".join(s.tasks)),
        ("suite (hash)", ", ".join(f"{name} ({h})" for name, h in s.suites)),
        ("device", ", ".join(s.devices)),
        ("started", s.started or MISSING),
        ("finished", s.finished or MISSING),
        ("trials", f"{s.trials}: {counts}"),
        ("forgetting probe", ", ".join(s.probes) or MISSING),
        ("run directories", ", ".join(s.run_dirs)),
    ]
    return rows


def render_markdown(report: Report, figure_paths: dict[str, str]) -> str:
    """The report as Markdown; `figure_paths` maps chart keys to the PNGs' paths relative to the .md file."""
    import pandas as pd

    from peftplan.reports.tables import display_comparison, display_trials

    s = report.summary
    lines = [f"# Bench report: {md_escape(s.title)}", ""]
    lines += ["## Summary", "", md_table(pd.DataFrame(_summary_rows(report), columns=["", "value"])), ""]
    best = report.comparison.dropna(subset=["metric"])
    if len(best):
        lines += ["### Best config per method", ""]
        table = pd.DataFrame({
            "method": best["method"],
            s.metric_name: best["metric"].map(fmt_num),
            "trial": best["trial"].map(lambda v: f"#{int(v)}"),
            "config": best["params"].map(fmt_params),
        })
        lines += [md_table(table), ""]
    lines += ["## Method comparison", "", md_table(display_comparison(report.comparison, s.metric_name)), ""]
    lines += [INTERVALS_LINE, ""]
    if report.caveats:
        lines += ["### Read with care", ""] + [f"- {md_escape(c)}" for c in report.caveats] + [""]
    for group, heading in (("results", "## Plots"), ("optuna", "## Optuna studies")):
        charts = [c for c in report.charts if c.group == group and c.key in figure_paths]
        if not charts:
            continue
        lines += [heading, ""]
        for chart in charts:
            lines += [f"### {md_escape(chart.title)}", "", f"![{md_escape(chart.title)}]({figure_paths[chart.key]})",
                      "", md_escape(chart.caption), ""]
    lines += ["## Trials", "", md_table(display_trials(report.trials, s.metric_name, with_run=report.multi_run)), ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {md_escape(n)}" for n in report.notes] + [""]
    return "\n".join(lines)


def write_markdown(report: Report, out_dir: Path, *, name: str = "report.md") -> Path:
    """Write `report.md` and its PNGs (under `figures/`) into `out_dir`; returns the .md path."""
    from peftplan.reports.png import render_png

    out_dir.mkdir(parents=True, exist_ok=True)
    colors = series_colors(report.charts)
    paths: dict[str, str] = {}
    for chart in report.charts:
        render_png(chart, out_dir / FIGURES / f"{chart.key}.png", colors)
        paths[chart.key] = f"{FIGURES}/{chart.key}.png"
    target = out_dir / name
    target.write_text(render_markdown(report, paths))
    return target
