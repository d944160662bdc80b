"""The throughput runner's table: per-repeat comparisons pair each rdsproxy run with the reference's in its repeat."""

from benchmarks.throughput import (
    DIRECT,
    PGBOUNCER,
    RDSPROXY,
    RouteResults,
    RunResult,
    build_scenarios,
    render,
    summarize,
)

META = {"repeats": 3, "duration_s": 10, "cpus": 2, "load_before": "0.0", "load_after": "0.0"}


def _results(tps: dict[str, list[float]], latency_ms: dict[str, list[float]]):
    scenarios = [s for s in build_scenarios() if s.key in ("pg-simple-c1", "pg-simple-c20")]
    results = {}
    for scenario in scenarios:
        results[scenario.key] = {}
        for route in scenario.routes:
            runs = [
                RunResult(tps=value, transactions=1000, latency_ms=latency, proxy_cpu_us_per_tx=20.0)
                for value, latency in zip(tps[route], latency_ms[route])
            ]
            results[scenario.key][route] = RouteResults(runs=runs)
    return scenarios, results


def test_each_repeat_is_compared_with_the_reference_from_the_same_repeat():
    # medians: rdsproxy 1,000 against PgBouncer 1,000 (ratio 1.00, met), yet rdsproxy was behind in two repeats
    scenarios, results = _results(
        {DIRECT: [2000, 2000, 2000], PGBOUNCER: [900, 1000, 1100], RDSPROXY: [1000, 950, 1050]},
        {DIRECT: [0.100, 0.100, 0.100], PGBOUNCER: [0.130, 0.140, 0.150], RDSPROXY: [0.120, 0.150, 0.160]},
    )
    summary = summarize(scenarios, results)
    row = next(row for row in summary["rows"] if row["key"] == "pg-simple-c20")
    assert row["verdict"] == "met"
    each = row["per_repeat"]
    assert (each["min"], each["median"], each["max"]) == (950 / 1000, 1050 / 1100, 1000 / 900)
    assert (each["ahead"], each["repeats"]) == (1, 3)
    latency = summary["added_latency_us"]["simple"]["per_repeat"]
    assert [round(latency[k]) for k in ("min", "median", "max")] == [-10, 10, 10]
    assert (latency["ahead"], latency["repeats"]) == (1, 3)
    table = render(summary, META)
    assert "pgbench -S -M simple   -c 20                 0.95    0.95   1.11  1 of 3" in table
    assert "simple    min -10, median +10, max +10; met in 1 of 3" in table


def test_a_failed_run_leaves_no_per_repeat_figures():
    scenarios, results = _results(
        {DIRECT: [2000, 2000, 2000], PGBOUNCER: [900, 1000, 1100], RDSPROXY: [1000, 950, 1050]},
        {DIRECT: [0.1] * 3, PGBOUNCER: [0.1] * 3, RDSPROXY: [0.1] * 3},
    )
    results["pg-simple-c20"][RDSPROXY].runs[1] = RunResult(failure="pgbench exit status 2")
    summary = summarize(scenarios, results)
    row = next(row for row in summary["rows"] if row["key"] == "pg-simple-c20")
    assert row["verdict"] == "FAIL"
    assert row["per_repeat"] is None
    table = render(summary, META)
    assert "0 of" not in table
    assert "each repeat (microseconds)" in table  # the -c 1 row ran fine: its latencies are still paired
