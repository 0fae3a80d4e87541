"""Full fine-tuning: the method contract (`tests/methods/contract.py`)."""

from __future__ import annotations

from tests.methods.contract import MethodContract


class TestFullFineTuning(MethodContract):
    name = "full"
