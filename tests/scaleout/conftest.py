"""Scale-out fixtures: one real PostgreSQL server per test session, one fresh database per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.scaleout.postgres import PostgresServer, create_database, start_postgres

_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server, reason = start_postgres()
    if server is None:
        pytest.skip(f"no PostgreSQL server: {reason}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return create_database(postgres_server.url, f"peftplan_test_{next(_counter)}")
