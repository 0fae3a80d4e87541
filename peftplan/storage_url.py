"""Optuna storage URLs: validated up front, given a driver that is installed, and checked to be reachable.

Below the harness and the reports: the CLI, the runner and the reports (which read a run's studies) all
name storages the same way.

SQLAlchemy 2.1 maps a bare `postgresql://` URL to the psycopg (v3) driver; peftplan's `postgres` extra
installs psycopg2, so a bare URL gets whichever of the two is importable. A storage that cannot be
reached stops the run before any trial starts, with one line that names the (password-redacted) URL.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from peftplan.errors import BadInputError, PeftplanError

if TYPE_CHECKING:
    import optuna

SCHEMES = ("sqlite", "postgresql", "mysql")


class StorageUnavailableError(PeftplanError):
    """The study's storage cannot be reached (exit 1: the input was fine, the world was not)."""


def redact(url: str) -> str:
    """The URL without its password, for messages and manifests."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def normalize_storage_url(url: str, *, option: str = "--storage") -> str:
    """Check an Optuna RDB URL and pick an installed driver for PostgreSQL.

    Raises:
        BadInputError: not a URL of a supported database, or a malformed one.
    """
    if not url or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise BadInputError(f"{option}: {url!r} is not a storage URL (e.g. postgresql://user@host/db)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadInputError(f"{option}: {redact_safe(url)!r} is malformed: {exc}") from None
    scheme, _, driver = parts.scheme.partition("+")
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme not in SCHEMES or "://" not in url:
        raise BadInputError(
            f"{option}: unsupported storage {redact_safe(url)!r}; use sqlite:///PATH, postgresql://USER@HOST/DB "
            "or mysql://USER@HOST/DB"
        )
    if scheme != "sqlite" and not parts.hostname and "host=" not in parts.query:
        raise BadInputError(f"{option}: {redact(url)!r} names no host")
    if port is not None and not 0 < port < 65536:
        raise BadInputError(f"{option}: port {port} is out of range")
    if scheme == "postgresql" and not driver:
        driver = _postgres_driver()
    full_scheme = f"{scheme}+{driver}" if driver else scheme
    return full_scheme + url[len(parts.scheme):]  # not urlunsplit: it drops sqlite:///'s empty host


def redact_safe(url: str) -> str:
    try:
        return redact(url)
    except ValueError:
        return "<unparseable URL>"


def _postgres_driver() -> str:
    for module, driver in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
        if importlib.util.find_spec(module) is not None:
            return driver
    raise BadInputError("a PostgreSQL storage needs a driver: pip install 'peftplan[postgres]' (psycopg2-binary)")


def check_reachable(url: str, *, timeout_s: int = 10) -> None:
    """Open one connection to the storage and close it.

    Raises:
        StorageUnavailableError: the server refused, timed out, or rejected the credentials.
    """
    if url.startswith("sqlite"):
        return
    import sqlalchemy

    connect_args = {"connect_timeout": timeout_s} if url.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise StorageUnavailableError(
            f"storage {redact(url)} is unreachable: {reason[0] if reason else type(exc).__name__}"
        ) from None


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine settings for a storage URL: Optuna's storage and the study lock's engine use the same."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}  # seconds SQLite waits for another writer
    return {"pool_pre_ping": True}


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """A plain RDB storage on a checked, reachable URL (for reading studies; runners add heartbeats).

    Raises:
        StorageUnavailableError: see `check_reachable`.
    """
    from optuna.storages import RDBStorage

    quiet_optuna()
    check_reachable(url)
    return RDBStorage(url, engine_kwargs=engine_kwargs(url))


def quiet_optuna() -> None:
    """Optuna's info logs and experimental warnings say nothing a peftplan user needs."""
    import warnings

    import optuna
    from optuna.exceptions import ExperimentalWarning

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    # We run trials with ask/tell and beat the heartbeat ourselves (`Heartbeat` in harness/search.py).
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
