"""Benchmark fixtures (servers, PgBouncer, rdsproxy subprocesses, a uvloop loop) and the ratio summary."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Optional

import pytest
import uvloop

from benchmarks.services import PgBouncer, RdsProxyProcess, raise_open_file_limit
from rdsproxy.testing import MariaDBServer, PostgresServer, start_mariadb, start_postgres

POOL_SIZE = 20
# rdsproxy's budget is a percentage of what the server allows: 64 - 3 reserved - 1 health check = 60 usable,
# 34 % of 60 = 20; MariaDB: 61 - 1 = 60, likewise.
PG_MAX_CONNECTIONS = 64
MARIADB_MAX_CONNECTIONS = 61
BASELINES = ("direct", "pure")  # the reference member of a group, when present

_recorded: list[dict[str, Any]] = []


@pytest.fixture(scope="session")
def bench_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One uvloop event loop for every client of the session; benchmarks drive it with run_until_complete."""
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    raise_open_file_limit()
    with start_postgres(max_connections=PG_MAX_CONNECTIONS) as server:
        yield server


@pytest.fixture(scope="session")
def pgbouncer(pg_server: PostgresServer) -> Iterator[PgBouncer]:
    """PgBouncer, transaction mode, SCRAM, the same pool size as rdsproxy."""
    with PgBouncer(pg_server, pool_size=POOL_SIZE) as bouncer:
        yield bouncer


@pytest.fixture(scope="session")
def pg_proxy(pg_server: PostgresServer) -> Iterator[RdsProxyProcess]:
    with RdsProxyProcess(pg_server, pool_size=POOL_SIZE) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    raise_open_file_limit()
    with start_mariadb(max_connections=MARIADB_MAX_CONNECTIONS) as server:
        yield server


@pytest.fixture(scope="session")
def my_proxy(mariadb_server: MariaDBServer) -> Iterator[RdsProxyProcess]:
    with RdsProxyProcess(mariadb_server, pool_size=POOL_SIZE) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def _record_benchmark(request: pytest.FixtureRequest) -> Iterator[None]:
    """Keeps each benchmark's median for the ratio summary printed after pytest-benchmark's own tables."""
    yield
    fixture = request.node.funcargs.get("benchmark")
    metadata = getattr(fixture, "stats", None)
    if metadata is None:  # not a benchmark, or run with --benchmark-disable
        return
    callspec = getattr(request.node, "callspec", None)
    _recorded.append(
        {
            "group": fixture.group or request.node.name,
            "member": callspec.id if callspec else request.node.name,
            "median_s": metadata.stats.median,
            "extra_info": dict(fixture.extra_info),
        }
    )


def _throughput(entry: dict[str, Any]) -> Optional[str]:
    info, median = entry["extra_info"], entry["median_s"]
    if "MB" in info:
        return f"{info['MB'] / median:,.1f} MB/s"
    if "statements" in info:
        return f"{info['statements'] / median:,.0f} statements/s"
    if "observations" in info:
        return f"{info['observations'] / median:,.0f} observations/s"
    if "logins" in info:
        return f"{info['logins'] / median:,.0f} logins/s ({median / info['logins'] * 1e6:.2f} us each)"
    if "transactions" in info:
        each_us = median / info["transactions"] * 1e6
        return f"{info['transactions'] / median:,.0f} transactions/s ({each_us:.2f} us each)"
    return None


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _recorded:
        return
    write = terminalreporter.write_line
    terminalreporter.section("rdsproxy benchmark ratios (medians; noisy on a shared machine: compare within a run)")
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in _recorded:
        groups.setdefault(entry["group"], []).append(entry)
    for group, entries in groups.items():
        write(group)
        baseline = next((e for e in entries if e["member"] in BASELINES), None)
        for entry in entries:
            line = f"    {entry['member']:<12}{entry['median_s'] * 1e6:>12,.1f} us"
            rate = _throughput(entry)
            if rate:
                line += f"  {rate:>24}"
            if baseline is not None and entry is not baseline:
                factor = baseline["median_s"] / entry["median_s"]
                if baseline["member"] == "pure":
                    verdict = "met" if factor >= 10 else "MISSED"
                    line += f"  {factor:6.1f}x faster than pure (target >= 10x: {verdict})"
                else:
                    added = (entry["median_s"] - baseline["median_s"]) * 1e6
                    line += f"  {added:+8.1f} us vs {baseline['member']} ({1 / factor:.2f}x its time)"
            write(line)
