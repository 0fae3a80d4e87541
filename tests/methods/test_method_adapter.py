"""Bottleneck adapters: the method contract (`tests/methods/contract.py`)."""

from __future__ import annotations

from tests.methods.contract import MethodContract


class TestBottleneckAdapters(MethodContract):
    name = "adapter"
    rows = ({"bottleneck": 16}, {"bottleneck": 64})
    tiny = {"bottleneck": 8}
