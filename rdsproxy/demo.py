"""`rdsproxy demo`: the serverless storm, directly against a small PostgreSQL or MariaDB and then through rdsproxy."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from . import Proxy
from .testing import (
    MARIADB_MIN_CONNECTIONS,
    MariaDBServer,
    PostgresServer,
    proxy_config_for,
    start_mariadb,
    start_postgres,
)

T = TypeVar("T")

COUNTER_SLOTS = 100
PIN_EVERY = 100  # one client in PIN_EVERY pins by setting session state, another with a session lock
SAMPLE_INTERVAL = 0.05
BORROW_TIMEOUT = 30.0
# A client stuck longer than this is counted as failed instead of hanging the demo.
CLIENT_TIMEOUT = 45.0
IDLE_WAIT = 15.0
# MariaDB's accept queue (back_log = 50 + max_connections / 5) overflows in the direct storm, and a client whose
# connection the kernel did not queue waits for the server's greeting until a SYN-ACK retry gets through (up to
# ~30 s): a connect timeout, as serverless clients use, keeps those from stalling the demo for CLIENT_TIMEOUT.
MARIADB_CONNECT_TIMEOUT = 10.0
PINNED_STATEMENT_TIMEOUT = "5s"


def main(argv: Optional[list[str]] = None) -> int:
    """Run the demo; 0 when the proxy run had no errors and the correctness checks passed, else 1."""
    parser = argparse.ArgumentParser(
        prog="rdsproxy demo",
        description="Far more short-lived clients than the database allows: directly, then through rdsproxy.",
    )
    parser.add_argument("--engine", choices=("postgres", "mysql"), default="postgres")
    parser.add_argument("--clients", type=_positive_int, default=2000, help="clients in the storm (2000)")
    parser.add_argument(
        "--concurrency", type=_positive_int, default=300, help="clients connected at once, at most (300)"
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=40,
        help="the throwaway server's max_connections (40)",
    )
    args = parser.parse_args(argv)
    engine_class = _MariaDB if args.engine == "mysql" else _Postgres
    if args.max_connections < engine_class.min_max_connections:
        parser.error(
            f"--max-connections must be at least {engine_class.min_max_connections}"
            f" ({engine_class.min_max_connections_reason})"
        )
    try:
        engine = engine_class()
    except ImportError:
        print(
            f"rdsproxy demo needs {engine_class.client_package}: pip install {engine_class.client_package}",
            file=sys.stderr,
        )
        return 1
    return _run_event_loop(_demo(engine, args.clients, args.concurrency, args.max_connections))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _run_event_loop(coroutine: Awaitable[T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    if not hasattr(uvloop, "run"):  # uvloop < 0.18
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    return uvloop.run(coroutine)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------
# One storm


@dataclass
class StormResult:
    """What one storm did, as seen by its clients and the samplers running beside them."""

    label: str
    clients: int
    succeeded: int = 0
    committed_ids: list[int] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    peak_clients: int = 0
    peak_server_connections: int = 0
    # Filled for the proxy run only.
    peak_backend_connections: int = 0
    peak_pinned_sessions: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    check: Optional[tuple[bool, str]] = None
    fatal: Optional[str] = None  # the whole run failed (e.g. the proxy did not start)
    sampler_errors: Counter = field(default_factory=Counter)

    @property
    def error_count(self) -> int:
        return self.clients - self.succeeded


@dataclass
class ConnectTo:
    """Where and as whom a storm's clients connect."""

    host: str
    port: int
    user: str
    password: str
    database: str


async def _storm(
    engine: _Engine,
    label: str,
    target: ConnectTo,
    clients: int,
    concurrency: int,
    sample: Callable[[StormResult], Awaitable[None]],
) -> StormResult:
    """`clients` short-lived clients, at most `concurrency` at once: connect, one transaction, disconnect."""
    result = StormResult(label=label, clients=clients)
    gate = asyncio.Semaphore(concurrency)
    in_flight = 0

    async def one_client(client_id: int) -> None:
        nonlocal in_flight
        async with gate:
            in_flight += 1
            result.peak_clients = max(result.peak_clients, in_flight)
            started = time.perf_counter()
            try:
                await asyncio.wait_for(_client_lifetime(engine, target, client_id, result), CLIENT_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none ends the demo
                result.errors[engine.describe_error(exc)] += 1
            else:
                result.succeeded += 1
                result.latencies_ms.append((time.perf_counter() - started) * 1000.0)
            finally:
                in_flight -= 1

    stop_sampling = asyncio.Event()

    async def sampler() -> None:
        while not stop_sampling.is_set():
            try:
                await sample(result)
            except Exception as exc:  # noqa: BLE001 - a failed sample must not end the demo
                result.sampler_errors[engine.describe_error(exc)] += 1
            try:
                await asyncio.wait_for(stop_sampling.wait(), SAMPLE_INTERVAL)
            except asyncio.TimeoutError:
                pass

    sampling = asyncio.ensure_future(sampler())
    started = time.perf_counter()
    await asyncio.gather(*(one_client(client_id) for client_id in range(clients)))
    result.wall_seconds = time.perf_counter() - started
    stop_sampling.set()
    await sampling
    return result


async def _client_lifetime(engine: _Engine, target: ConnectTo, client_id: int, result: StormResult) -> None:
    connection = await engine.connect(target)
    try:
        await engine.one_transaction(connection, client_id)
        result.committed_ids.append(client_id)
    except BaseException:
        # No goodbye on a failed or cancelled client: a graceful close could hang on the same problem.
        engine.terminate(connection)
        raise
    await engine.close(connection)


def _pins_with_session_state(client_id: int) -> bool:
    """This client sets session state the proxy cannot replay (and checks it sees its own value only)."""
    return client_id % PIN_EVERY == 0


def _pins_with_session_lock(client_id: int) -> bool:
    return client_id % PIN_EVERY == PIN_EVERY // 2


class StateLeak(Exception):
    """A client observed session state it never set (or lost state it did set)."""


class ConnectTimeout(Exception):
    """The server (or the proxy) did not complete a client's connect in time."""


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"TimeoutError: client took longer than {CLIENT_TIMEOUT:g} s"
    message = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {message}"


# ----------------------------------------------------------------------------------------------------------
# The engines: what differs between PostgreSQL and MariaDB, as small adapters around their client libraries


class _Engine:
    """The engine-specific parts of the demo; the storm, the checks and the report are shared."""

    name = ""  # as the report names the server
    client_package = ""  # the client library the storm needs
    auth_method = ""  # how the storm's clients authenticate
    min_max_connections = 1
    min_max_connections_reason = ""
    server_connections_note = ""  # what "peak server connections" counts

    def start_server(self, max_connections: int) -> Any:
        raise NotImplementedError

    def superuser_connection(self, server: Any) -> AbstractAsyncContextManager[Any]:
        """A direct superuser connection for setup, server-side samples and the checks."""
        raise NotImplementedError

    async def create_tables(self, monitor: Any, server: Any) -> None:
        raise NotImplementedError

    async def reset_tables(self, monitor: Any) -> None:
        raise NotImplementedError

    async def connect(self, target: ConnectTo) -> Any:
        raise NotImplementedError

    async def one_transaction(self, connection: Any, client_id: int) -> None:
        """Pin if this client is one of those that do, then the storm's transaction, checked for state leaks."""
        raise NotImplementedError

    def terminate(self, connection: Any) -> None:
        raise NotImplementedError

    async def close(self, connection: Any) -> None:
        raise NotImplementedError

    async def fetch(self, connection: Any, query: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def server_connections(self, connection: Any, user: str) -> int:
        """Sessions of `user` on the server, as the server itself counts them."""
        raise NotImplementedError

    async def other_sessions(self, connection: Any, except_user: Optional[str]) -> int:
        """Sessions on the server besides `connection` itself and those of `except_user`."""
        raise NotImplementedError

    def describe_error(self, exc: BaseException) -> str:
        return _describe_error(exc)


class _Postgres(_Engine):
    name = "PostgreSQL"
    client_package = "asyncpg"
    auth_method = "SCRAM"
    min_max_connections = 6
    min_max_connections_reason = "PostgreSQL reserves 3 for superusers"
    server_connections_note = "the app user's backends in pg_stat_activity"

    def __init__(self) -> None:
        import asyncpg

        self.asyncpg = asyncpg

    def start_server(self, max_connections: int) -> PostgresServer:
        return start_postgres(max_connections=max_connections)

    @asynccontextmanager
    async def superuser_connection(self, server: PostgresServer) -> AsyncIterator[Any]:
        connection = await self.asyncpg.connect(
            server.dsn(user=server.superuser, password=server.superuser_password), statement_cache_size=0
        )
        try:
            yield connection
        finally:
            await connection.close()

    async def create_tables(self, monitor: Any, server: PostgresServer) -> None:
        owner = server.app_user
        await monitor.execute(
            "CREATE TABLE storm_counters (slot integer PRIMARY KEY, hits bigint NOT NULL DEFAULT 0);"
            "CREATE TABLE storm_visits (client_id integer NOT NULL);"
            f'ALTER TABLE storm_counters OWNER TO "{owner}";'
            f'ALTER TABLE storm_visits OWNER TO "{owner}";'
        )
        await self.reset_tables(monitor)

    async def reset_tables(self, monitor: Any) -> None:
        await monitor.execute(
            "TRUNCATE storm_counters, storm_visits;"
            f"INSERT INTO storm_counters (slot) SELECT generate_series(0, {COUNTER_SLOTS - 1});"
        )

    async def connect(self, target: ConnectTo) -> Any:
        return await self.asyncpg.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            database=target.database,
            statement_cache_size=0,
            timeout=CLIENT_TIMEOUT,
            command_timeout=CLIENT_TIMEOUT,
            ssl=False,
        )

    async def one_transaction(self, connection: Any, client_id: int) -> None:
        pins_with_set = _pins_with_session_state(client_id)
        if pins_with_set:
            await connection.execute(f"SET statement_timeout = '{PINNED_STATEMENT_TIMEOUT}'")
        elif _pins_with_session_lock(client_id):
            await connection.execute(f"SELECT pg_advisory_lock({client_id})")
        async with connection.transaction():
            await connection.execute(
                "UPDATE storm_counters SET hits = hits + 1 WHERE slot = $1", client_id % COUNTER_SLOTS
            )
            await connection.execute("INSERT INTO storm_visits (client_id) VALUES ($1)", client_id)
            row = await connection.fetchrow(
                "SELECT hits, current_setting('statement_timeout') AS statement_timeout"
                " FROM storm_counters WHERE slot = $1",
                client_id % COUNTER_SLOTS,
            )
            # Each client sees only its own session state, whichever backend serves it.
            expected = PINNED_STATEMENT_TIMEOUT if pins_with_set else "0"
            if row["statement_timeout"] != expected:
                raise StateLeak(f"statement_timeout is {row['statement_timeout']!r}, expected {expected!r}")

    def terminate(self, connection: Any) -> None:
        connection.terminate()

    async def close(self, connection: Any) -> None:
        await connection.close(timeout=CLIENT_TIMEOUT)

    async def fetch(self, connection: Any, query: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await connection.fetch(query)]

    async def server_connections(self, connection: Any, user: str) -> int:
        return await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename = $1", user
        )

    async def other_sessions(self, connection: Any, except_user: Optional[str]) -> int:
        return await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            " AND pid <> pg_backend_pid() AND usename IS DISTINCT FROM $1",
            except_user,
        )


class _MariaDB(_Engine):
    name = "MariaDB"
    client_package = "aiomysql"
    auth_method = "mysql_native_password"
    min_max_connections = MARIADB_MIN_CONNECTIONS
    min_max_connections_reason = "MariaDB's minimum"
    server_connections_note = "the app user's sessions in information_schema.PROCESSLIST"

    def __init__(self) -> None:
        import aiomysql
        import pymysql

        self.aiomysql = aiomysql
        self.pymysql = pymysql

    def start_server(self, max_connections: int) -> MariaDBServer:
        return start_mariadb(max_connections=max_connections)

    @asynccontextmanager
    async def superuser_connection(self, server: MariaDBServer) -> AsyncIterator[Any]:
        connection = await self.aiomysql.connect(
            unix_socket=server.socket_path,
            user=server.superuser,
            password="",
            db=server.app_database,
            autocommit=True,
        )
        try:
            yield connection
        finally:
            await connection.ensure_closed()

    async def create_tables(self, monitor: Any, server: MariaDBServer) -> None:
        async with monitor.cursor() as cursor:
            await cursor.execute(
                "CREATE TABLE storm_counters (slot integer PRIMARY KEY, hits bigint NOT NULL DEFAULT 0) ENGINE=InnoDB"
            )
            await cursor.execute("CREATE TABLE storm_visits (client_id integer NOT NULL) ENGINE=InnoDB")
        await self.reset_tables(monitor)

    async def reset_tables(self, monitor: Any) -> None:
        async with monitor.cursor() as cursor:
            await cursor.execute("TRUNCATE storm_counters")
            await cursor.execute("TRUNCATE storm_visits")
            slots = ", ".join(f"({slot})" for slot in range(COUNTER_SLOTS))
            await cursor.execute(f"INSERT INTO storm_counters (slot) VALUES {slots}")

    async def connect(self, target: ConnectTo) -> Any:
        # autocommit=True matches the server's default, so the client sends no SET at connect.
        # aiomysql's connect_timeout covers the TCP connect only, not the server's greeting and the login.
        connecting = self.aiomysql.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            db=target.database,
            autocommit=True,
            connect_timeout=MARIADB_CONNECT_TIMEOUT,
        )
        try:
            return await asyncio.wait_for(connecting, MARIADB_CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            raise ConnectTimeout(f"connect took longer than {MARIADB_CONNECT_TIMEOUT:g} s") from None

    async def one_transaction(self, connection: Any, client_id: int) -> None:
        pins_with_variable = _pins_with_session_state(client_id)
        slot = client_id % COUNTER_SLOTS
        async with connection.cursor() as cursor:
            if pins_with_variable:
                await cursor.execute("SET @storm_client = %s", (client_id,))
            elif _pins_with_session_lock(client_id):
                await cursor.execute("SELECT GET_LOCK(%s, 10)", (f"storm-{client_id}",))
            await connection.begin()
            await cursor.execute("UPDATE storm_counters SET hits = hits + 1 WHERE slot = %s", (slot,))
            await cursor.execute("INSERT INTO storm_visits (client_id) VALUES (%s)", (client_id,))
            await cursor.execute("SELECT hits, @storm_client FROM storm_counters WHERE slot = %s", (slot,))
            _hits, seen = await cursor.fetchone()
            # Each client sees only its own user variable, whichever backend serves it. An error leaves the
            # transaction open: terminate() drops the connection and the server rolls it back.
            expected = client_id if pins_with_variable else None
            if seen != expected:
                raise StateLeak(f"@storm_client is {seen!r}, expected {expected!r}")
            await connection.commit()

    def terminate(self, connection: Any) -> None:
        connection.close()

    async def close(self, connection: Any) -> None:
        await connection.ensure_closed()

    async def fetch(self, connection: Any, query: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        async with connection.cursor() as cursor:
            await cursor.execute(query, parameters)
            return list(await cursor.fetchall())

    async def server_connections(self, connection: Any, user: str) -> int:
        # Without the PROCESS privilege a user sees only its own sessions: enough for the app user's count.
        rows = await self.fetch(
            connection, "SELECT count(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (user,)
        )
        return int(rows[0][0])

    async def other_sessions(self, connection: Any, except_user: Optional[str]) -> int:
        # Threads_connected counts the sessions the app user cannot see in PROCESSLIST (root's) as well.
        rows = await self.fetch(
            connection,
            "SELECT (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS"
            " WHERE VARIABLE_NAME = 'THREADS_CONNECTED')"
            " - (SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID() OR USER = %s)",
            (except_user,),
        )
        return int(rows[0][0])

    def describe_error(self, exc: BaseException) -> str:
        # PyMySQL errors carry (error code, message); a failed connect also names the socket error beneath.
        if isinstance(exc, self.pymysql.err.MySQLError) and len(exc.args) == 2 and isinstance(exc.args[0], int):
            code, message = exc.args
            described = f"{type(exc).__name__} {code}: {' '.join(str(message).split())}"
            cause = exc.__cause__
            if cause is not None:
                described += f" ({_describe_error(cause)})"
            return described
        return _describe_error(exc)


# ----------------------------------------------------------------------------------------------------------
# The demo


async def _demo(engine: _Engine, clients: int, concurrency: int, max_connections: int) -> int:
    demo_started = time.perf_counter()
    print(
        f"rdsproxy demo: {clients} short-lived clients, at most {concurrency} at once, each doing connect "
        f"({engine.auth_method}) + one transaction + disconnect,\nagainst a throwaway {engine.name} with "
        f"max_connections = {max_connections}. Starting {engine.name}...",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    server = await loop.run_in_executor(None, lambda: engine.start_server(max_connections))
    try:
        async with engine.superuser_connection(server) as monitor:
            await engine.create_tables(monitor, server)
            direct_target = ConnectTo(
                server.host, server.port, server.app_user, server.app_password, server.app_database
            )

            async def sample_server(result: StormResult) -> None:
                connected = await engine.server_connections(monitor, server.app_user)
                result.peak_server_connections = max(result.peak_server_connections, connected)

            print(f"Storm 1/2: directly against {engine.name}...", flush=True)
            direct = await _storm(engine, "direct", direct_target, clients, concurrency, sample_server)
            direct.check = await _check(engine, monitor, direct)
            await _wait_for_idle_server(engine, monitor)
            await engine.reset_tables(monitor)
        # The superuser connection is closed now: even a superuser takes an ordinary connection slot first,
        # and the proxy's budget counts on every slot but its own health-check connection.

        print("Storm 2/2: through rdsproxy...", flush=True)
        try:
            proxied = await _proxied_storm(engine, server, clients, concurrency)
        except Exception as exc:  # noqa: BLE001 - report it beside the direct results
            traceback.print_exc()
            proxied = StormResult(label="rdsproxy", clients=clients, fatal=engine.describe_error(exc))
        async with engine.superuser_connection(server) as monitor:
            proxied.check = await _check(engine, monitor, proxied)
    finally:
        await loop.run_in_executor(None, server.stop)
    passed = _report(engine, direct, proxied, max_connections)
    print(f"(demo took {time.perf_counter() - demo_started:.1f} s)")
    return 0 if passed else 1


async def _proxied_storm(engine: _Engine, server: Any, clients: int, concurrency: int) -> StormResult:
    config = proxy_config_for(server, connection_borrow_timeout=BORROW_TIMEOUT)
    config.proxy.name = "rdsproxy-demo"
    async with Proxy(config) as proxy:
        host, port = proxy.address("default")
        target = ConnectTo(host, port, server.app_user, server.app_password, server.app_database)
        # The server's own view, sampled through the proxy so that sampling takes no extra server slot.
        sampler = await engine.connect(target)
        try:
            await _wait_for_idle_server(engine, sampler, except_user=server.app_user)

            async def sample_proxy(result: StormResult) -> None:
                metrics = proxy.metrics()
                result.peak_backend_connections = max(
                    result.peak_backend_connections, int(metrics.get("DatabaseConnections", 0))
                )
                result.peak_pinned_sessions = max(result.peak_pinned_sessions, len(proxy.pinned_sessions()))
                connected = await engine.server_connections(sampler, server.app_user)
                result.peak_server_connections = max(result.peak_server_connections, connected)

            result = await _storm(engine, "rdsproxy", target, clients, concurrency, sample_proxy)
        finally:
            await engine.close(sampler)
        result.metrics = proxy.metrics()
    return result


async def _wait_for_idle_server(engine: _Engine, connection: Any, *, except_user: Optional[str] = None) -> None:
    """Sessions of closed clients end asynchronously; the next storm must find every slot free."""
    deadline = time.monotonic() + IDLE_WAIT
    while await engine.other_sessions(connection, except_user) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def _check(engine: _Engine, monitor: Any, result: StormResult) -> tuple[bool, str]:
    """Every committed transaction is in the database exactly once, and nothing else is."""
    ((total_hits,),) = await engine.fetch(monitor, "SELECT coalesce(sum(hits), 0) FROM storm_counters")
    total_hits = int(total_hits)
    visits = await engine.fetch(monitor, "SELECT client_id FROM storm_visits")
    committed = Counter(result.committed_ids)
    recorded = Counter(client_id for (client_id,) in visits)
    passed = total_hits == len(result.committed_ids) and recorded == committed
    mark = "OK" if passed else "FAILED"
    missing = sum((committed - recorded).values())
    unexpected = sum((recorded - committed).values())
    detail = f"counter sum {total_hits} vs {len(result.committed_ids)} committed"
    detail += f", visit rows {len(visits)} ({missing} missing, {unexpected} unexpected): {mark}"
    return passed, detail


# ----------------------------------------------------------------------------------------------------------
# Report


def _percentile(values: list[float], fraction: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _milliseconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def _report(engine: _Engine, direct: StormResult, proxied: StormResult, max_connections: int) -> bool:
    metrics = proxied.metrics
    backends_allowed = int(metrics.get("MaxDatabaseConnectionsAllowed", 0))
    rows = [
        ("", "direct", "through rdsproxy"),
        ("clients succeeded", *(f"{r.succeeded} / {r.clients}" for r in (direct, proxied))),
        ("errors", *(str(r.error_count) for r in (direct, proxied))),
        ("wall time (s)", *(f"{r.wall_seconds:.2f}" for r in (direct, proxied))),
        (
            "client lifetime p50 (ms)",
            *(_milliseconds(_percentile(r.latencies_ms, 0.50)) for r in (direct, proxied)),
        ),
        (
            "client lifetime p99 (ms)",
            *(_milliseconds(_percentile(r.latencies_ms, 0.99)) for r in (direct, proxied)),
        ),
        ("peak concurrent clients", *(str(r.peak_clients) for r in (direct, proxied))),
        ("peak server connections*", *(str(r.peak_server_connections) for r in (direct, proxied))),
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    print()
    print(f"Results ({engine.name} max_connections = {max_connections}; latency over succeeded clients)")
    for row in rows:
        print(f"  {row[0]:<{widths[0]}}   {row[1]:>{widths[1]}}   {row[2]:>{widths[2]}}")
    print(f"  * {engine.server_connections_note}; through rdsproxy including its health check")

    for result in (direct, proxied):
        if result.errors or result.fatal:
            print(f"\nErrors {'directly' if result is direct else 'through rdsproxy'}:")
            if result.fatal:
                print(f"  the whole run failed: {result.fatal}")
            for message, count in result.errors.most_common():
                print(f"  {count:>6}  {message}")
        for message, count in result.sampler_errors.most_common():
            print(f"  (sampling failed {count} times during the {result.label} run: {message})")

    peak_backends = proxied.peak_backend_connections
    ratio = proxied.peak_clients / peak_backends if peak_backends else 0.0
    pin_reasons = {
        name.split(".", 1)[1]: int(count) for name, count in metrics.items() if name.startswith("SessionPinningEvents.")
    }
    reasons_text = ", ".join(f"{reason} {count}" for reason, count in sorted(pin_reasons.items()))
    print("\nrdsproxy:")
    print(f"  backend connections (peak)   {peak_backends} of MaxDatabaseConnectionsAllowed {backends_allowed}")
    clients_on_backends = f"{proxied.peak_clients} concurrent clients on {peak_backends} backends"
    print(f"  multiplexing ratio           {ratio:.1f} : 1  ({clients_on_backends})")
    print(
        f"  session pinning events       {int(metrics.get('SessionPinningEvents', 0))}"
        + (f"  ({reasons_text})" if reasons_text else "")
        + f"; at most {proxied.peak_pinned_sessions} pinned at once"
    )
    print(f"  borrow timeouts              {int(metrics.get('DatabaseConnectionBorrowTimeouts', 0))}")
    print(
        f"  backend connections opened   {int(metrics.get('DatabaseConnectionsSetupSucceeded', 0))}"
        f" for {proxied.clients} clients"
    )

    print("\nCorrectness (every committed transaction recorded exactly once):")
    checks_passed = True
    for result in (direct, proxied):
        passed, detail = result.check or (False, "not run")
        checks_passed = checks_passed and passed
        print(f"  {result.label:<9} {detail}")

    passed = checks_passed and proxied.error_count == 0 and proxied.succeeded == proxied.clients
    verdict = "PASS" if passed else "FAIL"
    print(f"\n{verdict}: {proxied.error_count} errors through rdsproxy, {direct.error_count} directly")
    return passed
