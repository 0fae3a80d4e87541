"""BitFit: the method contract (`tests/methods/contract.py`)."""

from __future__ import annotations

from tests.conftest import TINY_BERT
from tests.methods.contract import MethodContract


class TestBitfit(MethodContract):
    name = "bitfit"
    tiny_base = TINY_BERT  # a tiny Llama has no biases
