"""`rdsproxy demo`: the serverless storm, directly against a small PostgreSQL and then through rdsproxy."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from . import Proxy
from .testing import PostgresServer, proxy_config_for, start_postgres

T = TypeVar("T")

COUNTER_SLOTS = 100
PIN_EVERY = 100  # one client in PIN_EVERY pins with SET, another with a session advisory lock
SAMPLE_INTERVAL = 0.05
BORROW_TIMEOUT = 30.0
# A client stuck longer than this is counted as failed instead of hanging the demo.
CLIENT_TIMEOUT = 45.0
IDLE_WAIT = 15.0
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
    if args.engine == "mysql":
        print("rdsproxy demo: --engine mysql is not available yet (PostgreSQL only for now)", file=sys.stderr)
        return 2
    if args.max_connections < 6:
        parser.error("--max-connections must be at least 6 (PostgreSQL reserves 3 for superusers)")
    try:
        import asyncpg  # noqa: F401 - the storm's clients
    except ImportError:
        print("rdsproxy demo needs asyncpg: pip install asyncpg", file=sys.stderr)
        return 1
    return _run_event_loop(_postgres_demo(args.clients, args.concurrency, args.max_connections))


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
    label: str,
    target: ConnectTo,
    clients: int,
    concurrency: int,
    sample: Callable[[StormResult], Awaitable[None]],
) -> StormResult:
    """`clients` short-lived clients, at most `concurrency` at once: connect, one transaction, disconnect."""
    import asyncpg

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
                await asyncio.wait_for(_client_lifetime(asyncpg, target, client_id, result), CLIENT_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none ends the demo
                result.errors[_describe_error(exc)] += 1
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
                result.sampler_errors[_describe_error(exc)] += 1
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


async def _client_lifetime(asyncpg: Any, target: ConnectTo, client_id: int, result: StormResult) -> None:
    connection = await asyncpg.connect(
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
    try:
        pins_with_set = client_id % PIN_EVERY == 0
        if pins_with_set:
            await connection.execute(f"SET statement_timeout = '{PINNED_STATEMENT_TIMEOUT}'")
        elif client_id % PIN_EVERY == PIN_EVERY // 2:
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
        result.committed_ids.append(client_id)
    except BaseException:
        # No goodbye on a failed or cancelled client: a graceful close could hang on the same problem.
        connection.terminate()
        raise
    await connection.close(timeout=CLIENT_TIMEOUT)


class StateLeak(Exception):
    """A client observed session state it never set (or lost state it did set)."""


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"TimeoutError: client took longer than {CLIENT_TIMEOUT:g} s"
    message = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {message}"


# ----------------------------------------------------------------------------------------------------------
# The PostgreSQL demo


async def _postgres_demo(clients: int, concurrency: int, max_connections: int) -> int:
    demo_started = time.perf_counter()
    print(
        f"rdsproxy demo: {clients} short-lived clients, at most {concurrency} at once, each doing connect "
        f"(SCRAM) + one transaction + disconnect,\nagainst a throwaway PostgreSQL with "
        f"max_connections = {max_connections}. Starting PostgreSQL...",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    server = await loop.run_in_executor(None, lambda: start_postgres(max_connections=max_connections))
    try:
        async with _superuser_connection(server) as monitor:
            await _create_tables(monitor, server.app_user)
            direct_target = ConnectTo(
                server.host, server.port, server.app_user, server.app_password, server.app_database
            )

            async def sample_server(result: StormResult) -> None:
                connected = await _server_connections(monitor, server.app_user)
                result.peak_server_connections = max(result.peak_server_connections, connected)

            print("Storm 1/2: directly against PostgreSQL...", flush=True)
            direct = await _storm("direct", direct_target, clients, concurrency, sample_server)
            direct.check = await _check(monitor, direct)
            await _wait_for_idle_server(monitor)
            await _reset_tables(monitor)
        # The superuser connection is closed now: even a superuser takes an ordinary connection slot first,
        # and the proxy's budget counts on every slot but its own health-check connection.

        print("Storm 2/2: through rdsproxy...", flush=True)
        try:
            proxied = await _proxied_storm(server, clients, concurrency)
        except Exception as exc:  # noqa: BLE001 - report it beside the direct results
            traceback.print_exc()
            proxied = StormResult(label="rdsproxy", clients=clients, fatal=_describe_error(exc))
        async with _superuser_connection(server) as monitor:
            proxied.check = await _check(monitor, proxied)
    finally:
        await loop.run_in_executor(None, server.stop)
    passed = _report(direct, proxied, max_connections)
    print(f"(demo took {time.perf_counter() - demo_started:.1f} s)")
    return 0 if passed else 1


@asynccontextmanager
async def _superuser_connection(server: PostgresServer) -> AsyncIterator[Any]:
    """A direct superuser connection for setup, pg_stat_activity samples and the checks."""
    import asyncpg

    connection = await asyncpg.connect(
        server.dsn(user=server.superuser, password=server.superuser_password), statement_cache_size=0
    )
    try:
        yield connection
    finally:
        await connection.close()


async def _proxied_storm(server: PostgresServer, clients: int, concurrency: int) -> StormResult:
    import asyncpg

    config = proxy_config_for(server, connection_borrow_timeout=BORROW_TIMEOUT)
    config.proxy.name = "rdsproxy-demo"
    async with Proxy(config) as proxy:
        host, port = proxy.address("default")
        target = ConnectTo(host, port, server.app_user, server.app_password, server.app_database)
        # The server's own view, sampled through the proxy so that sampling takes no extra server slot.
        sampler = await asyncpg.connect(
            host=host,
            port=port,
            user=target.user,
            password=target.password,
            database=target.database,
            statement_cache_size=0,
        )
        try:
            await _wait_for_idle_server(sampler, except_user=server.app_user)

            async def sample_proxy(result: StormResult) -> None:
                metrics = proxy.metrics()
                result.peak_backend_connections = max(
                    result.peak_backend_connections, int(metrics.get("DatabaseConnections", 0))
                )
                result.peak_pinned_sessions = max(result.peak_pinned_sessions, len(proxy.pinned_sessions()))
                connected = await _server_connections(sampler, server.app_user)
                result.peak_server_connections = max(result.peak_server_connections, connected)

            result = await _storm("rdsproxy", target, clients, concurrency, sample_proxy)
        finally:
            await sampler.close()
        result.metrics = proxy.metrics()
    return result


async def _create_tables(monitor: Any, owner: str) -> None:
    await monitor.execute(
        "CREATE TABLE storm_counters (slot integer PRIMARY KEY, hits bigint NOT NULL DEFAULT 0);"
        "CREATE TABLE storm_visits (client_id integer NOT NULL);"
        f'ALTER TABLE storm_counters OWNER TO "{owner}";'
        f'ALTER TABLE storm_visits OWNER TO "{owner}";'
    )
    await _reset_tables(monitor)


async def _reset_tables(monitor: Any) -> None:
    await monitor.execute(
        "TRUNCATE storm_counters, storm_visits;"
        f"INSERT INTO storm_counters (slot) SELECT generate_series(0, {COUNTER_SLOTS - 1});"
    )


async def _server_connections(connection: Any, user: str) -> int:
    return await connection.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename = $1", user
    )


async def _wait_for_idle_server(connection: Any, *, except_user: Optional[str] = None) -> None:
    """Backends of closed clients exit asynchronously; the next storm must find every slot free."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        " AND pid <> pg_backend_pid() AND usename IS DISTINCT FROM $1"
    )
    deadline = time.monotonic() + IDLE_WAIT
    while await connection.fetchval(query, except_user) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def _check(monitor: Any, result: StormResult) -> tuple[bool, str]:
    """Every committed transaction is in the database exactly once, and nothing else is."""
    total_hits = await monitor.fetchval("SELECT coalesce(sum(hits), 0) FROM storm_counters")
    visits = await monitor.fetch("SELECT client_id FROM storm_visits")
    committed = Counter(result.committed_ids)
    recorded = Counter(row["client_id"] for row in visits)
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


def _report(direct: StormResult, proxied: StormResult, max_connections: int) -> bool:
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
    print(f"Results (PostgreSQL max_connections = {max_connections}; latency over succeeded clients)")
    for row in rows:
        print(f"  {row[0]:<{widths[0]}}   {row[1]:>{widths[1]}}   {row[2]:>{widths[2]}}")
    print("  * the app user's backends in pg_stat_activity; through rdsproxy including its health check")

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
