"""The `peftplan` command line. Each command lives in `peftplan/commands/<name>.py`."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer
from typer.exceptions import TyperException

from peftplan.commands._interrupt import says_interrupted
from peftplan.commands.bench import bench_command
from peftplan.commands.gpus import gpus_command
from peftplan.commands.methods import methods_command
from peftplan.commands.models import models_command
from peftplan.commands.plan import plan_command
from peftplan.commands.report import report_command
from peftplan.commands.trace import trace_command
from peftplan.commands.validate import validate_command
from peftplan.commands.worker import worker_command
from peftplan.errors import PeftplanError

app = typer.Typer(
    name="peftplan",
    help="Plan and benchmark parameter-efficient fine-tuning (PEFT) of language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("methods")(says_interrupted()(methods_command))
app.command("models")(says_interrupted()(models_command))
app.command("gpus")(says_interrupted()(gpus_command))
app.command("plan")(says_interrupted()(plan_command))
app.command("bench")(bench_command)
app.command("validate")(says_interrupted()(validate_command))
app.command("report")(says_interrupted()(report_command))
app.command("trace")(says_interrupted()(trace_command))
app.command("worker")(worker_command)


def version() -> str:
    """`peftplan X.Y.Z`, from the installed distribution's metadata."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return f"peftplan {dist_version('peftplan')}"
    except PackageNotFoundError:  # a source tree that was never installed (`make setup` installs it)
        return "peftplan (version unknown: not installed)"


def _print_version(value: bool) -> None:
    if value:
        print(version())
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False,
) -> None:
    """Plan and benchmark parameter-efficient fine-tuning (PEFT) of language models."""


def _log_to_stderr() -> None:
    """Library code logs (never prints); at the CLI its warnings are one line each on stderr, as written."""
    import logging

    class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
        def emit(self, record: logging.LogRecord) -> None:
            self.stream = sys.stderr  # whatever stderr is now (redirected, captured)
            super().emit(record)

    logger = logging.getLogger("peftplan")
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input exits 2 with one line, never a traceback."""
    _log_to_stderr()
    try:
        result = app(args=argv, prog_name="peftplan", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("peftplan: aborted", file=sys.stderr)
        return 130
    except TyperException as exc:  # click's usage errors (typer vendors click): exit 2, one line
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `peftplan`: the help, as --help prints it
            try:
                print(exc.format_message())  # type: ignore[attr-defined]
                sys.stdout.flush()
            except BrokenPipeError:  # `peftplan | head`: quiet, as rich's tables are
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 1
            return 0
        message = exc.format_message().replace("\n", " ")  # type: ignore[attr-defined]
        print(f"peftplan: error: {message}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print("peftplan: interrupted", file=sys.stderr)
        return 130
    except PeftplanError as exc:
        print(f"peftplan: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # an unexpected failure: one line, traceback on request
        if os.environ.get("PEFTPLAN_DEBUG"):
            raise
        from peftplan.errors import one_line

        print(f"peftplan: unexpected {type(exc).__name__}: {one_line(str(exc))} (set PEFTPLAN_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1
    # With standalone_mode off, click returns the exit code of `typer.Exit(code)` instead of raising.
    return result if isinstance(result, int) else 0


def run() -> None:
    code = main()
    # The command is over: a Ctrl-C now must not kill the interpreter by the signal on its way out.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    run()
