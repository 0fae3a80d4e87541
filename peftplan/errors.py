"""Exception hierarchy; each error maps to a CLI exit code (see DESIGN.md)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PeftplanError(Exception):
    """Base class; `exit_code` is what the CLI returns. Its message is always one printable line."""

    exit_code = 1

    def __str__(self) -> str:
        return one_line(super().__str__())


def one_line(text: str) -> str:
    """`text` with every line break and control character escaped (user input can hold any of them)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class BadInputError(PeftplanError):
    """Usage, config or unknown-name errors (exit 2). The message is one line."""

    exit_code = 2


class UnknownNameError(BadInputError):
    """An unknown model, method, target, GPU, ... with a did-you-mean."""

    def __init__(self, kind: str, name: str, choices: Iterable[str], *, hint: str = "") -> None:
        self.kind, self.name = kind, name
        self.suggestions = suggest(name, choices)
        message = f"Unknown {kind} {name!r}."
        if self.suggestions:
            message += " Did you mean: " + ", ".join(self.suggestions) + "?"
        if hint:
            message += " " + hint
        super().__init__(message)


class UnsupportedError(BadInputError):
    """A valid name used where it cannot apply (e.g. BitFit on a model without biases)."""


class NothingFitsError(PeftplanError):
    """No method fits the budget (exit 3)."""

    exit_code = 3


def suggest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Closest matches to `name`, compared case-insensitively; returns the original spellings."""
    by_lower: dict[str, str] = {}
    for choice in choices:
        by_lower.setdefault(choice.lower(), choice)
    hits = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[h] for h in hits]
