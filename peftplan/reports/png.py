"""Render a `Chart` to a PNG with matplotlib (for the Markdown report; no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftplan.reports.chart import EMPHASIS, REFERENCE, Chart, color_key
from peftplan.reports.fmt import is_missing

DPI = 110
SIZE = (7.0, 4.0)


def _txt(text: str) -> str:
    """Plain text for matplotlib: no mathtext from a '$' in a name, no legend-hiding leading '_'."""
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _points(xs: list[Any], ys: list[Any]) -> tuple[list[Any], list[Any]]:
    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if not is_missing(x) and not is_missing(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def _bars(ax: Any, chart: Chart, colors: dict[str, str]) -> None:
    categories = list(dict.fromkeys(v for s in chart.series for v in (s.y if chart.horizontal else s.x)))
    width = 0.8 if chart.stacked else 0.8 / max(1, len(chart.series))
    base = [0.0] * len(categories)
    for i, series in enumerate(chart.series):
        cats, values = (series.y, series.x) if chart.horizontal else (series.x, series.y)
        slots = [categories.index(c) for c in cats]
        offset = 0.0 if chart.stacked else (i - (len(chart.series) - 1) / 2) * width
        heights = [0.0 if is_missing(v) else float(v) for v in values]
        bottoms = [base[s] for s in slots] if chart.stacked else [0.0] * len(slots)
        color = colors.get(color_key(series), EMPHASIS)
        if chart.horizontal:
            ax.barh([s + offset for s in slots], heights, width, left=bottoms, label=_txt(series.name), color=color)
        else:
            ax.bar([s + offset for s in slots], heights, width, bottom=bottoms, label=_txt(series.name), color=color)
        if chart.stacked:
            for s, h in zip(slots, heights, strict=True):
                base[s] += h
    ticks = range(len(categories))
    if chart.horizontal:
        ax.set_yticks(list(ticks), [_txt(str(c)) for c in categories])
    else:
        ax.set_xticks(list(ticks), [_txt(str(c)) for c in categories])


def render_png(chart: Chart, path: Path, colors: dict[str, str]) -> Path:
    """Draw `chart` into `path` (PNG) and return the path."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=SIZE, dpi=DPI)
    try:
        if any(s.kind == "bar" for s in chart.series):
            _bars(ax, chart, colors)
        for series in (s for s in chart.series if s.kind != "bar"):
            xs, ys = _points(series.x, series.y)
            if series.dashed:
                ax.plot(xs, ys, linestyle="--", color=REFERENCE, linewidth=1, label=_txt(series.name))
            elif series.emphasis:
                marker = "o" if "markers" in series.kind else None
                ax.plot(xs, ys, color=EMPHASIS, linewidth=1.5, marker=marker, markerfacecolor="none",
                        markersize=11, label=_txt(series.name), zorder=3,
                        drawstyle="steps-post" if series.step else "default")
            elif series.kind == "lines":
                ax.plot(xs, ys, color=colors.get(color_key(series), EMPHASIS), label=_txt(series.name))
            else:
                ax.scatter(xs, ys, s=36, color=colors.get(color_key(series), EMPHASIS), label=_txt(series.name), zorder=2,
                           alpha=0.85)
        for x, label in chart.vlines:
            ax.axvline(x, color="#c5221f", linestyle=":", linewidth=2, label=_txt(label))
        if chart.horizontal:
            ax.invert_yaxis()
        if chart.x_log:
            ax.set_xscale("log", base=2)
        if chart.x_ticks:
            ax.set_xticks(list(chart.x_ticks), [str(v) for v in chart.x_ticks])
            ax.minorticks_off()
        elif chart.x_integer:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(_txt(chart.title), fontsize=11, loc="left")
        ax.set_xlabel(_txt(chart.x_title))
        ax.set_ylabel(_txt(chart.y_title))
        ax.grid(True, color="#e6e6e6", linewidth=0.8)
        ax.set_axisbelow(True)
        if len(chart.series) > 1:
            ax.legend(fontsize=8, frameon=False, loc="best")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
