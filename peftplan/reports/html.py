"""Self-contained HTML pages (jinja2 + plotly.js): the bench report here, the plan page in `plan_html`.

One file that opens offline: plotly.js is inlined once, figures are JSON in `<script type=
"application/json">` blocks, a Content-Security-Policy forbids every network fetch, and jinja2's
autoescape is on for every template, so a user string can only ever render as text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from peftplan.reports.chart import Chart, series_colors
from peftplan.reports.fmt import fmt_num, fmt_params, is_missing

if TYPE_CHECKING:
    import jinja2
    import pandas as pd

    from peftplan.reports.build import Report


@dataclass(frozen=True)
class Figure:
    """A chart ready for the page: its element ids and its plotly JSON (already safe for <script>)."""

    key: str
    title: str
    caption: str
    json: str
    group: str


@dataclass(frozen=True)
class Cell:
    text: str
    sort: str | None = None  # a raw number for sorting; "" for missing; None sorts by text


@lru_cache(maxsize=1)
def template_env() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("peftplan.reports", "templates"),
        autoescape=True,  # every template, whatever its extension
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """The plotly.js bundle shipped inside the plotly package (no CDN, no network)."""
    from importlib import resources

    bundle = resources.files("plotly") / "package_data" / "plotly.min.js"
    if bundle.is_file():
        return bundle.read_text(encoding="utf-8")
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def figures(charts: list[Chart]) -> list[Figure]:
    from peftplan.reports.plotly_json import figure_json

    colors = series_colors(charts)
    return [Figure(c.key, c.title, c.caption, figure_json(c, colors), c.group) for c in charts]


def render_page(template: str, *, title: str, figures: list[Figure], **context: Any) -> str:
    """Render a page template that extends `base.html.j2`."""
    from peftplan.reports.plotly_json import CONFIG

    page = template_env().get_template(template)
    return page.render(title=title, figures=figures, plotly_js=plotly_js() if figures else "",
                       plotly_config=json.dumps(CONFIG), **context)


def _sort_value(value: Any) -> str:
    return "" if is_missing(value) else repr(float(value))


_BREAK_BEFORE = re.compile("\u00a0(?=[\\[±(])")


def _number_text(text: str) -> str:
    """A number cell that wraps only between a value and its interval or note (`0.874 [0.844, 0.904]`,
    `128 ±10%`, `0.86 ± 0.01 (3 seeds of #2)`), never inside one: a laptop-wide table, and no '912 / MiB'."""
    return _BREAK_BEFORE.sub(" ", text.replace(" ", "\u00a0"))


def table_rows(display: pd.DataFrame, raw: pd.DataFrame, numeric: dict[str, str]) -> list[list[Cell]]:
    """Display strings as cells; columns named in `numeric` (display header -> raw column) sort by number."""
    rows = []
    for (_, shown), (_, values) in zip(display.iterrows(), raw.iterrows(), strict=True):
        rows.append([
            Cell(_number_text(str(text)), _sort_value(values[numeric[col]])) if col in numeric else Cell(str(text))
            for col, text in shown.items()
        ])
    return rows


def _best_configs(report: Report) -> list[dict[str, Any]]:
    from peftplan.reports.frame import search_trials

    frame = search_trials(report.trials)  # a confirmation run may share a search trial's number
    out = []
    for row in report.comparison.itertuples():
        if is_missing(row.metric):
            continue
        trial = frame[(frame["method"] == row.method) & (frame["trial"] == row.trial)].iloc[0]
        out.append({"method": row.method, "metric": fmt_num(row.metric), "trial": int(row.trial),
                    "params": fmt_params(row.params), "config": trial["config"]})
    return out


def render_report_html(report: Report) -> str:
    """The whole bench report as one HTML document (str)."""
    from peftplan.reports.markdown import INTERVALS_LINE
    from peftplan.reports.tables import display_comparison, display_trials

    s = report.summary
    comparison = display_comparison(report.comparison, s.metric_name)
    trials = display_trials(report.trials, s.metric_name, with_run=report.multi_run)
    numeric_comp = {s.metric_name: "metric", f"{s.metric_name} confirmed (mean ± sd)": "confirmed_mean",
                    "forgetting (Δ loss)": "forgetting", "peak memory": "peak",
                    "planner (error)": "predicted", "train tok/s": "train_tps",
                    "decode tok/s merged": "decode_merged", "decode tok/s unmerged": "decode_unmerged",
                    "adapter size": "adapter_bytes", "trainable params": "trainable"}
    numeric_trials = {"#": "trial", s.metric_name: "metric", "forgetting": "forgetting", "peak memory": "peak",
                      "planner error": "pred_err_pct", "train tok/s": "train_tps", "decode tok/s": "decode_unmerged"}
    return render_page(
        "report.html.j2",
        title=f"peftplan report: {s.title}",
        figures=figures(report.charts),
        summary=s,
        best_configs=_best_configs(report),
        comparison_header=list(comparison.columns),
        comparison_rows=table_rows(comparison, report.comparison, numeric_comp),
        trials_header=list(trials.columns),
        trials_rows=table_rows(trials, report.trials, numeric_trials),
        trial_statuses=list(report.trials["status"]),
        statuses=[k for k, v in s.status_counts.items() if v],
        notes=report.notes,
        caveats=report.caveats,
        intervals_line=INTERVALS_LINE,
    )
