"""A lock around setting up a study, so that `bench` commands started at the same moment on a new study enqueue
its trials once.

`optuna.create_study(load_if_exists=True)` may be raced, but "is the queue filled? if not, fill it" may not:
two starters would both find an empty study and both fill it (twice the trials). So creating, checking and
filling run under a lock held by the storage itself, which every starter on every host shares. Creating
Optuna's tables in a new database races too (PostgreSQL: "duplicate key ... pg_type_typname_nsp_index"), so
opening the storage takes the lock named `SCHEMA_LOCK` first.

- PostgreSQL: a transaction-level advisory lock (`pg_advisory_xact_lock`) keyed on a hash of the study name,
  held by a connection of its own until the study is set up; the server releases it if the process dies.
  The wait is bounded by `SET LOCAL lock_timeout`.
- MySQL: `GET_LOCK` on the same key with a finite timeout, its answer checked (1: held; 0: timed out; NULL: an
  error), released with `RELEASE_LOCK` or with the connection. Written, never run: no test here has a MySQL server.
- SQLite: an exclusive `flock` on `<database file>.lock` next to the database file (one host only, like
  SQLite itself); without `fcntl` (not POSIX) there is no lock, and a note says so.

Nobody waits forever: after `timeout` seconds (default `LOCK_TIMEOUT_S`) the starter stops with one line naming
the lock and, where the storage can tell, what holds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peftplan.errors import PeftplanError

SCHEMA_LOCK = "peftplan/optuna-schema"  # never a study name: method labels hold no "-"
LOCK_TIMEOUT_S = 300.0  # setting up a study takes seconds; a holder this slow is stuck
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout ran out
_UNLOCKED: set[str] = set()  # SQLite files this process said it cannot lock (said once each)


class StudyLockTimeout(PeftplanError):
    """Another process held a study's set-up lock for longer than the timeout (exit 1)."""


def lock_key(study_name: str) -> int:
    """A signed 64-bit key for `study_name` (what PostgreSQL's advisory locks take)."""
    return int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def study_lock(url: str, study_name: str, *, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the storage's lock for `study_name` (see the module docstring) while the block runs.

    Raises:
        StudyLockTimeout: the lock was not free within `timeout` seconds.
        PeftplanError: MySQL's GET_LOCK answered NULL (an error).
    """
    if url.startswith("sqlite"):
        with _file_lock(url, study_name, timeout):
            yield
        return
    import sqlalchemy

    from peftplan.storage_url import engine_kwargs

    engine = sqlalchemy.create_engine(url, **engine_kwargs(url), poolclass=sqlalchemy.pool.NullPool)
    try:
        if engine.dialect.name == "postgresql":
            with _postgres_lock(engine, url, study_name, timeout):
                yield
        elif engine.dialect.name == "mysql":
            with _mysql_lock(engine, url, study_name, timeout):
                yield
        else:
            yield  # another RDB: Optuna's own transactions only
    finally:
        engine.dispose()


def _what(study_name: str) -> str:
    return "creating Optuna's tables" if study_name == SCHEMA_LOCK else f"study {study_name!r}"


def _me() -> str:
    return f"peftplan {socket.gethostname()} pid {os.getpid()}"[:63]  # PostgreSQL keeps 63 bytes of a name


@contextmanager
def _postgres_lock(engine: Any, url: str, study_name: str, timeout: float) -> Iterator[None]:
    import sqlalchemy

    from peftplan.storage_url import redact_safe

    key = lock_key(study_name)
    with engine.begin() as connection:  # the lock lives as long as this transaction
        # set_config(..., true) is SET LOCAL, with parameters: both settings end with the transaction.
        connection.execute(sqlalchemy.text("SELECT set_config('application_name', :me, true), "
                                           "set_config('lock_timeout', :ms, true)"),
                           {"me": _me(), "ms": str(max(1, int(timeout * 1000)))})
        try:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        except sqlalchemy.exc.OperationalError as exc:
            orig = getattr(exc, "orig", None)
            if (getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)) != LOCK_NOT_AVAILABLE:
                raise
            holder = _postgres_holder(engine, key)
            raise StudyLockTimeout(f"{_what(study_name)}: waited {timeout:g} s for its set-up lock on "
                                   f"{redact_safe(url)}, held by {holder}; stop that process, or retry once it "
                                   "has finished") from None
        yield


def _postgres_holder(engine: Any, key: int) -> str:
    """Who holds the advisory lock `key` (its application name, client and backend), as far as the server says."""
    import sqlalchemy

    query = sqlalchemy.text(
        "SELECT a.application_name, a.client_addr, a.pid, a.backend_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.classid::bigint = :high AND l.objid::bigint = :low AND l.objsubid = 1")
    try:
        with engine.connect() as connection:
            row = connection.execute(query, {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF}).first()
    except sqlalchemy.exc.SQLAlchemyError:
        row = None
    if row is None:
        return "another connection (gone by now, or not visible to this user)"
    name, client, pid, since = row
    connected = f", connected {since:%Y-%m-%d %H:%M:%S}" if since is not None else ""
    return (f"{name or 'a connection without an application name'} (server backend {pid}, client "
            f"{client or 'local socket'}{connected})")


@contextmanager
def _mysql_lock(engine: Any, url: str, study_name: str, timeout: float) -> Iterator[None]:
    import math

    import sqlalchemy

    from peftplan.storage_url import redact_safe

    name = f"peftplan-{lock_key(study_name) & 0xFFFFFFFFFFFFFFFF:x}"
    with engine.connect() as connection:  # GET_LOCK belongs to the session, not a transaction
        got = connection.execute(sqlalchemy.text("SELECT GET_LOCK(:name, :seconds)"),
                                 {"name": name, "seconds": max(1, math.ceil(timeout))}).scalar()
        if got is None:
            raise PeftplanError(f"{_what(study_name)}: GET_LOCK({name!r}) failed on {redact_safe(url)} (it "
                                "answered NULL: an error, e.g. the server killed the wait)")
        if got != 1:
            holder = connection.execute(sqlalchemy.text("SELECT IS_USED_LOCK(:name)"), {"name": name}).scalar()
            raise StudyLockTimeout(f"{_what(study_name)}: waited {timeout:g} s for its set-up lock {name!r} on "
                                   f"{redact_safe(url)}, held by MySQL connection {holder}; stop that process, or "
                                   "retry once it has finished")
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:name)"), {"name": name})


@contextmanager
def _file_lock(url: str, study_name: str, timeout: float) -> Iterator[None]:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:" or not Path(database).parent.is_dir():
        yield  # an in-memory study has one process; a missing directory fails in Optuna with its own message
        return
    try:
        import fcntl
    except ImportError:  # not POSIX
        if database not in _UNLOCKED:
            _UNLOCKED.add(database)
            logging.getLogger(__name__).warning(
                f"note: no file locks on {sys.platform}: start one bench at a time on {database}, or two "
                "starting together may both enqueue the study's trials")
        yield
        return
    path = f"{database}.lock"
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file is closed or we die
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StudyLockTimeout(f"{_what(study_name)}: waited {timeout:g} s for the lock on {path}, held "
                                           "by another process on this host (`fuser` names it); stop it, or retry "
                                           "once it has finished") from None
                time.sleep(0.05)
        yield
