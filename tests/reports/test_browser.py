"""The HTML pages in a real headless Chromium, from file://, with the network offline.

Checked: no console error or uncaught exception, no request besides the page itself, every plot
container holds a rendered SVG with data points, no horizontal scrolling on a 1366 px laptop screen,
the trials table sorts and filters, hostile strings stay text. A full-page screenshot of each page is
kept as a test artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from peftplan.reports.html import render_report_html
from tests.reports.browser import Chromium, PageLog

PLOTS_JS = """(() => Array.from(document.querySelectorAll('[data-figure]')).map(el => ({
  key: el.getAttribute('data-figure'),
  svg: el.querySelectorAll('svg.main-svg').length,
  points: el.querySelectorAll('.scatterlayer .point').length,
  bars: el.querySelectorAll('.barlayer .point').length,
  lines: el.querySelectorAll('.scatterlayer .js-line').length,
  shapes: el.querySelectorAll('.shapelayer path').length,
  width: el.getBoundingClientRect().width,
})))()"""

LAYOUT_JS = """(() => ({
  page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
  tables: Array.from(document.querySelectorAll('table.data')).map(t => [t.id, t.scrollWidth, t.parentElement.clientWidth]),
}))()"""


def _open(chromium: Chromium, page: Path, screenshot: Path) -> tuple[str, PageLog]:
    log = PageLog()
    session = chromium.open(page.as_uri(), log)
    chromium.drain(session, log)
    shot = chromium.screenshot(session, screenshot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert log.errors == []
    assert log.requests == [page.as_uri()]  # the page itself and nothing else
    return session, log


def _assert_fits_a_laptop(layout: dict[str, Any]) -> None:
    scroll, client = layout["page"]
    assert scroll <= client, f"page scrolls horizontally: {scroll} > {client}"
    for table_id, width, room in layout["tables"]:
        assert width <= room, f"table {table_id} is wider ({width}px) than its container ({room}px)"


@pytest.fixture(scope="module")
def report_page(report, tmp_path_factory: pytest.TempPathFactory) -> Path:
    page = tmp_path_factory.mktemp("report") / "report.html"
    page.write_text(render_report_html(report), encoding="utf-8")
    return page


def test_report_renders_offline_without_errors(chromium: Chromium, report_page: Path, report, artifacts: Path) -> None:
    session, _ = _open(chromium, report_page, artifacts / "report.png")
    plots = chromium.evaluate(session, PLOTS_JS)
    assert [p["key"] for p in plots] == [f"figure-data-{c.key}" for c in report.charts]
    for plot in plots:
        assert plot["svg"] >= 1, plot
        assert plot["points"] + plot["bars"] > 0, plot
        assert plot["width"] > 300, plot
    by_key = {p["key"].removeprefix("figure-data-"): p for p in plots}
    assert by_key["pareto"]["points"] == 8 + 2  # every trial with a result, plus the 2 front markers
    assert by_key["pareto"]["lines"] == 1
    assert by_key["latency"]["bars"] == 3 * 4  # base, merged, unmerged for 4 methods (2 merged are empty)
    assert by_key["memory"]["lines"] == 1  # y = x
    _assert_fits_a_laptop(chromium.evaluate(session, LAYOUT_JS))


def test_trials_table_sorts_and_filters(chromium: Chromium, report_page: Path, artifacts: Path) -> None:
    session, _ = _open(chromium, report_page, artifacts / "report-loaded-again.png")
    state = chromium.evaluate(session, """(() => {
      const filter = document.getElementById('trial-filter'), status = document.getElementById('status-filter');
      const visible = () => Array.from(document.querySelectorAll('#trials tbody tr')).filter(r => !r.hidden);
      const out = {};
      filter.value = 'qlora'; filter.dispatchEvent(new Event('input'));
      out.qlora = visible().length; out.count = document.getElementById('trial-count').textContent;
      filter.value = 'lora rank=8'; filter.dispatchEvent(new Event('input'));
      out.both = visible().map(r => r.cells[0].textContent + '#' + r.cells[1].textContent);
      filter.value = ''; filter.dispatchEvent(new Event('input'));
      status.value = 'pruned'; status.dispatchEvent(new Event('change'));
      out.pruned = visible().length;
      status.value = ''; status.dispatchEvent(new Event('change'));
      const accuracy = Array.from(document.querySelectorAll('#trials th')).find(th => th.textContent === 'accuracy');
      accuracy.click();
      out.ascending = visible().map(r => r.cells[3].textContent);
      accuracy.click();
      out.descending = visible().map(r => r.cells[3].textContent);
      out.sort = accuracy.getAttribute('aria-sort');
      return out;
    })()""")
    assert state["qlora"] == 3 and state["count"] == "3 of 13 trials"
    assert state["both"] == ["lora#1", "qlora#2"]
    assert state["pruned"] == 2
    assert state["ascending"][:2] == ["0.712", "0.801"] and state["ascending"][-1] == "—"  # missing last
    assert state["descending"][:2] == ["0.874", "0.868"] and state["descending"][-1] == "—"
    assert state["sort"] == "descending"


def test_hostile_strings_stay_text(chromium: Chromium, hostile_run_dir: Path, artifacts: Path) -> None:
    from peftplan.reports.build import build_report
    from peftplan.reports.rundir import load_run

    page = hostile_run_dir / "report" / "report.html"
    page.parent.mkdir(exist_ok=True)
    page.write_text(render_report_html(build_report(load_run([hostile_run_dir]))), encoding="utf-8")
    session, _ = _open(chromium, page, artifacts / "report-hostile.png")  # a rendered <img src=x> would fetch
    state = chromium.evaluate(session, """(() => ({
      xss: typeof window.__xss,
      heading: document.querySelector('h1').textContent,
      injected: document.querySelectorAll('main script, main img').length,
      legend: Array.from(document.querySelectorAll('.legendtext')).map(t => t.textContent),
    }))()""")
    assert state["xss"] == "undefined"
    assert '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">' in state["heading"]
    assert state["injected"] == 0
    _assert_fits_a_laptop(chromium.evaluate(session, LAYOUT_JS))


def test_plan_page(chromium: Chromium, tmp_path: Path, artifacts: Path) -> None:
    from peftplan.reports.plan_html import render_plan_html
    from tests.reports.fixtures import plan_json

    page = tmp_path / "plan" / "plan.html"
    page.parent.mkdir()
    page.write_text(render_plan_html(plan_json(model_id="<b>bold</b>/model")), encoding="utf-8")
    session, _ = _open(chromium, page, artifacts / "plan.png")
    (plot,) = chromium.evaluate(session, PLOTS_JS)
    assert plot["svg"] >= 1 and plot["bars"] >= 4 * 5  # 4 methods, at least 5 non-zero parts each
    assert plot["shapes"] == 1  # the VRAM line
    assert chromium.evaluate(session, "document.querySelector('h1').textContent").startswith(
        "peftplan plan: <b>bold</b>/model")
    _assert_fits_a_laptop(chromium.evaluate(session, LAYOUT_JS))
