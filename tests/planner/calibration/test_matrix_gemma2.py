"""Calibration matrix, google/gemma-2-2b: every method x checkpointing x 2 sequence lengths x 2 batch sizes."""

import pytest

from tests.planner.calibration.matrix import cells, check_cell

MODEL = "google/gemma-2-2b"


@pytest.mark.parametrize(("method", "ckpt", "seq", "batch"), cells(MODEL))
def test_analytic_within_tolerance_of_trace(method: str, ckpt: bool, seq: int, batch: int) -> None:
    check_cell(MODEL, method, ckpt, seq, batch)
