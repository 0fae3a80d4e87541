"""The method registry: one module per PEFT method, loaded lazily by name.

Adding a method: write `methods/<name>.py` with a `METHOD` instance of a `Method` subclass, then add
one line to `REGISTRY`. The contract tests pick it up from here.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

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
}

__all__ = ["REGISTRY", "all_methods", "get_method", "method_names", "split_names"]


def split_names(values: list[str] | None) -> list[str]:
    """`--method lora,dora --method ia3` -> ["lora", "dora", "ia3"]."""
    names: list[str] = []
    for value in values or []:
        names.extend(part.strip() for part in value.split(",") if part.strip())
    return names


def method_names() -> list[str]:
    return list(REGISTRY)


@cache
def get_method(name: str) -> Method:
    """The registered method called `name` (case-insensitive).

    Raises:
        UnknownNameError: with a did-you-mean over the registered names.
    """
    key = name.strip().lower()
    if key not in REGISTRY:
        raise UnknownNameError("method", name, REGISTRY, hint=f"Known methods: {', '.join(REGISTRY)}.")
    module_name, attribute = REGISTRY[key].split(":")
    method: Method = getattr(importlib.import_module(module_name), attribute)
    if method.name != key:
        raise RuntimeError(f"registry entry {key!r} points at method {method.name!r}")
    return method


def all_methods() -> list[Method]:
    return [get_method(name) for name in REGISTRY]
