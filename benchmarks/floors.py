"""Floors: how close could any proxy come on this machine? rdsproxy and PgBouncer against a byte pump in C.

Run: `python -m benchmarks.floors [--duration 8] [--repeats 3]` (about 6 minutes).
The pump (benchmarks/_floor_pump.pyx, compiled here into a temporary directory) does no protocol work at all: one
server connection per client, bytes forwarded unchanged by C code over epoll, in its own loop (`pump`) or driven
from a uvloop event loop through one reader on its epoll fd as rdsproxy's relay is (`pump-in-uvloop`). Whatever
gap remains between the pump and a direct connection is the cost of a second hop (two more socket writes and
reads and wake-ups per transaction) on two cores shared with the client and the server; no proxy can close it.
Runs are interleaved like benchmarks.throughput's; the table shows medians and the route process's CPU per
transaction.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from typing import Callable, Optional

from benchmarks.services import free_port, raise_open_file_limit
from benchmarks.throughput import DIRECT, PGBOUNCER, RDSPROXY, Bench, RunResult, Scenario, build_scenarios

PUMP, PUMP_IN_UVLOOP = "pump", "pump-in-uvloop"
SCENARIO_KEYS = ("pg-simple-c1", "pg-simple-c20", "my-point-select-ps-disable", "my-point-select-ps-auto")


def build_pump(directory: str) -> None:
    """Compile _floor_pump.pyx into `directory` (Cython and a C compiler come with `make build`)."""
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_floor_pump.pyx")
    script = (
        "from setuptools import setup, Extension\n"
        "from Cython.Build import cythonize\n"
        f"setup(ext_modules=cythonize([Extension('_floor_pump', [{source!r}])], build_dir={directory!r}, quiet=True),"
        f" script_args=['build_ext', '--build-lib', {directory!r}, '--build-temp', {directory!r}])\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, cwd=directory)


class FloorBench(Bench):
    """Bench with two more routes: the C pump in front of each server, standalone and inside uvloop."""

    def __init__(self, duration: int, stack: ExitStack, pump_path: str) -> None:
        super().__init__(duration, stack, with_postgres=True, with_mysql=True)
        self.pumps: dict[tuple[str, str], tuple[int, subprocess.Popen[bytes]]] = {}
        assert self.pg is not None and self.mariadb is not None
        for tool, server in (("pgbench", self.pg), ("sysbench", self.mariadb)):
            for mode, route in (("c", PUMP), ("c-in-uvloop", PUMP_IN_UVLOOP)):
                port = free_port()
                process = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.floor_pump", mode, str(port), server.host, str(server.port)],
                    env={**os.environ, "PYTHONPATH": os.pathsep.join([pump_path, os.getcwd()])},
                )
                stack.callback(process.kill)
                self.pumps[(tool, route)] = (port, process)
        time.sleep(1.0)
        for (tool, route), (_, process) in self.pumps.items():
            if process.poll() is not None:
                raise RuntimeError(f"the {route} pump for {tool} exited with status {process.returncode}")

    def _proxy_for(self, scenario: Scenario, route: str) -> tuple[Optional[int], Optional[Callable[[], int]]]:
        if route in (PUMP, PUMP_IN_UVLOOP):
            port, process = self.pumps[(scenario.tool, route)]
            return port, lambda: process.pid
        return super()._proxy_for(scenario, route)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floors", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per run (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (default 3)")
    args = parser.parse_args(argv)
    raise_open_file_limit()
    scenarios = [scenario for scenario in build_scenarios() if scenario.key in SCENARIO_KEYS]
    results: dict[tuple[str, str], list[RunResult]] = {}
    with tempfile.TemporaryDirectory(prefix="floor-pump.") as pump_path, ExitStack() as stack:
        build_pump(pump_path)
        bench = FloorBench(args.duration, stack, pump_path)
        for repeat in range(args.repeats):
            for scenario in scenarios:
                routes = [DIRECT, PGBOUNCER, RDSPROXY] if scenario.tool == "pgbench" else [DIRECT, RDSPROXY]
                routes += [PUMP, PUMP_IN_UVLOOP]
                shift = repeat % len(routes)
                for route in routes[shift:] + routes[:shift]:
                    result = bench.run(scenario, route)
                    results.setdefault((scenario.key, route), []).append(result)
                    shown = result.failure or f"{result.tps:,.0f} tps"
                    print(f"  [{repeat + 1}/{args.repeats}] {scenario.key:<28} {route:<15} {shown}", file=sys.stderr)
    print(f"floors: {args.repeats} interleaved runs x {args.duration} s, medians; noisy: compare within one run")
    print(f"{'scenario':<30} {'route':<15} {'tps':>9} {'x direct':>9} {'cpu us/tx':>10}")
    for scenario in scenarios:
        direct = _median_tps(results[(scenario.key, DIRECT)])
        for (key, route), runs in results.items():
            if key != scenario.key:
                continue
            tps = _median_tps(runs)
            cpus = [run.proxy_cpu_us_per_tx for run in runs if run.proxy_cpu_us_per_tx is not None]
            cpu = f"{statistics.median(cpus):10.1f}" if cpus else f"{'-':>10}"
            ratio = f"{tps / direct:9.2f}" if tps and direct else f"{'-':>9}"
            print(f"{scenario.key:<30} {route:<15} {tps or 0:9,.0f} {ratio} {cpu}")
    failed = any(run.failure for runs in results.values() for run in runs)
    return 1 if failed else 0


def _median_tps(runs: list[RunResult]) -> Optional[float]:
    values = [run.tps for run in runs if run.tps is not None and run.failure is None]
    return statistics.median(values) if values else None


if __name__ == "__main__":
    sys.exit(main())
