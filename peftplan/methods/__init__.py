"""The method registry: one package per PEFT method, loaded lazily by name.

Adding a method: write the package `methods/<name>/` with a `METHOD` instance of a `Method` subclass
(and its adapter kind in `replay.py` if it wraps Linears in a new way), add one line to `REGISTRY`,
and its contract test class `tests/methods/test_method_<name>.py`.
"""

from __future__ import annotations

import importlib
import re
from functools import cache
from typing import TYPE_CHECKING, Any

from peftplan.errors import UnknownNameError

if TYPE_CHECKING:
    from peftplan.methods.base import Method

# name -> "module:attribute"; importing a method costs nothing until it is asked for.
REGISTRY: dict[str, str] = {
    "full": "peftplan.methods.full:METHOD",
    "lora": "peftplan.methods.lora:METHOD",
    "qlora": "peftplan.methods.qlora:METHOD",
    "dora": "peftplan.methods.dora:METHOD",
    "qdora": "peftplan.methods.qdora:METHOD",
    "rslora": "peftplan.methods.rslora:METHOD",
    "ia3": "peftplan.methods.ia3:METHOD",
    "prefix": "peftplan.methods.prefix:METHOD",
    "prompt": "peftplan.methods.prompt:METHOD",
    "adapter": "peftplan.methods.adapter:METHOD",
    "bitfit": "peftplan.methods.bitfit:METHOD",
    "loha": "peftplan.methods.loha:METHOD",
    "lokr": "peftplan.methods.lokr:METHOD",
    "vera": "peftplan.methods.vera:METHOD",
    "oft": "peftplan.methods.oft:METHOD",
    "adalora": "peftplan.methods.adalora:METHOD",
}

__all__ = ["REGISTRY", "all_methods", "get_method", "method_names", "split_names", "validate_registry"]
_NAME = re.compile(r"[a-z][a-z0-9]*")


def validate_registry(registry: dict[str, str]) -> None:
    """Each name is lowercase letters and digits and points at `METHOD` of its own package.

    Raises:
        ValueError: the first entry that breaks the rule.
    """
    for name, target in registry.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"method name {name!r} must be lowercase letters and digits")
        if target != f"peftplan.methods.{name}:METHOD":
            raise ValueError(f"method {name!r} must live in its own package: peftplan.methods.{name}:METHOD")


validate_registry(REGISTRY)


def split_names(values: list[str] | None) -> list[str]:
    """`--method lora,dora --method ia3` -> ["lora", "dora", "ia3"]."""
    names: list[str] = []
    for value in values or []:
        names.extend(part.strip() for part in value.split(",") if part.strip())
    return names


def method_names() -> list[str]:
    return list(REGISTRY)


@cache
def get_method(name: str) -> Method[Any]:
    """The registered method called `name` (case-insensitive).

    Raises:
        UnknownNameError: with a did-you-mean over the registered names.
    """
    key = name.strip().lower()
    if key not in REGISTRY:
        raise UnknownNameError("method", name, REGISTRY, hint=f"Known methods: {', '.join(REGISTRY)}.")
    module_name, attribute = REGISTRY[key].split(":")
    method: Method[Any] = getattr(importlib.import_module(module_name), attribute)
    if method.name != key:
        raise RuntimeError(f"registry entry {key!r} points at method {method.name!r}")
    return method


def all_methods() -> list[Method[Any]]:
    return [get_method(name) for name in REGISTRY]
