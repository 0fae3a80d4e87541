"""Fixtures for the report tests: a realistic run directory, its report, and a headless Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reports.browser import Chromium, find_chromium
from tests.reports.fixtures import make_run_dir

HOSTILE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("bench") / "run-smoke")


@pytest.fixture(scope="session")
def hostile_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose model id, task and a config value carry markup and script."""
    return make_run_dir(tmp_path_factory.mktemp("bench") / "run-hostile", model=f"evil/{HOSTILE}",
                        task=f"task {HOSTILE}", tag=HOSTILE, methods=("lora", "ia3", "prompt"))


@pytest.fixture(scope="session")
def report(run_dir: Path):  # -> peftplan.reports.build.Report
    from peftplan.reports.build import build_report
    from peftplan.reports.rundir import load_run

    return build_report(load_run([run_dir]))


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $PEFTPLAN_TEST_ARTIFACTS (CI can keep it) or the session's temp dir."""
    where = os.environ.get("PEFTPLAN_TEST_ARTIFACTS")
    path = Path(where) if where else tmp_path_factory.mktemp("artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (`make browser` installs Debian's chromium)")
    with Chromium(binary, tmp_path_factory.mktemp("chromium") / "profile") as browser:
        yield browser
