"""The HTML report's structure: one self-contained file, plotly.js once, nothing fetched, all text escaped."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from peftplan.reports.html import plotly_js, render_report_html

MAX_BYTES = 6 * 1024 * 1024  # plotly.js itself is ~4.6 MiB; the report adds little


class _Inventory(HTMLParser):
    """Every tag with its attributes, and the text of the JSON figure scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.figures: dict[str, str] = {}
        self._in_figure: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "script" and attributes.get("type") == "application/json":
            self._in_figure = attributes["id"]

    def handle_data(self, data: str) -> None:
        if self._in_figure:
            self.figures[self._in_figure] = data

    def handle_endtag(self, tag: str) -> None:
        self._in_figure = None


@pytest.fixture(scope="module")
def page(report) -> str:
    return render_report_html(report)


def _inventory(page: str) -> _Inventory:
    parser = _Inventory()
    parser.feed(page)
    return parser


def test_self_contained(page: str) -> None:
    inv = _inventory(page)
    assert len(page.encode()) < MAX_BYTES
    assert page.count("plotly.js v") == 1  # the bundle's banner: inlined exactly once
    for tag, attrs in inv.tags:
        assert "src" not in attrs or (attrs["src"] or "").startswith("data:"), (tag, attrs)
        assert tag != "link" and tag != "iframe"
        href = attrs.get("href")
        assert href is None or href.startswith("#"), (tag, attrs)
    csp = next(a["content"] for t, a in inv.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in (csp or "")
    # Outside the plotly.js bundle (whose code mentions plotly.com links), no URL is referenced at all.
    own = page.replace(plotly_js(), "")
    assert len(own) < len(page) - 4_000_000
    assert not re.search(r"https?:|//cdn|@import|url\(", own)


def test_each_plot_has_its_figure(page: str, report) -> None:
    inv = _inventory(page)
    containers = [a["data-figure"] for t, a in inv.tags if "data-figure" in a]
    assert containers == [f"figure-data-{c.key}" for c in report.charts]
    for chart in report.charts:
        fig = json.loads(inv.figures[f"figure-data-{chart.key}"])
        assert any(trace.get("x") for trace in fig["data"]), chart.key


def test_tables(page: str, report) -> None:
    inv = _inventory(page)
    rows = [a for t, a in inv.tags if t == "tr" and "data-status" in a]
    assert len(rows) == len(report.trials)
    assert {r["data-status"] for r in rows} == {"success", "pruned", "oom", "failed", "timeout"}
    assert 'id="trial-filter"' in page and 'id="status-filter"' in page and 'id="csv-export"' in page
    assert 'class="data sortable" id="trials"' in page and 'id="comparison-table"' in page
    assert "only method under 768 MiB" in page


def test_user_strings_are_escaped(hostile_run_dir: Path) -> None:
    from peftplan.reports.build import build_report
    from peftplan.reports.rundir import load_run

    page = render_report_html(build_report(load_run([hostile_run_dir]), with_studies=False))
    assert "window.__xss" in page  # the string is there...
    assert "<script>window.__xss" not in page and "<img src=x" not in page  # ...but never as markup
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in page
    # Inside the figures' JSON, '<' is a JSON escape, so no '</script>' can end the block early.
    assert "\\u003cscript\\u003e" in page or "&lt;script&gt;" in page
