"""Real PostgreSQL clients (asyncpg, psycopg 3, psql, pgbench) through the proxy against a real server."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Optional

import asyncpg
import psycopg
import pytest

from rdsproxy import Proxy
from rdsproxy.testing import PostgresServer, proxy_config_for, running_proxy, start_postgres

# Every "wait for something" below is bounded by this deadline; nothing asserts how long anything took.
DEADLINE = 30.0
# Budget of the module's server: (max_connections - superuser_reserved_connections - 1) at 100 percent.
SERVER_MAX_CONNECTIONS = 40
FULL_BUDGET = SERVER_MAX_CONNECTIONS - 3 - 1


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with start_postgres(max_connections=SERVER_MAX_CONNECTIONS) as pg_server:
        yield pg_server


@pytest.fixture
async def proxy(server: PostgresServer) -> AsyncIterator[Proxy]:
    async with running_proxy(proxy_config_for(server)) as running:
        yield running


def percent_for_budget(backends: int) -> int:
    """The smallest max_connections_percent that gives the module's server a pool of `backends`."""
    percent = -(-backends * 100 // FULL_BUDGET)
    assert (FULL_BUDGET * percent) // 100 == backends
    return percent


@pytest.fixture
async def single_backend_proxy(server: PostgresServer) -> AsyncIterator[Proxy]:
    """A proxy allowed one backend connection: every client shares it."""
    percent = percent_for_budget(1)
    config = proxy_config_for(server, max_connections_percent=percent, max_idle_connections_percent=percent)
    async with running_proxy(config) as running:
        assert running.metrics()["MaxDatabaseConnectionsAllowed"] == 1
        yield running


def proxy_dsn(proxy: Proxy, server: PostgresServer, **params: str) -> str:
    host, port = proxy.address("default")
    query = "".join(f"&{key}={value}" for key, value in params.items())
    return (
        f"postgresql://{server.app_user}:{server.app_password}@{host}:{port}/{server.app_database}"
        f"?sslmode=disable{query}"
    )


async def asyncpg_connect(proxy: Proxy, server: PostgresServer, **kwargs: Any) -> asyncpg.Connection:
    host, port = proxy.address("default")
    return await asyncpg.connect(
        host=host,
        port=port,
        user=server.app_user,
        password=server.app_password,
        database=server.app_database,
        statement_cache_size=0,
        ssl=False,
        **kwargs,
    )


async def psycopg_connect(proxy: Proxy, server: PostgresServer, **kwargs: Any) -> psycopg.AsyncConnection:
    host, port = proxy.address("default")
    return await psycopg.AsyncConnection.connect(
        host=host,
        port=port,
        user=server.app_user,
        password=server.app_password,
        dbname=server.app_database,
        sslmode="disable",
        **kwargs,
    )


def client_env(proxy: Proxy, server: PostgresServer, **extra: str) -> dict[str, str]:
    """Environment for libpq tools pointed at the proxy (none of the caller's PG* variables leak in)."""
    host, port = proxy.address("default")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(
        PGHOST=host,
        PGPORT=str(port),
        PGUSER=server.app_user,
        PGPASSWORD=server.app_password,
        PGDATABASE=server.app_database,
        PGCONNECT_TIMEOUT="10",
    )
    env.update(extra)
    return env


async def run_tool(
    argv: Sequence[str], env: Mapping[str, str], *, stdin: Optional[bytes] = None, timeout: float = 120.0
) -> tuple[int, str, str]:
    """Run a client program without blocking the event loop the proxy lives on."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(stdin), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def psql(proxy: Proxy, server: PostgresServer, *args: str, **kwargs: Any) -> tuple[int, str, str]:
    return await run_tool(["psql", "-X", "-A", "-t", *args], client_env(proxy, server), **kwargs)


async def wait_for(condition: Any, what: str) -> None:
    """Poll `condition()` until true; fail after DEADLINE seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_released(proxy: Proxy) -> None:
    await wait_for(
        lambda: proxy.metrics()["DatabaseConnectionsCurrentlyBorrowed"] == 0, "every backend to go back to the pool"
    )


def fresh_table(server: PostgresServer, name: str, columns: str) -> None:
    server.sql(
        f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns}); ALTER TABLE {name} OWNER TO app", database="app"
    )


# ---------------------------------------------------------------------------------------------------------
# asyncpg


async def test_asyncpg_simple_queries(proxy: Proxy, server: PostgresServer) -> None:
    conn = await asyncpg_connect(proxy, server)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        row = await conn.fetchrow("SELECT $1::int + 1 AS n, $2::text || '!' AS t, NULL::int AS z", 41, "hi")
        assert dict(row) == {"n": 42, "t": "hi!", "z": None}
        assert await conn.fetchval("SELECT current_user") == server.app_user
        assert await conn.fetchval("SELECT current_database()") == server.app_database
        assert await conn.execute("SELECT 1") == "SELECT 1"
    finally:
        await conn.close()
    assert proxy.metrics()["QueryRequests"] >= 5
    assert proxy.pinned_sessions() == []


async def test_asyncpg_fetch_many_rows(proxy: Proxy, server: PostgresServer) -> None:
    conn = await asyncpg_connect(proxy, server)
    try:
        rows = await conn.fetch("SELECT g, repeat('x', g % 200) FROM generate_series(1, 100000) AS g")
        assert len(rows) == 100000
        assert sum(row[0] for row in rows) == 100000 * 100001 // 2
        assert all(len(row[1]) == row[0] % 200 for row in rows)
        # the same connection is still in step after a large result
        assert await conn.fetchval("SELECT 'after'") == "after"
    finally:
        await conn.close()


async def test_asyncpg_transactions_commit_and_rollback(proxy: Proxy, server: PostgresServer) -> None:
    fresh_table(server, "asyncpg_txn", "id int PRIMARY KEY")
    conn = await asyncpg_connect(proxy, server)
    observer = await asyncpg_connect(proxy, server)
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO asyncpg_txn VALUES (1)")
            # uncommitted work is invisible to another client, and the transaction holds its backend
            assert await observer.fetchval("SELECT count(*) FROM asyncpg_txn") == 0
            assert proxy.metrics()["DatabaseConnectionsCurrentlyInTransaction"] == 1
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute("INSERT INTO asyncpg_txn VALUES (2)")
                raise RuntimeError("abandon")
        assert await observer.fetchval("SELECT array_agg(id) FROM asyncpg_txn") == [1]
    finally:
        await conn.close()
        await observer.close()


async def test_asyncpg_error_in_transaction_then_rollback(proxy: Proxy, server: PostgresServer) -> None:
    conn = await asyncpg_connect(proxy, server)
    try:
        await conn.execute("BEGIN")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.fetchval("SELECT 1 / 0")
        # status E: the backend stays with this client until the transaction ends
        assert conn.is_in_transaction()
        metrics = proxy.metrics()
        assert metrics["DatabaseConnectionsCurrentlyBorrowed"] == 1
        assert metrics["DatabaseConnectionsCurrentlyInTransaction"] == 1
        with pytest.raises(asyncpg.InFailedSQLTransactionError):
            await conn.fetchval("SELECT 1")
        await conn.execute("ROLLBACK")
        assert not conn.is_in_transaction()
        await wait_released(proxy)
        assert await conn.fetchval("SELECT 'usable'") == "usable"
        # an error outside a transaction leaves nothing behind either
        with pytest.raises(asyncpg.UndefinedTableError):
            await conn.fetch("SELECT * FROM no_such_table")
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await conn.close()
    await wait_released(proxy)
    assert proxy.pinned_sessions() == []


async def test_asyncpg_executemany(proxy: Proxy, server: PostgresServer) -> None:
    fresh_table(server, "asyncpg_many", "id int PRIMARY KEY, label text")
    conn = await asyncpg_connect(proxy, server)
    try:
        await conn.executemany("INSERT INTO asyncpg_many VALUES ($1, $2)", [(i, f"row {i}") for i in range(1, 501)])
        assert await conn.fetchval("SELECT count(*) FROM asyncpg_many") == 500
        assert await conn.fetchval("SELECT label FROM asyncpg_many WHERE id = 321") == "row 321"
        # a failing row aborts the whole batch, and the connection carries on
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.executemany("INSERT INTO asyncpg_many VALUES ($1, $2)", [(1000, "new"), (1, "dup")])
        assert await conn.fetchval("SELECT count(*) FROM asyncpg_many") == 500
    finally:
        await conn.close()
    await wait_released(proxy)


async def test_asyncpg_copy_records_and_copy_from_query(proxy: Proxy, server: PostgresServer) -> None:
    fresh_table(server, "asyncpg_copy", "id int, label text")
    conn = await asyncpg_connect(proxy, server)
    try:
        records = [(i, f"label {i}") for i in range(20000)]
        result = await conn.copy_records_to_table("asyncpg_copy", records=records)
        assert result == "COPY 20000"
        assert await conn.fetchval("SELECT count(DISTINCT id) FROM asyncpg_copy") == 20000

        chunks: list[bytes] = []

        async def collect(chunk: bytes) -> None:
            chunks.append(chunk)

        result = await conn.copy_from_query(
            "SELECT id, label FROM asyncpg_copy WHERE id < $1 ORDER BY id", 1000, output=collect
        )
        assert result == "COPY 1000"
        lines = b"".join(chunks).decode().splitlines()
        assert lines[0] == "0\tlabel 0" and lines[-1] == "999\tlabel 999" and len(lines) == 1000
        assert await conn.fetchval("SELECT 'after copy'") == "after copy"
    finally:
        await conn.close()
    await wait_released(proxy)


async def test_asyncpg_notice_delivered(proxy: Proxy, server: PostgresServer) -> None:
    conn = await asyncpg_connect(proxy, server)
    notices: list[str] = []
    conn.add_log_listener(lambda _conn, message: notices.append(message.message))
    try:
        await conn.execute("DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; END $$")
        await wait_for(lambda: notices, "the NOTICE")
        assert notices == ["hello from plpgsql"]
    finally:
        await conn.close()


async def test_asyncpg_listen_notify(proxy: Proxy, server: PostgresServer) -> None:
    listener = await asyncpg_connect(proxy, server)
    notifier = await asyncpg_connect(proxy, server)
    received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    try:
        await listener.add_listener(
            "rdsproxy_events", lambda _c, _pid, channel, payload: received.put_nowait((channel, payload))
        )
        assert [s["reasons"] for s in proxy.pinned_sessions()] == [["listen"]]
        assert proxy.metrics()["SessionPinningEvents.listen"] == 1
        await notifier.execute("NOTIFY rdsproxy_events, 'first'")
        await notifier.execute("SELECT pg_notify('rdsproxy_events', 'second')")
        got = [await asyncio.wait_for(received.get(), DEADLINE) for _ in range(2)]
        assert got == [("rdsproxy_events", "first"), ("rdsproxy_events", "second")]
        # the notifier was never pinned: it released its backend after each statement
        await wait_for(lambda: proxy.metrics()["DatabaseConnectionsCurrentlyBorrowed"] == 1, "notifier release")
    finally:
        await listener.close()
        await notifier.close()


async def test_asyncpg_cursor_in_transaction(proxy: Proxy, server: PostgresServer) -> None:
    """asyncpg cursors use a portal fetched in chunks (Execute with a row limit, PortalSuspended)."""
    conn = await asyncpg_connect(proxy, server)
    try:
        async with conn.transaction():
            total = 0
            async for row in conn.cursor("SELECT g FROM generate_series(1, 1000) AS g", prefetch=50):
                total += row[0]
            assert total == 500500
            cursor = await conn.cursor("SELECT g FROM generate_series(1, 100) AS g")
            assert [row[0] for row in await cursor.fetch(30)] == list(range(1, 31))
            assert (await cursor.fetchrow())[0] == 31
        assert await conn.fetchval("SELECT 'after cursor'") == "after cursor"
    finally:
        await conn.close()
    await wait_released(proxy)


async def test_asyncpg_default_statement_cache(proxy: Proxy, server: PostgresServer) -> None:
    """asyncpg's default named-statement cache works through the proxy (each named Parse pins the session)."""
    host, port = proxy.address("default")
    conn = await asyncpg.connect(
        host=host, port=port, user=server.app_user, password=server.app_password, database=server.app_database
    )
    try:
        for i in range(20):
            assert await conn.fetchval("SELECT $1::int * 3", i) == i * 3
        statement = await conn.prepare("SELECT $1::text || $2::text")
        assert await statement.fetchval("a", "b") == "ab"
        assert [s["reasons"] for s in proxy.pinned_sessions()] == [["named_prepared_statement"]]
    finally:
        await conn.close()
    await wait_released(proxy)


# ---------------------------------------------------------------------------------------------------------
# psycopg 3


async def test_psycopg_autocommit_and_transactions(proxy: Proxy, server: PostgresServer) -> None:
    fresh_table(server, "psycopg_txn", "id int PRIMARY KEY")
    async with await psycopg_connect(proxy, server, autocommit=True) as auto:
        await auto.execute("INSERT INTO psycopg_txn VALUES (1)")
        assert auto.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        await wait_released(proxy)
    async with await psycopg_connect(proxy, server) as conn:
        await conn.execute("INSERT INTO psycopg_txn VALUES (2)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        await conn.rollback()
        async with conn.transaction():
            await conn.execute("INSERT INTO psycopg_txn VALUES (3)")
        await conn.commit()
        # an error inside the transaction: status E, then ROLLBACK and the connection is reusable
        with pytest.raises(psycopg.errors.UniqueViolation):
            await conn.execute("INSERT INTO psycopg_txn VALUES (3)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            await conn.execute("SELECT 1")
        await conn.rollback()
        cursor = await conn.execute("SELECT array_agg(id ORDER BY id) FROM psycopg_txn")
        assert (await cursor.fetchone()) == ([1, 3],)
        await conn.rollback()
    await wait_released(proxy)


async def test_psycopg_unnamed_statements_do_not_pin(proxy: Proxy, server: PostgresServer) -> None:
    async with await psycopg_connect(proxy, server, autocommit=True, prepare_threshold=None) as conn:
        for i in range(12):
            cursor = await conn.execute("SELECT %s::int * 2, %s::text", (i, f"v{i}"))
            assert (await cursor.fetchone()) == (i * 2, f"v{i}")
        assert proxy.pinned_sessions() == []
        assert proxy.metrics()["SessionPinningEvents"] == 0
        await wait_released(proxy)


async def test_psycopg_prepare_threshold_pins_named_statement(proxy: Proxy, server: PostgresServer) -> None:
    async with await psycopg_connect(proxy, server, autocommit=True) as conn:
        assert conn.prepare_threshold == 5
        for i in range(10):
            cursor = await conn.execute("SELECT %s::int + 100", (i,))
            assert (await cursor.fetchone()) == (i + 100,)
        assert [s["reasons"] for s in proxy.pinned_sessions()] == [["named_prepared_statement"]]
        metrics = proxy.metrics()
        assert metrics["SessionPinningEvents.named_prepared_statement"] == 1
        assert metrics["DatabaseConnectionsCurrentlySessionPinned"] == 1
        # the pinned session keeps working, the prepared statement included
        cursor = await conn.execute("SELECT %s::int + 100", (-100,))
        assert (await cursor.fetchone()) == (0,)
        cursor = await conn.execute("SELECT pg_backend_pid(), count(*) FROM pg_prepared_statements")
        pinned_pid, prepared = await cursor.fetchone()
        assert prepared >= 1
    # a pinned backend is not handed back dirty: the next client on it sees no prepared statements
    await wait_released(proxy)
    async with await psycopg_connect(proxy, server, autocommit=True, prepare_threshold=None) as other:
        cursor = await other.execute("SELECT pg_backend_pid(), count(*) FROM pg_prepared_statements")
        assert (await cursor.fetchone()) == (pinned_pid, 0)


async def test_psycopg_pipeline_mode(proxy: Proxy, server: PostgresServer) -> None:
    fresh_table(server, "psycopg_pipe", "id int PRIMARY KEY, label text")
    async with await psycopg_connect(proxy, server, autocommit=True, prepare_threshold=None) as conn:
        async with conn.pipeline():
            cursors = []
            for i in range(20):
                cursors.append(
                    await conn.execute("INSERT INTO psycopg_pipe VALUES (%s, %s) RETURNING id", (i, f"p{i}"))
                )
            async with conn.cursor() as cur:
                await cur.executemany("INSERT INTO psycopg_pipe VALUES (%s, %s)", [(i, f"m{i}") for i in range(20, 40)])
            total = await conn.execute("SELECT count(*), sum(id) FROM psycopg_pipe")
        assert [(await c.fetchone()) for c in cursors] == [(i,) for i in range(20)]
        assert (await total.fetchone()) == (40, sum(range(40)))
    await wait_released(proxy)
    assert proxy.pinned_sessions() == []


async def test_psycopg_pipeline_fetch_sends_flush(proxy: Proxy, server: PostgresServer, tmp_path: Any) -> None:
    """Fetching inside a pipeline makes libpq send Flush (no Sync) and wait for the answer."""
    trace_path = tmp_path / "libpq.trace"
    async with await psycopg_connect(proxy, server, autocommit=True, prepare_threshold=None) as conn:
        with open(trace_path, "w") as trace:
            conn.pgconn.trace(trace.fileno())
            async with conn.pipeline():
                cursor = await conn.execute("SELECT %s::int", (7,))
                assert (await cursor.fetchone()) == (7,)
                # answered but not yet synced: the client must keep its backend (the unnamed portal lives there)
                assert proxy.metrics()["DatabaseConnectionsCurrentlyBorrowed"] == 1
                cursor = await conn.execute("SELECT %s::text", ("eight",))
                assert (await cursor.fetchone()) == ("eight",)
            conn.pgconn.untrace()
        cursor = await conn.execute("SELECT 'after'")
        assert (await cursor.fetchone()) == ("after",)
    # libpq's trace lines: timestamp, direction, length, message name, ...
    sent = [
        fields[3] for fields in (line.split("\t") for line in trace_path.read_text().splitlines()) if fields[1] == "F"
    ]
    assert "Flush" in sent and sent.index("Flush") < sent.index("Sync"), sent
    await wait_released(proxy)


async def test_psycopg_server_side_cursor(proxy: Proxy, server: PostgresServer) -> None:
    """psycopg's named cursors DECLARE a cursor (a pin, reason `cursor`) and FETCH from it in batches."""
    async with await psycopg_connect(proxy, server, prepare_threshold=None) as conn:
        async with conn.cursor(name="big_result") as cur:
            cur.itersize = 100
            await cur.execute("SELECT g FROM generate_series(1, 2500) AS g")
            assert sum([row[0] async for row in cur]) == 2500 * 2501 // 2
        await conn.commit()
        assert [s["reasons"] for s in proxy.pinned_sessions()] == [["cursor"]]
        cursor = await conn.execute("SELECT 'after cursor'")
        assert (await cursor.fetchone()) == ("after cursor",)


async def test_psycopg_copy_from_stdin_and_to_stdout(proxy: Proxy, server: PostgresServer) -> None:
    fresh_table(server, "psycopg_copy", "id int, label text")
    async with await psycopg_connect(proxy, server, autocommit=True) as conn:
        async with conn.cursor() as cur:
            async with cur.copy("COPY psycopg_copy (id, label) FROM STDIN") as copy:
                for i in range(5000):
                    await copy.write_row((i, f"copied {i}"))
            assert cur.rowcount == 5000
            data = bytearray()
            async with cur.copy("COPY (SELECT id, label FROM psycopg_copy ORDER BY id) TO STDOUT") as copy:
                async for chunk in copy:
                    data += chunk
            lines = bytes(data).decode().splitlines()
            assert len(lines) == 5000 and lines[4999] == "4999\tcopied 4999"
            # a failed COPY (bad data) errors cleanly and the connection stays usable
            with pytest.raises(psycopg.errors.InvalidTextRepresentation):
                async with cur.copy("COPY psycopg_copy (id) FROM STDIN") as copy:
                    await copy.write(b"not a number\n")
            await cur.execute("SELECT count(*) FROM psycopg_copy")
            assert (await cur.fetchone()) == (5000,)
    await wait_released(proxy)


async def test_psycopg_multiple_statements_in_one_execute(proxy: Proxy, server: PostgresServer) -> None:
    async with await psycopg_connect(proxy, server, autocommit=True) as conn:
        async with conn.cursor() as cur:
            await cur.execute("SELECT 1 AS a; SELECT 'two' AS b, 3 AS c; SELECT 4")
            results = [await cur.fetchall()]
            while cur.nextset():
                results.append(await cur.fetchall())
            assert results == [[(1,)], [("two", 3)], [(4,)]]
            # an implicit transaction: a failure in the string rolls back what ran before it
            fresh_table(server, "psycopg_multi", "id int")
            with pytest.raises(psycopg.errors.DivisionByZero):
                await cur.execute(
                    "INSERT INTO psycopg_multi VALUES (1); SELECT 1/0; INSERT INTO psycopg_multi VALUES (2)"
                )
            await cur.execute("SELECT count(*) FROM psycopg_multi")
            assert (await cur.fetchone()) == (0,)
    await wait_released(proxy)


# ---------------------------------------------------------------------------------------------------------
# psql


async def test_psql_several_commands(proxy: Proxy, server: PostgresServer) -> None:
    code, out, err = await psql(
        proxy,
        server,
        "-c",
        "SELECT 'first'",
        "-c",
        "CREATE TEMP TABLE scratch AS SELECT 41 AS n",
        "-c",
        "SELECT n + 1 FROM scratch",
        "-c",
        "SELECT current_setting('application_name')",
    )
    assert code == 0, err
    assert out.split() == ["first", "SELECT", "1", "42", "psql"]
    assert proxy.metrics()["SessionPinningEvents.temp_object"] == 1


async def test_psql_copy_in_and_out(proxy: Proxy, server: PostgresServer, tmp_path: Any) -> None:
    fresh_table(server, "psql_copy", "id int, label text")
    source = tmp_path / "in.csv"
    source.write_text("".join(f"{i},label {i}\n" for i in range(3000)))
    target = tmp_path / "out.csv"
    code, out, err = await psql(
        proxy,
        server,
        "-c",
        f"\\copy psql_copy FROM '{source}' WITH (FORMAT csv)",
        "-c",
        f"\\copy (SELECT * FROM psql_copy WHERE id % 2 = 0 ORDER BY id) TO '{target}' WITH (FORMAT csv)",
        "-c",
        "SELECT count(*) FROM psql_copy",
    )
    assert code == 0, err
    assert out.split() == ["COPY", "3000", "COPY", "1500", "3000"]
    lines = target.read_text().splitlines()
    assert len(lines) == 1500 and lines[-1] == "2998,label 2998"
    # COPY FROM STDIN fed through psql's own stdin
    code, out, err = await psql(
        proxy, server, "-c", "COPY psql_copy FROM STDIN WITH (FORMAT csv)", stdin=b"9001,piped\n9002,piped\n"
    )
    assert code == 0, err
    assert server.sql("SELECT count(*) FROM psql_copy WHERE label = 'piped'", database="app") == "2"
    await wait_released(proxy)


async def test_psql_on_error_stop(proxy: Proxy, server: PostgresServer) -> None:
    fresh_table(server, "psql_errors", "step int")
    script = b"INSERT INTO psql_errors VALUES (1);\nSELECT * FROM no_such_table;\nINSERT INTO psql_errors VALUES (3);\n"
    code, _out, err = await psql(proxy, server, "-v", "ON_ERROR_STOP=1", stdin=script)
    assert code == 3
    assert 'relation "no_such_table" does not exist' in err
    assert server.sql("SELECT array_agg(step ORDER BY step) FROM psql_errors", database="app") == "{1}"
    # without ON_ERROR_STOP psql reports the error and carries on over the same connection
    code, _out, err = await psql(proxy, server, stdin=script)
    assert code == 0
    assert 'relation "no_such_table" does not exist' in err
    assert server.sql("SELECT array_agg(step ORDER BY step) FROM psql_errors", database="app") == "{1,1,3}"
    await wait_released(proxy)


async def test_psql_multi_statement_string(proxy: Proxy, server: PostgresServer) -> None:
    fresh_table(server, "psql_multi", "id int")
    code, out, err = await psql(
        proxy,
        server,
        "-c",
        "INSERT INTO psql_multi VALUES (1); INSERT INTO psql_multi VALUES (2); SELECT count(*) FROM psql_multi",
    )
    assert code == 0, err
    # psql 15 shows every statement's result of a multi-statement string
    assert out.splitlines() == ["INSERT 0 1", "INSERT 0 1", "2"]
    # one Query message is one implicit transaction: the failure undoes the first INSERT
    code, _out, err = await psql(
        proxy, server, "-c", "INSERT INTO psql_multi VALUES (3); SELECT 1/0; INSERT INTO psql_multi VALUES (4)"
    )
    assert code == 1
    assert "division by zero" in err
    # explicit BEGIN/COMMIT inside one string
    code, out, err = await psql(
        proxy,
        server,
        "-c",
        "BEGIN; INSERT INTO psql_multi VALUES (5); COMMIT; SELECT array_agg(id ORDER BY id) FROM psql_multi",
    )
    assert code == 0, err
    assert out.splitlines()[-1] == "{1,2,5}"
    await wait_released(proxy)


# ---------------------------------------------------------------------------------------------------------
# pgbench

PGBENCH_CLIENTS = 8
PGBENCH_BACKENDS = 4  # fewer backends than clients: the run only passes if the proxy multiplexes


@pytest.fixture
async def pgbench_proxy(server: PostgresServer) -> AsyncIterator[Proxy]:
    percent = percent_for_budget(PGBENCH_BACKENDS)
    config = proxy_config_for(server, max_connections_percent=percent, max_idle_connections_percent=percent)
    async with running_proxy(config) as running:
        yield running


@pytest.fixture(scope="module")
def pgbench_tables(server: PostgresServer) -> None:
    """pgbench's tables at scale 1, made directly on the server (the init through the proxy is its own test)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGPASSWORD"] = server.app_password
    import subprocess

    subprocess.run(
        [
            "pgbench",
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            server.host,
            "-p",
            str(server.port),
            "-U",
            server.app_user,
            server.app_database,
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )


async def run_pgbench(proxy: Proxy, server: PostgresServer, *args: str) -> tuple[str, int]:
    """Run pgbench through the proxy while sampling DatabaseConnections; returns (output, most seen)."""
    most = 0
    running = True

    async def sample() -> None:
        nonlocal most
        while running:
            most = max(most, int(proxy.metrics()["DatabaseConnections"]))
            await asyncio.sleep(0.01)

    sampler = asyncio.ensure_future(sample())
    try:
        code, out, err = await run_tool(["pgbench", *args], client_env(proxy, server), timeout=240)
    finally:
        running = False
        await sampler
    assert code == 0, f"pgbench {' '.join(args)} failed:\n{out}\n{err}"
    return out + err, most


def assert_pgbench_clean(output: str, expected_transactions: int) -> None:
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", output)
    assert processed, output
    assert int(processed.group(1)) == int(processed.group(2)) == expected_transactions, output
    failed = re.search(r"number of failed transactions: (\d+)", output)
    assert failed, output
    assert failed.group(1) == "0", output


async def test_pgbench_initialize_through_proxy(pgbench_proxy: Proxy, server: PostgresServer) -> None:
    output, most = await run_pgbench(pgbench_proxy, server, "-i", "-s", "1", "-q")
    assert "done in" in output
    assert server.sql("SELECT count(*) FROM pgbench_accounts", database="app") == "100000"
    assert server.sql("SELECT count(*) FROM pgbench_branches", database="app") == "1"
    assert 1 <= most <= pgbench_proxy.metrics()["MaxDatabaseConnectionsAllowed"]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
async def test_pgbench_workloads(
    pgbench_proxy: Proxy, server: PostgresServer, pgbench_tables: None, protocol: str
) -> None:
    limit = pgbench_proxy.metrics()["MaxDatabaseConnectionsAllowed"]
    assert limit == PGBENCH_BACKENDS
    common = ["-M", protocol, "-c", str(PGBENCH_CLIENTS), "-j", "2", "-n"]

    output, most_select = await run_pgbench(pgbench_proxy, server, "-S", "-t", "200", *common)
    assert_pgbench_clean(output, PGBENCH_CLIENTS * 200)
    output, most_tpcb = await run_pgbench(pgbench_proxy, server, "-t", "100", *common)
    assert_pgbench_clean(output, PGBENCH_CLIENTS * 100)

    assert 1 <= max(most_select, most_tpcb) <= limit
    metrics = pgbench_proxy.metrics()
    assert metrics["DatabaseConnections"] <= limit
    assert metrics["ClientConnectionsSetupSucceeded"] >= 2 * PGBENCH_CLIENTS
    assert metrics["SessionPinningEvents"] == 0
    # the server itself never saw more of the app user's connections than the proxy's budget
    assert int(server.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")) <= limit + 1  # + monitor


# ---------------------------------------------------------------------------------------------------------
# ParameterStatus and startup parameters


async def test_clients_receive_real_parameter_status(proxy: Proxy, server: PostgresServer) -> None:
    server_version = server.sql("SHOW server_version")
    server_encoding = server.sql("SHOW server_encoding")
    conn = await asyncpg_connect(proxy, server)
    try:
        settings = conn.get_settings()
        assert settings.server_version == server_version
        assert settings.server_encoding == server_encoding
        assert settings.session_authorization == server.app_user
        assert settings.integer_datetimes == "on"
        assert settings.standard_conforming_strings == "on"
        assert conn.get_server_version().major == int(server_version.split(".")[0])
        assert conn.get_server_pid() != 0
    finally:
        await conn.close()
    async with await psycopg_connect(proxy, server) as pconn:
        assert pconn.info.parameter_status("server_version") == server_version
        assert pconn.info.parameter_status("client_encoding") == "UTF8"
        assert pconn.info.parameter_status("DateStyle") == server.sql("SHOW DateStyle")
        assert pconn.info.parameter_status("TimeZone") == server.sql("SHOW TimeZone")
        assert pconn.info.server_version == int(server.sql("SHOW server_version_num"))
    # psql sets SERVER_VERSION_NUM from the server_version it was sent at startup
    code, out, err = await psql(proxy, server, stdin=b"\\echo :SERVER_VERSION_NUM\n")
    assert code == 0, err
    assert out.strip() == server.sql("SHOW server_version_num")


REPORTED_PARAMETERS = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "integer_datetimes",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
)


async def test_welcome_reports_settings_as_the_server_spells_them(proxy: Proxy, server: PostgresServer) -> None:
    """The ParameterStatus values a client gets through the proxy equal those of a direct connection.

    The startup values are deliberately not in PostgreSQL's own spelling: the server reports 'UTF8' for
    asyncpg's client_encoding 'utf-8', 'German, DMY' for DateStyle 'German', 'postgres' for IntervalStyle
    'POSTGRES'.
    """
    startup = {"DateStyle": "German", "IntervalStyle": "POSTGRES", "TimeZone": "europe/paris", "application_name": "w"}
    direct = await asyncpg.connect(server.dsn(), server_settings=startup, statement_cache_size=0, ssl=False)
    try:
        expected = {name: getattr(direct.get_settings(), name) for name in REPORTED_PARAMETERS}
    finally:
        await direct.close()
    assert expected["client_encoding"] == "UTF8" and expected["DateStyle"] == "German, DMY"
    conn = await asyncpg_connect(proxy, server, server_settings=startup)
    try:
        got = {name: getattr(conn.get_settings(), name) for name in REPORTED_PARAMETERS}
    finally:
        await conn.close()
    assert got == expected


async def test_invalid_startup_setting_is_refused_at_connect(proxy: Proxy, server: PostgresServer) -> None:
    """PostgreSQL refuses a connection whose startup packet carries an invalid setting (FATAL 22023)."""
    with pytest.raises(asyncpg.InvalidParameterValueError):
        await asyncpg.connect(server.dsn(), server_settings={"TimeZone": "Nowhere/Land"}, ssl=False)
    with pytest.raises(asyncpg.InvalidParameterValueError):
        conn = await asyncpg_connect(proxy, server, server_settings={"TimeZone": "Nowhere/Land"})
        await conn.close()
    # whatever happened, the proxy's backends are unharmed
    await wait_released(proxy)
    conn = await asyncpg_connect(proxy, server)
    try:
        assert await conn.fetchval("SHOW TimeZone") == server.sql("SHOW TimeZone")
    finally:
        await conn.close()


async def test_partial_datestyle_starts_from_the_server_default(
    single_backend_proxy: Proxy, server: PostgresServer
) -> None:
    """DateStyle 'SQL' alone keeps the date order in force; on a shared backend that must be the server's."""
    direct = await asyncpg.connect(server.dsn(), server_settings={"DateStyle": "SQL"}, ssl=False)
    try:
        expected = await direct.fetchval("SHOW DateStyle")
    finally:
        await direct.close()
    assert expected == "SQL, MDY"
    day_first = await asyncpg_connect(single_backend_proxy, server, server_settings={"DateStyle": "ISO, DMY"})
    sql_style = await asyncpg_connect(single_backend_proxy, server, server_settings={"DateStyle": "SQL"})
    try:
        for _round in range(2):
            assert await day_first.fetchval("SHOW DateStyle") == "ISO, DMY"
            assert await sql_style.fetchval("SHOW DateStyle") == expected
    finally:
        await day_first.close()
        await sql_style.close()


STARTUP_A = {
    "application_name": "client-a",
    "DateStyle": "SQL, DMY",
    "TimeZone": "Asia/Tokyo",
    "search_path": "alpha, public",
    "statement_timeout": "1234",
}
STARTUP_B = {
    "application_name": "client-b",
    "DateStyle": "German",
    "TimeZone": "America/Sao_Paulo",
    "search_path": "beta",
    "statement_timeout": "5678",
}
SHOW_STARTUP = (
    "SELECT current_setting('application_name'), current_setting('DateStyle'), current_setting('TimeZone'),"
    " current_setting('search_path'), current_setting('statement_timeout'), pg_backend_pid()"
)


EXPECTED_A = ("client-a", "SQL, DMY", "Asia/Tokyo", "alpha, public", "1234ms")
EXPECTED_B = ("client-b", "German, DMY", "America/Sao_Paulo", "beta", "5678ms")


async def test_startup_parameters_survive_shared_backends(single_backend_proxy: Proxy, server: PostgresServer) -> None:
    proxy = single_backend_proxy
    server_a = {k: v for k, v in STARTUP_A.items() if k != "statement_timeout"}
    server_a["options"] = "-c statement_timeout=1234"
    client_a = await asyncpg_connect(proxy, server, server_settings=server_a)
    client_b = await asyncpg_connect(proxy, server, server_settings=dict(STARTUP_B))
    client_c = await psycopg_connect(
        proxy,
        server,
        autocommit=True,
        application_name="client-c",
        options="-c statement_timeout=1234 -c search_path=gamma -c DateStyle=ISO,MDY -c TimeZone=UTC",
    )
    plain = await asyncpg_connect(proxy, server)
    defaults = await plain.fetchrow(SHOW_STARTUP)
    try:
        assert client_a.get_settings().application_name == "client-a"
        assert client_a.get_settings().TimeZone == "Asia/Tokyo"
        pids = set()
        for _round in range(3):
            row_a = tuple(await client_a.fetchrow(SHOW_STARTUP))
            row_b = tuple(await client_b.fetchrow(SHOW_STARTUP))
            cursor = await client_c.execute(SHOW_STARTUP)
            row_c = await cursor.fetchone()
            row_plain = tuple(await plain.fetchrow(SHOW_STARTUP))
            assert row_a[:5] == EXPECTED_A
            assert row_b[:5] == EXPECTED_B
            assert row_c[:5] == ("client-c", "ISO, MDY", "UTC", "gamma", "1234ms")
            assert row_plain[:5] == tuple(defaults)[:5]
            # inside an explicit transaction too
            async with client_b.transaction():
                assert tuple(await client_b.fetchrow(SHOW_STARTUP))[:5] == EXPECTED_B
            pids.update((row_a[5], row_b[5], row_c[5], row_plain[5]))
        assert len(pids) == 1, "all clients should have shared the single backend"
        # the server's defaults differ from what the clients asked for, so the check above means something
        assert defaults[0] != "client-a" and defaults[4] == "0" and defaults[3] == '"$user", public'
        assert proxy.pinned_sessions() == []
    finally:
        await client_a.close()
        await client_b.close()
        await client_c.close()
        await plain.close()


async def test_statement_timeout_from_options_is_enforced(single_backend_proxy: Proxy, server: PostgresServer) -> None:
    proxy = single_backend_proxy
    strict = await asyncpg_connect(proxy, server, server_settings={"options": "-c statement_timeout=200"})
    relaxed = await asyncpg_connect(proxy, server)
    try:
        with pytest.raises(asyncpg.QueryCanceledError):
            await strict.execute("SELECT pg_sleep(5)")
        # the other client on the same backend is not bound by that timeout
        await relaxed.execute("SELECT pg_sleep(0.5)")
        assert await relaxed.fetchval("SHOW statement_timeout") == "0"
        assert await strict.fetchval("SHOW statement_timeout") == "200ms"
    finally:
        await strict.close()
        await relaxed.close()
