"""Throughput runner: pgbench and sysbench, direct vs PgBouncer vs rdsproxy, interleaved; one table of medians.

Run: `python -m benchmarks.throughput [--quick] [--json out.json] [--compare old.json] [--only KEY ...]`.
Exit status 1 when any run failed (a failed run is reported as FAIL, never as a number); missed targets do not
change the exit status: timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from benchmarks.services import (
    PgBouncer,
    RdsProxyProcess,
    client_environment,
    cpu_seconds,
    open_file_limit,
    raise_open_file_limit,
)
from rdsproxy.testing import MariaDBServer, PostgresServer, start_mariadb, start_postgres

POOL_SIZE = 20
# Direct -c 100 needs 100 backends while PgBouncer's and rdsproxy's pools (20 each) and rdsproxy's health
# check stay connected; 204 also makes rdsproxy's budget exactly 20 at 10 % ((204 - 3 reserved - 1) / 10).
PG_MAX_CONNECTIONS = 204
MARIADB_MAX_CONNECTIONS = 201  # (201 - 1 health check) / 10 = 20
PGBENCH_SCALE = 1
SYSBENCH_TABLE_SIZE = 10_000
FULL_DURATION = 10
QUICK_DURATION = 3
REPEATS = 3

DIRECT, PGBOUNCER, RDSPROXY = "direct", "pgbouncer", "rdsproxy"
PG_ROUTES = (DIRECT, PGBOUNCER, RDSPROXY)
MYSQL_ROUTES = (DIRECT, RDSPROXY)


@dataclass
class Target:
    """A goal from the performance issue: rdsproxy's tps over a reference route's must reach `at_least`."""

    reference: str
    at_least: float

    def describe(self) -> str:
        return f">= {self.at_least:.1f}x {self.reference}"


@dataclass
class Scenario:
    key: str
    label: str
    tool: str  # "pgbench" or "sysbench"
    arguments: list[str]
    routes: tuple[str, ...]
    target: Optional[Target] = None
    latency_mode: Optional[str] = None  # set on the -c 1 rows whose latency feeds the added-latency table


def _pgbench_scenario(mode: str, clients: int, target: Optional[Target]) -> Scenario:
    threads = min(2, clients)
    return Scenario(
        key=f"pg-{mode}-c{clients}",
        label=f"pgbench -S -M {mode:<8} -c {clients:<3}",
        tool="pgbench",
        arguments=["-S", "-M", mode, "-c", str(clients), "-j", str(threads)],
        routes=PG_ROUTES,
        target=target,
        latency_mode=mode if clients == 1 else None,
    )


def build_scenarios() -> list[Scenario]:
    beat_pgbouncer = Target(PGBOUNCER, 1.0)
    scenarios = [
        _pgbench_scenario(mode, clients, None if clients == 1 else beat_pgbouncer)
        for clients in (1, 20, 100)
        for mode in ("simple", "extended")
    ]
    scenarios.append(
        Scenario(
            key="pg-connect-c20",
            label="pgbench -S -C (new conn/tx) -c 20",
            tool="pgbench",
            arguments=["-S", "-C", "-c", "20", "-j", "2"],
            routes=PG_ROUTES,
            target=beat_pgbouncer,
        )
    )
    for ps_mode in ("disable", "auto"):
        scenarios.append(
            Scenario(
                key=f"my-point-select-ps-{ps_mode}",
                label=f"sysbench point_select 20 thr ps={ps_mode}",
                tool="sysbench",
                arguments=["oltp_point_select", "--threads=20", f"--db-ps-mode={ps_mode}"],
                routes=MYSQL_ROUTES,
                target=Target(DIRECT, 0.8),
            )
        )
    return scenarios


# ----------------------------------------------------------------------------------------------------------
# One run of a tool


@dataclass
class RunResult:
    tps: Optional[float] = None
    transactions: Optional[int] = None
    latency_ms: Optional[float] = None
    proxy_cpu_us_per_tx: Optional[float] = None
    client_cpu_us_per_tx: Optional[float] = None  # pgbench's or sysbench's own CPU time (user + system)
    failure: Optional[str] = None


def _number(pattern: str, text: str) -> Optional[float]:
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else None


def _last_lines(text: str, count: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])


def sysbench_argv(server: MariaDBServer, port: int, arguments: list[str], command: str, *, seconds: int) -> list[str]:
    """sysbench against `port` (the server's own, or a proxy's in front of it) on the benchmark's one table;
    `seconds` 0 runs until `--events` are done."""
    return [
        "sysbench",
        *arguments,
        "--db-driver=mysql",
        f"--mysql-host={server.host}",
        f"--mysql-port={port}",
        f"--mysql-user={server.app_user}",
        f"--mysql-password={server.app_password}",
        f"--mysql-db={server.app_database}",
        "--mysql-ssl=off",
        "--tables=1",
        f"--table-size={SYSBENCH_TABLE_SIZE}",
        f"--time={seconds}",
        "--report-interval=0",
        command,
    ]


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_tool(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return -1, f"timed out after {timeout:g} s\n{output}"
    return result.returncode, result.stdout + result.stderr


def parse_pgbench(code: int, output: str) -> RunResult:
    """tps, transactions and latency from pgbench's report; a failure unless every transaction succeeded."""
    processed = _number(r"^number of transactions actually processed: (\d+)", output)
    failed = _number(r"^number of failed transactions: (\d+)", output)
    tps = _number(r"^tps = ([\d.]+)", output)
    latency = _number(r"^latency average = ([\d.]+) ms", output)
    if code != 0:
        return RunResult(failure=f"pgbench exit status {code}: {_last_lines(output)}")
    if failed is None or failed > 0:
        return RunResult(failure=f"{'unknown' if failed is None else int(failed)} failed transactions")
    if "aborted" in output or not processed or tps is None or latency is None:
        return RunResult(failure=f"incomplete pgbench report: {_last_lines(output)}")
    return RunResult(tps=tps, transactions=int(processed), latency_ms=latency)


def parse_sysbench(code: int, output: str) -> RunResult:
    """tps and transactions from sysbench's report; a failure on any error, ignored error or reconnect."""
    match = re.search(r"^\s*transactions:\s+(\d+)\s+\(([\d.]+) per sec\.\)", output, re.MULTILINE)
    ignored = _number(r"^\s*ignored errors:\s+(\d+)", output)
    reconnects = _number(r"^\s*reconnects:\s+(\d+)", output)
    latency = _number(r"^\s*avg:\s+([\d.]+)", output)
    if code != 0 or "FATAL" in output:
        return RunResult(failure=f"sysbench exit status {code}: {_last_lines(output)}")
    if match is None or int(match.group(1)) == 0:
        return RunResult(failure=f"incomplete sysbench report: {_last_lines(output)}")
    if ignored is None or ignored > 0 or reconnects is None or reconnects > 0:
        return RunResult(failure=f"sysbench saw {ignored} ignored errors and {reconnects} reconnects")
    return RunResult(tps=float(match.group(2)), transactions=int(match.group(1)), latency_ms=latency)


# ----------------------------------------------------------------------------------------------------------
# The bench: servers, poolers, runs


@dataclass
class RouteResults:
    runs: list[RunResult] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [run.failure for run in self.runs if run.failure]

    def median(self, attribute: str) -> Optional[float]:
        """Median over the runs, or None if any run failed (a failing route gets no number) or none ran."""
        if self.failures or not self.runs:
            return None
        values = [getattr(run, attribute) for run in self.runs]
        if any(value is None for value in values):
            return None
        return statistics.median(values)


class Bench:
    """Owns the servers and poolers and runs one tool invocation against a chosen route."""

    def __init__(self, duration: int, stack: ExitStack, *, with_postgres: bool, with_mysql: bool) -> None:
        self.duration = duration
        self.stack = stack
        self.pg: Optional[PostgresServer] = None
        self.pgbouncer: Optional[PgBouncer] = None
        self.pg_proxy: Optional[RdsProxyProcess] = None
        self.mariadb: Optional[MariaDBServer] = None
        self.my_proxy: Optional[RdsProxyProcess] = None
        self.restarts: list[str] = []
        if with_postgres:
            self._start_postgres()
        if with_mysql:
            self._start_mysql()

    def _start_postgres(self) -> None:
        self.pg = self.stack.enter_context(start_postgres(max_connections=PG_MAX_CONNECTIONS))
        code, output = _run_tool(
            ["pgbench", "-i", "-s", str(PGBENCH_SCALE), "-q", *self._pg_connection(self.pg.port)],
            self._pg_env(),
            timeout=300,
        )
        if code != 0:
            raise RuntimeError(f"pgbench -i failed: {output}")
        self.pgbouncer = self.stack.enter_context(PgBouncer(self.pg, pool_size=POOL_SIZE))
        self.pg_proxy = self.stack.enter_context(RdsProxyProcess(self.pg, pool_size=POOL_SIZE))

    def _start_mysql(self) -> None:
        self.mariadb = self.stack.enter_context(start_mariadb(max_connections=MARIADB_MAX_CONNECTIONS))
        code, output = _run_tool(
            self._sysbench_argv(self.mariadb.port, ["oltp_point_select", "--threads=1"], "prepare"),
            client_environment(),
            timeout=300,
        )
        if code != 0 or "FATAL" in output:
            raise RuntimeError(f"sysbench prepare failed: {output}")
        self.my_proxy = self.stack.enter_context(RdsProxyProcess(self.mariadb, pool_size=POOL_SIZE))

    def _pg_env(self) -> dict[str, str]:
        assert self.pg is not None
        return client_environment(PGPASSWORD=self.pg.app_password)

    def _pg_connection(self, port: int) -> list[str]:
        assert self.pg is not None
        return ["-h", self.pg.host, "-p", str(port), "-U", self.pg.app_user, self.pg.app_database]

    def _sysbench_argv(self, port: int, arguments: list[str], command: str) -> list[str]:
        assert self.mariadb is not None
        return sysbench_argv(self.mariadb, port, arguments, command, seconds=self.duration)

    def _proxy_for(self, scenario: Scenario, route: str) -> tuple[Optional[int], Optional[Callable[[], int]]]:
        """(port, pid getter) of the route's proxy, or (None, None) for direct."""
        if route == DIRECT:
            return None, None
        if route == PGBOUNCER:
            assert self.pgbouncer is not None
            pgbouncer = self.pgbouncer
            return pgbouncer.port, lambda: pgbouncer.pid
        proxy = self.pg_proxy if scenario.tool == "pgbench" else self.my_proxy
        assert proxy is not None
        return proxy.port, lambda: proxy.pid

    def _ensure_proxies_alive(self, scenario: Scenario) -> Optional[str]:
        """Restart a proxy that died since the last run; returns what happened, for the run's failure."""
        proxy = self.pg_proxy if scenario.tool == "pgbench" else self.my_proxy
        assert proxy is not None
        status = proxy.exit_status
        if status is None:
            return None
        note = f"rdsproxy had exited with status {status}: {proxy.log_tail(8)}"
        self.restarts.append(note)
        proxy.stop()
        replacement = RdsProxyProcess(proxy.server, pool_size=POOL_SIZE).start()
        self.stack.callback(replacement.stop)
        if scenario.tool == "pgbench":
            self.pg_proxy = replacement
        else:
            self.my_proxy = replacement
        return note

    def run(self, scenario: Scenario, route: str, duration: Optional[int] = None) -> RunResult:
        duration = duration or self.duration
        restart_note = self._ensure_proxies_alive(scenario)
        proxy_port, proxy_pid = self._proxy_for(scenario, route)
        if scenario.tool == "pgbench":
            assert self.pg is not None
            port = proxy_port or self.pg.port
            argv = ["pgbench", "-n", "-T", str(duration), *scenario.arguments, *self._pg_connection(port)]
            env, parse = self._pg_env(), parse_pgbench
        else:
            assert self.mariadb is not None
            port = proxy_port or self.mariadb.port
            argv = self._sysbench_argv(port, scenario.arguments, "run")
            argv[argv.index(f"--time={self.duration}")] = f"--time={duration}"
            env, parse = client_environment(), parse_sysbench
        cpu_before = cpu_seconds(proxy_pid()) if proxy_pid else 0.0
        client_before = _children_cpu_seconds()
        code, output = _run_tool(argv, env, timeout=duration + 120)
        result = parse(code, output)
        if result.transactions:
            # the tool is the only child that ends during the run: servers and proxies outlive it
            result.client_cpu_us_per_tx = (_children_cpu_seconds() - client_before) * 1e6 / result.transactions
        if proxy_pid and result.transactions:
            try:
                result.proxy_cpu_us_per_tx = (cpu_seconds(proxy_pid()) - cpu_before) * 1e6 / result.transactions
            except OSError:
                pass
        if restart_note and result.failure is None:
            result.failure = f"(previous run) {restart_note}"
        return result

    def describe(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for name, proxy in (("rdsproxy_pg", self.pg_proxy), ("rdsproxy_mysql", self.my_proxy)):
            if proxy is not None:
                meta[name] = {
                    "uvloop": proxy.uses_uvloop(),
                    "relay": proxy.uses_relay(),
                    "compiled_codecs": proxy.uses_compiled_codecs(),
                    "max_database_connections_allowed": proxy.metrics().get("MaxDatabaseConnectionsAllowed"),
                }
        if self.pgbouncer is not None:
            meta["pgbouncer"] = {
                "pool_mode": "transaction",
                "default_pool_size": POOL_SIZE,
                "auth_type": "scram-sha-256",
                "open_file_limit": open_file_limit(self.pgbouncer.pid),
            }
        return meta


# ----------------------------------------------------------------------------------------------------------
# The table


def _versions() -> dict[str, str]:
    versions = {}
    for name, argv in {
        "pgbench": ["pgbench", "--version"],
        "pgbouncer": ["pgbouncer", "--version"],
        "sysbench": ["sysbench", "--version"],
    }.items():
        try:
            versions[name] = subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0].strip()
        except (OSError, IndexError):
            versions[name] = "unavailable"
    return versions


def paired(
    mine: list[RunResult], theirs: list[RunResult], attribute: str, compare: Callable[[float, float], float]
) -> list[float]:
    """Per repeat, rdsproxy's figure compared with the reference's from the same repeat (the two ran back to back,
    so the machine's slow drifts mostly cancel); empty when a run of either failed."""
    values = []
    for run, reference in zip(mine, theirs):
        a, b = getattr(run, attribute), getattr(reference, attribute)
        if run.failure or reference.failure or a is None or b is None:
            return []
        values.append(compare(a, b))
    return values


def _ratio(mine: float, reference: float) -> float:
    return mine / reference if reference else 0.0


def spread(values: list[float], better: Callable[[float], bool]) -> Optional[dict[str, Any]]:
    """min, median, max of per-repeat comparisons, and in how many repeats rdsproxy came out ahead."""
    if not values:
        return None
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "ahead": sum(1 for value in values if better(value)),
        "repeats": len(values),
    }


def summarize(scenarios: list[Scenario], results: dict[str, dict[str, RouteResults]]) -> dict[str, Any]:
    """The table as data: medians, ratios, target verdicts, added latency; what --json writes."""
    rows = []
    for scenario in scenarios:
        routes = results[scenario.key]
        tps = {route: routes[route].median("tps") for route in scenario.routes}
        cpu = {route: routes[route].median("proxy_cpu_us_per_tx") for route in scenario.routes if route != DIRECT}
        client_cpu = {route: routes[route].median("client_cpu_us_per_tx") for route in scenario.routes}
        ratios = {}
        for reference in (PGBOUNCER, DIRECT):
            if reference in scenario.routes:
                rds, ref = tps.get(RDSPROXY), tps.get(reference)
                ratios[f"rdsproxy/{reference}"] = rds / ref if rds is not None and ref else None
        verdict = None
        if scenario.target is not None:
            ratio = ratios.get(f"rdsproxy/{scenario.target.reference}")
            if ratio is None:
                verdict = "FAIL" if any(routes[route].failures for route in scenario.routes) else None
            else:
                verdict = "met" if ratio >= scenario.target.at_least else "MISSED"
        per_repeat = None
        if scenario.target is not None:
            target = scenario.target
            ratios_each = paired(routes[RDSPROXY].runs, routes[target.reference].runs, "tps", _ratio)
            per_repeat = spread(ratios_each, lambda ratio, at_least=target.at_least: ratio >= at_least)
        rows.append(
            {
                "key": scenario.key,
                "label": scenario.label.strip(),
                "tps": tps,
                "ratios": ratios,
                "proxy_cpu_us_per_tx": cpu,
                "client_cpu_us_per_tx": client_cpu,
                "target": scenario.target.describe() if scenario.target else None,
                "verdict": verdict,
                "per_repeat": per_repeat,  # the target's ratio in each repeat, and how many repeats met it
                "failures": {route: routes[route].failures for route in scenario.routes if routes[route].failures},
                "runs": {route: [asdict(run) for run in routes[route].runs] for route in scenario.routes},
            }
        )
    added = {}
    for scenario in scenarios:
        if scenario.latency_mode is None:
            continue
        latency = {route: results[scenario.key][route].median("latency_ms") for route in scenario.routes}
        direct = latency[DIRECT]
        entry: dict[str, Any] = {"direct_us": None if direct is None else direct * 1000}
        for route in (PGBOUNCER, RDSPROXY):
            value = latency[route]
            entry[f"{route}_minus_direct_us"] = None if value is None or direct is None else (value - direct) * 1000
        rds, pgb = entry["rdsproxy_minus_direct_us"], entry["pgbouncer_minus_direct_us"]
        if rds is None or pgb is None:
            failed = any(results[scenario.key][route].failures for route in scenario.routes)
            entry["verdict"] = "FAIL" if failed else None
        else:
            entry["verdict"] = "met" if rds <= pgb else "MISSED"
        # rdsproxy's latency minus PgBouncer's in each repeat (direct cancels out), microseconds
        differences = paired(
            results[scenario.key][RDSPROXY].runs,
            results[scenario.key][PGBOUNCER].runs,
            "latency_ms",
            lambda a, b: (a - b) * 1000,
        )
        entry["per_repeat"] = spread(differences, lambda difference: difference <= 0)
        added[scenario.latency_mode] = entry
    return {"rows": rows, "added_latency_us": added}


def _fmt_tps(value: Optional[float], failures: Sequence[str], runs: int) -> str:
    if failures:
        return f"FAIL {len(failures)}/{runs}"
    return "-" if value is None else f"{value:,.0f}"


def _fmt_ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt_us(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.0f}" if signed else f"{value:.0f}"


def render(summary: dict[str, Any], meta: dict[str, Any], before: Optional[dict[str, Any]] = None) -> str:
    """The printed table (plus failures); `before` is an older --json document whose ratios are shown too."""
    previous = {row["key"]: row for row in (before or {}).get("rows", [])}
    lines = [
        f"rdsproxy throughput: {meta['repeats']} interleaved repeats x {meta['duration_s']} s per cell, median tps; "
        f"pool {POOL_SIZE} for PgBouncer (transaction mode, SCRAM) and rdsproxy (subprocess)",
        f"machine: {meta['cpus']} CPUs, load average {meta['load_before']} before / {meta['load_after']} after; "
        "figures are noisy: compare only within one run",
        "",
    ]
    header = (
        f"{'scenario':<42}{'direct':>10}{'pgbouncer':>11}{'rdsproxy':>10}{'rds/pgb':>9}{'rds/dir':>9}"
        f"{'cpu us/tx pgb':>15}{'rds':>6}{'client':>8}  {'target':<19}{'verdict':<7}"
    )
    if previous:
        header += f"{'before: rds/pgb':>16}{'rds/dir':>9}"
    lines += [header, "-" * len(header)]
    for row in summary["rows"]:
        runs = meta["repeats"]
        cells = {
            route: _fmt_tps(row["tps"].get(route), row["failures"].get(route, ()), runs)
            if route in row["runs"]
            else "n/a"
            for route in PG_ROUTES
        }
        cpu = row["proxy_cpu_us_per_tx"]
        line = (
            f"{row['label']:<42}{cells[DIRECT]:>10}{cells[PGBOUNCER]:>11}{cells[RDSPROXY]:>10}"
            f"{_fmt_ratio(row['ratios'].get('rdsproxy/pgbouncer')):>9}"
            f"{_fmt_ratio(row['ratios'].get('rdsproxy/direct')):>9}"
            f"{_fmt_us(cpu.get(PGBOUNCER)):>15}{_fmt_us(cpu.get(RDSPROXY)):>6}"
            f"{_fmt_us(row.get('client_cpu_us_per_tx', {}).get(RDSPROXY)):>8}  "
            f"{row['target'] or '':<19}{row['verdict'] or '':<7}"
        )
        if previous:
            old = previous.get(row["key"], {}).get("ratios", {})
            line += f"{_fmt_ratio(old.get('rdsproxy/pgbouncer')):>16}{_fmt_ratio(old.get('rdsproxy/direct')):>9}"
        lines.append(line)
    spreads = [row for row in summary["rows"] if row.get("per_repeat")]
    if spreads:
        lines += [
            "",
            "the target's ratio in each repeat (rdsproxy and the reference ran back to back in it):",
            f"{'scenario':<42}{'min':>7}{'median':>8}{'max':>7}  met in",
        ]
        for row in spreads:
            each = row["per_repeat"]
            lines.append(
                f"{row['label']:<42}{each['min']:>7.2f}{each['median']:>8.2f}{each['max']:>7.2f}"
                f"  {each['ahead']} of {each['repeats']}"
            )
    if summary["added_latency_us"]:
        lines += [
            "",
            "added latency per transaction at -c 1 (median pgbench 'latency average' minus direct's, microseconds):",
            f"{'mode':<10}{'direct':>8}{'pgbouncer-direct':>18}{'rdsproxy-direct':>17}  target: rdsproxy <= pgbouncer",
        ]
        for mode, entry in summary["added_latency_us"].items():
            lines.append(
                f"{mode:<10}{_fmt_us(entry['direct_us']):>8}{_fmt_us(entry['pgbouncer_minus_direct_us'], True):>18}"
                f"{_fmt_us(entry['rdsproxy_minus_direct_us'], True):>17}  {entry['verdict'] or ''}"
            )
        added = summary["added_latency_us"]
        paired_latency = {mode: entry["per_repeat"] for mode, entry in added.items() if entry.get("per_repeat")}
        if paired_latency:
            lines.append("rdsproxy's latency minus PgBouncer's in each repeat (microseconds):")
        for mode, each in paired_latency.items():
            lines.append(
                f"{mode:<10}min {each['min']:+.0f}, median {each['median']:+.0f}, max {each['max']:+.0f}; "
                f"met in {each['ahead']} of {each['repeats']}"
            )
    failures = [
        f"  {row['key']} via {route}: {reason}"
        for row in summary["rows"]
        for route, reasons in row["failures"].items()
        for reason in reasons
    ]
    if failures:
        lines += ["", "FAILED RUNS (no number is reported for a route with a failed run):", *failures]
    return "\n".join(line.rstrip() for line in lines)


# ----------------------------------------------------------------------------------------------------------
# Main


def run_benchmark(scenarios: list[Scenario], duration: int, repeats: int) -> tuple[dict[str, Any], dict[str, Any]]:
    raise_open_file_limit()
    with_postgres = any(scenario.tool == "pgbench" for scenario in scenarios)
    with_mysql = any(scenario.tool == "sysbench" for scenario in scenarios)
    meta: dict[str, Any] = {
        "duration_s": duration,
        "repeats": repeats,
        "cpus": os.cpu_count(),
        "load_before": f"{os.getloadavg()[0]:.1f}",
        "python": platform.python_version(),
        "versions": _versions(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    results = {scenario.key: {route: RouteResults() for route in scenario.routes} for scenario in scenarios}
    with ExitStack() as stack:
        bench = Bench(duration, stack, with_postgres=with_postgres, with_mysql=with_mysql)
        meta.update(bench.describe())
        # One short warm-up per tool and route, so pools are full and caches warm before anything counts.
        warmed: set[tuple[str, str]] = set()
        for scenario in scenarios:
            for route in scenario.routes:
                if (scenario.tool, route) not in warmed:
                    warmed.add((scenario.tool, route))
                    bench.run(scenario, route, duration=1)
        for repeat in range(repeats):
            for scenario in scenarios:
                # Rotate the route order each repeat so no route always runs first (cold) or last.
                shift = repeat % len(scenario.routes)
                for route in scenario.routes[shift:] + scenario.routes[:shift]:
                    result = bench.run(scenario, route)
                    results[scenario.key][route].runs.append(result)
                    shown = result.failure or f"{result.tps:,.0f} tps"
                    print(f"  [{repeat + 1}/{repeats}] {scenario.key:<26} {route:<10} {shown}", file=sys.stderr)
        meta["proxy_restarts"] = bench.restarts
    meta["load_after"] = f"{os.getloadavg()[0]:.1f}"
    return summarize(scenarios, results), meta


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION} s per run instead of {FULL_DURATION}")
    parser.add_argument("--duration", type=int, help="seconds per run (overrides --quick)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"runs per cell, at least 3 (default {REPEATS})")
    parser.add_argument("--json", metavar="FILE", help="write the table (and every run) as JSON")
    parser.add_argument("--compare", metavar="FILE", help="an earlier --json file whose ratios are shown alongside")
    parser.add_argument(
        "--only", action="append", metavar="TEXT", help="only scenarios whose key contains TEXT (repeatable)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be at least 3: the median of fewer runs says too little on a shared machine")
    duration = args.duration or (QUICK_DURATION if args.quick else FULL_DURATION)
    scenarios = [s for s in build_scenarios() if not args.only or any(text in s.key for text in args.only)]
    if not scenarios:
        parser.error("--only matched no scenario; keys: " + ", ".join(s.key for s in build_scenarios()))
    before = None
    if args.compare:
        with open(args.compare) as file:
            before = json.load(file)
    summary, meta = run_benchmark(scenarios, duration, args.repeats)
    print(render(summary, meta, before))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"meta": meta, **summary}, file, indent=2)
            file.write("\n")
    failed = any(row["failures"] for row in summary["rows"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
