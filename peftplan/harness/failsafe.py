"""Turn what nights bring (a full disk, a storage that went away) into a clean stop with one clear line.

The run stops before starting another trial. Nothing half-written stays behind: result files and
tables are written to a temporary name and renamed, and a temporary file is removed when its write
fails. Re-running the same command resumes: a trial the study already counts gets its result file
rebuilt, and one that was running is retried after its heartbeat expires.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from peftplan.errors import PeftplanError
from peftplan.storage_url import StorageUnavailableError, redact

FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
RESUME_HINT = "the run stopped cleanly; re-run the same command to resume"


class DiskFullError(PeftplanError):
    """No space left where the run writes (exit 1)."""


@contextmanager
def stop_cleanly(storage_url: str) -> Iterator[None]:
    """Re-raise a full disk or a failing storage as a one-line peftplan error."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OSError as exc:
        if exc.errno not in FULL:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        raise DiskFullError(f"disk full{where} ({exc.strerror}); free space, then {_hint()}") from None
    except (StorageInternalError, OperationalError) as exc:
        cause = exc.__cause__ or exc.__context__ or exc
        text = str(getattr(cause, "orig", None) or cause or exc).strip().splitlines()
        reason = text[0] if text else type(exc).__name__
        if "disk" in reason.lower() and "full" in reason.lower():
            raise DiskFullError(f"disk full in the study storage ({reason}); free space, then {_hint()}") from None
        raise StorageUnavailableError(f"storage {redact(storage_url)} failed: {reason}; {RESUME_HINT}") from None


def _hint() -> str:
    return RESUME_HINT.split("; ", 1)[1]


def run_to_end(runner: Any, storage_url: str, progress: Any) -> Any:
    """Prepare and run a bench runner; a full disk or lost storage stops cleanly, and the progress
    display is closed on any failure so the terminal is left readable. Returns the runner's summary."""
    try:
        with stop_cleanly(storage_url):
            runner.prepare()
            return runner.run()
    except BaseException:
        progress.close()
        raise
