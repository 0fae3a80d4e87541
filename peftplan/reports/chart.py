"""A backend-free chart description: what to draw, which both the plotly and the matplotlib renderers read.

Keeping the data in one place means the HTML and the Markdown report always plot the same numbers,
and tests can check a chart's data without rendering it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from peftplan.reports.fmt import is_missing

Kind = Literal["markers", "lines", "lines+markers", "bar"]


@dataclass
class Series:
    """One trace: points (x, y) drawn as markers, a line, or bars."""

    name: str
    x: list[Any]
    y: list[Any]
    kind: Kind = "markers"
    text: list[str] | None = None  # hover text, one per point
    emphasis: bool = False  # drawn on top and louder, e.g. the Pareto front
    dashed: bool = False  # reference lines such as y = x
    step: bool = False  # a line that holds its value until the next point (best-so-far)
    color_key: str | None = None  # whose colour to use (defaults to `name`), e.g. the method of a history

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"series {self.name!r}: {len(self.x)} x values but {len(self.y)} y values")

    @property
    def points(self) -> int:
        return sum(1 for x, y in zip(self.x, self.y, strict=True) if not is_missing(x) and not is_missing(y))


@dataclass
class Chart:
    """A titled plot: its series, axis titles and a caption saying how to read it."""

    key: str  # file-name-safe id, e.g. "pareto" or "history-lora"
    title: str
    x_title: str
    y_title: str
    series: list[Series]
    caption: str = ""
    x_categorical: bool = False
    horizontal: bool = False  # bar charts only: categories on the y axis
    x_log: bool = False
    x_ticks: list[Any] | None = None  # explicit tick values (e.g. the ranks tried)
    x_integer: bool = False  # whole-number ticks only (trial numbers)
    stacked: bool = False  # bar charts only: series stack instead of standing side by side
    vlines: list[tuple[float, str]] = field(default_factory=list)  # labelled vertical lines, e.g. the VRAM budget
    group: str = "results"  # section of the report it belongs to
    height: int | None = None  # pixels, for charts whose size grows with their categories

    @property
    def points(self) -> int:
        """Data points, reference lines excluded: a chart with none is not worth drawing."""
        return sum(s.points for s in self.series if not s.dashed)


def memory_unit(values: list[Any]) -> tuple[str, float]:
    """('GiB', 2**30) or ('MiB', 2**20), whichever reads better for these byte counts."""
    present = [float(v) for v in values if not is_missing(v)]
    return ("GiB", 2.0**30) if present and max(present) >= 2**30 else ("MiB", 2.0**20)


# Colour-blind-safe (Okabe-Ito, then Tableau) so methods keep one colour across every chart.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
           "#4E79A7", "#F28E2B", "#59A14F", "#E15759", "#B07AA1", "#9C755F"]
EMPHASIS = "#222222"
REFERENCE = "#888888"
FIXED = {
    "base": "#9E9E9E", "merged": "#56B4E9", "unmerged": "#D55E00",
    # the plan's memory components
    "weights": "#4E79A7", "quant constants": "#A0CBE8", "adapter": "#F28E2B", "gradients": "#E15759",
    "optimizer states": "#76B7B2", "activations": "#59A14F", "logits": "#EDC948", "allocator reserve": "#BAB0AC",
    "CUDA context & workspaces": "#9C755F",
}


def color_key(series: Series) -> str:
    return series.color_key or series.name


def series_colors(charts: list[Chart]) -> dict[str, str]:
    """One colour per method (and fixed ones for base/merged/unmerged), stable across charts."""
    keys = [color_key(s) for c in charts for s in c.series if not s.emphasis and not s.dashed]
    methods = [k for k in dict.fromkeys(keys) if k not in FIXED]
    return {**{m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}, **FIXED}


def slug(text: str) -> str:
    """A file-name and HTML-id safe form of a name (method names come from result files)."""
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"
