"""QDoRA: the method contract (`tests/methods/contract.py`)."""

from __future__ import annotations

from tests.methods.contract import LOW_RANK_ROWS, MethodContract


class TestQdora(MethodContract):
    name = "qdora"
    rows = LOW_RANK_ROWS
    tiny = {"rank": 4}
