"""Round-trip latency of small queries: direct vs PgBouncer vs rdsproxy (asyncpg), direct vs rdsproxy (aiomysql).

rdsproxy runs as a subprocess (`python -m rdsproxy --config ...`), like PgBouncer: each proxy has its own process,
event loop and GIL, so the proxy's work is not interleaved with the benchmark client's on one thread (which an
in-process proxy would do, charging the client's own overhead to the proxy and vice versa).

Each round is one `loop.run_until_complete(query)` on a uvloop loop; its small fixed cost is the same for every
route, so the differences between routes are what the proxies add. Same client settings on every route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiomysql
import asyncpg
import pytest

from benchmarks.services import PgBouncer, RdsProxyProcess
from rdsproxy.testing import MariaDBServer, PostgresServer

PG_ROUTES = ("direct", "pgbouncer", "rdsproxy")
MYSQL_ROUTES = ("direct", "rdsproxy")
PG_HUNDRED_ROWS = "SELECT g AS id, 'row ' || g AS label FROM generate_series(1, 100) AS g"
MYSQL_HUNDRED_ROWS = "SELECT seq AS id, CONCAT('row ', seq) AS label FROM seq_1_to_100"


@pytest.fixture(scope="module")
def pg_dsns(pg_server: PostgresServer, pgbouncer: PgBouncer, pg_proxy: RdsProxyProcess) -> dict[str, str]:
    return {"direct": pg_server.dsn(), "pgbouncer": pgbouncer.dsn(), "rdsproxy": pg_proxy.dsn()}


def _connect_all(loop: asyncio.AbstractEventLoop, dsns: dict[str, str], **options: Any) -> dict[str, Any]:
    return {route: loop.run_until_complete(asyncpg.connect(dsn, **options)) for route, dsn in dsns.items()}


@pytest.fixture(scope="module")
def pg_connections(bench_loop: asyncio.AbstractEventLoop, pg_dsns: dict[str, str]) -> Iterator[dict[str, Any]]:
    """One asyncpg connection per route without a statement cache: PgBouncer 1.18 in transaction mode cannot
    keep named prepared statements, so every route sends unnamed Parse/Bind/Execute like pgbench -M extended."""
    connections = _connect_all(bench_loop, pg_dsns, statement_cache_size=0)
    yield connections
    for connection in connections.values():
        bench_loop.run_until_complete(connection.close())


@pytest.fixture(scope="module")
def pg_cached_connections(bench_loop: asyncio.AbstractEventLoop, pg_dsns: dict[str, str]) -> Iterator[dict[str, Any]]:
    """asyncpg as most applications run it (named prepared statements, cached): direct and rdsproxy only."""
    connections = _connect_all(bench_loop, {route: pg_dsns[route] for route in ("direct", "rdsproxy")})
    yield connections
    for connection in connections.values():
        bench_loop.run_until_complete(connection.close())


@pytest.mark.parametrize("route", PG_ROUTES)
@pytest.mark.benchmark(group="pg: SELECT 1, simple protocol (asyncpg execute)")
def test_pg_select_one_simple(benchmark, bench_loop, pg_connections, route):
    connection = pg_connections[route]
    assert benchmark(lambda: bench_loop.run_until_complete(connection.execute("SELECT 1"))) == "SELECT 1"


@pytest.mark.parametrize("route", PG_ROUTES)
@pytest.mark.benchmark(group="pg: SELECT 1, extended protocol (asyncpg fetchval, no statement cache)")
def test_pg_select_one_extended(benchmark, bench_loop, pg_connections, route):
    connection = pg_connections[route]
    assert benchmark(lambda: bench_loop.run_until_complete(connection.fetchval("SELECT 1"))) == 1


@pytest.mark.parametrize("route", PG_ROUTES)
@pytest.mark.benchmark(group="pg: 100 rows, extended protocol (asyncpg fetch, no statement cache)")
def test_pg_hundred_rows(benchmark, bench_loop, pg_connections, route):
    connection = pg_connections[route]
    rows = benchmark(lambda: bench_loop.run_until_complete(connection.fetch(PG_HUNDRED_ROWS)))
    assert len(rows) == 100 and rows[-1]["label"] == "row 100"


@pytest.mark.parametrize("route", ("direct", "rdsproxy"))
@pytest.mark.benchmark(group="pg: SELECT 1, cached prepared statement (asyncpg default; no PgBouncer 1.18)")
def test_pg_select_one_prepared(benchmark, bench_loop, pg_cached_connections, route):
    connection = pg_cached_connections[route]
    assert benchmark(lambda: bench_loop.run_until_complete(connection.fetchval("SELECT 1"))) == 1


# ----------------------------------------------------------------------------------------------------------
# MySQL


@pytest.fixture(scope="module")
def my_connections(
    bench_loop: asyncio.AbstractEventLoop, mariadb_server: MariaDBServer, my_proxy: RdsProxyProcess
) -> Iterator[dict[str, Any]]:
    ports = {"direct": mariadb_server.port, "rdsproxy": my_proxy.port}
    connections = {
        route: bench_loop.run_until_complete(
            aiomysql.connect(
                host=mariadb_server.host,
                port=port,
                user=mariadb_server.app_user,
                password=mariadb_server.app_password,
                db=mariadb_server.app_database,
                autocommit=True,  # the common setting: each statement is its own transaction
            )
        )
        for route, port in ports.items()
    }
    yield connections
    for connection in connections.values():
        connection.close()


async def _mysql_query(connection: Any, sql: str) -> list[tuple[Any, ...]]:
    async with connection.cursor() as cursor:
        await cursor.execute(sql)
        return list(await cursor.fetchall())


@pytest.mark.parametrize("route", MYSQL_ROUTES)
@pytest.mark.benchmark(group="mysql: SELECT 1 (aiomysql)")
def test_mysql_select_one(benchmark, bench_loop, my_connections, route):
    connection = my_connections[route]
    assert benchmark(lambda: bench_loop.run_until_complete(_mysql_query(connection, "SELECT 1"))) == [(1,)]


@pytest.mark.parametrize("route", MYSQL_ROUTES)
@pytest.mark.benchmark(group="mysql: 100 rows (aiomysql)")
def test_mysql_hundred_rows(benchmark, bench_loop, my_connections, route):
    connection = my_connections[route]
    rows = benchmark(lambda: bench_loop.run_until_complete(_mysql_query(connection, MYSQL_HUNDRED_ROWS)))
    assert len(rows) == 100 and rows[-1] == (100, "row 100")
