"""Tests of rdsproxy.testing: throwaway PostgreSQL and MariaDB servers, users, crashes, replicas, proxy helpers."""

from __future__ import annotations

import os
import secrets
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import aiomysql
import asyncpg
import pymysql
import pytest

import rdsproxy.testing
from rdsproxy.errors import ConfigError
from rdsproxy.testing import (
    MARIADB_BINDIR_ENV,
    PG_BINDIR_ENV,
    MariaDBServer,
    PostgresServer,
    proxy_config_for,
    running_proxy,
    start_mariadb,
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
    # Room for the busy client, the probes and a slot or two still held by probes whose backends are exiting:
    # a backend gives its slot back only after its client has gone, so a tight max_connections races.
    server = fresh_pg(max_connections=10)
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
            assert busy.poll() is None, busy.communicate()[1]
            time.sleep(0.02)
        assert server.sql(active) == "2"

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


def record_temp_dirs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Prefixes of the temp dirs made from now on in this process (other processes share /tmp)."""
    prefixes: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args: Any, **kwargs: Any) -> str:
        prefixes.append(kwargs.get("prefix", ""))
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    return prefixes


def test_missing_binaries_say_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = record_temp_dirs(monkeypatch)
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
    assert "pg." not in made


def test_reserved_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="settings may not override port"):
        start_postgres(settings={"port": "5432"})


def test_proxy_config_for(pg: PostgresServer) -> None:
    config = proxy_config_for(pg, connection_borrow_timeout=2, max_connections_percent=50)
    assert config.proxy.engine_family == "POSTGRESQL"
    assert config.user(pg.app_user).client_password_auth_type == "POSTGRES_SCRAM_SHA_256"  # type: ignore[union-attr]
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


# ----------------------------------------------------------------------------------------------------------
# MariaDB


def mariadb_over_tcp(
    server: MariaDBServer, user: str, password: Optional[str], query: str, *, database: Optional[str] = None
) -> subprocess.CompletedProcess[str]:
    argv = ["mariadb", "--no-defaults", "-N", "-B", f"--host={server.host}", f"--port={server.port}", f"--user={user}"]
    argv.append("--skip-password" if password is None else f"--password={password}")
    if database is not None:
        argv.append(f"--database={database}")
    env = {key: value for key, value in os.environ.items() if not key.startswith("MYSQL")}
    return subprocess.run([*argv, "-e", query], env=env, capture_output=True, text=True, timeout=60)


def pymysql_connect(
    server: MariaDBServer, user: str, password: str, *, database: Optional[str] = None
) -> pymysql.connections.Connection:
    return pymysql.connect(
        host=server.host, port=server.port, user=user, password=password, database=database, connect_timeout=10
    )


def query_one(connection: pymysql.connections.Connection, query: str) -> tuple:
    with connection.cursor() as cursor:
        cursor.execute(query)
        return cursor.fetchone()


def mysql_error_code(caught: pytest.ExceptionInfo[pymysql.MySQLError]) -> int:
    return caught.value.args[0]


def test_start_mariadb_gives_a_private_server_with_the_app_user(mariadb: MariaDBServer) -> None:
    assert mariadb.address() == f"127.0.0.1:{mariadb.port}"
    assert mariadb.running
    assert os.path.dirname(mariadb.socket_path) == mariadb.socket_dir and len(mariadb.socket_path) < 108
    assert os.path.isdir(os.path.join(mariadb.data_dir, "mysql"))
    assert mariadb.sql("SELECT @@global.max_connections, @@global.read_only, @@port, @@socket") == (
        f"200\t0\t{mariadb.port}\t{mariadb.socket_path}"
    )
    assert mariadb.sql("SELECT current_user()") == "root@localhost"
    assert not mariadb.is_replica()

    result = mariadb_over_tcp(
        mariadb, mariadb.app_user, mariadb.app_password, "SELECT current_user(), database()", database="app"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app@%\tapp"

    connection = pymysql_connect(mariadb, mariadb.app_user, mariadb.app_password, database=mariadb.app_database)
    try:
        table = unique_name("t")
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TABLE {table} (v int)")
            cursor.execute(f"INSERT INTO {table} VALUES (7)")
        connection.commit()
        assert query_one(connection, f"SELECT v FROM {table}") == (7,)
        # What the proxy's health probe reads needs no privilege.
        assert query_one(connection, "SELECT @@global.read_only, @@global.max_connections") == (0, 200)
        with pytest.raises(pymysql.err.OperationalError) as denied:
            query_one(connection, "SELECT count(*) FROM mysql.user")
        assert mysql_error_code(denied) == 1142  # least privilege: only app.*
    finally:
        connection.close()
    assert mariadb_over_tcp(mariadb, mariadb.app_user, "wrong", "SELECT 1").returncode != 0


async def test_aiomysql_logs_in_as_the_app_user(mariadb: MariaDBServer) -> None:
    connection = await aiomysql.connect(
        host=mariadb.host,
        port=mariadb.port,
        user=mariadb.app_user,
        password=mariadb.app_password,
        db=mariadb.app_database,
    )
    try:
        async with connection.cursor() as cursor:
            await cursor.execute("SELECT current_user()")
            assert await cursor.fetchone() == ("app@%",)
    finally:
        connection.close()


@pytest.mark.parametrize("plugin", ["mysql_native_password", "ed25519"])
def test_mariadb_users_log_in_with_their_plugin(mariadb: MariaDBServer, plugin: str) -> None:
    name = unique_name("user_" + plugin[:6])
    password = f"pw-{plugin}'quote\\slash"
    mariadb.create_user(name, password, plugin=plugin, databases=[mariadb.app_database])
    assert mariadb.sql(f"SELECT plugin FROM mysql.user WHERE user = '{name}'") == plugin

    result = mariadb_over_tcp(mariadb, name, password, "SELECT current_user()")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{name}@%"
    connection = pymysql_connect(mariadb, name, password, database=mariadb.app_database)
    try:
        assert query_one(connection, "SELECT current_user(), database()") == (f"{name}@%", mariadb.app_database)
    finally:
        connection.close()
    with pytest.raises(pymysql.err.OperationalError) as refused:
        pymysql_connect(mariadb, name, "wrong")
    assert mysql_error_code(refused) == 1045


def test_mariadb_create_user_options(mariadb: MariaDBServer) -> None:
    with pytest.raises(ValueError, match="no caching_sha2_password server plugin"):
        mariadb.create_user("nobody", "pw", plugin="caching_sha2_password")
    with pytest.raises(ValueError, match="plugin must be one of mysql_native_password, ed25519"):
        mariadb.create_user("nobody", "pw", plugin="unix_socket")
    with pytest.raises(ValueError, match="needs a password"):
        mariadb.create_user("nobody", None, plugin="ed25519")
    assert mariadb.sql("SELECT count(*) FROM mysql.user WHERE user = 'nobody'") == "0"

    owner, database, member, passwordless = unique_name("owner"), unique_name("db"), unique_name("m"), unique_name("np")
    mariadb.create_user(owner, "pw")
    mariadb.create_database(database, owner=owner)
    mariadb.create_user(member, "pw", databases=[database])
    mariadb.create_user(passwordless, None)
    for user, password in ((owner, "pw"), (member, "pw"), (passwordless, None)):
        result = mariadb_over_tcp(mariadb, user, password, "CREATE TABLE IF NOT EXISTS t (v int)", database=database)
        expected_success = user != passwordless  # it has no rights on the database
        assert (result.returncode == 0) == expected_success, (user, result.stderr)
    result = mariadb_over_tcp(mariadb, passwordless, None, "SELECT current_user()")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{passwordless}@%"


def test_mariadb_restart_keeps_port_settings_and_data(fresh_mariadb: Callable[..., MariaDBServer]) -> None:
    server = fresh_mariadb(max_connections=12, settings={"wait_timeout": "77"})
    port = server.port
    server.sql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before restart')", database="app")
    server.restart()
    assert server.running and server.port == port
    assert server.sql("SELECT v FROM kept", database="app") == "before restart"
    assert server.sql("SELECT @@global.max_connections, @@global.wait_timeout") == "12\t77"
    result = mariadb_over_tcp(server, server.app_user, server.app_password, "SELECT count(*) FROM kept", database="app")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_mariadb_max_connections_leave_one_for_root(fresh_mariadb: Callable[..., MariaDBServer]) -> None:
    server = fresh_mariadb(max_connections=10)
    connections = []
    try:
        for _ in range(10):
            connections.append(pymysql_connect(server, server.app_user, server.app_password))
        with pytest.raises(pymysql.err.OperationalError) as refused:
            pymysql_connect(server, server.app_user, server.app_password)
        assert mysql_error_code(refused) == 1040
        assert server.sql("SELECT count(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'") == "10"
    finally:
        for connection in connections:
            connection.close()


def test_mariadb_kill9_then_restart(fresh_mariadb: Callable[..., MariaDBServer]) -> None:
    server = fresh_mariadb()
    server.sql("CREATE TABLE survivors (v int); INSERT INTO survivors VALUES (9)", database="app")
    port = server.port
    busy = subprocess.Popen(
        [
            "mariadb",
            "--no-defaults",
            f"--host={server.host}",
            f"--port={port}",
            f"--user={server.app_user}",
            f"--password={server.app_password}",
            "-e",
            "SELECT SLEEP(600)",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        sleeping = "SELECT count(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(600)'"
        while server.sql(sleeping) != "1" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.sql(sleeping) == "1"

        server.kill9()
        assert not server.running
        _, errors = busy.communicate(timeout=30)
        assert "Lost connection" in errors
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


def test_mariadb_kill_connections(mariadb: MariaDBServer) -> None:
    name = unique_name("victim")
    mariadb.create_user(name, "pw")
    victims = [pymysql_connect(mariadb, name, "pw") for _ in range(2)]
    bystander = pymysql_connect(mariadb, mariadb.app_user, mariadb.app_password)
    try:
        assert mariadb.kill_connections(name) == 2
        for victim in victims:
            with pytest.raises(pymysql.err.OperationalError) as lost:
                query_one(victim, "SELECT 1")
            assert mysql_error_code(lost) in (2006, 2013, 1927)  # gone / lost / killed, by timing
        assert query_one(bystander, "SELECT 1") == (1,)
        assert mariadb.kill_connections(name) == 0
    finally:
        for connection in (*victims, bystander):
            connection.close()


def test_mariadb_replica_follows_and_takes_over(fresh_mariadb: Callable[..., MariaDBServer]) -> None:
    primary = fresh_mariadb()
    replica = primary.make_replica()
    assert primary.replicas == [replica]
    assert replica.port != primary.port and replica.server_id != primary.server_id
    assert replica.is_replica() and not primary.is_replica()

    late_user = unique_name("late")
    primary.create_user(late_user, "late-pw", plugin="ed25519", databases=[primary.app_database])
    primary.sql("CREATE TABLE t (v int); INSERT INTO t VALUES (1)", database="app")
    primary.wait_caught_up(replica)
    assert replica.sql("SELECT v FROM t", database="app") == "1"
    for user, password in ((replica.app_user, replica.app_password), (late_user, "late-pw")):
        connection = pymysql_connect(replica, user, password, database="app")
        try:
            assert query_one(connection, "SELECT count(*) FROM t") == (1,)
            with pytest.raises(pymysql.err.OperationalError) as refused:
                query_one(connection, "INSERT INTO t VALUES (2)")
            assert mysql_error_code(refused) == 1290  # --read-only
        finally:
            connection.close()

    replica.sql("STOP SLAVE SQL_THREAD")
    primary.sql("INSERT INTO t VALUES (10)", database="app")
    with pytest.raises(TimeoutError, match="Slave_SQL_Running: No"):
        primary.wait_caught_up(replica, timeout=0.5)
    replica.sql("START SLAVE SQL_THREAD")
    primary.wait_caught_up(replica)
    assert replica.sql("SELECT sum(v) FROM t", database="app") == "11"

    primary.kill9()
    replica.promote()
    assert not replica.is_replica()
    result = mariadb_over_tcp(replica, late_user, "late-pw", "INSERT INTO t VALUES (2)", database="app")
    assert result.returncode == 0, result.stderr
    assert replica.sql("SELECT sum(v) FROM t", database="app") == "13"
    replica.restart()  # a promoted replica stays writable
    assert not replica.is_replica()


def test_concurrent_mariadb_starts_get_distinct_ports() -> None:
    servers: list[MariaDBServer] = []
    failures: list[BaseException] = []

    def start() -> None:
        try:
            servers.append(start_mariadb(max_connections=10))
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


def test_mariadb_start_retries_when_the_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_claim = rdsproxy.testing._claim_free_port
    offered = iter([taken])
    monkeypatch.setattr(rdsproxy.testing, "_claim_free_port", lambda: next(offered, None) or real_claim())
    try:
        with start_mariadb(max_connections=10) as server:
            assert server.port != taken
            assert server.sql("SELECT 1") == "1"
            assert "Address already in use" in Path(server.log_path).read_text()
    finally:
        squatter.close()


def test_mariadb_stop_deletes_the_directory_unless_kept() -> None:
    server = start_mariadb(max_connections=10)
    server.stop(keep_data=True)
    assert not server.running and os.path.isdir(server.data_dir)
    server.restart()
    assert server.sql("SELECT 1") == "1"
    with server:
        pass
    assert not server.running and not os.path.exists(server.socket_dir)


def test_mariadb_missing_binaries_say_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = record_temp_dirs(monkeypatch)
    with pytest.raises(RuntimeError) as by_argument:
        start_mariadb(bindir=str(tmp_path))
    monkeypatch.setenv(MARIADB_BINDIR_ENV, str(tmp_path))
    with pytest.raises(RuntimeError) as by_environment:
        start_mariadb()
    for caught in (by_argument, by_environment):
        message = str(caught.value)
        assert message.startswith("MariaDB programs not found: mariadbd, mariadb-install-db, mariadb"), message
        assert str(tmp_path) in message
        assert "apt-get install mariadb-server" in message
        assert MARIADB_BINDIR_ENV in message
    assert "my." not in made


def test_mariadb_reserved_settings_and_minimum_connections_are_refused() -> None:
    with pytest.raises(ValueError, match="settings may not override max-connections, port"):
        start_mariadb(settings={"port": "3306", "max_connections": "5"})
    with pytest.raises(ValueError, match="at least 10"):
        start_mariadb(max_connections=9)


def test_proxy_config_for_mariadb(mariadb: MariaDBServer) -> None:
    config = proxy_config_for(mariadb, connection_borrow_timeout=3)
    assert config.proxy.engine_family == "MYSQL"
    assert [endpoint.listen for endpoint in config.endpoints] == ["127.0.0.1:0"]
    assert config.target_group.targets == [mariadb.address()]
    assert config.target_group.database == mariadb.app_database
    assert config.target_group.connection_borrow_timeout == 3.0
    app = config.user(mariadb.app_user)
    assert app is not None
    assert app.client_password_auth_type == "MYSQL_NATIVE_PASSWORD"
    assert app.resolve_password() == mariadb.app_password
