"""`peftplan report RUN_DIR...`: Markdown and self-contained HTML from a bench run's result files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from peftplan.commands._options import check_format

REPORT_FORMATS = ("md", "html", "both")


def report_command(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="Bench run directories; several are merged (e.g. one per worker of a shared study).",
        show_default=False, metavar="RUN_DIR")],
    fmt: Annotated[str, typer.Option("--format", help="md, html or both.")] = "both",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory [default: RUN_DIR/report].")] = None,
    storage: Annotated[str | None, typer.Option(
        "--storage", help="Optuna storage URL with the studies, e.g. the PostgreSQL a distributed run shared "
                          "[default: RUN_DIR/study.db].")] = None,
) -> None:
    """Write report.md (+ PNGs) and/or report.html for a bench run. Reads results only; re-runs nothing."""
    from peftplan.errors import BadInputError
    from peftplan.reports.build import build_report
    from peftplan.reports.rundir import load_run

    check_format(fmt, REPORT_FORMATS)
    report = build_report(load_run(run_dirs, storage=storage))
    target = out if out is not None else run_dirs[0] / "report"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create output directory {str(target)!r}: {exc.strerror or exc}") from exc
    written: list[Path] = []
    if fmt in ("html", "both"):
        from peftplan.reports.html import render_report_html

        page = target / "report.html"
        page.write_text(render_report_html(report), encoding="utf-8")
        written.append(page)
    if fmt in ("md", "both"):
        from peftplan.reports.markdown import write_markdown

        written.append(write_markdown(report, target))
    for path in written:
        typer.echo(str(path))
