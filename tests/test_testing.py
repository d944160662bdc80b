"""Tests of rdsproxy.testing: throwaway PostgreSQL servers, users, crashes, replicas and the proxy helpers."""

from __future__ import annotations

import os
import secrets
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import asyncpg
import pytest

import rdsproxy.testing
from rdsproxy.errors import ConfigError
from rdsproxy.testing import (
    PG_BINDIR_ENV,
    PostgresServer,
    proxy_config_for,
    running_proxy,
    start_postgres,
)


def psql_over_tcp(
    server: PostgresServer, user: str, password: Optional[str], query: str, *, database: str = "postgres"
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run(
        [
            "psql",
            "-X",
            "-At",
            "-w",
            "-h",
            server.host,
            "-p",
            str(server.port),
            "-U",
            user,
            "-d",
            database,
            "-c",
            query,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def authentication_request(server: PostgresServer, user: str) -> int:
    """The code of the server's AuthenticationRequest (0 ok, 3 cleartext, 5 md5, 10 SASL) after a startup."""
    parameters = f"user\0{user}\0database\0postgres\0\0".encode()
    with socket.create_connection((server.host, server.port), timeout=10) as connection:
        connection.sendall(struct.pack("!ii", 8 + len(parameters), 196608) + parameters)
        reply = b""
        while len(reply) < 9:
            chunk = connection.recv(9 - len(reply))
            assert chunk, "server closed the connection during startup"
            reply += chunk
    kind, _length, code = struct.unpack("!cii", reply)
    assert kind == b"R", f"expected an authentication request, got message {kind!r}"
    return code


def unique_name(prefix: str) -> str:
    # The session-wide server outlives a single test, so names must not repeat across reruns.
    return f"{prefix}_{secrets.token_hex(3)}"


def test_start_postgres_gives_a_private_server_with_the_app_user(pg: PostgresServer) -> None:
    assert pg.address() == f"127.0.0.1:{pg.port}"
    assert len(os.path.join(pg.socket_dir, f".s.PGSQL.{pg.port}")) < 108
    assert pg.data_dir.startswith(pg.socket_dir)
    assert pg.sql("SHOW max_connections") == "100"
    assert pg.sql("SHOW superuser_reserved_connections") == "3"
    assert pg.sql("SHOW listen_addresses") == "127.0.0.1"
    assert pg.sql("SELECT 1; SELECT 2") == "1\n2"

    result = psql_over_tcp(pg, pg.app_user, pg.app_password, "SELECT current_user, current_database()", database="app")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app|app"
    assert pg.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'") == "app"

    by_dsn = subprocess.run(["psql", "-X", "-At", pg.dsn(), "-c", "SELECT 42"], capture_output=True, text=True)
    assert by_dsn.stdout.strip() == "42", by_dsn.stderr

    wrong = psql_over_tcp(pg, pg.app_user, "not-the-password", "SELECT 1", database="app")
    assert wrong.returncode != 0
    assert "password authentication failed" in wrong.stderr


def test_sql_errors_carry_psql_stderr(pg: PostgresServer) -> None:
    with pytest.raises(RuntimeError, match='relation "no_such_table" does not exist'):
        pg.sql("SELECT * FROM no_such_table")


AUTH_METHODS = {
    # method: (AuthenticationRequest code the server sends, stored password prefix)
    "scram-sha-256": (10, "SCRAM-SHA-256$"),
    "md5": (5, "md5"),
    "password": (3, "SCRAM-SHA-256$"),
    "trust": (0, None),
}


@pytest.mark.parametrize("method", list(AUTH_METHODS))
def test_users_log_in_with_their_auth_method(pg: PostgresServer, method: str) -> None:
    expected_request, stored_prefix = AUTH_METHODS[method]
    name = unique_name("user_" + method.replace("-", "_"))
    password = None if method == "trust" else f"pw-{method}'quote"
    pg.create_user(name, password, auth=method)

    stored = pg.sql(f"SELECT coalesce(rolpassword, '') FROM pg_authid WHERE rolname = '{name}'")
    assert stored.startswith(stored_prefix or "") and (stored_prefix is not None or stored == "")
    rule = pg.sql(f"SELECT auth_method FROM pg_hba_file_rules WHERE user_name = '{{{name}}}' AND type = 'host'")
    assert rule == method
    assert authentication_request(pg, name) == expected_request

    result = psql_over_tcp(pg, name, password, "SELECT current_user")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name
    if method != "trust":
        assert psql_over_tcp(pg, name, "wrong", "SELECT 1").returncode != 0


def test_create_user_options(pg: PostgresServer) -> None:
    with pytest.raises(ValueError, match="auth must be one of"):
        pg.create_user("nobody", "pw", auth="ident")
    with pytest.raises(ValueError, match="needs a password"):
        pg.create_user("nobody", None)

    admin = unique_name("admin")
    pg.create_user(admin, "pw", superuser=True)
    assert pg.sql(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{admin}'") == "t"

    owner, database, member = unique_name("owner"), unique_name("db"), unique_name("member")
    pg.create_user(owner, "pw")
    pg.create_database(database, owner=owner)
    pg.create_user(member, "pw", databases=[database])
    result = psql_over_tcp(pg, member, "pw", "CREATE TABLE t (id int); SELECT current_database()", database=database)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(database)


def test_restart_keeps_port_settings_and_data(fresh_pg: Callable[..., PostgresServer]) -> None:
    server = fresh_pg(max_connections=10, settings={"work_mem": "7MB"})
    port = server.port
    server.sql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before restart')", database="app")
    server.restart()
    assert server.port == port
    assert server.sql("SELECT v FROM kept", database="app") == "before restart"
    assert server.sql("SHOW max_connections; SHOW superuser_reserved_connections; SHOW work_mem") == "10\n3\n7MB"
    result = psql_over_tcp(server, server.app_user, server.app_password, "SELECT 1", database="app")
    assert result.returncode == 0, result.stderr


def test_kill9_then_restart(fresh_pg: Callable[..., PostgresServer]) -> None:
    server = fresh_pg(max_connections=4)
    assert server.sql("SHOW superuser_reserved_connections") == "3"
    server.sql("CREATE TABLE survivors (v int); INSERT INTO survivors VALUES (9)", database="app")
    port = server.port
    # A backend busy in a CPU-bound query does not notice its postmaster dying: kill9 must kill it too.
    busy = subprocess.Popen(
        [
            "psql",
            "-X",
            "-At",
            "-w",
            server.dsn(),
            "-c",
            "SELECT count(*) FROM generate_series(1, 10000000000)",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        active = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%generate_series%' AND state = 'active'"
        while server.sql(active) != "2" and time.monotonic() < deadline:  # 2: the query and this probe
            time.sleep(0.02)

        server.kill9()
        assert not server.running
        _, errors = busy.communicate(timeout=30)
        assert "server closed the connection unexpectedly" in errors
    finally:
        busy.kill()
        busy.wait()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, port), timeout=5).close()
    with pytest.raises(RuntimeError):
        server.sql("SELECT 1")

    server.restart()  # crash recovery from the same data directory
    assert server.port == port
    assert server.sql("SELECT v FROM survivors", database="app") == "9"


def test_terminate_backends(pg: PostgresServer) -> None:
    name = unique_name("victim")
    pg.create_user(name, "pw")
    sessions = [
        subprocess.Popen(
            ["psql", "-X", "-At", "-w", "-h", pg.host, "-p", str(pg.port), "-U", name, "-d", "postgres"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PGPASSWORD": "pw"},
        )
        for _ in range(2)
    ]
    try:
        query = f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{name}'"
        deadline = time.monotonic() + 30
        while pg.sql(query) != "2" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pg.sql(query) == "2"
        assert pg.terminate_backends(name) == 2
        for session in sessions:
            _, errors = session.communicate("SELECT 1;\n", timeout=30)
            assert "terminat" in errors
        assert pg.terminate_backends(name) == 0
    finally:
        for session in sessions:
            session.kill()
            session.wait()


def test_replica_follows_and_takes_over(fresh_pg: Callable[..., PostgresServer]) -> None:
    primary = fresh_pg()
    replica = primary.make_replica()
    assert replica.port != primary.port
    assert replica.is_replica() and not primary.is_replica()

    late_user = unique_name("late")
    primary.create_user(late_user, "late-pw", auth="md5")  # the replica gets its pg_hba line too
    primary.sql("CREATE TABLE t (v int); INSERT INTO t VALUES (1)", database="app")
    primary.wait_caught_up(replica)
    assert replica.sql("SELECT v FROM t", database="app") == "1"
    for user, password in ((replica.app_user, replica.app_password), (late_user, "late-pw")):
        result = psql_over_tcp(replica, user, password, "SELECT current_user", database="app")
        assert result.returncode == 0, result.stderr
    with pytest.raises(RuntimeError, match="read-only transaction"):
        replica.sql("INSERT INTO t VALUES (2)", database="app")

    primary.kill9()
    replica.promote()
    assert not replica.is_replica()
    replica.sql("INSERT INTO t VALUES (2)", database="app")
    assert replica.sql("SELECT sum(v) FROM t", database="app") == "3"


def test_concurrent_starts_get_distinct_ports() -> None:
    servers: list[PostgresServer] = []
    failures: list[BaseException] = []

    def start() -> None:
        try:
            servers.append(start_postgres(max_connections=5))
        except BaseException as exc:  # reported below; a thread must not swallow it
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures
        assert len({server.port for server in servers}) == 3
        assert [server.sql("SELECT 1") for server in servers] == ["1", "1", "1"]
    finally:
        for server in servers:
            server.stop()


def test_start_retries_when_the_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_claim = rdsproxy.testing._claim_free_port
    offered = iter([taken])
    monkeypatch.setattr(rdsproxy.testing, "_claim_free_port", lambda: next(offered, None) or real_claim())
    try:
        with start_postgres(max_connections=5) as server:
            assert server.port != taken
            assert server.sql("SELECT 1") == "1"
            log = Path(server.log_path).read_text()
            assert "could not bind" in log
    finally:
        squatter.close()


def test_stop_deletes_the_directory_unless_kept() -> None:
    server = start_postgres(max_connections=5)
    server.stop(keep_data=True)
    assert not server.running and os.path.isdir(server.data_dir)
    server.restart()
    assert server.sql("SELECT 1") == "1"
    with server:
        pass
    assert not server.running and not os.path.exists(server.socket_dir)


def test_missing_binaries_say_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = set(os.listdir("/tmp"))
    with pytest.raises(RuntimeError) as by_argument:
        start_postgres(bindir=str(tmp_path))
    monkeypatch.setenv(PG_BINDIR_ENV, str(tmp_path))
    with pytest.raises(RuntimeError) as by_environment:
        start_postgres()
    for caught in (by_argument, by_environment):
        message = str(caught.value)
        assert message.startswith("PostgreSQL server binaries (initdb, postgres) not found"), message
        assert str(tmp_path) in message
        assert "apt-get install postgresql-15" in message
        assert PG_BINDIR_ENV in message
    assert not {name for name in set(os.listdir("/tmp")) - before if name.startswith("pg.")}


def test_reserved_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="settings may not override port"):
        start_postgres(settings={"port": "5432"})


def test_proxy_config_for(pg: PostgresServer) -> None:
    config = proxy_config_for(pg, connection_borrow_timeout=2, max_connections_percent=50)
    assert [endpoint.listen for endpoint in config.endpoints] == ["127.0.0.1:0"]
    assert config.target_group.targets == [pg.address()]
    assert config.target_group.database == pg.app_database
    assert (config.target_group.connection_borrow_timeout, config.target_group.max_connections_percent) == (
        2.0,
        50,
    )
    assert config.user(pg.app_user).resolve_password() == pg.app_password  # type: ignore[union-attr]
    assert proxy_config_for(pg, targets=["127.0.0.1:1", pg.address()]).target_group.targets[0] == "127.0.0.1:1"
    with pytest.raises(ConfigError, match=r"target_group\.max_connections_percent"):
        proxy_config_for(pg, max_connections_percent=0)


async def test_running_proxy_serves_queries(pg: PostgresServer) -> None:
    async with running_proxy(proxy_config_for(pg)) as proxy:
        host, port = proxy.address("default")
        assert port != 0
        connection = await asyncpg.connect(
            host=host, port=port, user=pg.app_user, password=pg.app_password, database=pg.app_database
        )
        try:
            assert await connection.fetchval("SELECT current_user") == pg.app_user
        finally:
            await connection.close()
