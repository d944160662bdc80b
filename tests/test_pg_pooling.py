"""Transaction pooling on real PostgreSQL with real clients: multiplexing, pinning rules, no state leaks."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Callable, Optional, Union

import asyncpg
import psycopg
import pytest
from pooltools import POLL_TIMEOUT, Gate, PeakSampler, poll
from prometheus_client.parser import text_string_to_metric_families
from psycopg.rows import dict_row

from rdsproxy import Proxy
from rdsproxy.config import AuthConfig, EndpointConfig, ProxyConfig, ProxySettings, TargetGroupConfig
from rdsproxy.protocol.pg.session import statement_digest
from rdsproxy.testing import PostgresServer, running_proxy, start_postgres

# 24 - 3 superuser slots - 1 health-check slot = 20 connections the pool budget is a percentage of.
SERVER_MAX_CONNECTIONS = 24
PERCENT_FOR_POOL_SIZE = {1: 5, 2: 10, 4: 20, 10: 50}

# Everything a session could carry over to whoever gets its backend next, in one row.
SESSION_STATE_SQL = """
SELECT pg_backend_pid() AS pid,
       current_setting('application_name') AS application_name,
       current_setting('search_path') AS search_path,
       current_setting('TimeZone') AS timezone,
       current_setting('DateStyle') AS datestyle,
       current_setting('work_mem') AS work_mem,
       current_setting('statement_timeout') AS statement_timeout,
       (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temp_objects,
       (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())
           AS advisory_locks,
       (SELECT count(*) FROM pg_prepared_statements) AS prepared_statements,
       (SELECT count(*) FROM pg_listening_channels()) AS listening_channels,
       (SELECT count(*) FROM pg_cursors WHERE is_holdable) AS held_cursors
"""
# The parts of SESSION_STATE_SQL that are the same on every backend of a clean pool.
CLEAN_STATE = {
    "work_mem": "4MB",
    "statement_timeout": "0",
    "temp_objects": 0,
    "advisory_locks": 0,
    "prepared_statements": 0,
    "listening_channels": 0,
    "held_cursors": 0,
}

Client = Union[asyncpg.Connection, psycopg.AsyncConnection]


def picked(state: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """The entries of `state` that `expected` has opinions about, to compare the two in one assert."""
    return {key: state[key] for key in expected}


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """A server small enough that the pool budget is a few connections and overshooting it is visible."""
    with start_postgres(max_connections=SERVER_MAX_CONNECTIONS) as pg:
        pg.sql(
            "SET ROLE app;"
            " CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL);"
            " CREATE TABLE ledger (client_id int, round int, pid int, PRIMARY KEY (client_id, round));"
            " CREATE TABLE init_log (pid int, at timestamptz DEFAULT now())",
            database=pg.app_database,
        )
        yield pg


@pytest.fixture(scope="module")
def server_defaults(server: PostgresServer) -> dict[str, str]:
    """Session defaults of a fresh app-user session, read directly from the server."""
    row = server.sql(
        "SELECT current_setting('search_path') || '|' || current_setting('TimeZone') || '|'"
        " || current_setting('DateStyle')",
        database=server.app_database,
    )
    search_path, timezone, datestyle = row.split("|")
    return {"application_name": "", "search_path": search_path, "timezone": timezone, "datestyle": datestyle}


def make_config(
    server: PostgresServer,
    *,
    pool_size: int,
    proxy_settings: Optional[dict[str, Any]] = None,
    **target_group: Any,
) -> ProxyConfig:
    target_group.setdefault("connection_borrow_timeout", 10.0)
    return ProxyConfig(
        proxy=ProxySettings(name="pooling-test", **(proxy_settings or {})),
        endpoints=[EndpointConfig(listen="127.0.0.1:0")],
        target_group=TargetGroupConfig(
            targets=[server.address()],
            database=server.app_database,
            max_connections_percent=PERCENT_FOR_POOL_SIZE[pool_size],
            **target_group,
        ),
        auth=[AuthConfig(username=server.app_user, password=server.app_password)],
    )


@asynccontextmanager
async def pooled_proxy(server: PostgresServer, *, pool_size: int, **config: Any) -> AsyncIterator[Proxy]:
    """A proxy whose pool budget is exactly `pool_size`; on exit, waits until the server saw all its
    connections go, so the next test starts with the whole budget free."""
    async with running_proxy(make_config(server, pool_size=pool_size, **config)) as proxy:
        assert proxy.metrics()["MaxDatabaseConnectionsAllowed"] == pool_size
        yield proxy
    await poll(lambda: app_backends_on_server(server) == 0, "the proxy's connections to leave the server")


def app_backends_on_server(server: PostgresServer) -> int:
    return int(server.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"))


async def connect_asyncpg(proxy: Proxy, server: PostgresServer, **kwargs: Any) -> asyncpg.Connection:
    host, port = proxy.address()
    return await asyncpg.connect(
        host=host,
        port=port,
        user=server.app_user,
        password=server.app_password,
        database=server.app_database,
        statement_cache_size=0,
        **kwargs,
    )


async def connect_psycopg(proxy: Proxy, server: PostgresServer, **kwargs: Any) -> psycopg.AsyncConnection:
    host, port = proxy.address()
    kwargs.setdefault("prepare_threshold", None)
    return await psycopg.AsyncConnection.connect(
        host=host,
        port=port,
        user=server.app_user,
        password=server.app_password,
        dbname=server.app_database,
        autocommit=True,
        sslmode="disable",
        gssencmode="disable",
        **kwargs,
    )


async def fetch_row(client: Client, sql: str) -> dict[str, Any]:
    if isinstance(client, asyncpg.Connection):
        return dict(await client.fetchrow(sql))
    async with client.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(sql)
        row = await cursor.fetchone()
        assert row is not None
        return row


async def fetch_value(client: Client, sql: str) -> Any:
    if isinstance(client, asyncpg.Connection):
        return await client.fetchval(sql)
    cursor = await client.execute(sql)
    row = await cursor.fetchone()
    return row[0] if row else None


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(client.close() for client in clients))


async def hold_concurrent_transactions(clients: list[Client], sql: str) -> list[dict[str, Any]]:
    """Run `sql` in a transaction on every client at once, each holding its transaction until all are
    inside: that takes one distinct backend per client."""
    gate = Gate(len(clients))

    async def one(client: Client) -> dict[str, Any]:
        async with client.transaction():
            row = await fetch_row(client, sql)
            await gate.wait()
        return row

    return list(await asyncio.gather(*(one(client) for client in clients)))


async def superuser_connection(server: PostgresServer) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=server.host,
        port=server.port,
        user=server.superuser,
        password=server.superuser_password,
        database="postgres",
    )


# ----------------------------------------------------------------------------------------------- multiplexing

CLIENTS = 300
ROUNDS = 4


async def test_300_clients_multiplex_onto_10_backends(server: PostgresServer) -> None:
    server.sql(
        f"TRUNCATE counters, ledger; INSERT INTO counters SELECT g, 0 FROM generate_series(0, {CLIENTS - 1}) g",
        database=server.app_database,
    )
    async with pooled_proxy(server, pool_size=10) as proxy:
        monitor_pid = proxy.targets.all[0].monitor.process_id
        watcher = await superuser_connection(server)

        async def proxy_backends() -> float:
            return proxy.metrics()["DatabaseConnections"]

        async def server_backends() -> float:
            return await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND pid <> $1", monitor_pid
            )

        # Two thirds asyncpg, one third psycopg, all connected before any works: 300 open client sessions.
        clients: list[Client] = await asyncio.gather(
            *(connect_asyncpg(proxy, server) if i % 3 else connect_psycopg(proxy, server) for i in range(CLIENTS))
        )
        assert proxy.metrics()["ClientConnections"] == CLIENTS
        pids_seen: set[int] = set()

        async def work(client_id: int, client: Client) -> None:
            for round_number in range(1, ROUNDS + 1):
                async with client.transaction():
                    pid = await fetch_value(client, "SELECT pg_backend_pid()")
                    count = await fetch_value(
                        client, f"UPDATE counters SET n = n + 1 WHERE id = {client_id} RETURNING n"
                    )
                    assert count == round_number
                    await client.execute(f"INSERT INTO ledger VALUES ({client_id}, {round_number}, pg_backend_pid())")
                    # the whole transaction runs on one backend, whoever else is busy
                    assert await fetch_value(client, "SELECT pg_backend_pid()") == pid
                pids_seen.add(pid)
                with pytest.raises((asyncpg.RaiseError, psycopg.errors.RaiseException)):
                    async with client.transaction():
                        await client.execute(f"UPDATE counters SET n = n + 100 WHERE id = {client_id}")
                        await client.execute("DO $$BEGIN RAISE 'roll back'; END$$")
                assert await fetch_value(client, f"SELECT n FROM counters WHERE id = {client_id}") == round_number

        with PeakSampler(proxy_backends) as proxy_peak, PeakSampler(server_backends, 0.005) as server_peak:
            await asyncio.gather(*(work(i, client) for i, client in enumerate(clients)))
        await close_all(clients)
        await watcher.close()

        assert proxy_peak.samples > 10 and server_peak.samples > 10
        assert proxy_peak.peak <= 10
        assert 2 <= server_peak.peak <= 10
        assert 2 <= len(pids_seen) <= 10
        totals = server.sql(
            "SELECT (SELECT sum(n) FROM counters)"
            f" || ' ' || (SELECT count(*) FROM counters WHERE n <> {ROUNDS})"
            " || ' ' || (SELECT count(*) FROM ledger) || ' ' || (SELECT count(DISTINCT pid) FROM ledger)",
            database=server.app_database,
        )
        committed, wrong_counters, ledger_rows, ledger_pids = map(int, totals.split())
        assert (committed, wrong_counters, ledger_rows) == (CLIENTS * ROUNDS, 0, CLIENTS * ROUNDS)
        assert ledger_pids <= 10
        metrics = proxy.metrics()
        assert metrics["DatabaseConnectionsSetupSucceeded"] <= 10
        assert metrics["SessionPinningEvents"] == 0


# --------------------------------------------------------------------------------------------- no state leaks

TIMEZONES = (
    "Asia/Tokyo",
    "Europe/Paris",
    "America/New_York",
    "Australia/Sydney",
    "Africa/Cairo",
    "Europe/Oslo",
)
DATESTYLES = (("German", "German, DMY"), ("SQL, MDY", "SQL, MDY"), ("Postgres, DMY", "Postgres, DMY"))


async def open_tracked_client(proxy: Proxy, server: PostgresServer, index: int) -> tuple[Client, dict[str, Any]]:
    """A client with only tracked state (startup parameters, SET of reported parameters): it must not pin.

    Returns the client and the values it must see in every transaction.
    """
    application_name = f"tracked-{index}"
    by_startup = index % 2 == 1  # half name themselves at startup, half with SET
    if index % 4 == 3:
        search_path = f"tracked{index},public"  # libpq options: no unescaped spaces
        options = f"-c search_path={search_path}"
        extra = {"application_name": application_name} if by_startup else {}
        client: Client = await connect_psycopg(proxy, server, options=options, **extra)
    else:
        search_path = f"tracked{index}, public"
        settings = {"search_path": search_path}
        if by_startup:
            settings["application_name"] = application_name
        client = await connect_asyncpg(proxy, server, server_settings=settings)
    if not by_startup:
        await client.execute(f"SET application_name = '{application_name}'")
    timezone = TIMEZONES[index % len(TIMEZONES)]
    await client.execute(f"SET TimeZone = '{timezone}'")
    expected = {"application_name": application_name, "search_path": search_path, "timezone": timezone}
    if index % 3 == 0:
        datestyle, shown = DATESTYLES[index % len(DATESTYLES)]
        await client.execute(f"SET DateStyle = '{datestyle}'")
        expected["datestyle"] = shown
    return client, expected


PINNED_SETUP = (
    "SET work_mem = '{mem}MB'",
    "SET statement_timeout = '{timeout}s'",
    "CREATE TEMP TABLE pinned_state (owner int)",
    "INSERT INTO pinned_state VALUES ({index})",
    "SELECT pg_advisory_lock({index})",
    "SET search_path = pinned{index}, public",
    "PREPARE pinned_statement AS SELECT {index}",
    "LISTEN pinned_channel_{index}",
    "DECLARE pinned_cursor CURSOR WITH HOLD FOR SELECT generate_series(1, 100)",
    "SET application_name = 'pinned-{index}'",
)


async def open_pinned_client(proxy: Proxy, server: PostgresServer, index: int) -> tuple[Client, dict[str, Any]]:
    """A client that leaves every kind of session state on its backend (and is therefore pinned)."""
    client: Client = await (connect_psycopg if index == 0 else connect_asyncpg)(proxy, server)
    values = {"mem": 8 + index, "timeout": 30 + index, "index": index}
    for statement in PINNED_SETUP:
        await client.execute(statement.format(**values))
    expected = {
        "application_name": f"pinned-{index}",
        "search_path": f"pinned{index}, public",
        "work_mem": f"{8 + index}MB",
        "statement_timeout": f"{30 + index}s",
        "temp_objects": 1,
        "advisory_locks": 1,
        "prepared_statements": 1,
        "listening_channels": 1,
        "held_cursors": 1,
    }
    return client, expected


async def test_concurrent_sessions_see_only_their_own_state(
    server: PostgresServer, server_defaults: dict[str, str]
) -> None:
    async with pooled_proxy(server, pool_size=10) as proxy:
        pinned = [await open_pinned_client(proxy, server, index) for index in range(4)]
        tracked = await asyncio.gather(*(open_tracked_client(proxy, server, index) for index in range(12)))
        metrics = proxy.metrics()
        assert metrics["SessionPinningEvents"] == 4
        assert metrics["DatabaseConnectionsCurrentlySessionPinned"] == 4
        pinned_pids: dict[int, int] = {}

        async def pinned_rounds(index: int, client: Client, expected: dict[str, Any]) -> None:
            for round_number in range(8):
                if round_number % 2:
                    async with client.transaction():
                        state = await fetch_row(client, SESSION_STATE_SQL)
                else:
                    state = await fetch_row(client, SESSION_STATE_SQL)
                assert picked(state, expected) == expected
                assert pinned_pids.setdefault(index, state["pid"]) == state["pid"]
                assert await fetch_value(client, "SELECT array_agg(owner) FROM pinned_state") == [index]
                assert await fetch_value(client, "EXECUTE pinned_statement") == index
                assert await fetch_value(client, "FETCH 1 FROM pinned_cursor") == round_number + 1
                await asyncio.sleep(0.002 * (index + 1))

        async def tracked_rounds(index: int, client: Client, own: dict[str, Any]) -> None:
            expected = {**server_defaults, **CLEAN_STATE, **own}
            for round_number in range(10):
                if round_number % 2:
                    async with client.transaction():
                        state = await fetch_row(client, SESSION_STATE_SQL)
                        await fetch_value(client, "SELECT pg_sleep(0.001)")
                else:
                    state = await fetch_row(client, SESSION_STATE_SQL)
                assert picked(state, expected) == expected, f"client {index}"
                assert state["pid"] not in pinned_pids.values()
                await asyncio.sleep(0.001 * (index % 3))

        await asyncio.gather(
            *(pinned_rounds(index, client, expected) for index, (client, expected) in enumerate(pinned)),
            *(tracked_rounds(index, client, expected) for index, (client, expected) in enumerate(tracked)),
        )
        assert proxy.metrics()["SessionPinningEvents"] == 4  # the tracked clients never pinned
        await close_all([client for client, _ in pinned + tracked])

        # Pinned backends are reset (DISCARD ALL) before they go back: nothing of theirs is left anywhere.
        await poll(
            lambda: (
                proxy.metrics()["DatabaseConnectionsCurrentlySessionPinned"] == 0
                and proxy.metrics()["DatabaseConnectionsCurrentlyBorrowed"] == 0
            ),
            "pinned backends to be reset and returned",
        )
        assert server.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0"
        assert server.sql("SELECT count(*) FROM pg_listening_channels()") == "0"
        fresh = [await connect_asyncpg(proxy, server) for _ in range(10)]
        states = await hold_concurrent_transactions(fresh, SESSION_STATE_SQL)
        await close_all(fresh)
        assert set(pinned_pids.values()) <= {state["pid"] for state in states}, "pinned backends were not reused"
        clean = {**server_defaults, **CLEAN_STATE}
        assert [picked(state, clean) for state in states] == [clean] * len(states)


async def test_pinned_backend_is_reset_before_the_next_client_gets_it(
    server: PostgresServer, server_defaults: dict[str, str]
) -> None:
    async with pooled_proxy(server, pool_size=1) as proxy:
        leaver, _ = await open_pinned_client(proxy, server, 5)
        leaver_pid = await fetch_value(leaver, "SELECT pg_backend_pid()")
        assert proxy.metrics()["DatabaseConnectionsCurrentlySessionPinned"] == 1
        reasons = ["set", "temp_object", "advisory_lock", "prepare", "listen", "cursor"]
        assert proxy.pinned_sessions() == [{"user": "app", "database": "app", "reasons": reasons}]
        successor = await connect_asyncpg(proxy, server)
        requests_before = proxy.metrics()["DatabaseConnectionRequests"]
        # The successor queues for the only backend while the leaver still holds it...
        waiting = asyncio.ensure_future(fetch_row(successor, SESSION_STATE_SQL))
        await poll(lambda: proxy.metrics()["DatabaseConnectionRequests"] > requests_before, "the borrow request")
        assert not waiting.done()
        await leaver.close()
        # ...and gets it back only after the reset: same server process, none of the leaver's state.
        state = await asyncio.wait_for(waiting, POLL_TIMEOUT)
        assert state["pid"] == leaver_pid
        clean = {**server_defaults, **CLEAN_STATE}
        assert picked(state, clean) == clean
        assert await fetch_value(successor, "SELECT to_regclass('pinned_state')") is None
        metrics = proxy.metrics()
        assert metrics["DatabaseConnectionsCurrentlySessionPinned"] == 0
        assert metrics["DatabaseConnectionsSetupSucceeded"] == 1
        assert proxy.pinned_sessions() == []
        with pytest.raises(asyncpg.InvalidSQLStatementNameError):
            await successor.execute("EXECUTE pinned_statement")  # pins the successor: checked last
        await successor.close()


# ---------------------------------------------------------------------------------------------- pinning rules

LONG_STATEMENT = "SELECT 1 /* " + "x" * (16 * 1024) + " */"


async def prepare_named_statement(client: Client) -> Any:
    """Prepare a named statement over the extended protocol; returns what keeps it alive on the client."""
    if isinstance(client, asyncpg.Connection):
        # with its statement cache off, asyncpg prepares unnamed statements unless given a name
        statement = await client.prepare("SELECT $1::int + 1", name="pinned_named_statement")
        assert await statement.fetchval(41) == 42
        return statement  # asyncpg closes a statement once its object is collected
    cursor = await client.execute("SELECT %s::int + 1", (41,), prepare=True)
    assert (await cursor.fetchone())[0] == 42
    return cursor


class PinCase:
    """Statements that pin a session, the reason code they must record, and the state that then persists."""

    def __init__(
        self,
        reason: str,
        statements: tuple[str, ...] = (),
        *,
        error: Optional[type[Exception]] = None,
        check: Optional[tuple[str, Any]] = None,
        action: Optional[Callable[[Client], Awaitable[Any]]] = None,
        psycopg: bool = False,
        connect_options: Optional[dict[str, Any]] = None,
    ) -> None:
        self.reason = reason
        self.statements = statements
        self.error = error  # the server rejects the statement, but it was sent: the session is pinned anyway
        self.check = check  # (sql, expected value) that holds only on the pinned backend
        self.action = action
        self.psycopg = psycopg
        self.connect_options = connect_options or {}


NAMED_STATEMENT_CHECK = "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int + 1'"
PIN_CASES = {
    "set": PinCase("set", ("SET work_mem = '8MB'",), check=("SHOW work_mem", "8MB")),
    "set_search_path": PinCase(
        "set", ("SET search_path = pinned, public",), check=("SHOW search_path", "pinned, public")
    ),
    "set_config": PinCase(
        "set", ("SELECT set_config('work_mem', '9MB', false)",), check=("SHOW work_mem", "9MB"), psycopg=True
    ),
    "prepare_execute": PinCase(
        "prepare",
        ("PREPARE pinned_statement AS SELECT 7", "EXECUTE pinned_statement"),
        check=("EXECUTE pinned_statement", 7),
    ),
    "execute": PinCase("prepare", ("EXECUTE missing_statement",), error=asyncpg.InvalidSQLStatementNameError),
    "deallocate": PinCase("prepare", ("DEALLOCATE ALL",)),
    "temp_table": PinCase(
        "temp_object",
        ("CREATE TEMP TABLE pinned_table (x int)", "INSERT INTO pinned_table VALUES (3)"),
        check=("SELECT sum(x) FROM pinned_table", 3),
    ),
    "temp_sequence": PinCase(
        "temp_object",
        ("CREATE TEMPORARY SEQUENCE pinned_sequence", "SELECT nextval('pinned_sequence')"),
        check=("SELECT currval('pinned_sequence')", 1),
    ),
    "temp_view": PinCase(
        "temp_object",
        ("CREATE TEMP VIEW pinned_view AS SELECT 5 AS x",),
        check=("SELECT x FROM pinned_view", 5),
    ),
    "cursor_with_hold": PinCase(
        "cursor",
        ("DECLARE pinned_cursor CURSOR WITH HOLD FOR SELECT 11",),
        check=("SELECT count(*) FROM pg_cursors WHERE name = 'pinned_cursor'", 1),
    ),
    "listen": PinCase("listen", ("LISTEN pinned_channel",), check=("SELECT count(*) FROM pg_listening_channels()", 1)),
    "load": PinCase("load", ("LOAD 'auto_explain'",), error=asyncpg.InsufficientPrivilegeError),
    "advisory_lock": PinCase(
        "advisory_lock",
        ("SELECT pg_advisory_lock(4242)",),
        check=("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()", 1),
    ),
    "try_advisory_lock": PinCase(
        "advisory_lock",
        ("SELECT pg_try_advisory_lock(4243)",),
        check=("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()", 1),
        psycopg=True,
    ),
    "discard": PinCase("discard", ("DISCARD PLANS",)),
    "statement_too_long": PinCase("statement_too_long", (LONG_STATEMENT,)),
    "named_prepared_statement_asyncpg": PinCase(
        "named_prepared_statement",
        action=prepare_named_statement,
        check=(NAMED_STATEMENT_CHECK, 1),
    ),
    "named_prepared_statement_psycopg": PinCase(
        "named_prepared_statement",
        action=prepare_named_statement,
        check=(NAMED_STATEMENT_CHECK, 1),
        psycopg=True,
        connect_options={"prepare_threshold": 5},  # None would disable psycopg's prepared statements
    ),
}


@pytest.mark.parametrize("case_name", list(PIN_CASES))
async def test_session_state_pins_the_client_to_its_backend(server: PostgresServer, case_name: str) -> None:
    case = PIN_CASES[case_name]
    async with pooled_proxy(server, pool_size=2) as proxy:
        background = [await connect_asyncpg(proxy, server) for _ in range(3)]
        client: Client = await (connect_psycopg if case.psycopg else connect_asyncpg)(
            proxy, server, **case.connect_options
        )
        stop = asyncio.Event()
        pinned_pid: Optional[int] = None
        after_pin: list[int] = []  # pids the other clients got for queries sent after the pin

        async def keep_busy(other: asyncpg.Connection) -> None:
            while not stop.is_set():
                pin_known = pinned_pid is not None
                pid = await other.fetchval("SELECT pg_backend_pid()")
                if pin_known:
                    after_pin.append(pid)
                await asyncio.sleep(0.001)

        busy = [asyncio.ensure_future(keep_busy(other)) for other in background]
        try:
            await asyncio.sleep(0.02)
            assert proxy.metrics()["SessionPinningEvents"] == 0
            for statement in case.statements:
                if case.error is not None:
                    with pytest.raises(case.error):
                        await client.execute(statement)
                else:
                    await client.execute(statement)
            kept_alive = await case.action(client) if case.action is not None else None
            pinned_pid = await fetch_value(client, "SELECT pg_backend_pid()")
            for round_number in range(8):
                if round_number % 2:
                    async with client.transaction():
                        assert await fetch_value(client, "SELECT pg_backend_pid()") == pinned_pid
                else:
                    assert await fetch_value(client, "SELECT pg_backend_pid()") == pinned_pid
                if case.check is not None:
                    sql, expected = case.check
                    assert await fetch_value(client, sql) == expected
                await asyncio.sleep(0.005)
        finally:
            stop.set()
            await asyncio.gather(*busy)
        del kept_alive
        assert len(after_pin) >= 3, "the other clients did not run alongside the pinned one"
        assert pinned_pid not in after_pin, "another client got the pinned backend"
        metrics = proxy.metrics()
        assert metrics["SessionPinningEvents"] == 1
        assert metrics[f"SessionPinningEvents.{case.reason}"] == 1
        assert metrics["DatabaseConnectionsCurrentlySessionPinned"] == 1
        assert [session["reasons"][0] for session in proxy.pinned_sessions()] == [case.reason]
        await client.close()
        await poll(lambda: proxy.metrics()["DatabaseConnectionsCurrentlySessionPinned"] == 0, "the pin to end")
        await close_all(background)


# Transaction-scoped forms and lookalikes: (statements run in order, a statement whose answer is checked
# inside the transaction and the expected answer).
NON_PINNING_CASES = {
    "set_local": (("BEGIN", "SET LOCAL work_mem = '8MB'"), ("SHOW work_mem", "8MB")),
    "set_config_local": (("BEGIN", "SELECT set_config('work_mem', '8MB', true)"), ("SHOW work_mem", "8MB")),
    "set_transaction": (
        ("BEGIN", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        ("SHOW transaction_isolation", "serializable"),
    ),
    "advisory_xact_lock": (
        ("BEGIN", "SELECT pg_advisory_xact_lock(77)"),
        ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()", 1),
    ),
    "advisory_xact_lock_autocommit": (("SELECT pg_advisory_xact_lock(78)",), None),
    "temp_table_on_commit_drop": (
        ("BEGIN", "CREATE TEMP TABLE scratch (x int) ON COMMIT DROP", "INSERT INTO scratch VALUES (4)"),
        ("SELECT sum(x) FROM scratch", 4),
    ),
    "words_in_strings_and_comments": (
        (
            "SELECT 'SET work_mem = 1; LISTEN x; LOAD ''y''' AS text /* PREPARE p AS SELECT 1; DISCARD ALL */"
            " -- DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "SELECT $body$CREATE TEMP TABLE t (x int); SELECT pg_advisory_lock(1)$body$",
            "SELECT E'it\\'s set_config(''work_mem'', ''1MB'', false)', 1 AS \"set\"",
        ),
        None,
    ),
}


@pytest.mark.parametrize("case_name", list(NON_PINNING_CASES))
async def test_transaction_scoped_forms_do_not_pin(server: PostgresServer, case_name: str) -> None:
    statements, check = NON_PINNING_CASES[case_name]
    # One backend: if the client were pinned, the other client could never get a connection.
    async with pooled_proxy(server, pool_size=1, connection_borrow_timeout=3) as proxy:
        client = await connect_asyncpg(proxy, server)
        other = await connect_asyncpg(proxy, server)
        for statement in statements:
            await client.execute(statement)
        if check is not None:
            sql, expected = check
            assert await client.fetchval(sql) == expected
        if statements[0] == "BEGIN":
            await client.execute("COMMIT")
        assert proxy.pinned_sessions() == []
        other_pid = await other.fetchval("SELECT pg_backend_pid()")
        assert await client.fetchval("SELECT pg_backend_pid()") == other_pid
        state = await fetch_row(client, SESSION_STATE_SQL)
        assert picked(state, CLEAN_STATE) == CLEAN_STATE
        metrics = proxy.metrics()
        assert metrics["SessionPinningEvents"] == 0
        assert metrics["DatabaseConnectionsCurrentlySessionPinned"] == 0
        assert metrics["DatabaseConnectionBorrowTimeouts"] == 0
        await close_all([client, other])


async def test_tracked_parameters_follow_the_client_across_shared_backends(
    server: PostgresServer, server_defaults: dict[str, str]
) -> None:
    # (application_name, TimeZone, DateStyle as set, DateStyle as shown); None: never set by that client
    wanted = [
        ("alpha", "Asia/Tokyo", "German", "German, DMY"),
        ("beta", "Europe/Paris", None, None),
        (None, "America/New_York", "SQL, MDY", "SQL, MDY"),
        ("delta", None, "Postgres, DMY", "Postgres, DMY"),
        ("epsilon", "Australia/Sydney", None, None),
        (None, None, None, None),
    ]
    async with pooled_proxy(server, pool_size=2) as proxy:
        clients: list[Client] = [
            await (connect_psycopg if index % 2 else connect_asyncpg)(proxy, server) for index in range(len(wanted))
        ]
        seen_on_backend: dict[int, set[tuple[str, str, str]]] = {}

        async def run(index: int, client: Client) -> None:
            application_name, timezone, datestyle, datestyle_shown = wanted[index]
            if application_name is not None:
                await client.execute(f"SET application_name = '{application_name}'")
            if timezone is not None:
                await client.execute(f"SET TimeZone = '{timezone}'")
            if datestyle is not None:
                await client.execute(f"SET DateStyle = '{datestyle}'")
            expected = (
                application_name or server_defaults["application_name"],
                timezone or server_defaults["timezone"],
                datestyle_shown or server_defaults["datestyle"],
            )
            for round_number in range(10):
                if round_number == 3:
                    # a transaction-local change and a rolled-back one leave the client's own values in force
                    async with client.transaction():
                        await client.execute("SET LOCAL TimeZone = 'Pacific/Auckland'")
                        assert await fetch_value(client, "SHOW TimeZone") == "Pacific/Auckland"
                    with pytest.raises((asyncpg.RaiseError, psycopg.errors.RaiseException)):
                        async with client.transaction():
                            await client.execute("SET application_name = 'rolled-back'")
                            await client.execute("DO $$BEGIN RAISE 'roll back'; END$$")
                async with client.transaction():
                    state = await fetch_row(client, SESSION_STATE_SQL)
                    await fetch_value(client, "SELECT pg_sleep(0.002)")
                observed = (state["application_name"], state["timezone"], state["datestyle"])
                assert observed == expected, f"client {index}, round {round_number}"
                seen_on_backend.setdefault(state["pid"], set()).add(observed)

        await asyncio.gather(*(run(index, client) for index, client in enumerate(clients)))
        await close_all(clients)
        # six clients, two backends: backends were shared by clients with different values
        assert len(seen_on_backend) <= 2
        assert max(len(values) for values in seen_on_backend.values()) >= 2
        assert proxy.metrics()["SessionPinningEvents"] == 0


async def test_clients_with_the_same_settings_share_them_with_their_backend(server: PostgresServer) -> None:
    """Settings are shared dicts, so the check on every borrow is a pointer comparison; a SET gets its own."""
    async with pooled_proxy(server, pool_size=1) as proxy:
        first = await connect_asyncpg(proxy, server, server_settings={"application_name": "shared"})
        second = await connect_asyncpg(proxy, server, server_settings={"application_name": "shared"})
        for client in (first, second, first):
            assert await fetch_value(client, "SELECT 1") == 1
        # the proxy's client for each: asyncpg's "server pid" is the process id the proxy gave it
        sessions = {client.process_id: client.session for client in proxy.engine.clients}
        one, other = sessions[first.get_server_pid()], sessions[second.get_server_pid()]
        assert one.wanted is other.wanted
        (target,) = proxy.targets.all
        (backend,) = target.pool._idle[next(iter(target.pool._idle))]
        assert backend.applied is one.wanted
        await second.execute("SET TimeZone = 'Asia/Tokyo'")
        assert await fetch_value(second, "SHOW TimeZone") == "Asia/Tokyo"
        assert await fetch_value(first, "SHOW TimeZone") != "Asia/Tokyo"  # synced back on the shared backend
        assert one.wanted is not other.wanted and one.wanted != other.wanted
        assert await fetch_value(first, "SHOW application_name") == "shared"
        assert backend.applied is one.wanted
        assert one.wanted["application_name"] == "shared" and "timezone" not in one.wanted
        await close_all([first, second])


async def test_exclude_variable_sets_filter_keeps_set_from_pinning(server: PostgresServer) -> None:
    async with pooled_proxy(
        server, pool_size=1, session_pinning_filters=["EXCLUDE_VARIABLE_SETS"], connection_borrow_timeout=3
    ) as proxy:
        client = await connect_asyncpg(proxy, server)
        other = await connect_asyncpg(proxy, server)
        await client.execute("SET work_mem = '8MB'")
        await client.execute("SELECT set_config('statement_timeout', '5s', false)")
        # the only backend is free for the other client: the SETs did not pin
        assert await other.fetchval("SELECT pg_backend_pid()") == await client.fetchval("SELECT pg_backend_pid()")
        assert proxy.metrics()["SessionPinningEvents"] == 0
        # the filter is about variable SETs only
        await client.execute("CREATE TEMP TABLE still_pins (x int)")
        metrics = proxy.metrics()
        assert metrics["SessionPinningEvents"] == 1
        assert metrics["SessionPinningEvents.temp_object"] == 1
        assert "SessionPinningEvents.set" not in metrics
        await close_all([client, other])


@pytest.mark.parametrize("debug_logging", [True, False])
async def test_debug_logging_names_pin_reason_and_statement_digest(
    server: PostgresServer, caplog: pytest.LogCaptureFixture, debug_logging: bool
) -> None:
    caplog.set_level(logging.INFO, logger="rdsproxy.debug")
    statement = "SET work_mem = '8MB'"
    async with pooled_proxy(server, pool_size=2, proxy_settings={"debug_logging": debug_logging}) as proxy:
        setter = await connect_asyncpg(proxy, server)
        await setter.execute(statement)  # simple protocol: the digest is of exactly this text
        preparer = await connect_asyncpg(proxy, server)
        await preparer.prepare("SELECT 1", name="logged_statement")
        assert proxy.metrics()["SessionPinningEvents"] == 2
        await close_all([setter, preparer])
    pins = [record.getMessage() for record in caplog.records if record.name == "rdsproxy.debug"]
    if not debug_logging:
        assert pins == []
        return
    assert any(
        "reason=set" in message and f"statement={statement_digest(statement.encode())}" in message for message in pins
    ), pins
    assert any(
        "reason=named_prepared_statement" in message and f"statement={statement_digest(b'SELECT 1')}" in message
        for message in pins
    ), pins


async def test_init_query_runs_on_every_new_backend(server: PostgresServer) -> None:
    server.sql("TRUNCATE init_log", database=server.app_database)
    init_query = (
        "SELECT set_config('rdsproxy.init', 'yes', false); INSERT INTO init_log (pid) VALUES (pg_backend_pid())"
    )
    async with pooled_proxy(server, pool_size=4, init_query=init_query) as proxy:
        clients = [await connect_asyncpg(proxy, server) for _ in range(4)]
        query = "SELECT pg_backend_pid() AS pid, current_setting('rdsproxy.init', true) AS init"
        rows = await hold_concurrent_transactions(clients, query)
        assert [row["init"] for row in rows] == ["yes"] * 4
        pids = {row["pid"] for row in rows}
        assert len(pids) == 4
        logged = server.sql("SELECT pid FROM init_log", database=server.app_database).split()
        assert sorted(map(int, logged)) == sorted(pids)
        assert proxy.metrics()["DatabaseConnectionsSetupSucceeded"] == 4

        # A pinned client's backend is reset with DISCARD ALL when it leaves; the reset must not lose
        # what init_query set up for everyone.
        pinned = clients.pop()
        await pinned.execute("SET work_mem = '8MB'")
        pinned_pid = await pinned.fetchval("SELECT pg_backend_pid()")
        await pinned.close()
        await poll(lambda: proxy.metrics()["DatabaseConnectionsCurrentlyBorrowed"] == 0, "the reset backend")
        clients.append(await connect_asyncpg(proxy, server))
        rows = await hold_concurrent_transactions(clients, query)
        assert pinned_pid in {row["pid"] for row in rows}
        assert [row["init"] for row in rows] == ["yes"] * 4, rows
        await close_all(clients)


async def test_idle_backends_above_the_idle_limit_are_closed(server: PostgresServer) -> None:
    async with pooled_proxy(server, pool_size=10, max_idle_connections_percent=20, idle_backend_timeout=0.5) as proxy:
        monitor_pid = proxy.targets.all[0].monitor.process_id
        clients = [await connect_asyncpg(proxy, server) for _ in range(10)]
        rows = await hold_concurrent_transactions(clients, "SELECT pg_backend_pid() AS pid")
        assert len({row["pid"] for row in rows}) == 10
        assert proxy.metrics()["DatabaseConnections"] == 10

        def pooled_on_server() -> int:
            return int(
                server.sql(f"SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND pid <> {monitor_pid}")
            )

        # max_idle_connections_percent=20 of a budget of 10: two idle backends stay
        await poll(lambda: proxy.metrics()["DatabaseConnections"] == 2, "idle backends to be closed")
        await poll(lambda: pooled_on_server() == 2, "the server to see the closed backends go")
        assert proxy.metrics()["ClientConnections"] == 10  # clients are not affected
        rows = await hold_concurrent_transactions(clients, "SELECT pg_backend_pid() AS pid")
        assert len({row["pid"] for row in rows}) == 10
        await close_all(clients)


async def http_get(address: tuple[str, int], path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {address[0]}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), POLL_TIMEOUT)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_admin_server_exposes_metrics_health_and_stats(server: PostgresServer) -> None:
    async with pooled_proxy(server, pool_size=2, proxy_settings={"admin_listen": "127.0.0.1:0"}) as proxy:
        assert proxy.admin_address is not None
        pinned = await connect_asyncpg(proxy, server)
        await pinned.execute("SET work_mem = '8MB'")
        other = await connect_asyncpg(proxy, server)
        await other.fetchval("SELECT 1")

        status, body = await http_get(proxy.admin_address, "/metrics")
        assert status == 200
        samples = {
            (sample.name, sample.labels.get("reason")): sample
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }
        connections = samples["rdsproxy_database_connections", None]
        assert connections.value == proxy.metrics()["DatabaseConnections"] >= 1
        assert connections.labels["target"] == server.address()
        assert samples["rdsproxy_max_database_connections_allowed", None].value == 2
        assert samples["rdsproxy_database_connections_currently_session_pinned", None].value == 1
        assert samples["rdsproxy_session_pinning_events_total", None].value == 1
        assert samples["rdsproxy_session_pinning_events_by_reason_total", "set"].value == 1
        assert samples["rdsproxy_client_connections", None].value == 2

        status, body = await http_get(proxy.admin_address, "/healthz")
        assert status == 200
        assert json.loads(body)["status"] == "ok"

        status, body = await http_get(proxy.admin_address, "/stats")
        assert status == 200
        stats = json.loads(body)
        assert stats["clients"] == 2
        assert [target["pool_limit"] for target in stats["targets"]] == [2]
        assert stats["metrics"]["SessionPinningEvents.set"] == 1

        status, _ = await http_get(proxy.admin_address, "/nowhere")
        assert status == 404
        await close_all([pinned, other])


async def test_the_data_path_is_served_by_the_relay_unless_turned_off(
    server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The relay's transports carry clients and pooled backends; RDSPROXY_RELAY=0 gives asyncio's (uvloop's) own.
    from rdsproxy._codec import Relay

    for setting, on_relay in (("1", True), ("0", False)):
        monkeypatch.setenv("RDSPROXY_RELAY", setting)
        async with pooled_proxy(server, pool_size=2) as proxy:
            connection = await connect_asyncpg(proxy, server)
            try:
                async with connection.transaction():
                    assert await connection.fetchval("SELECT 6 * 7") == 42
                    (client,) = proxy.engine.clients
                    assert client.backend is not None
                    transports = (client.transport, client.backend.transport)
                    relay = proxy.engine.relay
                    if on_relay:
                        assert isinstance(relay, Relay)
                        assert all(type(t).__name__ == "RelayTransport" for t in transports)
                        assert relay.connections >= 2
                    else:
                        assert relay is None
                        assert not any(type(t).__name__ == "RelayTransport" for t in transports)
            finally:
                await connection.close()
        if on_relay:
            assert relay.closed  # closed with the proxy
