"""IA3: the method contract (`tests/methods/contract.py`)."""

from __future__ import annotations

from tests.methods.contract import MethodContract


class TestIa3(MethodContract):
    name = "ia3"
    rows = ({"targets": "attn"}, {"targets": "mlp"}, {"targets": "all-linear"})
