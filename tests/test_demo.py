"""The `rdsproxy demo` serverless storm, scaled down: runs end to end against a real PostgreSQL and MariaDB."""

from __future__ import annotations

import re

import pytest

from rdsproxy.demo import main


def _assert_storm_through_the_proxy_passed(output: str) -> None:
    assert re.search(r"^\s+clients succeeded\s+\d+ / 300\s+300 / 300$", output, re.MULTILINE), output
    assert re.search(r"^\s+errors\s+\d+\s+0$", output, re.MULTILINE), output
    ratio = re.search(r"multiplexing ratio\s+([\d.]+) : 1", output)
    assert ratio is not None, output
    assert float(ratio.group(1)) > 1.0, output  # 100 concurrent clients shared fewer backends
    backends = re.search(r"backend connections \(peak\)\s+(\d+) of MaxDatabaseConnectionsAllowed (\d+)", output)
    assert backends is not None, output
    assert 0 < int(backends.group(1)) <= int(backends.group(2)), output
    assert re.search(r"^\s+borrow timeouts\s+0$", output, re.MULTILINE), output
    assert re.search(r"^\s+rdsproxy\s+counter sum 300 vs 300 committed.*: OK$", output, re.MULTILINE), output
    assert "PASS: 0 errors through rdsproxy" in output


def test_demo_storm_through_the_proxy_has_no_errors(capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = main(["--clients", "300", "--concurrency", "100"])
    output = capsys.readouterr().out

    assert exit_code == 0, output
    assert "against a throwaway PostgreSQL with max_connections = 40" in output
    _assert_storm_through_the_proxy_passed(output)
    # Clients 0, 100, 200 pin with SET; 50, 150, 250 with a session advisory lock.
    assert re.search(r"session pinning events\s+6\s+\(advisory_lock 3, set 3\)", output), output


def test_demo_mysql_storm_through_the_proxy_has_no_errors(capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = main(["--engine", "mysql", "--clients", "300", "--concurrency", "100"])
    output = capsys.readouterr().out

    assert exit_code == 0, output
    assert "connect (mysql_native_password)" in output
    assert "against a throwaway MariaDB with max_connections = 40" in output
    _assert_storm_through_the_proxy_passed(output)
    # MariaDB's app user gets max_connections slots; the proxy leaves one for its health check.
    assert "MaxDatabaseConnectionsAllowed 39" in output
    # Clients 0, 100, 200 pin with a user variable (SET @storm_client); 50, 150, 250 with GET_LOCK.
    assert re.search(r"session pinning events\s+6\s+\(get_lock 3, user_variable 3\)", output), output


def test_demo_mysql_refuses_max_connections_mariadb_would_silently_raise(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--engine", "mysql", "--max-connections", "9"])

    assert exit_info.value.code == 2
    assert "--max-connections must be at least 10 (MariaDB's minimum)" in capsys.readouterr().err
