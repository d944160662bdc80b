"""Shared fixtures: throwaway PostgreSQL and MariaDB servers and the uvloop event loop for async tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import pytest
import uvloop

from rdsproxy.testing import MariaDBServer, PostgresServer, start_mariadb, start_postgres


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    # Hook added in pytest-asyncio 1.4 (replaces overriding event_loop_policy). The proxy runs on uvloop
    # when installed, so the tests do too; a single factory keeps test names unchanged.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """One PostgreSQL for the whole session; tests must not stop, kill or promote it (use fresh_pg)."""
    with start_postgres(max_connections=100) as server:
        yield server


@pytest.fixture
def fresh_pg() -> Iterator[Callable[..., PostgresServer]]:
    """Factory of private servers (start_postgres keyword arguments) for tests that kill or restart them.

    Everything it started, replicas included, is stopped and deleted after the test.
    """
    started: list[PostgresServer] = []

    def start(**kwargs: Any) -> PostgresServer:
        server = start_postgres(**kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        for replica in server.replicas:
            replica.stop()
        server.stop()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    """One MariaDB for the whole session; tests must not stop, kill or promote it (use fresh_mariadb)."""
    with start_mariadb(max_connections=200) as server:
        yield server


@pytest.fixture
def fresh_mariadb() -> Iterator[Callable[..., MariaDBServer]]:
    """Factory of private MariaDB servers (start_mariadb keyword arguments) for tests that kill or restart them.

    Everything it started, replicas included, is stopped and deleted after the test.
    """
    started: list[MariaDBServer] = []

    def start(**kwargs: Any) -> MariaDBServer:
        server = start_mariadb(**kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        for replica in server.replicas:
            replica.stop()
        server.stop()
