"""Ctrl-C in a command: one line on stderr and exit 130 (typer alone exits 130 silently)."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from typing import ParamSpec

import typer

P = ParamSpec("P")


def says_interrupted(line: str = "interrupted (Ctrl-C)") -> Callable[[Callable[P, None]], Callable[P, None]]:
    """Wrap a command so that Ctrl-C prints `peftplan: <line>` and exits 130."""

    def wrap(command: Callable[P, None]) -> Callable[P, None]:
        @functools.wraps(command)  # typer reads the options from the wrapped signature
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                command(*args, **kwargs)
            except KeyboardInterrupt:
                # Exiting now: a second interrupt during clean-up must not end the process by the signal.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                print(f"peftplan: {line}", file=sys.stderr, flush=True)
                raise typer.Exit(130) from None

        return run

    return wrap
