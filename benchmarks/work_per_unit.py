"""Instructions each proxy executes per login and per transaction, counted by callgrind: a measure the VM's noise
cannot move.

`python -m benchmarks.work_per_unit` starts PostgreSQL, then PgBouncer and rdsproxy each under
`valgrind --tool=callgrind`, and drives them with pgbench: warm-up, counters zeroed, a measured run, counters
dumped. `--mysql` adds MariaDB and rdsproxy driven by sysbench oltp_point_select (no PgBouncer there).
Wall-clock figures on a shared 2-core VM vary by a quarter between identical runs; instruction counts repeat to
within a percent, so this is how a change to the login path or the data path shows whether it made the proxy do
less work. Instructions are not time (a cold cache costs more per instruction), so the throughput runner stays
the judge of the targets.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from typing import Optional

from benchmarks.services import PgBouncer, RdsProxyProcess, client_environment
from benchmarks.throughput import _run_tool, parse_pgbench, parse_sysbench, sysbench_argv
from rdsproxy.testing import MariaDBServer, PostgresServer, start_mariadb, start_postgres

POOL_SIZE = 20
PG_MAX_CONNECTIONS = 64
WARM_UP = 30  # logins or transactions before the counters are zeroed: caches, pools and the welcome are settled
MARIADB_MAX_CONNECTIONS = 201  # (201 - 1 health check) / 10 = 20: rdsproxy's pool is POOL_SIZE
LOGINS = 200
TRANSACTIONS = 2000
BUSY_TRANSACTIONS = 20000  # at -c 20: most wake-ups find several clients' requests, as in the -c 20 target
QUERIES = 20000
# (unit, pgbench arguments, measured count): one client per login, one persistent client, then 20 of them
PG_UNITS = (
    ("login", ["-C", "-c", "1"], LOGINS),
    ("transaction -c 1", ["-c", "1"], TRANSACTIONS),
    ("transaction -c 1 ext", ["-c", "1", "-M", "extended"], TRANSACTIONS),
    ("transaction -c 20", ["-c", "20", "-j", "2"], BUSY_TRANSACTIONS),
)
MYSQL_UNITS = ("query ps=disable", "query ps=auto")


def callgrind_prefix(directory: str, cache_sim: bool = False) -> list[str]:
    prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={directory}/callgrind.%p.out"]
    return prefix + ["--cache-sim=yes"] if cache_sim else prefix


def _control(command: str, pid: int, os_user: Optional[str]) -> None:
    """callgrind_control as the profiled process's own user (it cannot reach another user's process)."""
    user = {"user": os_user} if os_user else {}
    subprocess.run(
        ["callgrind_control", command, str(pid)],
        check=True,
        capture_output=True,
        timeout=120,
        **user,  # type: ignore[arg-type]
    )


def _pgbench(server: PostgresServer, port: int, arguments: list[str]) -> None:
    """Run pgbench against `port` (pgbench -i when arguments start with it); raise unless every transaction ran."""
    argv = ["pgbench", *arguments, "-h", server.host, "-p", str(port), "-U", server.app_user, server.app_database]
    code, output = _run_tool(argv, client_environment(PGPASSWORD=server.app_password), timeout=1200)
    failure = (f"exit status {code}" if code else None) if arguments[0] == "-i" else parse_pgbench(code, output).failure
    if failure:
        raise RuntimeError(f"pgbench {' '.join(arguments)} failed ({failure}): {output[-800:]}")


def _totals(directory: str, pid: int, count: int) -> dict[str, float]:
    """Each event's total in the latest dump of process `pid`, per unit of work: Ir (instructions) and, with
    --cache-sim=yes, the simulated cache's accesses and misses (I1mr, D1mr, D1mw, ...)."""
    dumps = sorted(glob.glob(f"{directory}/callgrind.{pid}.out.*"), key=os.path.getmtime)
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for process {pid} in {directory}")
    events: list[str] = []
    with open(dumps[-1]) as dump:
        for line in dump:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("summary:"):
                totals = [int(value) for value in line.split()[1:]]
                totals += [0] * (len(events) - len(totals))  # trailing zeros are left out
                return {event: total / count for event, total in zip(events, totals)}
    raise RuntimeError(f"no summary line in {dumps[-1]}")


def measure(
    server: PostgresServer, port: int, pid: int, directory: str, os_user: Optional[str]
) -> dict[str, dict[str, float]]:
    """Events (instructions, ...) per login (pgbench -C, one client) and per transaction (one client, then 20)."""
    figures = {}
    for unit, arguments, count in PG_UNITS:
        _pgbench(server, port, ["-n", "-S", *arguments, "-t", str(WARM_UP)])
        _control("-z", pid, os_user)
        # -t is per client: the measured run has `count` transactions in all
        clients = int(arguments[arguments.index("-c") + 1])
        _pgbench(server, port, ["-n", "-S", *arguments, "-t", str(count // clients)])
        _control("-d", pid, os_user)
        figures[unit] = _totals(directory, pid, count)
    return figures


def _sysbench(server: MariaDBServer, port: int, arguments: list[str], command: str = "run") -> int:
    """Run sysbench oltp_point_select against `port`; the number of queries it ran (raise on any failure)."""
    argv = sysbench_argv(server, port, ["oltp_point_select", *arguments], command, seconds=0)
    code, output = _run_tool(argv, client_environment(), timeout=1200)
    if command != "run":
        if code != 0 or "FATAL" in output:
            raise RuntimeError(f"sysbench {command} failed: {output[-800:]}")
        return 0
    failure = parse_sysbench(code, output).failure
    queries = re.search(r"queries:\s+(\d+)", output)
    if failure or queries is None:
        raise RuntimeError(f"sysbench {' '.join(arguments)} failed ({failure}): {output[-800:]}")
    return int(queries.group(1))


def measure_mysql(server: MariaDBServer, port: int, pid: int, directory: str) -> dict[str, dict[str, float]]:
    """Events per sysbench point select at 20 threads, with text queries and with prepared statements."""
    figures = {}
    for unit in MYSQL_UNITS:
        mode = unit.rsplit("=", 1)[1]
        common = ["--threads=20", f"--db-ps-mode={mode}"]
        _sysbench(server, port, [*common, f"--events={WARM_UP * 20}"])
        _control("-z", pid, None)
        queries = _sysbench(server, port, [*common, f"--events={QUERIES}"])
        _control("-d", pid, None)
        figures[unit] = _totals(directory, pid, queries)
    return figures


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the callgrind dumps (one per unit and proxy) for callgrind_annotate, and print where they are",
    )
    parser.add_argument(
        "--mysql", action="store_true", help="also count rdsproxy's instructions per sysbench point select (MariaDB)"
    )
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="also simulate the L1 caches (callgrind --cache-sim=yes) and print the misses per unit",
    )
    options = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (with callgrind_control) is needed: apt-get install valgrind", file=sys.stderr)
        return 2
    results: dict[str, dict[str, dict[str, float]]] = {}  # proxy -> unit -> event -> per unit
    with ExitStack() as stack:

        def dump_directory(name: str) -> str:
            directory = tempfile.mkdtemp(prefix=f"callgrind-{name}.", dir="/tmp")
            if options.keep:
                stack.callback(print, f"  {name}: callgrind dumps kept in {directory}")
            else:
                stack.callback(shutil.rmtree, directory, True)
            return directory

        server = stack.enter_context(start_postgres(max_connections=PG_MAX_CONNECTIONS))
        _pgbench(server, server.port, ["-i", "-s", "1", "-q"])
        for name in ("pgbouncer", "rdsproxy"):
            directory = dump_directory(name)
            if name == "pgbouncer":
                proxy = PgBouncer(
                    server, pool_size=POOL_SIZE, command_prefix=callgrind_prefix(directory, options.cache_sim)
                )
                os_user = proxy.os_user
                if os_user:
                    shutil.chown(directory, os_user, os_user)
            else:
                proxy = RdsProxyProcess(
                    server, pool_size=POOL_SIZE, command_prefix=callgrind_prefix(directory, options.cache_sim)
                )
                os_user = None
            with proxy:
                print(f"  {name}: running under callgrind ...", flush=True)
                results[name] = measure(server, proxy.port, proxy.pid, directory, os_user)
        if options.mysql:
            mariadb = stack.enter_context(start_mariadb(max_connections=MARIADB_MAX_CONNECTIONS))
            _sysbench(mariadb, mariadb.port, ["--threads=1"], "prepare")
            directory = dump_directory("rdsproxy-mysql")
            prefix = callgrind_prefix(directory, options.cache_sim)
            with RdsProxyProcess(mariadb, pool_size=POOL_SIZE, command_prefix=prefix) as proxy:
                print("  rdsproxy (MySQL): running under callgrind ...", flush=True)
                results["rdsproxy"].update(measure_mysql(mariadb, proxy.port, proxy.pid, directory))
    print(render(results))
    return 0


def render(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        f"instructions per unit, counted by callgrind after {WARM_UP} of each to warm up: {LOGINS} logins with "
        f"pgbench -S -C -c 1; {TRANSACTIONS} transactions of pgbench -S -c 1 on one connection (-M simple, then "
        "extended); "
        f"{BUSY_TRANSACTIONS} of pgbench -S -c 20 -j 2"
        + (
            f"; {QUERIES} queries of sysbench oltp_point_select --threads=20"
            if "query ps=auto" in results["rdsproxy"]
            else ""
        ),
        "",
        f"{'unit':<20}{'pgbouncer':>12}{'rdsproxy':>12}{'rds/pgb':>10}",
    ]
    for unit, events in results["rdsproxy"].items():
        rds, pgb = events["Ir"], results["pgbouncer"].get(unit, {}).get("Ir")
        if pgb is None:
            lines.append(f"{unit:<20}{'-':>12}{rds:>12,.0f}{'-':>10}")
        else:
            lines.append(f"{unit:<20}{pgb:>12,.0f}{rds:>12,.0f}{rds / pgb:>10.2f}")
    if any("I1mr" in events for events in results["rdsproxy"].values()):
        lines += [
            "",
            "L1 misses per unit in callgrind's simulated caches (the process alone: no other process evicts its lines)",
            f"{'unit':<20}{'instruction pgb':>16}{'rds':>8}{'data pgb':>10}{'rds':>8}",
        ]
        for unit, rds in results["rdsproxy"].items():
            pgb = results["pgbouncer"].get(unit)
            cells = []
            for kinds in (("I1mr",), ("D1mr", "D1mw")):
                mine = sum(rds.get(kind, 0.0) for kind in kinds)
                theirs = "-" if pgb is None else f"{sum(pgb.get(kind, 0.0) for kind in kinds):,.1f}"
                cells.append((theirs, f"{mine:,.1f}"))
            (pgb_i, rds_i), (pgb_d, rds_d) = cells
            lines.append(f"{unit:<20}{pgb_i:>16}{rds_i:>8}{pgb_d:>10}{rds_d:>8}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
