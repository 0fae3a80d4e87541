"""Prefix tuning: the method contract (`tests/methods/contract.py`)."""

from __future__ import annotations

from tests.methods.contract import MethodContract


class TestPrefixTuning(MethodContract):
    name = "prefix"
    rows = ({"virtual_tokens": 10}, {"virtual_tokens": 100})
    tiny = {"virtual_tokens": 4}
