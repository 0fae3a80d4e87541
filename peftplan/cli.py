"""The `peftplan` command line. Each command lives in `peftplan/commands/<name>.py`."""

from __future__ import annotations

import os
import sys

import typer
from typer.exceptions import TyperException

from peftplan.commands.bench import bench_command
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
app.command("methods")(methods_command)
app.command("models")(models_command)
app.command("plan")(plan_command)
app.command("bench")(bench_command)
app.command("validate")(validate_command)
app.command("report")(report_command)
app.command("trace")(trace_command)
app.command("worker")(worker_command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input exits 2 with one line, never a traceback."""
    try:
        result = app(args=argv, prog_name="peftplan", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("peftplan: aborted", file=sys.stderr)
        return 130
    except TyperException as exc:  # click's usage errors (typer vendors click): exit 2, one line
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
    sys.exit(main())


if __name__ == "__main__":
    run()
