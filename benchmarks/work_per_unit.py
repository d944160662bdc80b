"""Instructions each proxy executes per login and per transaction, counted by callgrind: a measure the VM's noise
cannot move.

`python -m benchmarks.work_per_unit` starts PostgreSQL, then PgBouncer and rdsproxy each under
`valgrind --tool=callgrind`, and drives them with pgbench: warm-up, counters zeroed, a measured run, counters
dumped. Wall-clock figures on a shared 2-core VM vary by a quarter between identical runs; instruction counts
repeat to within a percent, so this is how a change to the login path or the data path shows whether it made
the proxy do less work. Instructions are not time (a cold cache costs more per instruction), so the throughput
runner stays the judge of the targets.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from typing import Optional

from benchmarks.services import PgBouncer, RdsProxyProcess, client_environment
from benchmarks.throughput import _run_tool, parse_pgbench
from rdsproxy.testing import PostgresServer, start_postgres

POOL_SIZE = 20
PG_MAX_CONNECTIONS = 64
WARM_UP = 30  # logins or transactions before the counters are zeroed: caches, pools and the welcome are settled
LOGINS = 200
TRANSACTIONS = 2000


def callgrind_prefix(directory: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={directory}/callgrind.%p.out"]


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


def _instructions(directory: str, pid: int) -> int:
    """The instruction total of the latest dump of process `pid`."""
    dumps = sorted(glob.glob(f"{directory}/callgrind.{pid}.out.*"), key=os.path.getmtime)
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for process {pid} in {directory}")
    with open(dumps[-1]) as dump:
        for line in dump:
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"no summary line in {dumps[-1]}")


def measure(server: PostgresServer, port: int, pid: int, directory: str, os_user: Optional[str]) -> dict[str, float]:
    """Instructions per login (pgbench -C, one client) and per transaction (one persistent client)."""
    figures = {}
    for unit, arguments, count in (
        ("login", ["-C", "-c", "1"], LOGINS),
        ("transaction", ["-c", "1"], TRANSACTIONS),
    ):
        _pgbench(server, port, ["-n", "-S", *arguments, "-t", str(WARM_UP)])
        _control("-z", pid, os_user)
        _pgbench(server, port, ["-n", "-S", *arguments, "-t", str(count)])
        _control("-d", pid, os_user)
        figures[unit] = _instructions(directory, pid) / count
    return figures


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the callgrind dumps (one per unit and proxy) for callgrind_annotate, and print where they are",
    )
    options = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (with callgrind_control) is needed: apt-get install valgrind", file=sys.stderr)
        return 2
    results: dict[str, dict[str, float]] = {}
    with ExitStack() as stack:
        server = stack.enter_context(start_postgres(max_connections=PG_MAX_CONNECTIONS))
        _pgbench(server, server.port, ["-i", "-s", "1", "-q"])
        for name in ("pgbouncer", "rdsproxy"):
            directory = tempfile.mkdtemp(prefix=f"callgrind-{name}.", dir="/tmp")
            if options.keep:
                stack.callback(print, f"  {name}: callgrind dumps kept in {directory}")
            else:
                stack.callback(shutil.rmtree, directory, True)
            if name == "pgbouncer":
                proxy = PgBouncer(server, pool_size=POOL_SIZE, command_prefix=callgrind_prefix(directory))
                os_user = proxy.os_user
                if os_user:
                    shutil.chown(directory, os_user, os_user)
            else:
                proxy = RdsProxyProcess(server, pool_size=POOL_SIZE, command_prefix=callgrind_prefix(directory))
                os_user = None
            with proxy:
                print(f"  {name}: running under callgrind ...", flush=True)
                results[name] = measure(server, proxy.port, proxy.pid, directory, os_user)
    print(render(results))
    return 0


def render(results: dict[str, dict[str, float]]) -> str:
    lines = [
        f"instructions per unit, counted by callgrind ({LOGINS} logins with pgbench -S -C -c 1; "
        f"{TRANSACTIONS} transactions of pgbench -S -c 1 on one connection; after {WARM_UP} of each to warm up)",
        "",
        f"{'unit':<13}{'pgbouncer':>12}{'rdsproxy':>12}{'rds/pgb':>10}",
    ]
    for unit in ("login", "transaction"):
        pgb, rds = results["pgbouncer"][unit], results["rdsproxy"][unit]
        lines.append(f"{unit:<13}{pgb:>12,.0f}{rds:>12,.0f}{rds / pgb:>10.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
