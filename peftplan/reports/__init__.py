"""Reports: a bench run's result files -> tables, plots, Markdown and one self-contained HTML file.

Reports read result files and the Optuna study only; they never re-run anything. Heavy libraries
(pandas, matplotlib, optuna) are imported inside functions, so importing this package is cheap.
"""

from __future__ import annotations

__all__ = ["build_report", "load_run", "render_plan_html", "render_report_html", "write_markdown"]


def __getattr__(name: str) -> object:
    # Lazy exports: `peftplan.cli` imports the report command without paying for pandas or jinja2.
    targets = {
        "build_report": "peftplan.reports.build",
        "load_run": "peftplan.reports.rundir",
        "render_plan_html": "peftplan.reports.plan_html",
        "render_report_html": "peftplan.reports.html",
        "write_markdown": "peftplan.reports.markdown",
    }
    if name not in targets:
        raise AttributeError(f"module 'peftplan.reports' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(targets[name]), name)
