"""VeRA: the method contract (`tests/methods/contract.py`)."""

from __future__ import annotations

from tests.methods.contract import LOW_RANK_ROWS, MethodContract


class TestVera(MethodContract):
    name = "vera"
    rows = LOW_RANK_ROWS
    tiny = {"rank": 8}  # the default r=256 is sized for real models
