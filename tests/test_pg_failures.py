"""PostgreSQL proxy under failure: borrow timeouts, idle clients, dying backends, cancel, bad input, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Callable, Optional

import asyncpg
import psycopg
import pytest
from pooltools import BystanderLoop, poll

from rdsproxy import Proxy
from rdsproxy.config import EndpointConfig, ProxyConfig
from rdsproxy.protocol.pg import messages
from rdsproxy.protocol.pg.auth import BackendAuthenticator
from rdsproxy.testing import LOOPBACK, PostgresServer, proxy_config_for, running_proxy, start_postgres

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = "failure_rows"
# Generous bounds for things that normally take milliseconds: a loaded 2-core machine must not flake.
SETTLE_TIMEOUT = 20.0
MESSAGE_TIMEOUT = 20.0
PROTOCOL_3_0 = 196608


# ----------------------------------------------------------------------------------------------------------
# Servers, proxies and clients


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """A private server: these tests terminate its backends and restart it."""
    with start_postgres(max_connections=20) as pg_server:
        pg_server.sql(
            f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, note text NOT NULL);"
            f" ALTER TABLE {TABLE} OWNER TO {pg_server.app_user}",
            database=pg_server.app_database,
        )
        yield pg_server


@pytest.fixture(autouse=True)
def empty_table(server: PostgresServer) -> None:
    server.sql(f"TRUNCATE {TABLE}", database=server.app_database)


def make_config(
    server: PostgresServer, *, idle_client_timeout: Optional[float] = None, **target_group: Any
) -> ProxyConfig:
    config = proxy_config_for(server, **target_group)
    if idle_client_timeout is not None:
        settings = dataclasses.replace(config.proxy, idle_client_timeout=idle_client_timeout)
        config = dataclasses.replace(config, proxy=settings)
    return config


def single_backend_config(server: PostgresServer, **overrides: Any) -> ProxyConfig:
    """A pool budget of exactly one backend connection (the percentage rounds down, the budget floor is 1)."""
    return make_config(server, max_connections_percent=1, max_idle_connections_percent=1, **overrides)


async def connect_asyncpg(
    proxy: Proxy, server: PostgresServer, endpoint: str = "default", **kwargs: Any
) -> asyncpg.Connection:
    host, port = proxy.address(endpoint)
    # statement_cache_size=0: named prepared statements would pin the session, as with PgBouncer
    return await asyncpg.connect(
        host=host,
        port=port,
        user=server.app_user,
        password=server.app_password,
        database=server.app_database,
        statement_cache_size=0,
        command_timeout=MESSAGE_TIMEOUT,  # a hung proxy fails the test instead of hanging it
        **kwargs,
    )


def psycopg_dsn(proxy: Proxy, server: PostgresServer) -> str:
    host, port = proxy.address("default")
    return (
        f"host={host} port={port} user={server.app_user} password={server.app_password}"
        f" dbname={server.app_database} connect_timeout=10"
    )


def connect_psycopg(proxy: Proxy, server: PostgresServer) -> psycopg.Connection:
    """Blocking: call from a worker thread, the proxy lives on the test's event loop."""
    return psycopg.connect(psycopg_dsn(proxy, server), autocommit=True, prepare_threshold=None)


async def wait_for(condition: Callable[[], Any], what: str, timeout: float = SETTLE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def server_sql(server: PostgresServer, query: str) -> str:
    """server.sql off the event loop, so the in-process proxy keeps serving meanwhile."""
    return await asyncio.to_thread(server.sql, query, database=server.app_database)


def metric(proxy: Proxy, name: str) -> float:
    return proxy.metrics()[name]


def no_backend_opening(proxy: Proxy) -> bool:
    """True when every backend the pools count against their budget is open (none still connecting)."""
    return sum(target.pool.total for target in proxy.targets.all) == metric(proxy, "DatabaseConnections")


class TransactionLoop(BystanderLoop):
    """A bystander asyncpg client."""

    async def transaction(self) -> None:
        async with self.conn.transaction():
            value = await self.conn.fetchval("SELECT $1::int + 1", self.completed)
            assert value == self.completed + 1
            await self.conn.execute("SELECT count(*) FROM pg_class")


@contextlib.asynccontextmanager
async def transaction_loop(proxy: Proxy, server: PostgresServer) -> AsyncIterator[TransactionLoop]:
    conn = await connect_asyncpg(proxy, server)
    loop = TransactionLoop(conn)
    loop.start()
    try:
        await loop.progress()
        yield loop
        await loop.progress()
        await loop.stop()
    finally:
        loop.stopping = True
        await conn.close(timeout=5)


# ----------------------------------------------------------------------------------------------------------
# A raw wire-protocol client, for what real drivers never send


def split_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of each complete backend message in `data`; an incomplete tail is an error."""
    result = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 5, f"truncated message header at byte {pos}: {data[pos:]!r}"
        (length,) = struct.unpack_from("!I", data, pos + 1)
        end = pos + 1 + length
        assert end <= len(data), f"truncated message at byte {pos}: {data[pos : pos + 64]!r}"
        result.append((data[pos : pos + 1], data[pos + 5 : end]))
        pos = end
    return result


def startup_packet(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!I", version)
    body += b"".join(key.encode() + b"\0" + value.encode() + b"\0" for key, value in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


class RawClient:
    """Speaks the PostgreSQL frontend protocol byte by byte over an asyncio stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.process_id = 0
        self.secret = b""

    @classmethod
    async def open(cls, address: tuple[str, int], *, limit: int = 2**16) -> RawClient:
        reader, writer = await asyncio.open_connection(address[0], address[1], limit=limit)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def message(self) -> tuple[bytes, bytes]:
        header = await asyncio.wait_for(self.reader.readexactly(5), MESSAGE_TIMEOUT)
        (length,) = struct.unpack("!I", header[1:])
        body = await asyncio.wait_for(self.reader.readexactly(length - 4), MESSAGE_TIMEOUT)
        return header[:1], body

    async def until_ready(self) -> list[tuple[bytes, bytes]]:
        """Messages up to and including the next ReadyForQuery."""
        received = []
        while True:
            mtype, body = await self.message()
            received.append((mtype, body))
            if mtype == b"Z":
                return received

    async def login(self, user: str, password: str, database: str) -> None:
        """StartupMessage and SCRAM authentication, up to the first ReadyForQuery."""
        self.send(startup_packet({"user": user, "database": database}))
        authenticator = BackendAuthenticator(user, password)
        while not authenticator.ok:
            mtype, body = await self.message()
            assert mtype == b"R", f"expected an authentication request, got {mtype!r} {body!r}"
            reply = authenticator.handle(body)
            if reply:
                self.send(reply)
        for mtype, body in await self.until_ready():
            if mtype == b"K":
                self.process_id = struct.unpack_from("!I", body)[0]
                self.secret = body[4:]
            assert mtype != b"E", f"login failed: {messages.parse_error_fields(body)}"
        assert self.secret, "no BackendKeyData during login"

    async def query(self, sql: str) -> list[tuple[bytes, bytes]]:
        self.send(messages.query(sql))
        return await self.until_ready()

    async def read_to_close(self) -> bytes:
        """Everything the proxy sends until it closes the connection."""
        return await asyncio.wait_for(self.reader.read(), MESSAGE_TIMEOUT)

    def abort(self) -> None:
        """Vanish without Terminate, like a crashed client: RST instead of FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.close()


async def raw_login(proxy: Proxy, server: PostgresServer) -> RawClient:
    raw = await RawClient.open(proxy.address("default"))
    await raw.login(server.app_user, server.app_password, server.app_database)
    return raw


def error_fields(received: list[tuple[bytes, bytes]]) -> list[dict[str, str]]:
    return [messages.parse_error_fields(body) for mtype, body in received if mtype == b"E"]


def data_rows(received: list[tuple[bytes, bytes]]) -> list[list[Optional[str]]]:
    rows = []
    for mtype, body in received:
        if mtype != b"D":
            continue
        (count,) = struct.unpack_from("!h", body)
        pos, row = 2, []
        for _ in range(count):
            (size,) = struct.unpack_from("!i", body, pos)
            pos += 4
            row.append(None if size < 0 else body[pos : pos + size].decode())
            pos += max(size, 0)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------
# Borrow timeout


async def test_borrow_timeout_simple_protocol_keeps_the_client(server: PostgresServer) -> None:
    async with running_proxy(single_backend_config(server, connection_borrow_timeout=1)) as proxy:
        assert metric(proxy, "MaxDatabaseConnectionsAllowed") == 1
        holder = await connect_asyncpg(proxy, server)
        waiter = await connect_asyncpg(proxy, server)
        try:
            await holder.execute("BEGIN")
            await holder.execute(f"INSERT INTO {TABLE} (note) VALUES ('held')")
            timeouts_before = metric(proxy, "DatabaseConnectionBorrowTimeouts")

            with pytest.raises(asyncpg.PostgresError) as caught:
                await waiter.execute("SELECT 1")  # no arguments: simple Query protocol

            assert caught.value.sqlstate == "53300"
            assert proxy.config.proxy.name in str(caught.value)
            assert "connection_borrow_timeout=1 s" in str(caught.value)
            assert metric(proxy, "DatabaseConnectionBorrowTimeouts") == timeouts_before + 1
            assert not waiter.is_closed()

            await holder.execute("COMMIT")
            assert await waiter.fetchval(f"SELECT count(*) FROM {TABLE}") == 1
            assert await waiter.execute("SELECT 1") == "SELECT 1"
        finally:
            await holder.close(timeout=5)
            await waiter.close(timeout=5)


async def test_a_client_waiting_for_a_backend_is_paused_only_when_it_sends_more(server: PostgresServer) -> None:
    # Waiting for a backend, a client's request is held without pausing its socket (pausing costs two epoll_ctl
    # per borrow on a busy pool); a client that keeps sending is paused, so what it can queue stays bounded.
    async with running_proxy(single_backend_config(server, connection_borrow_timeout=30)) as proxy:
        holder = await connect_asyncpg(proxy, server)
        raw = await raw_login(proxy, server)
        try:
            await holder.execute("BEGIN")  # holds the only backend
            (client,) = [c for c in proxy.engine.clients if c.process_id == raw.process_id]

            raw.send(messages.query("SELECT 1"))
            await poll(lambda: client.pending is not None, "the request to wait for a backend")
            assert not client.reading_paused

            raw.send(messages.query("SELECT 2"))
            await poll(lambda: client.reading_paused, "the proxy to stop reading the client")
            raw.send(messages.query("SELECT 3"))  # stays in the socket until a backend comes
            await asyncio.sleep(0.3)
            assert client.pending == [messages.query("SELECT 1"), messages.query("SELECT 2")]

            await holder.execute("COMMIT")
            answers = [data_rows(await raw.until_ready()) for _ in range(3)]
            assert answers == [[["1"]], [["2"]], [["3"]]]
            assert not client.reading_paused and client.pending is None
        finally:
            await holder.close(timeout=5)
            raw.close()


async def test_borrow_timeout_extended_protocol_keeps_the_client(server: PostgresServer) -> None:
    async with running_proxy(single_backend_config(server, connection_borrow_timeout=1)) as proxy:
        holder = await connect_asyncpg(proxy, server)
        waiter = await connect_asyncpg(proxy, server)
        try:
            await holder.execute("BEGIN")
            timeouts_before = metric(proxy, "DatabaseConnectionBorrowTimeouts")

            with pytest.raises(asyncpg.PostgresError) as caught:
                await waiter.fetch("SELECT $1::int AS answer", 42)  # Parse/Bind/Execute/Sync

            assert caught.value.sqlstate == "53300"
            assert proxy.config.proxy.name in str(caught.value)
            assert "connection_borrow_timeout=1 s" in str(caught.value)
            assert metric(proxy, "DatabaseConnectionBorrowTimeouts") == timeouts_before + 1

            await holder.execute("COMMIT")
            rows = await waiter.fetch("SELECT $1::int AS answer", 43)
            assert [tuple(row) for row in rows] == [(43,)]
            async with waiter.transaction():
                assert await waiter.fetchval("SELECT $1::text", "still usable") == "still usable"
        finally:
            await holder.close(timeout=5)
            await waiter.close(timeout=5)


async def run_psql(proxy: Proxy, server: PostgresServer, *statements: str) -> asyncio.subprocess.Process:
    """Start psql against the proxy; each statement is its own -c, i.e. one simple Query."""
    host, port = proxy.address("default")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PGPASSWORD": server.app_password,
        "PGCONNECT_TIMEOUT": "10",
    }
    argv = ["psql", "-X", "-At", "-h", host, "-p", str(port), "-U", server.app_user, "-d", server.app_database]
    for statement in statements:
        argv += ["-c", statement]
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )


async def test_borrow_timeout_through_psql(server: PostgresServer) -> None:
    async with running_proxy(single_backend_config(server, connection_borrow_timeout=1)) as proxy:
        # a first psql session lets the proxy validate psql's startup settings while a backend is free
        warm_up = await run_psql(proxy, server, "SELECT 'warm'")
        assert (await asyncio.wait_for(warm_up.communicate(), MESSAGE_TIMEOUT))[0].split() == [b"warm"]
        holder = await connect_asyncpg(proxy, server)
        try:
            await holder.execute("BEGIN")
            # without ON_ERROR_STOP psql goes on to the next -c after an error, on the same connection
            psql = await run_psql(proxy, server, "SELECT 'first'", "SELECT 'second'")
            # release the only backend once the first statement has timed out, so the second can run
            await wait_for(lambda: metric(proxy, "DatabaseConnectionBorrowTimeouts") >= 1, "psql's timeout")
            await holder.execute("COMMIT")
            stdout, stderr = await asyncio.wait_for(psql.communicate(), MESSAGE_TIMEOUT)
        finally:
            await holder.close(timeout=5)
    assert psql.returncode == 0, "psql exits 2 when its connection went bad"
    assert "ERROR:  rdsproxy-test: timed out" in stderr.decode(), stderr.decode()
    assert "connection_borrow_timeout=1 s" in stderr.decode(), stderr.decode()
    assert stdout.decode().split() == ["second"]


# ----------------------------------------------------------------------------------------------------------
# Idle clients


async def test_idle_client_timeout_closes_idle_clients_only(server: PostgresServer) -> None:
    async with running_proxy(make_config(server, idle_client_timeout=1)) as proxy:
        idle = await connect_asyncpg(proxy, server)
        active = await connect_asyncpg(proxy, server)
        idle_psycopg = await asyncio.to_thread(connect_psycopg, proxy, server)
        try:
            assert await idle.fetchval("SELECT 1") == 1
            await asyncio.to_thread(idle_psycopg.execute, "SELECT 1")
            closed_before = metric(proxy, "ClientConnectionsClosed")

            async def keep_busy() -> int:
                queries = 0
                while not idle.is_closed():
                    assert await active.fetchval("SELECT $1::int", queries) == queries
                    queries += 1
                    await asyncio.sleep(0.2)
                return queries

            busy = asyncio.ensure_future(keep_busy())
            await wait_for(idle.is_closed, "the proxy to close the idle asyncpg client")
            await busy

            with pytest.raises(psycopg.OperationalError):
                await asyncio.to_thread(idle_psycopg.execute, "SELECT 1")
            assert not active.is_closed()
            assert await active.fetchval("SELECT 2") == 2
            assert metric(proxy, "ClientConnectionsClosed") >= closed_before + 2
        finally:
            await asyncio.to_thread(idle_psycopg.close)
            await active.close(timeout=5)
            idle.terminate()


async def test_idle_time_counts_from_the_end_of_the_last_response(server: PostgresServer) -> None:
    # A long query is activity: after it finishes, the client has the whole timeout before it counts as idle.
    async with running_proxy(make_config(server, idle_client_timeout=2)) as proxy:
        conn = await connect_asyncpg(proxy, server)
        try:
            await conn.execute("SELECT pg_sleep(3)")
            await asyncio.sleep(1.5)  # a janitor pass (every second) runs in between
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            conn.terminate()


# ----------------------------------------------------------------------------------------------------------
# Backends that die


async def test_idle_backend_killed_next_query_works(server: PostgresServer) -> None:
    async with running_proxy(make_config(server)) as proxy:
        conn = await connect_asyncpg(proxy, server)
        psy = await asyncio.to_thread(connect_psycopg, proxy, server)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            await asyncio.to_thread(psy.execute, "SELECT 1")
            assert metric(proxy, "DatabaseConnections") >= 1

            killed = await asyncio.to_thread(server.terminate_backends, server.app_user)
            assert killed >= 1
            await wait_for(lambda: metric(proxy, "DatabaseConnections") == 0, "the proxy to drop dead backends")

            assert await conn.fetchval("SELECT 2") == 2
            row = await asyncio.to_thread(lambda: psy.execute("SELECT 3").fetchone())
            assert row == (3,)
            assert not conn.is_closed()
        finally:
            await asyncio.to_thread(psy.close)
            await conn.close(timeout=5)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
async def test_backend_killed_mid_transaction_fails_that_transaction_only(
    server: PostgresServer, protocol: str
) -> None:
    async with running_proxy(make_config(server)) as proxy:
        victim = await connect_asyncpg(proxy, server)
        try:
            async with transaction_loop(proxy, server) as bystander:
                await victim.execute("BEGIN")
                await victim.execute(f"INSERT INTO {TABLE} (note) VALUES ('lost')")
                backend_pid = await victim.fetchval("SELECT pg_backend_pid()")
                assert await server_sql(server, f"SELECT pg_terminate_backend({backend_pid})") == "t"
                await wait_for(
                    lambda: metric(proxy, "DatabaseConnectionsCurrentlyBorrowed") <= 1,
                    "the proxy to notice the killed backend",
                )

                with pytest.raises(asyncpg.PostgresError) as caught:
                    if protocol == "simple":
                        await victim.execute(f"INSERT INTO {TABLE} (note) VALUES ('after the loss')")
                    else:  # asyncpg's Parse/Describe/Flush waits for an answer before any Sync
                        await victim.execute(f"INSERT INTO {TABLE} (note) VALUES ($1)", "after the loss")
                assert caught.value.sqlstate == "08006"
                assert not victim.is_closed()

                # the interrupted transaction is over: the next one runs normally on another backend
                async with victim.transaction():
                    await victim.execute(f"INSERT INTO {TABLE} (note) VALUES ('next')")
                notes = [row["note"] for row in await victim.fetch(f"SELECT note FROM {TABLE}")]
                assert notes == ["next"]
                await bystander.progress()
        finally:
            await victim.close(timeout=5)


async def test_backend_killed_mid_transaction_psycopg(server: PostgresServer) -> None:
    async with running_proxy(make_config(server)) as proxy:

        def scenario() -> tuple[str, list[tuple[str]]]:
            with psycopg.connect(psycopg_dsn(proxy, server), prepare_threshold=None) as conn:
                conn.execute(f"INSERT INTO {TABLE} (note) VALUES ('lost')")  # opens a transaction
                (backend_pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
                assert server.sql(f"SELECT pg_terminate_backend({backend_pid})") == "t"
                with pytest.raises(psycopg.Error) as caught:
                    conn.execute(f"INSERT INTO {TABLE} (note) VALUES ('after the loss')")
                conn.rollback()
                conn.execute(f"INSERT INTO {TABLE} (note) VALUES ('next')")
                conn.commit()
                rows = conn.execute(f"SELECT note FROM {TABLE}").fetchall()
                return caught.value.sqlstate or "", rows

        sqlstate, rows = await asyncio.to_thread(scenario)
        assert sqlstate == "08006"
        assert rows == [("next",)]


async def test_server_restart_while_clients_idle(server: PostgresServer) -> None:
    async with running_proxy(make_config(server)) as proxy:
        clients = [await connect_asyncpg(proxy, server) for _ in range(3)]
        psy = await asyncio.to_thread(connect_psycopg, proxy, server)
        try:
            for number, conn in enumerate(clients):
                assert await conn.fetchval("SELECT $1::int", number) == number
            await asyncio.to_thread(psy.execute, "SELECT 1")

            started = await server_sql(server, "SELECT pg_postmaster_start_time()")
            await asyncio.to_thread(server.restart)
            assert await server_sql(server, "SELECT pg_postmaster_start_time()") != started

            for number, conn in enumerate(clients):
                assert await conn.fetchval("SELECT $1::int", number + 10) == number + 10
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {TABLE} (note) VALUES ($1)", f"client {number}")
            row = await asyncio.to_thread(lambda: psy.execute(f"SELECT count(*) FROM {TABLE}").fetchone())
            assert row == (3,)
        finally:
            await asyncio.to_thread(psy.close)
            for conn in clients:
                await conn.close(timeout=5)


async def test_new_work_waits_for_a_server_that_comes_back(server: PostgresServer) -> None:
    async with running_proxy(make_config(server, connection_borrow_timeout=60)) as proxy:
        conn = await connect_asyncpg(proxy, server)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            server.kill9()
            await wait_for(lambda: not proxy.targets.all[0].healthy, "the health check to see the server down")

            waiting = asyncio.ensure_future(conn.fetchval("SELECT $1::text", "waited"))
            await asyncio.sleep(0.3)
            assert not waiting.done(), f"the query did not wait for the server: {waiting!r}"
            assert not conn.is_closed()

            await asyncio.to_thread(server.restart)
            assert await asyncio.wait_for(waiting, MESSAGE_TIMEOUT) == "waited"
            assert await conn.fetchval("SELECT 2") == 2
        finally:
            conn.terminate()


# ----------------------------------------------------------------------------------------------------------
# Failover


async def test_a_promoted_replica_takes_the_writer_endpoint_and_connected_clients_follow(
    fresh_pg: Callable[..., PostgresServer],
) -> None:
    primary = fresh_pg(max_connections=20)
    replica = primary.make_replica()
    primary.wait_caught_up(replica)
    config = proxy_config_for(
        primary,
        targets=[primary.address(), replica.address()],
        health_check_interval=0.2,
        connection_borrow_timeout=60,
    )
    config = dataclasses.replace(
        config,
        endpoints=[
            EndpointConfig(listen=f"{LOOPBACK}:0"),
            EndpointConfig(name="reader", listen=f"{LOOPBACK}:0", target_role="READ_ONLY"),
        ],
    )
    async with running_proxy(config) as proxy:
        writer = await connect_asyncpg(proxy, primary)
        reader = await connect_asyncpg(proxy, primary, "reader")
        promoted = proxy.targets.by_address[replica.address()]
        try:
            assert await writer.fetchval("SELECT inet_server_port()") == primary.port
            assert await reader.fetchval("SELECT inet_server_port()") == replica.port
            assert await reader.fetchval("SELECT pg_is_in_recovery()") is True
            assert proxy.metrics()["FailoverEvents"] == 0  # the first writer seen is not a failover

            primary.kill9()
            await asyncio.to_thread(replica.promote)
            await wait_for(lambda: promoted.role == "WRITER" and promoted.healthy, "the proxy to see the new writer")

            # the client connected before the failover keeps its connection; its borrows go to the new writer
            assert await writer.fetchval("SELECT inet_server_port()") == replica.port
            await writer.execute("CREATE TABLE written_after_failover (v int)")
            assert not writer.is_closed()
            # counted on the target that took over, once a health check has seen the old writer gone
            await wait_for(lambda: proxy.metrics()["FailoverEvents"] >= 1, "the failover to be counted")
            assert promoted.stats.FailoverEvents == 1
        finally:
            writer.terminate()
            reader.terminate()


async def test_two_writers_at_once_are_not_a_failover_until_the_old_one_is_gone(
    fresh_pg: Callable[..., PostgresServer],
) -> None:
    # A replica promoted while the old writer still answers (split brain, or a switchover's overlap) is not a
    # takeover yet; the old writer's loss is, once. Without that rule FailoverEvents would count every health
    # check that alternates between the two.
    primary = fresh_pg(max_connections=20)
    replica = primary.make_replica()
    primary.wait_caught_up(replica)
    config = proxy_config_for(primary, targets=[primary.address(), replica.address()], health_check_interval=0.1)
    async with running_proxy(config) as proxy:
        promoted = proxy.targets.by_address[replica.address()]
        await asyncio.to_thread(replica.promote)
        await wait_for(lambda: promoted.role == "WRITER" and promoted.healthy, "the proxy to see a second writer")
        await asyncio.sleep(1.0)  # ten health checks with both targets writable
        assert proxy.metrics()["FailoverEvents"] == 0

        primary.kill9()
        await wait_for(lambda: proxy.metrics()["FailoverEvents"] >= 1, "the failover to be counted")
        await asyncio.sleep(1.0)
        assert proxy.metrics()["FailoverEvents"] == 1
        assert promoted.stats.FailoverEvents == 1


async def test_a_health_check_on_a_monitor_closed_under_it_marks_the_target_down_and_the_loop_lives_on(
    fresh_pg: Callable[..., PostgresServer],
) -> None:
    # uvloop closes a transport whose peer went away before the protocol hears connection_lost. A probe written in
    # that window raised RuntimeError out of the health check, which ended the health loop for good: a crashed
    # writer's replica was then never seen promoted. The window is opened here by aborting the monitor's transport
    # and checking in the same tick.
    server = fresh_pg(max_connections=20)
    config = proxy_config_for(server, health_check_interval=0.1)
    async with running_proxy(config) as proxy:
        target = proxy.targets.by_address[server.address()]
        monitor = target.monitor
        assert monitor is not None and target.healthy
        monitor.transport.abort()
        await proxy.targets.check(target)  # must not raise
        assert not target.healthy
        assert target.monitor is None or target.monitor is not monitor
        # the health loop goes on: it reconnects and finds the target up again
        await wait_for(lambda: target.healthy and target.monitor is not None, "the target to be checked up again")
        proxy.targets.by_address[server.address()].monitor.transport.abort()
        await asyncio.sleep(0)  # the closed transport's connection_lost has not run yet ...
        await proxy.targets.close()  # ... and closing the monitor then must not raise either


# ----------------------------------------------------------------------------------------------------------
# Cancel


async def active_sleepers(server: PostgresServer) -> int:
    return int(
        await server_sql(
            server,
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(%'"
            " AND pid <> pg_backend_pid()",
        )
    )


async def wait_for_sleepers(server: PostgresServer, count: int) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while await active_sleepers(server) != count:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {count} running pg_sleep queries")
        await asyncio.sleep(0.05)


async def test_asyncpg_timeout_cancels_the_query(server: PostgresServer) -> None:
    async with running_proxy(make_config(server)) as proxy:
        conn = await connect_asyncpg(proxy, server)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute("SELECT pg_sleep(30)", timeout=1)  # asyncpg sends a CancelRequest
            await wait_for_sleepers(server, 0)
            assert await conn.fetchval("SELECT $1::int", 7) == 7
            assert await conn.execute("SELECT 1") == "SELECT 1"
        finally:
            conn.terminate()


async def test_psycopg_cancel_from_another_thread(server: PostgresServer) -> None:
    async with running_proxy(make_config(server)) as proxy:
        conn = await asyncio.to_thread(connect_psycopg, proxy, server)
        try:
            sleeping = asyncio.ensure_future(asyncio.to_thread(conn.execute, "SELECT pg_sleep(30)"))
            await wait_for_sleepers(server, 1)
            await asyncio.to_thread(conn.cancel_safe)
            with pytest.raises(psycopg.errors.QueryCanceled) as caught:
                await asyncio.wait_for(sleeping, MESSAGE_TIMEOUT)
            assert caught.value.sqlstate == "57014"
            row = await asyncio.to_thread(lambda: conn.execute("SELECT 'usable'").fetchone())
            assert row == ("usable",)
        finally:
            await asyncio.to_thread(conn.close)


async def send_cancel(proxy: Proxy, process_id: int, secret: bytes) -> bytes:
    raw = await RawClient.open(proxy.address("default"))
    raw.send(messages.cancel_request(process_id, secret))
    return await raw.read_to_close()  # the proxy answers a CancelRequest by closing, as PostgreSQL does


async def test_cancel_request_needs_the_right_secret(server: PostgresServer) -> None:
    async with running_proxy(make_config(server)) as proxy:
        raw = await raw_login(proxy, server)
        try:
            wrong = bytes(byte ^ 0x5A for byte in raw.secret)
            raw.send(messages.query("SELECT pg_sleep(1.5)"))
            await wait_for_sleepers(server, 1)
            assert await send_cancel(proxy, raw.process_id, wrong) == b""
            assert await send_cancel(proxy, raw.process_id + 1000, raw.secret) == b""
            completed = await raw.until_ready()
            assert error_fields(completed) == []
            assert (b"C", b"SELECT 1\0") in completed

            # the right key does cancel: the proxy forwards it to the backend serving this client
            raw.send(messages.query("SELECT pg_sleep(30)"))
            await wait_for_sleepers(server, 1)
            assert await send_cancel(proxy, raw.process_id, raw.secret) == b""
            cancelled = await raw.until_ready()
            assert [fields["C"] for fields in error_fields(cancelled)] == ["57014"]
            assert data_rows(await raw.query("SELECT 'after cancel'")) == [["after cancel"]]
        finally:
            raw.close()


# ----------------------------------------------------------------------------------------------------------
# Bad input from clients


class BadInput:
    """What a misbehaving client sends, optionally after a complete, valid login and query."""

    def __init__(self, payload: bytes, *, after_login: bool = False, half_close: bool = False) -> None:
        self.payload = payload
        self.after_login = after_login
        self.half_close = half_close


APP = PostgresServer  # the user and database every throwaway server has
BAD_INPUTS = {
    "truncated_startup": BadInput(startup_packet({"user": APP.app_user})[:7], half_close=True),
    "oversized_startup": BadInput(struct.pack("!II", 20000, PROTOCOL_3_0) + b"user\0" + b"x" * 100),
    "oversized_message_after_auth": BadInput(b"Q" + struct.pack("!I", 0x7FFFFFF0) + b"SELECT 1", after_login=True),
    "unknown_message_after_auth": BadInput(b"y" + struct.pack("!I", 9) + b"junk\0", after_login=True),
    "garbage_after_auth": BadInput(b"\xde\xad\xbe\xef" * 8, after_login=True),
    "truncated_message_after_auth": BadInput(messages.query("SELECT 1")[:8], after_login=True, half_close=True),
    "protocol_2_0": BadInput(startup_packet({"user": APP.app_user, "database": APP.app_database}, version=2 << 16)),
    "startup_without_user": BadInput(startup_packet({"database": APP.app_database})),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input_ends_only_that_client(server: PostgresServer, case: str) -> None:
    bad_input = BAD_INPUTS[case]
    async with running_proxy(make_config(server)) as proxy:
        async with transaction_loop(proxy, server) as bystander:
            raw = await RawClient.open(proxy.address("default"))
            try:
                if bad_input.after_login:
                    await raw.login(server.app_user, server.app_password, server.app_database)
                    assert data_rows(await raw.query("SELECT 1")) == [["1"]]
                await wait_for(lambda: no_backend_opening(proxy), "backend connections being opened")
                backends_before = metric(proxy, "DatabaseConnections")
                opened_before = metric(proxy, "DatabaseConnectionsSetupSucceeded")
                clients_before = metric(proxy, "ClientConnections")

                raw.send(bad_input.payload)
                if bad_input.half_close:
                    raw.writer.write_eof()
                received = split_messages(await raw.read_to_close())
            finally:
                raw.close()

            assert received, "the proxy closed the connection without saying why"
            mtype, body = received[-1]
            assert mtype == b"E", f"expected a final ErrorResponse, got {received!r}"
            fields = messages.parse_error_fields(body)
            assert fields["S"] == "FATAL"
            assert fields["C"] == "08P01"
            assert "Traceback" not in fields["M"] and "Error(" not in fields["M"]
            if case == "protocol_2_0":
                assert "2.0" in fields["M"] and "protocol" in fields["M"]
            if case == "startup_without_user":
                assert "user" in fields["M"]

            await wait_for(lambda: metric(proxy, "ClientConnections") == clients_before - 1, "the client to go")
            await bystander.progress()
            # the pool carries on with the backends it had: none was lost or had to be replaced
            assert metric(proxy, "DatabaseConnections") == backends_before
            assert metric(proxy, "DatabaseConnectionsSetupSucceeded") == opened_before


# ----------------------------------------------------------------------------------------------------------
# Clients that vanish mid-transaction


async def test_client_vanishing_mid_transaction_leaks_nothing(server: PostgresServer) -> None:
    # One backend only: if the abandoned one were handed on with its transaction open, the next client
    # would be inside it and would see the uncommitted row.
    async with running_proxy(single_backend_config(server, connection_borrow_timeout=30)) as proxy:
        async with transaction_loop(proxy, server) as bystander:
            raw = await raw_login(proxy, server)
            received = await raw.query(
                f"BEGIN; INSERT INTO {TABLE} (note) VALUES ('uncommitted'); SELECT pg_backend_pid()"
            )
            assert received[-1] == (b"Z", b"T")
            (backend_pid,) = data_rows(received)[0]
            raw.abort()

            def backend_state() -> str:
                return server.sql(f"SELECT state FROM pg_stat_activity WHERE pid = {backend_pid}")

            deadline = time.monotonic() + SETTLE_TIMEOUT
            while (state := await asyncio.to_thread(backend_state)) not in ("", "idle"):
                assert time.monotonic() < deadline, f"backend {backend_pid} stayed {state!r}"
                await asyncio.sleep(0.05)
            await bystander.progress()

        conn = await connect_asyncpg(proxy, server)
        try:
            for _ in range(3):
                async with conn.transaction():
                    assert await conn.fetchval(f"SELECT count(*) FROM {TABLE}") == 0
                    # inside the abandoned transaction, its INSERT would have assigned a transaction id
                    assert await conn.fetchval("SELECT txid_current_if_assigned()") is None
        finally:
            await conn.close(timeout=5)
    assert await server_sql(server, f"SELECT count(*) FROM {TABLE}") == "0"


# ----------------------------------------------------------------------------------------------------------
# The proxy as a process: flow control and the command line


def write_proxy_toml(directory: str, server: PostgresServer, *, extra_proxy: str = "", extra_group: str = "") -> str:
    path = os.path.join(directory, "proxy.toml")
    with open(path, "w") as config_file:
        config_file.write(
            f"""
[proxy]
name = "cli-proxy"
{extra_proxy}

[[endpoints]]
name = "default"
listen = "127.0.0.1:0"

[target_group]
targets = ["{server.address()}"]
database = "{server.app_database}"
connection_borrow_timeout = 10
{extra_group}

[[auth]]
username = "{server.app_user}"
password = "{server.app_password}"
"""
        )
    return path


class ProxyProcess:
    """`python -m rdsproxy --config <file>` in a subprocess; learns its port from the startup line."""

    def __init__(self, config_path: str) -> None:
        self.stderr_path = config_path + ".stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rdsproxy", "--config", config_path],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        self.address = self._read_address()

    def _read_address(self) -> tuple[str, int]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                line = self.process.stdout.readline()
                if not line:
                    break  # exited before printing its endpoint
                if b" endpoint default on " in line:
                    host, port = line.decode().rsplit(" ", 1)[1].strip().rsplit(":", 1)
                    return host, int(port)
        self.kill()
        raise AssertionError(f"the proxy process did not start (last line {line!r}):\n{self.stderr()}")

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as stderr:
            return stderr.read()

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc/<pid>/status")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def proxy_process(server: PostgresServer) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []
    with tempfile.TemporaryDirectory(prefix="rdsproxy-cli.") as directory:

        def start(**toml_extras: str) -> ProxyProcess:
            proxy = ProxyProcess(write_proxy_toml(directory, server, **toml_extras))
            started.append(proxy)
            return proxy

        yield start
        for proxy in started:
            proxy.kill()


LARGE_ROWS = 500_000
LARGE_ROW_WIDTH = 1000
RSS_GROWTH_LIMIT_KIB = 20 * 1024


class MessageCounter:
    """Counts backend messages in a byte stream fed in arbitrary chunks, without keeping the stream."""

    def __init__(self) -> None:
        self.counts: dict[bytes, int] = {}
        self.total_bytes = 0
        self.ready = False
        self.bad_data_rows = 0
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.total_bytes += len(chunk)
        buffer = self._buffer
        buffer += chunk
        pos = 0
        while len(buffer) - pos >= 5:
            (length,) = struct.unpack_from("!I", buffer, pos + 1)
            end = pos + 1 + length
            if end > len(buffer):
                break
            mtype = bytes(buffer[pos : pos + 1])
            self.counts[mtype] = self.counts.get(mtype, 0) + 1
            # DataRow: length, column count, column length, the value
            if mtype == b"D" and length != 4 + 2 + 4 + LARGE_ROW_WIDTH:
                self.bad_data_rows += 1
            if mtype == b"Z":
                self.ready = True
            pos = end
        del buffer[:pos]


async def test_slow_client_does_not_make_the_proxy_buffer(proxy_process: Callable[..., ProxyProcess]) -> None:
    proxy = proxy_process()
    raw = await RawClient.open(proxy.address, limit=2**16)
    try:
        await raw.login(PostgresServer.app_user, PostgresServer.app_password, PostgresServer.app_database)
        assert data_rows(await raw.query("SELECT 1")) == [["1"]]
        baseline = proxy.rss_kib()
        raw.send(messages.query(f"SELECT repeat('x', {LARGE_ROW_WIDTH}) FROM generate_series(1, {LARGE_ROWS})"))
        counter = MessageCounter()
        peak = baseline
        # A trickle of reads while the server could produce the whole result several times over.
        for _ in range(40):
            await asyncio.sleep(0.1)
            counter.feed(await asyncio.wait_for(raw.reader.read(2**16), MESSAGE_TIMEOUT))
            peak = max(peak, proxy.rss_kib())
        trickled = counter.total_bytes
        # Then read at full speed, still watching the proxy's memory.
        next_sample = counter.total_bytes
        while not counter.ready:
            chunk = await asyncio.wait_for(raw.reader.read(2**20), MESSAGE_TIMEOUT)
            assert chunk, "the proxy closed the connection in the middle of the result"
            counter.feed(chunk)
            if counter.total_bytes >= next_sample:
                peak = max(peak, proxy.rss_kib())
                next_sample += 16 * 2**20
    finally:
        raw.close()
    assert peak - baseline < RSS_GROWTH_LIMIT_KIB, f"proxy RSS grew from {baseline} KiB to {peak} KiB"
    assert trickled < counter.total_bytes
    assert counter.counts == {b"T": 1, b"D": LARGE_ROWS, b"C": 1, b"Z": 1}
    row_description = 1 + 4 + 2 + len(b"repeat\0") + 4 + 2 + 4 + 2 + 4 + 2
    data_row = 1 + 4 + 2 + 4 + LARGE_ROW_WIDTH
    command_complete = 1 + 4 + len(f"SELECT {LARGE_ROWS}\0")
    assert counter.total_bytes == row_description + LARGE_ROWS * data_row + command_complete + 6
    assert counter.bad_data_rows == 0


async def test_cli_serves_and_drains_on_sigterm(
    server: PostgresServer, proxy_process: Callable[..., ProxyProcess]
) -> None:
    proxy = proxy_process()
    host, port = proxy.address
    conn = await asyncpg.connect(
        host=host,
        port=port,
        user=server.app_user,
        password=server.app_password,
        database=server.app_database,
        statement_cache_size=0,
    )
    try:
        await conn.execute("BEGIN")
        await conn.execute(f"INSERT INTO {TABLE} (note) VALUES ('before SIGTERM')")
        proxy.process.send_signal(signal.SIGTERM)

        async def refuses_connections() -> bool:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except ConnectionRefusedError:
                return True
            writer.close()
            return False

        deadline = time.monotonic() + SETTLE_TIMEOUT
        while not await refuses_connections():
            assert time.monotonic() < deadline, "the draining proxy still accepts connections"
            await asyncio.sleep(0.05)
        assert proxy.process.poll() is None, "the proxy exited before the open transaction finished"

        await conn.execute(f"INSERT INTO {TABLE} (note) VALUES ('after SIGTERM')")
        await conn.execute("COMMIT")
    finally:
        conn.terminate()
    exit_code = await asyncio.to_thread(proxy.process.wait, 30)
    assert exit_code == 0, proxy.stderr()
    notes = await server_sql(server, f"SELECT string_agg(note, ',' ORDER BY id) FROM {TABLE}")
    assert notes == "before SIGTERM,after SIGTERM"
    assert "Traceback" not in proxy.stderr()


@pytest.mark.parametrize(
    ("proxy_line", "group_line", "key", "reason"),
    [
        ("", "max_connections_percent = 150", "target_group.max_connections_percent", "between 1 and 100"),
        ("idle_client_timeot = 30", "", "proxy.idle_client_timeot", "unknown key"),
    ],
)
def test_cli_invalid_config_exits_2_naming_file_key_and_reason(
    server: PostgresServer, tmp_path: Any, proxy_line: str, group_line: str, key: str, reason: str
) -> None:
    path = write_proxy_toml(str(tmp_path), server, extra_proxy=proxy_line, extra_group=group_line)
    result = subprocess.run(
        [sys.executable, "-m", "rdsproxy", "--config", path],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert path in result.stderr
    assert key in result.stderr
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
