"""Render a `Chart` as a plotly.js figure (plain JSON-able dicts; plotly.js draws it in the page).

Plotly treats text as a small HTML-like markup, so every string from the run (method names, params,
model ids) is HTML-escaped here: plotly shows the entity as text and never interprets a tag.
"""

from __future__ import annotations

import html
import json
from typing import Any

from peftplan.reports.chart import EMPHASIS, REFERENCE, Chart, Series, color_key
from peftplan.reports.fmt import is_missing

FIGURE_HEIGHT = 360
CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}


def _esc(value: Any) -> Any:
    return html.escape(value, quote=False) if isinstance(value, str) else value


def _clean(values: list[Any]) -> list[Any]:
    return [None if is_missing(v) else _esc(v) for v in values]


def _trace(series: Series, chart: Chart, color: str) -> dict[str, Any]:
    name = _esc(series.name)
    if series.kind == "bar":
        x, y = _clean(series.x), _clean(series.y)
        return {"type": "bar", "name": name, "x": x, "y": y, "marker": {"color": color},
                "orientation": "h" if chart.horizontal else "v"}
    trace: dict[str, Any] = {"type": "scatter", "mode": series.kind, "name": name, "x": _clean(series.x),
                             "y": _clean(series.y)}
    if series.text:
        trace["text"] = _clean(series.text)
        trace["hovertemplate"] = "%{text}<br>%{x}, %{y}<extra></extra>"
    if series.dashed:
        trace["line"] = {"color": REFERENCE, "dash": "dash", "width": 1.5}
        trace["hoverinfo"] = "skip"
    elif series.emphasis:
        trace["line"] = {"color": EMPHASIS, "width": 2, "shape": "hv" if series.step else "linear"}
        trace["marker"] = {"color": "rgba(0,0,0,0)", "size": 15, "line": {"color": EMPHASIS, "width": 2}}
    else:
        trace["marker"] = {"color": color, "size": 9, "opacity": 0.85}
        trace["line"] = {"color": color}
    return trace


def _ticks(chart: Chart) -> dict[str, Any]:
    if chart.x_ticks:
        return {"tickmode": "array", "tickvals": list(chart.x_ticks), "ticktext": [str(v) for v in chart.x_ticks]}
    if chart.x_integer:
        xs = [x for s in chart.series for x in s.x if not is_missing(x)]
        span = (max(xs) - min(xs)) if xs else 0
        return {"tickmode": "linear", "dtick": max(1, -(-span // 10)), "tickformat": "d"}
    return {}


def _axis(title: str, *, log: bool = False, category: bool = False) -> dict[str, Any]:
    axis: dict[str, Any] = {"title": {"text": _esc(title)}, "gridcolor": "#e6e6e6", "zeroline": False,
                            "automargin": True, "exponentformat": "e"}  # 6.6e-4, not plotly's "660µ"
    if log:
        axis["type"] = "log"
    if category:
        axis["type"] = "category"
    return axis


def figure(chart: Chart, colors: dict[str, str]) -> dict[str, Any]:
    """The plotly.js figure (`data`, `layout`) for a chart."""
    cat_x = chart.x_categorical and not chart.horizontal
    layout: dict[str, Any] = {
        "title": {"text": _esc(chart.title), "font": {"size": 15}, "x": 0.01, "xanchor": "left"},
        "xaxis": {**_axis(chart.x_title, log=chart.x_log, category=cat_x), **_ticks(chart)},
        "yaxis": _axis(chart.y_title, category=chart.horizontal),
        "height": chart.height or FIGURE_HEIGHT, "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
        "plot_bgcolor": "#ffffff", "paper_bgcolor": "#ffffff", "hovermode": "closest",
        # Below the x axis title, at a fixed distance in pixels whatever the figure's height.
        "legend": {"orientation": "h", "yanchor": "top", "y": -70 / max(100, (chart.height or FIGURE_HEIGHT) - 130)},
        "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
    }
    if any(s.kind == "bar" for s in chart.series):
        layout["barmode"] = "stack" if chart.stacked else "group"
        layout["showlegend"] = len(chart.series) > 1
    if chart.horizontal:  # categories read top-down in the order given
        layout["yaxis"].update(ticksuffix="  ", autorange="reversed")
        layout["legend"]["traceorder"] = "normal"
    if chart.vlines:
        layout["shapes"] = [{"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1,
                             "line": {"color": "#c5221f", "width": 2, "dash": "dot"}} for x, _ in chart.vlines]
        layout["annotations"] = [{"xref": "x", "yref": "paper", "x": x, "y": 1, "yanchor": "bottom",
                                  "text": _esc(label), "showarrow": False, "font": {"color": "#c5221f"}}
                                 for x, label in chart.vlines]
    traces = [_trace(s, chart, colors.get(color_key(s), EMPHASIS)) for s in chart.series]
    return {"data": traces, "layout": layout}


def figure_json(chart: Chart, colors: dict[str, str]) -> str:
    """The figure as JSON that is safe inside an HTML <script> element (no '<', '>' or '&')."""
    text = json.dumps(figure(chart, colors), separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
