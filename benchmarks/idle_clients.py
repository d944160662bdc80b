"""Idle clients: resident memory a proxy spends per authenticated idle PostgreSQL client, rdsproxy vs PgBouncer.

Run: `python -m benchmarks.idle_clients [--clients 10000] [--per-process 2500] [--json out.json]`.
Clients log in with SCRAM-SHA-256 over raw sockets (rdsproxy.protocol.pg: startup message, BackendAuthenticator)
from separate worker processes (a process may hold at most 20,000 files), each bound to its own loopback source
address (127.0.0.2, 127.0.0.3, ...) so ephemeral ports never run short. The figure is the proxy process's VmRSS
after all clients are in, minus before, divided by the clients that got in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import struct
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Optional, Union

from benchmarks.services import (
    PgBouncer,
    RdsProxyProcess,
    client_environment,
    open_fd_count,
    open_file_limit,
    raise_open_file_limit,
    vm_rss_kib,
)
from rdsproxy.protocol.pg.auth import BackendAuthenticator
from rdsproxy.protocol.pg.messages import parse_error_fields, query, startup_message, terminate
from rdsproxy.testing import start_postgres

DEFAULT_CLIENTS = 10_000
DEFAULT_PER_PROCESS = 2_500
HANDSHAKES_IN_FLIGHT = 25  # per worker: keeps the proxies' accept backlogs from overflowing
POOL_SIZE = 20
TARGET_KIB_PER_CLIENT = 2.0
SETTLE_SECONDS = 2.0
WORKER_TIMEOUT = 900.0
CREDENTIALS_ENV = ("BENCH_PG_USER", "BENCH_PG_PASSWORD", "BENCH_PG_DATABASE")  # never on a command line

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # workers import benchmarks from here
Proxy = Union[PgBouncer, RdsProxyProcess]


# ----------------------------------------------------------------------------------------------------------
# Client side: one authenticated connection, and the worker process that holds many


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    (length,) = struct.unpack("!i", header[1:])
    return header[:1], await reader.readexactly(length - 4)


async def _read_until_ready(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auth: BackendAuthenticator
) -> None:
    while True:
        message_type, body = await _read_message(reader)
        if message_type == b"R":
            reply = auth.handle(body)
            if reply:
                writer.write(reply)
        elif message_type == b"E":
            fields = parse_error_fields(body)
            raise RuntimeError(f"{fields.get('C', '?')}: {fields.get('M', 'error without message')}")
        elif message_type == b"Z":
            return


async def open_authenticated(
    host: str, port: int, source: str, user: str, password: str, database: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection that has completed startup and SCRAM authentication (ReadyForQuery received)."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        writer.write(startup_message({"user": user, "database": database}))
        await _read_until_ready(reader, writer, BackendAuthenticator(user, password))
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _hold_connections(host: str, port: int, count: int, source: str) -> None:
    user, password, database = (os.environ[name] for name in CREDENTIALS_ENV)
    in_flight = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with in_flight:
            return await open_authenticated(host, port, source, user, password, database)

    outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    errors = [f"{type(item).__name__}: {item}" for item in outcomes if isinstance(item, BaseException)]
    report = {"connected": count - len(errors), "failed": len(errors), "errors": sorted(set(errors))[:5]}
    print(json.dumps(report), flush=True)
    # Stay connected and idle until the parent closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def worker_main(host: str, port: int, count: int, source: str) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_hold_connections(host, port, count, source))
    return 0


# ----------------------------------------------------------------------------------------------------------
# Parent: proxies, workers, measurements


@dataclass
class IdleResult:
    proxy: str
    clients_wanted: int
    clients_connected: int = 0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    fds_before: int = 0
    fds_after: int = 0
    open_file_limit: int = 0
    connect_seconds: float = 0.0
    proxy_reported_clients: Optional[int] = None
    failure: Optional[str] = None

    @property
    def kib_per_client(self) -> Optional[float]:
        if self.failure or not self.clients_connected:
            return None
        return (self.rss_after_kib - self.rss_before_kib) / self.clients_connected


async def _warm_up(host: str, port: int, user: str, password: str, database: str, clients: int = 5) -> None:
    """A few clients that each run a query: pools, code paths and caches exist before the first measurement."""
    for _ in range(clients):
        reader, writer = await open_authenticated(host, port, "127.0.0.1", user, password, database)
        writer.write(query("SELECT 1"))
        await _read_until_ready(reader, writer, BackendAuthenticator(user, password))
        writer.write(terminate())
        writer.close()


def measure(name: str, proxy: Proxy, clients: int, per_process: int) -> IdleResult:
    server = proxy.server
    result = IdleResult(proxy=name, clients_wanted=clients, open_file_limit=open_file_limit(proxy.pid))
    asyncio.run(_warm_up(proxy.host, proxy.port, server.app_user, server.app_password, server.app_database))
    time.sleep(SETTLE_SECONDS)
    result.rss_before_kib, result.fds_before = vm_rss_kib(proxy.pid), open_fd_count(proxy.pid)
    env = client_environment(
        **dict(zip(CREDENTIALS_ENV, (server.app_user, server.app_password, server.app_database))),
        PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY_ROOT, os.environ.get("PYTHONPATH")])),
    )
    workers: list[subprocess.Popen[str]] = []
    started = time.monotonic()
    try:
        for index in range(math.ceil(clients / per_process)):
            count = min(per_process, clients - index * per_process)
            source = f"127.0.0.{index + 2}"
            argv = [sys.executable, "-m", "benchmarks.idle_clients", "--worker", proxy.host, str(proxy.port)]
            argv += [str(count), source]
            workers.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True))
        problems = []
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            if not line:
                problems.append(f"a client worker exited with status {worker.wait()} before reporting")
                continue
            report = json.loads(line)
            result.clients_connected += report["connected"]
            if report["failed"]:
                problems.append(f"{report['failed']} logins failed: {'; '.join(report['errors'])}")
        result.connect_seconds = time.monotonic() - started
        time.sleep(SETTLE_SECONDS)
        result.rss_after_kib, result.fds_after = vm_rss_kib(proxy.pid), open_fd_count(proxy.pid)
        if isinstance(proxy, RdsProxyProcess):
            result.proxy_reported_clients = proxy.metrics().get("ClientConnections")
        if problems:
            result.failure = " | ".join(problems)
    finally:
        for worker in workers:
            if worker.stdin:
                worker.stdin.close()
        for worker in workers:
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    return result


def render(results: list[IdleResult], clients: int, per_process: int) -> str:
    lines = [
        f"idle clients: {clients:,} authenticated (SCRAM) idle PostgreSQL clients from "
        f"{math.ceil(clients / per_process)} processes; proxy VmRSS after minus before, per client "
        "(1 KB = 1024 bytes); noisy: compare within one run",
        "",
        f"{'proxy':<11}{'connected':>10}{'rss before':>12}{'rss after':>12}{'KB/client':>11}{'fds before/after':>18}"
        f"{'fd limit':>10}{'connect s':>11}  target <= {TARGET_KIB_PER_CLIENT:g} KB",
    ]
    for result in results:
        per_client = result.kib_per_client
        verdict = "-" if per_client is None else ("met" if per_client <= TARGET_KIB_PER_CLIENT else "MISSED")
        if result.proxy == "pgbouncer":
            verdict = "(reference)"
        lines.append(
            f"{result.proxy:<11}{result.clients_connected:>10,}{result.rss_before_kib / 1024:>9.1f} MB"
            f"{result.rss_after_kib / 1024:>9.1f} MB{'FAIL' if per_client is None else f'{per_client:.2f}':>11}"
            f"{f'{result.fds_before}/{result.fds_after}':>18}{result.open_file_limit:>10}"
            f"{result.connect_seconds:>11.1f}  {verdict}"
        )
    for result in results:
        if result.proxy_reported_clients is not None:
            lines.append(f"rdsproxy reported ClientConnections = {result.proxy_reported_clients}")
        if result.failure:
            lines.append(f"FAILED ({result.proxy}): {result.failure}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        host, port, count, source = argv[1:5]
        return worker_main(host, int(port), int(count), source)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle_clients", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help=f"default {DEFAULT_CLIENTS:,}")
    parser.add_argument(
        "--per-process",
        type=int,
        default=DEFAULT_PER_PROCESS,
        help=f"clients per worker (default {DEFAULT_PER_PROCESS:,})",
    )
    parser.add_argument("--proxy", choices=("pgbouncer", "rdsproxy"), action="append", help="default: both")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.per_process <= 15_000:
        parser.error("--per-process must be between 1 and 15,000 (one process may hold at most 20,000 files)")
    if math.ceil(args.clients / args.per_process) > 250:
        parser.error("too many worker processes: raise --per-process")
    limit = raise_open_file_limit()
    if args.clients + 100 > limit:
        parser.error(f"the proxies may hold at most {limit} files each: lower --clients")
    results = []
    with ExitStack() as stack:
        server = stack.enter_context(start_postgres(max_connections=64))
        for name in args.proxy or ("pgbouncer", "rdsproxy"):
            if name == "pgbouncer":
                proxy: Proxy = PgBouncer(server, pool_size=POOL_SIZE, max_client_conn=args.clients + 100)
            else:
                proxy = RdsProxyProcess(server, pool_size=POOL_SIZE)
            with proxy:
                result = measure(name, proxy, args.clients, args.per_process)
            results.append(result)
            print(f"  {name}: {result.clients_connected:,} clients in {result.connect_seconds:.1f} s", file=sys.stderr)
    print(render(results, args.clients, args.per_process))
    if args.json:
        with open(args.json, "w") as file:
            documents = [{**asdict(result), "kib_per_client": result.kib_per_client} for result in results]
            json.dump({"clients": args.clients, "per_process": args.per_process, "results": documents}, file, indent=2)
            file.write("\n")
    return 1 if any(result.failure for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
