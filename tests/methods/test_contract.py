"""The registry's own contract: names are valid, every method has its contract test class, and a few
counts checked against whole-model figures.

Each method's rows live in `tests/methods/test_method_<name>.py`, a subclass of `MethodContract`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from peftplan.methods import REGISTRY, all_methods, get_method, method_names, validate_registry
from peftplan.models import get_spec
from tests.methods.contract import MethodContract

HERE = Path(__file__).parent


def test_registry_names_are_valid() -> None:
    validate_registry(REGISTRY)
    for bad, reason in (({"LoRA": "peftplan.methods.lora:METHOD"}, "lowercase"),
                        ({"lora": "peftplan.methods.dora:METHOD"}, "its own package")):
        with pytest.raises(ValueError, match=reason):
            validate_registry(bad)


def test_every_method_inherits_the_contract() -> None:
    import importlib

    for name in method_names():
        module = importlib.import_module(f"tests.methods.test_method_{name}")
        classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, MethodContract)
                   and c is not MethodContract]
        assert [c.name for c in classes] == [name], f"tests/methods/test_method_{name}.py"
    assert len(list(HERE.glob("test_method_*.py"))) == len(method_names())


def test_every_method_loads() -> None:
    assert [m.name for m in all_methods()] == method_names()


def test_full_count_is_total_params() -> None:
    spec = get_spec("meta-llama/Llama-3.2-3B")
    assert get_method("full").trainable_params(spec, get_method("full").make_config()) == 3_212_749_824


def test_bitfit_counts_every_bias_of_roberta() -> None:
    spec = get_spec("FacebookAI/roberta-base")
    n = get_method("bitfit").trainable_params(spec, get_method("bitfit").make_config())
    assert n == sum(p.numel for p in spec.params if p.name.endswith(".bias") and p.tied_to is None)
    assert 100_000 < n < 200_000  # BitFit's ~0.08% of RoBERTa-base
