"""A lock around setting up a study, so that `bench` commands started at the same moment on a new study enqueue
its trials once.

`optuna.create_study(load_if_exists=True)` may be raced, but "is the queue filled? if not, fill it" may not:
two starters would both find an empty study and both fill it (twice the trials). So creating, checking and
filling run under a lock held by the storage itself, which every starter on every host shares. Creating
Optuna's tables in a new database races too (PostgreSQL: "duplicate key ... pg_type_typname_nsp_index"), so
opening the storage takes the lock named `SCHEMA_LOCK` first.

- PostgreSQL: a transaction-level advisory lock (`pg_advisory_xact_lock`) keyed on a hash of the study name,
  held by a connection of its own until the study is set up; the server releases it if the process dies.
- MySQL: `GET_LOCK` on the same key, released with the connection (written, never run here).
- SQLite: an exclusive `flock` on `<database file>.lock` next to the database file (one host only, like
  SQLite itself).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA_LOCK = "peftplan/optuna-schema"  # never a study name: method labels hold no "-"


def lock_key(study_name: str) -> int:
    """A signed 64-bit key for `study_name` (what PostgreSQL's advisory locks take)."""
    return int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Hold the storage's lock for `study_name` (see the module docstring) while the block runs."""
    if url.startswith("sqlite"):
        with _file_lock(url):
            yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    key = lock_key(study_name)
    try:
        with engine.begin() as connection:  # the lock lives as long as this transaction
            if engine.dialect.name == "postgresql":
                connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            elif engine.dialect.name == "mysql":
                name = f"peftplan-{key & 0xFFFFFFFFFFFFFFFF:x}"
                connection.execute(sqlalchemy.text("SELECT GET_LOCK(:name, -1)"), {"name": name})
            yield
    finally:
        engine.dispose()


@contextmanager
def _file_lock(url: str) -> Iterator[None]:
    import fcntl

    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:" or not Path(database).parent.is_dir():
        yield  # an in-memory study has one process; a missing directory fails in Optuna with its own message
        return
    with open(f"{database}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed (or the process dies)
        yield
