"""The report with intervals, confirmation runs and caveats in headless Chromium: it still fits a laptop screen
and runs without errors (the wider cells, the extra column and the 'Read with care' list)."""

from __future__ import annotations

import json
from pathlib import Path

from peftplan.reports.build import build_report
from peftplan.reports.html import render_report_html
from peftplan.reports.rundir import load_run
from tests.reports.browser import Chromium
from tests.reports.test_browser import LAYOUT_JS, _assert_fits_a_laptop, _open
from tests.reports.test_intervals_report import add_intervals


def test_a_report_with_intervals_fits_a_laptop(chromium: Chromium, tmp_path: Path, artifacts: Path) -> None:
    from tests.reports.fixtures import make_run_dir

    run = make_run_dir(tmp_path / "run")
    add_intervals(run)
    for seed, value in enumerate([0.842, 0.851, 0.836], start=1):  # confirmation runs of lora #1
        source = json.loads((run / "trials" / "lora-1.json").read_text())
        source.update(trial_number=seed - 1, confirm_of=1, study_name="smoke/lora+confirm")
        source["metrics"].update(task_metric=value, seed=100_000 * seed + 1)
        (run / "trials" / f"lora+confirm-{seed - 1}.json").write_text(json.dumps(source))
    report = build_report(load_run([run]))
    assert report.caveats
    page = tmp_path / "report.html"
    page.write_text(render_report_html(report), encoding="utf-8")
    session, _ = _open(chromium, page, artifacts / "report-intervals.png")
    _assert_fits_a_laptop(chromium.evaluate(session, LAYOUT_JS))
    caveats = chromium.evaluate(session, "Array.from(document.querySelectorAll('#caveats li')).length")
    assert caveats == len(report.caveats)
