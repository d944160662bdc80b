"""The `rdsproxy demo` serverless storm, scaled down: runs end to end against a real PostgreSQL."""

from __future__ import annotations

import re

import pytest

from rdsproxy.demo import main


def test_demo_storm_through_the_proxy_has_no_errors(capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = main(["--clients", "300", "--concurrency", "100"])
    output = capsys.readouterr().out

    assert exit_code == 0, output
    assert re.search(r"^\s+clients succeeded\s+\d+ / 300\s+300 / 300$", output, re.MULTILINE), output
    assert re.search(r"^\s+errors\s+\d+\s+0$", output, re.MULTILINE), output
    ratio = re.search(r"multiplexing ratio\s+([\d.]+) : 1", output)
    assert ratio is not None, output
    assert float(ratio.group(1)) > 1.0, output  # 100 concurrent clients shared fewer backends
    backends = re.search(r"backend connections \(peak\)\s+(\d+) of MaxDatabaseConnectionsAllowed (\d+)", output)
    assert backends is not None, output
    assert 0 < int(backends.group(1)) <= int(backends.group(2)), output
    # Clients 0, 100, 200 pin with SET; 50, 150, 250 with a session advisory lock.
    assert re.search(r"session pinning events\s+6\s+\(advisory_lock 3, set 3\)", output), output
    assert re.search(r"^\s+rdsproxy\s+counter sum 300 vs 300 committed.*: OK$", output, re.MULTILINE), output
    assert "PASS: 0 errors through rdsproxy" in output


def test_demo_mysql_engine_is_not_available_yet(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--engine", "mysql"]) == 2
    assert "not available yet" in capsys.readouterr().err
