"""Harness test fixtures: the embedded model's converted weights are shared between sessions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _embedded_model_cache() -> None:
    """The converted SmolLM2 (538 MB, 18 s to convert) is shared between sessions, like any model cache."""
    os.environ.setdefault("PEFTPLAN_MODELS_DIR", str(Path.home() / ".cache" / "peftplan" / "models"))
