"""Real MySQL clients (PyMySQL, aiomysql, the mariadb CLI, sysbench) through the proxy against a real MariaDB."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Callable, Optional

import aiomysql
import pymysql
import pytest
from pymysql.constants import CLIENT

from rdsproxy import Proxy
from rdsproxy.config import AuthConfig, ProxyConfig
from rdsproxy.protocol.mysql import packets as p
from rdsproxy.protocol.mysql.auth import native_password_response
from rdsproxy.testing import MariaDBServer, proxy_config_for, running_proxy, start_mariadb

# Every "wait for something" below is bounded by this deadline; nothing asserts how long anything took.
DEADLINE = 30.0
SERVER_MAX_CONNECTIONS = 40
# MySQL budget: (max_connections - 1) * max_connections_percent // 100 (one slot is the health-check connection).
FULL_BUDGET = SERVER_MAX_CONNECTIONS - 1
# The 16 MB+ test needs the server to accept a statement that large.
SERVER_MAX_ALLOWED_PACKET = 64 * 1024 * 1024

OTHER_USER = "other_user"
OTHER_PASSWORD = "other-pw-Qe4%k"
ED25519_USER = "ed_user"
ED25519_PASSWORD = "ed-pw-Jw8&z"
WRONG_PASSWORD = "wrong-pw-Tn2#c"
MISSING_DATABASE = "my_no_such_db"
NEVER_LOGGED = [MariaDBServer.app_password, OTHER_PASSWORD, ED25519_PASSWORD, WRONG_PASSWORD]
CLIENT_AUTH_TYPES = ["MYSQL_NATIVE_PASSWORD", "MYSQL_CACHING_SHA2_PASSWORD"]
CLIENT_AUTH_PLUGINS = {
    "MYSQL_NATIVE_PASSWORD": "mysql_native_password",
    "MYSQL_CACHING_SHA2_PASSWORD": "caching_sha2_password",
}

# MySQL error numbers the tests expect
ER_ACCESS_DENIED = 1045
ER_BAD_DB = 1049
ER_UNKNOWN_COM = 1047
ER_NO_SUCH_THREAD = 1094
ER_KILL_DENIED = 1095
ER_NO_SUCH_TABLE = 1146
ER_DUP_ENTRY = 1062
ER_QUERY_INTERRUPTED = 1317


@pytest.fixture(scope="module")
def server() -> Iterator[MariaDBServer]:
    settings = {"max_allowed_packet": str(SERVER_MAX_ALLOWED_PACKET), "local_infile": "1"}
    with start_mariadb(max_connections=SERVER_MAX_CONNECTIONS, settings=settings) as my_server:
        my_server.create_user(OTHER_USER, OTHER_PASSWORD, databases=[my_server.app_database])
        my_server.create_user(ED25519_USER, ED25519_PASSWORD, plugin="ed25519", databases=[my_server.app_database])
        # rights on a database that does not exist: connecting to it then fails with 1049, not 1044
        my_server.sql(f"GRANT ALL ON {MISSING_DATABASE}.* TO {my_server.app_user}")
        yield my_server


@pytest.fixture(autouse=True)
def no_password_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every test runs with logging at DEBUG; no password may show up in anything the proxy logged."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    logged = "\n".join(record.getMessage() for record in records if record.name.startswith("rdsproxy"))
    for password in NEVER_LOGGED:
        assert password not in logged


def config_for(
    server: MariaDBServer, *, auth_type: Optional[str] = None, debug: bool = False, **group: Any
) -> ProxyConfig:
    """The app user plus OTHER_USER and ED25519_USER, all asking clients for `auth_type`."""
    config = proxy_config_for(server, **group)
    config.auth = [
        AuthConfig(username=server.app_user, password=server.app_password, client_password_auth_type=auth_type),
        AuthConfig(username=OTHER_USER, password=OTHER_PASSWORD, client_password_auth_type=auth_type),
        AuthConfig(username=ED25519_USER, password=ED25519_PASSWORD, client_password_auth_type=auth_type),
    ]
    config.proxy.debug_logging = debug
    config.validate()
    return config


def percent_for_budget(backends: int) -> int:
    """The smallest max_connections_percent that gives the module's server a pool of `backends`."""
    percent = -(-backends * 100 // FULL_BUDGET)
    assert (FULL_BUDGET * percent) // 100 == backends
    return percent


@pytest.fixture
async def proxy(server: MariaDBServer) -> AsyncIterator[Proxy]:
    async with running_proxy(config_for(server)) as running:
        yield running


@pytest.fixture
async def small_proxy(server: MariaDBServer) -> AsyncIterator[Proxy]:
    """A proxy allowed four backend connections."""
    percent = percent_for_budget(4)
    config = config_for(server, max_connections_percent=percent, max_idle_connections_percent=percent)
    async with running_proxy(config) as running:
        assert running.metrics()["MaxDatabaseConnectionsAllowed"] == 4
        yield running


# ---------------------------------------------------------------------------------------------------------
# Helpers


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition()` until true; fail after DEADLINE seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_released(proxy: Proxy) -> None:
    await wait_for(
        lambda: proxy.metrics()["DatabaseConnectionsCurrentlyBorrowed"] == 0, "every backend to go back to the pool"
    )


def borrowed(proxy: Proxy) -> float:
    return proxy.metrics()["DatabaseConnectionsCurrentlyBorrowed"]


async def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking client call off the event loop the proxy lives on."""
    return await asyncio.to_thread(function, *args, **kwargs)


def pymysql_connect_blocking(
    proxy: Proxy, server: MariaDBServer, *, user: Optional[str] = None, password: Optional[str] = None, **kwargs: Any
) -> pymysql.connections.Connection:
    host, port = proxy.address("default")
    options: dict[str, Any] = {"database": server.app_database, "autocommit": True, "connect_timeout": 10}
    options.update(kwargs)
    return pymysql.connect(
        host=host,
        port=port,
        user=user or server.app_user,
        password=server.app_password if password is None else password,
        **options,
    )


async def pymysql_connect(proxy: Proxy, server: MariaDBServer, **kwargs: Any) -> pymysql.connections.Connection:
    return await in_thread(pymysql_connect_blocking, proxy, server, **kwargs)


def fetch_blocking(conn: pymysql.connections.Connection, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cursor:
        cursor.execute(sql, args)
        return list(cursor.fetchall())


async def fetch(conn: pymysql.connections.Connection, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    return await in_thread(fetch_blocking, conn, sql, args)


async def fetchval(conn: pymysql.connections.Connection, sql: str, args: Any = None) -> Any:
    rows = await fetch(conn, sql, args)
    assert len(rows) == 1 and len(rows[0]) == 1, rows
    return rows[0][0]


async def pymysql_error(call: Any) -> pymysql.err.MySQLError:
    """The PyMySQL error an awaitable raised (fails the test if it raised none)."""
    with pytest.raises(pymysql.err.MySQLError) as raised:
        await call
    return raised.value


def fresh_table(server: MariaDBServer, name: str, columns: str) -> None:
    server.sql(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns}) ENGINE=InnoDB", database="app")


def count_sessions(server: MariaDBServer, user: str) -> int:
    return int(server.sql(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{user}'"))


async def run_tool(
    argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None, timeout: float = 120.0
) -> tuple[int, str, str]:
    """Run a client program without blocking the event loop the proxy lives on."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MYSQL")}
    environment.update(env or {})
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def mariadb_cli(
    proxy: Proxy,
    server: MariaDBServer,
    sql: str,
    *,
    user: Optional[str] = None,
    password: Optional[str] = None,
    database: Optional[str] = None,
) -> tuple[int, str, str]:
    """`mariadb -N -B -e sql` through the proxy; returns (exit code, stdout, stderr)."""
    host, port = proxy.address("default")
    argv = [
        "mariadb",
        "--no-defaults",
        "--skip-ssl",
        f"-h{host}",
        f"-P{port}",
        f"-u{user or server.app_user}",
        f"-p{server.app_password if password is None else password}",
        "--connect-timeout=10",
        "-N",
        "-B",
        database or server.app_database,
        "-e",
        sql,
    ]
    return await run_tool(argv)


# ---------------------------------------------------------------------------------------------------------
# A raw protocol client, for the commands no installed client library sends (COM_CHANGE_USER,
# COM_RESET_CONNECTION, unknown command bytes).


class RawError(Exception):
    def __init__(self, code: int, sqlstate: str, message: str) -> None:
        super().__init__(f"{code} ({sqlstate}): {message}")
        self.code = code
        self.sqlstate = sqlstate
        self.message = message


RAW_CAPABILITIES = (
    p.CLIENT_LONG_PASSWORD
    | p.CLIENT_PROTOCOL_41
    | p.CLIENT_TRANSACTIONS
    | p.CLIENT_SECURE_CONNECTION
    | p.CLIENT_PLUGIN_AUTH
    | p.CLIENT_MULTI_RESULTS
)


class RawClient:
    """Speaks just enough of the MySQL protocol (native password, text results with EOF packets) by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.scramble = b""
        self.connection_id = 0
        self.capabilities = 0

    @classmethod
    async def connect(cls, proxy: Proxy, user: str, password: str, database: str) -> RawClient:
        reader, writer = await asyncio.open_connection(*proxy.address("default"))
        client = cls(reader, writer)
        _, greeting = await client.read()
        handshake = p.parse_handshake_v10(greeting)
        assert handshake.auth_plugin == "mysql_native_password"
        client.scramble = handshake.scramble
        client.connection_id = handshake.connection_id
        client.capabilities = RAW_CAPABILITIES & handshake.capabilities
        response = p.handshake_response41(
            capabilities=client.capabilities,
            username=user,
            auth_response=native_password_response(password, client.scramble),
            database=database,
            auth_plugin="mysql_native_password",
        )
        client.capabilities |= p.CLIENT_CONNECT_WITH_DB
        client.send(1, response)
        client.expect_ok(await client.read())
        return client

    async def read(self) -> tuple[int, bytes]:
        header = await asyncio.wait_for(self.reader.readexactly(4), DEADLINE)
        size = int.from_bytes(header[:3], "little")
        payload = await asyncio.wait_for(self.reader.readexactly(size), DEADLINE)
        return header[3], payload

    def send(self, seq: int, payload: bytes) -> None:
        self.writer.write(p.packet(seq, payload))

    @staticmethod
    def expect_ok(packet: tuple[int, bytes]) -> None:
        _, payload = packet
        if payload[:1] == b"\xff":
            error = p.parse_err(payload)
            raise RawError(error.code, error.sqlstate, error.message)
        assert payload[:1] == b"\x00", payload

    async def command(self, payload: bytes) -> None:
        """Send a command answered by OK (raises RawError on ERR)."""
        self.send(0, payload)
        self.expect_ok(await self.read())

    async def query(self, sql: str) -> list[list[Optional[str]]]:
        """COM_QUERY of one statement; the rows of its result set ([] for OK)."""
        self.send(0, p.com_query(sql.encode()))
        _, first = await self.read()
        if first[:1] in (b"\x00", b"\xff"):
            self.expect_ok((1, first))
            return []
        columns = p.parse_column_count(first)
        for _ in range(columns + 1):  # column definitions, then EOF
            await self.read()
        rows = []
        while True:
            _, row = await self.read()
            if row[:1] == b"\xfe" and len(row) < 9:
                return rows
            if row[:1] == b"\xff":
                self.expect_ok((0, row))
            rows.append([None if value is None else value.decode() for value in p.parse_text_row(row, columns)])

    async def value(self, sql: str) -> Optional[str]:
        rows = await self.query(sql)
        assert len(rows) == 1 and len(rows[0]) == 1, rows
        return rows[0][0]

    async def change_user(self, user: str, password: str, database: str) -> None:
        payload = p.com_change_user(
            capabilities=self.capabilities,
            username=user,
            auth_response=native_password_response(password, self.scramble),
            database=database,
            auth_plugin="mysql_native_password",
        )
        self.send(0, payload)
        self.expect_ok(await self.read())

    async def closed_by_peer(self) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(1), DEADLINE)
        except ConnectionError:
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


# ---------------------------------------------------------------------------------------------------------
# PyMySQL


async def test_pymysql_simple_queries(proxy: Proxy, server: MariaDBServer) -> None:
    conn = await pymysql_connect(proxy, server)
    try:
        assert await fetchval(conn, "SELECT 1") == 1
        # the connection id of the greeting is the proxy's own (what KILL takes), and CONNECTION_ID() agrees
        assert await fetchval(conn, "SELECT CONNECTION_ID()") == conn.thread_id()
        assert await fetch(conn, "SELECT %s, %s", ("text", 42)) == [("text", 42)]
        assert await fetchval(conn, "SELECT DATABASE()") == server.app_database
        assert await fetchval(conn, "SELECT CURRENT_USER()") == f"{server.app_user}@%"
        assert "MariaDB" in await fetchval(conn, "SELECT VERSION()")
        assert await fetchval(conn, "SELECT CONCAT('caf', _utf8mb4 0xC3A9)") == "café"
        await in_thread(conn.ping)
        await wait_released(proxy)
        metrics = proxy.metrics()
        assert metrics["QueryRequests"] >= 6
        assert metrics["SessionPinningEvents"] == 0
        assert metrics["ClientConnections"] == 1
    finally:
        await in_thread(conn.close)
    await wait_for(lambda: proxy.metrics()["ClientConnections"] == 0, "the client to be gone")


async def test_pymysql_many_rows(proxy: Proxy, server: MariaDBServer) -> None:
    conn = await pymysql_connect(proxy, server)
    try:
        rows = await fetch(conn, "SELECT seq, REPEAT('x', 200) FROM seq_1_to_50000")
        assert len(rows) == 50000
        assert sum(row[0] for row in rows) == 50000 * 50001 // 2
        assert all(row[1] == "x" * 200 for row in rows)

        def stream() -> tuple[int, int]:
            # an unbuffered cursor reads rows as they arrive: the response spans many reads on both sides
            with conn.cursor(pymysql.cursors.SSCursor) as cursor:
                cursor.execute("SELECT seq FROM seq_1_to_100000")
                count = total = 0
                for (value,) in cursor:
                    count += 1
                    total += value
                return count, total

        assert await in_thread(stream) == (100000, 100000 * 100001 // 2)
        assert await fetchval(conn, "SELECT 7") == 7
        await wait_released(proxy)
    finally:
        await in_thread(conn.close)


async def test_pymysql_transactions_commit_and_rollback(proxy: Proxy, server: MariaDBServer) -> None:
    fresh_table(server, "my_tx", "id INT PRIMARY KEY, note VARCHAR(20)")
    conn = await pymysql_connect(proxy, server)
    observer = await pymysql_connect(proxy, server)
    try:
        await in_thread(conn.begin)
        await fetch(conn, "INSERT INTO my_tx VALUES (1, 'rolled back')")
        metrics = proxy.metrics()
        assert metrics["DatabaseConnectionsCurrentlyInTransaction"] == 1
        assert metrics["DatabaseConnectionsCurrentlyBorrowed"] == 1
        assert await fetchval(observer, "SELECT COUNT(*) FROM my_tx") == 0  # not committed yet
        await in_thread(conn.rollback)
        await wait_released(proxy)

        await in_thread(conn.begin)
        await fetch(conn, "INSERT INTO my_tx VALUES (2, 'committed')")
        await fetch(conn, "UPDATE my_tx SET note = 'committed!' WHERE id = 2")
        assert await fetch(conn, "SELECT id, note FROM my_tx") == [(2, "committed!")]
        assert proxy.metrics()["DatabaseConnectionsCurrentlyInTransaction"] == 1
        await in_thread(conn.commit)
        await wait_released(proxy)
        assert proxy.metrics()["DatabaseConnectionsCurrentlyInTransaction"] == 0
        assert await fetch(observer, "SELECT id, note FROM my_tx") == [(2, "committed!")]

        await fetch(conn, "START TRANSACTION")
        await fetch(conn, "INSERT INTO my_tx VALUES (3, 'sql rollback')")
        assert borrowed(proxy) == 1
        await fetch(conn, "ROLLBACK")
        await wait_released(proxy)
        assert server.sql("SELECT GROUP_CONCAT(id) FROM my_tx", database="app") == "2"
    finally:
        await in_thread(conn.close)
        await in_thread(observer.close)


async def test_pymysql_autocommit_off_keeps_the_backend_until_commit(proxy: Proxy, server: MariaDBServer) -> None:
    fresh_table(server, "my_autocommit", "id INT PRIMARY KEY")
    conn = await pymysql_connect(proxy, server, autocommit=False)
    observer = await pymysql_connect(proxy, server)
    try:
        assert await fetchval(conn, "SELECT @@autocommit") == 0
        assert conn.get_autocommit() is False
        await fetch(conn, "INSERT INTO my_autocommit VALUES (1)")
        # an implicit transaction is open: the backend stays with this client
        assert proxy.metrics()["DatabaseConnectionsCurrentlyInTransaction"] == 1
        await fetch(conn, "INSERT INTO my_autocommit VALUES (2)")
        assert await fetchval(observer, "SELECT COUNT(*) FROM my_autocommit") == 0
        assert await fetchval(conn, "SELECT COUNT(*) FROM my_autocommit") == 2
        assert borrowed(proxy) == 1
        await in_thread(conn.commit)
        await wait_released(proxy)
        assert await fetchval(observer, "SELECT COUNT(*) FROM my_autocommit") == 2

        await fetch(conn, "INSERT INTO my_autocommit VALUES (3)")
        assert borrowed(proxy) == 1
        await in_thread(conn.rollback)
        await wait_released(proxy)
        assert await fetchval(observer, "SELECT COUNT(*) FROM my_autocommit") == 2
        # autocommit=0 is replayed on whichever backend serves the client next, and never leaks to others
        assert await fetchval(conn, "SELECT @@autocommit") == 0
        assert await fetchval(observer, "SELECT @@autocommit") == 1
        await in_thread(conn.rollback)

        # a read opens the implicit transaction too: its snapshot holds until commit (REPEATABLE READ), which
        # only works if every statement until then runs on the same backend
        assert await fetchval(conn, "SELECT COUNT(*) FROM my_autocommit") == 2
        assert borrowed(proxy) == 1
        await fetch(observer, "INSERT INTO my_autocommit VALUES (10)")
        assert await fetchval(conn, "SELECT COUNT(*) FROM my_autocommit") == 2
        await in_thread(conn.commit)
        await wait_released(proxy)
        assert await fetchval(conn, "SELECT COUNT(*) FROM my_autocommit") == 3
        await in_thread(conn.commit)

        await in_thread(conn.autocommit, True)
        await fetch(conn, "INSERT INTO my_autocommit VALUES (4)")
        await wait_released(proxy)
        assert await fetchval(observer, "SELECT COUNT(*) FROM my_autocommit") == 4
        await in_thread(observer.autocommit, False)
        await fetch(observer, "DELETE FROM my_autocommit")
        assert borrowed(proxy) == 1
        await in_thread(observer.rollback)
        await wait_released(proxy)
        assert server.sql("SELECT COUNT(*) FROM my_autocommit", database="app") == "4"
        assert proxy.metrics()["SessionPinningEvents"] == 0
    finally:
        await in_thread(conn.close)
        await in_thread(observer.close)


async def test_pymysql_multi_statements(proxy: Proxy, server: MariaDBServer) -> None:
    fresh_table(server, "my_multi", "id INT PRIMARY KEY")
    conn = await pymysql_connect(proxy, server, client_flag=CLIENT.MULTI_STATEMENTS)

    def results(sql: str) -> list[Any]:
        collected: list[Any] = []
        with conn.cursor() as cursor:
            cursor.execute(sql)
            while True:
                collected.append(list(cursor.fetchall()) if cursor.description else cursor.rowcount)
                if not cursor.nextset():
                    return collected

    try:
        sql = "SELECT 1; SELECT 2, 'two'; INSERT INTO my_multi VALUES (1), (2); SELECT id FROM my_multi ORDER BY id"
        assert await in_thread(results, sql) == [[(1,)], [(2, "two")], 2, [(1,), (2,)]]
        await wait_released(proxy)

        # an error in the middle ends the batch there; the connection carries on
        error = await pymysql_error(in_thread(results, "SELECT 10; SELECT * FROM my_missing_table; SELECT 30"))
        assert error.args[0] == ER_NO_SUCH_TABLE
        await wait_released(proxy)
        assert await fetchval(conn, "SELECT 40") == 40

        # a transaction opened inside a batch holds the backend after the batch ends
        assert await in_thread(results, "BEGIN; INSERT INTO my_multi VALUES (3); SELECT COUNT(*) FROM my_multi") == [
            0,
            1,
            [(3,)],
        ]
        assert borrowed(proxy) == 1
        assert await in_thread(results, "ROLLBACK; SELECT COUNT(*) FROM my_multi") == [0, [(2,)]]
        await wait_released(proxy)
        assert proxy.metrics()["SessionPinningEvents"] == 0
    finally:
        await in_thread(conn.close)


async def test_pymysql_load_data_local_infile(proxy: Proxy, server: MariaDBServer, tmp_path: Any) -> None:
    fresh_table(server, "my_infile", "id INT PRIMARY KEY, name VARCHAR(40)")
    data_file = tmp_path / "rows.csv"
    data_file.write_text("".join(f"{i},name-{i}\n" for i in range(1, 20001)))
    conn = await pymysql_connect(proxy, server, local_infile=True)
    try:
        loaded = await in_thread(
            lambda: conn.cursor().execute(
                f"LOAD DATA LOCAL INFILE '{data_file}' INTO TABLE my_infile FIELDS TERMINATED BY ','"
            )
        )
        assert loaded == 20000
        await wait_released(proxy)
        assert await fetch(conn, "SELECT COUNT(*), SUM(id), MAX(name) FROM my_infile") == [
            (20000, 20000 * 20001 // 2, "name-9999")
        ]
        # a file the client cannot read: it sends an empty file, the server answers with an error
        error = await pymysql_error(
            in_thread(
                lambda: conn.cursor().execute(
                    f"LOAD DATA LOCAL INFILE '{tmp_path / 'missing.csv'}' INTO TABLE my_infile"
                )
            )
        )
        assert isinstance(error, pymysql.err.OperationalError)
        await wait_released(proxy)
        assert await fetchval(conn, "SELECT COUNT(*) FROM my_infile") == 20000

        # inside a transaction, then rolled back
        await in_thread(conn.begin)
        await in_thread(
            lambda: conn.cursor().execute(
                f"LOAD DATA LOCAL INFILE '{data_file}' REPLACE INTO TABLE my_infile FIELDS TERMINATED BY ',' "
                "(id, @name) SET name = 'replaced'"
            )
        )
        assert await fetchval(conn, "SELECT COUNT(*) FROM my_infile WHERE name = 'replaced'") == 20000
        await in_thread(conn.rollback)
        await wait_released(proxy)
        assert server.sql("SELECT COUNT(*) FROM my_infile WHERE name = 'replaced'", database="app") == "0"
    finally:
        await in_thread(conn.close)


async def test_pymysql_error_in_transaction_then_rollback_and_reuse(proxy: Proxy, server: MariaDBServer) -> None:
    fresh_table(server, "my_errors", "id INT PRIMARY KEY")
    conn = await pymysql_connect(proxy, server)
    try:
        await in_thread(conn.begin)
        await fetch(conn, "INSERT INTO my_errors VALUES (1)")
        error = await pymysql_error(fetch(conn, "INSERT INTO my_errors VALUES (1)"))
        assert error.args[0] == ER_DUP_ENTRY
        error = await pymysql_error(fetch(conn, "SELECT * FROM my_no_such_table"))
        assert error.args[0] == ER_NO_SUCH_TABLE
        error = await pymysql_error(fetch(conn, "SELEC 1"))
        assert error.args[0] == 1064
        # MySQL keeps the transaction open after a failed statement: the backend stays with the client
        assert proxy.metrics()["DatabaseConnectionsCurrentlyInTransaction"] == 1
        assert await fetchval(conn, "SELECT COUNT(*) FROM my_errors") == 1
        await in_thread(conn.rollback)
        await wait_released(proxy)
        assert await fetchval(conn, "SELECT COUNT(*) FROM my_errors") == 0

        # an error outside a transaction releases the backend at once
        error = await pymysql_error(fetch(conn, "SELECT * FROM my_no_such_table"))
        assert error.args[0] == ER_NO_SUCH_TABLE
        await wait_released(proxy)
        await in_thread(conn.begin)
        await fetch(conn, "INSERT INTO my_errors VALUES (5)")
        await in_thread(conn.commit)
        await wait_released(proxy)
        assert server.sql("SELECT GROUP_CONCAT(id) FROM my_errors", database="app") == "5"
    finally:
        await in_thread(conn.close)


async def test_pymysql_query_over_16_mb(proxy: Proxy, server: MariaDBServer) -> None:
    fresh_table(server, "my_big", "id INT PRIMARY KEY, body LONGTEXT")
    body = "".join(chr(ord("a") + i % 26) for i in range(1000)) * (17 * 1024 + 3)  # ~17 MB
    assert len(body) > 0xFFFFFF
    conn = await pymysql_connect(proxy, server, max_allowed_packet=SERVER_MAX_ALLOWED_PACKET)
    try:
        # the statement is larger than one packet: the client splits it, the proxy must reassemble and forward it
        assert await in_thread(lambda: conn.cursor().execute("INSERT INTO my_big VALUES (1, %s)", (body,))) == 1
        expected = (len(body), hashlib.md5(body.encode()).hexdigest())
        assert await fetch(conn, "SELECT LENGTH(body), MD5(body) FROM my_big WHERE id = 1") == [expected]
        # and back: a result row larger than one packet
        assert await fetchval(conn, "SELECT body FROM my_big WHERE id = 1") == body
        assert await fetchval(conn, "SELECT 1") == 1
        # statements over 16 KB are not inspected: the session is pinned with that reason
        assert proxy.metrics()["SessionPinningEvents.statement_too_long"] == 1
        assert proxy.pinned_sessions()[0]["reasons"] == ["statement_too_long"]
        assert borrowed(proxy) == 1
    finally:
        await in_thread(conn.close)
    await wait_released(proxy)
    assert server.sql("SELECT LENGTH(body) FROM my_big", database="app") == str(len(body))


# ---------------------------------------------------------------------------------------------------------
# aiomysql


async def aiomysql_connect(proxy: Proxy, server: MariaDBServer, **kwargs: Any) -> aiomysql.Connection:
    host, port = proxy.address("default")
    options: dict[str, Any] = {"db": server.app_database, "autocommit": True}
    options.update(kwargs)
    return await aiomysql.connect(host=host, port=port, user=server.app_user, password=server.app_password, **options)


async def aio_fetch(conn: aiomysql.Connection, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cursor:
        await cursor.execute(sql, args)
        return list(await cursor.fetchall())


async def test_aiomysql_basics(proxy: Proxy, server: MariaDBServer) -> None:
    fresh_table(server, "my_aio", "id INT PRIMARY KEY, note VARCHAR(20)")
    conn = await aiomysql_connect(proxy, server)
    try:
        assert await aio_fetch(conn, "SELECT 1, %s", ("one",)) == [(1, "one")]
        assert await aio_fetch(conn, "SELECT DATABASE(), CURRENT_USER()") == [(server.app_database, "app@%")]
        rows = await aio_fetch(conn, "SELECT seq FROM seq_1_to_30000")
        assert [row[0] for row in rows] == list(range(1, 30001))
        await wait_released(proxy)

        await conn.begin()
        async with conn.cursor() as cursor:
            await cursor.execute("INSERT INTO my_aio VALUES (1, 'gone')")
        assert proxy.metrics()["DatabaseConnectionsCurrentlyInTransaction"] == 1
        await conn.rollback()
        await conn.begin()
        async with conn.cursor() as cursor:
            await cursor.execute("INSERT INTO my_aio VALUES (2, 'kept')")
            with pytest.raises(pymysql.err.IntegrityError):
                await cursor.execute("INSERT INTO my_aio VALUES (2, 'duplicate')")
        await conn.commit()
        await wait_released(proxy)
        assert await aio_fetch(conn, "SELECT id, note FROM my_aio") == [(2, "kept")]

        await conn.autocommit(False)
        assert await aio_fetch(conn, "SELECT @@autocommit") == [(0,)]
        async with conn.cursor() as cursor:
            await cursor.execute("DELETE FROM my_aio")
        assert borrowed(proxy) == 1
        await conn.rollback()
        await conn.autocommit(True)
        await wait_released(proxy)
        # (not in one SELECT with a table: MariaDB 10.11 then reports @@autocommit as 0 even to direct clients)
        assert await aio_fetch(conn, "SELECT @@autocommit") == [(1,)]
        assert await aio_fetch(conn, "SELECT COUNT(*) FROM my_aio") == [(1,)]
        await conn.ping()
    finally:
        conn.close()

    multi = await aiomysql_connect(proxy, server, client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        async with multi.cursor() as cursor:
            await cursor.execute("SELECT 1; UPDATE my_aio SET note = 'updated'; SELECT note FROM my_aio")
            assert await cursor.fetchall() == ((1,),)
            assert await cursor.nextset()
            assert cursor.rowcount == 1
            assert await cursor.nextset()
            assert await cursor.fetchall() == (("updated",),)
            assert not await cursor.nextset()
        await wait_released(proxy)
    finally:
        multi.close()


async def test_aiomysql_concurrent_clients(small_proxy: Proxy, server: MariaDBServer) -> None:
    fresh_table(server, "my_counters", "id INT PRIMARY KEY, hits INT NOT NULL")
    server.sql(
        "INSERT INTO my_counters SELECT seq, 0 FROM seq_0_to_39",
        database="app",
    )
    most = 0

    async def sample() -> None:
        nonlocal most
        while True:
            most = max(most, int(small_proxy.metrics()["DatabaseConnections"]))
            await asyncio.sleep(0.01)

    async def worker(number: int) -> None:
        conn = await aiomysql_connect(small_proxy, server)
        try:
            for round_number in range(5):
                assert await aio_fetch(conn, "SELECT %s * 1000 + %s", (number, round_number)) == [
                    (number * 1000 + round_number,)
                ]
                await conn.begin()
                async with conn.cursor() as cursor:
                    await cursor.execute("UPDATE my_counters SET hits = hits + 1 WHERE id = %s", (number,))
                    await cursor.execute("SELECT hits FROM my_counters WHERE id = %s", (number,))
                    assert await cursor.fetchone() == (round_number + 1,)
                await conn.commit()
        finally:
            conn.close()

    sampler = asyncio.ensure_future(sample())
    try:
        await asyncio.gather(*(worker(number) for number in range(40)))
    finally:
        sampler.cancel()
    assert server.sql("SELECT COUNT(*), MIN(hits), MAX(hits) FROM my_counters", database="app") == "40\t5\t5"
    metrics = small_proxy.metrics()
    assert 1 <= most <= 4
    assert metrics["ClientConnectionsSetupSucceeded"] == 40
    assert metrics["SessionPinningEvents"] == 0
    assert count_sessions(server, server.app_user) <= 4 + 1  # + the health-check connection


# ---------------------------------------------------------------------------------------------------------
# The mariadb command-line client


async def test_mariadb_cli_several_statements(proxy: Proxy, server: MariaDBServer) -> None:
    fresh_table(server, "my_cli", "id INT PRIMARY KEY, name VARCHAR(20)")
    code, out, err = await mariadb_cli(
        proxy,
        server,
        "INSERT INTO my_cli VALUES (1, 'one'), (2, 'two');"
        "UPDATE my_cli SET name = 'TWO' WHERE id = 2;"
        "SELECT id, name FROM my_cli ORDER BY id;"
        "SELECT DATABASE(), CURRENT_USER();"
        "START TRANSACTION; INSERT INTO my_cli VALUES (3, 'three'); ROLLBACK;"
        "SELECT COUNT(*) FROM my_cli",
    )
    assert code == 0, err
    assert out.splitlines() == ["1\tone", "2\tTWO", "app\tapp@%", "2"]
    assert proxy.metrics()["ClientConnectionsSetupSucceeded"] == 1
    await wait_for(lambda: proxy.metrics()["ClientConnections"] == 0, "the CLI to disconnect")
    await wait_released(proxy)


async def test_mariadb_cli_error_exit_code(proxy: Proxy, server: MariaDBServer) -> None:
    code, out, err = await mariadb_cli(proxy, server, "SELECT 'before'; SELECT * FROM my_no_such_table; SELECT 'after'")
    assert code == 1
    assert out.splitlines() == ["before"]
    assert "ERROR 1146 (42S02)" in err and "my_no_such_table" in err
    # the failed statement left nothing behind: the next client is served normally
    code, out, err = await mariadb_cli(proxy, server, "SELECT 'next'")
    assert (code, out.strip()) == (0, "next"), err
    await wait_released(proxy)


# ---------------------------------------------------------------------------------------------------------
# sysbench

SYSBENCH_THREADS = 8


def sysbench_argv(proxy: Proxy, server: MariaDBServer, *extra: str) -> list[str]:
    host, port = proxy.address("default")
    return [
        "sysbench",
        "oltp_read_write",
        "--db-driver=mysql",
        f"--mysql-host={host}",
        f"--mysql-port={port}",
        f"--mysql-user={server.app_user}",
        f"--mysql-password={server.app_password}",
        f"--mysql-db={server.app_database}",
        "--mysql-ssl=off",
        "--tables=2",
        "--table-size=1000",
        "--verbosity=5",  # names each error it ignores
        *extra,
    ]


async def run_sysbench(proxy: Proxy, server: MariaDBServer, *extra: str) -> tuple[str, int]:
    """Run sysbench through the proxy while sampling DatabaseConnections; returns (output, most seen)."""
    most = 0
    running = True

    async def sample() -> None:
        nonlocal most
        while running:
            most = max(most, int(proxy.metrics()["DatabaseConnections"]))
            await asyncio.sleep(0.01)

    sampler = asyncio.ensure_future(sample())
    try:
        code, out, err = await run_tool(sysbench_argv(proxy, server, *extra), timeout=240)
    finally:
        running = False
        await sampler
    assert code == 0, f"sysbench {' '.join(extra)} failed:\n{out}\n{err}"
    assert "FATAL" not in out + err, out + err
    return out + err, most


def assert_sysbench_clean(output: str, events: int) -> None:
    """Every event ran as a whole transaction; the only errors were deadlocks, which sysbench retries.

    Eight threads on two 1000-row tables deadlock now and then, through the proxy or not (measured directly
    against the server too): InnoDB rolls the victim back and sysbench restarts it. Anything else fails the run.
    """
    transactions = re.search(r"transactions:\s+(\d+)", output)
    assert transactions, output
    assert int(transactions.group(1)) == events, output
    reconnects = re.search(r"reconnects:\s+(\d+)", output)
    assert reconnects and reconnects.group(1) == "0", output
    ignored = re.search(r"ignored errors:\s+(\d+)", output)
    assert ignored, output
    ignored_lines = [line for line in output.splitlines() if "Ignoring error" in line]
    assert all("Ignoring error 1213 " in line for line in ignored_lines), output
    assert bool(ignored_lines) == (ignored.group(1) != "0"), output
    for alarm in ("FATAL", "ALERT", "WARNING"):
        assert alarm not in output, output


@pytest.fixture(scope="module")
def sysbench_tables(server: MariaDBServer) -> None:
    """sbtest1 and sbtest2, prepared by sysbench through a proxy of its own."""

    async def prepare() -> None:
        async with running_proxy(config_for(server)) as proxy:
            output, most = await run_sysbench(proxy, server, "prepare")
            assert "Creating table 'sbtest2'" in output
            assert 1 <= most <= proxy.metrics()["MaxDatabaseConnectionsAllowed"]

    asyncio.run(prepare())
    assert server.sql("SELECT COUNT(*) FROM sbtest1; SELECT COUNT(*) FROM sbtest2", database="app") == "1000\n1000"


async def test_sysbench_prepared_statements_pin(server: MariaDBServer, sysbench_tables: None) -> None:
    # sysbench prepares its statements on the server (COM_STMT_PREPARE): every thread's session pins
    percent = percent_for_budget(SYSBENCH_THREADS + 2)
    config = config_for(server, max_connections_percent=percent, max_idle_connections_percent=percent)
    async with running_proxy(config) as proxy:
        limit = proxy.metrics()["MaxDatabaseConnectionsAllowed"]
        assert limit == SYSBENCH_THREADS + 2
        output, most = await run_sysbench(
            proxy, server, f"--threads={SYSBENCH_THREADS}", "--events=400", "--time=0", "run"
        )
        assert_sysbench_clean(output, 400)
        assert 1 <= most <= limit
        metrics = proxy.metrics()
        assert metrics["SessionPinningEvents.prepared_statement"] >= SYSBENCH_THREADS
        assert metrics["DatabaseConnectionBorrowTimeouts"] == 0
    # the pinned backends went away with the proxy: none is left open on the server
    await wait_for(lambda: count_sessions(server, server.app_user) == 0, "the proxy's sessions to end")


async def test_sysbench_without_prepared_statements_does_not_pin(
    small_proxy: Proxy, server: MariaDBServer, sysbench_tables: None
) -> None:
    # eight threads share four backends: the client-side statements multiplex without pinning
    output, most = await run_sysbench(
        small_proxy,
        server,
        f"--threads={SYSBENCH_THREADS}",
        "--db-ps-mode=disable",
        "--events=400",
        "--time=0",
        "run",
    )
    assert_sysbench_clean(output, 400)
    metrics = small_proxy.metrics()
    assert 1 <= most <= metrics["MaxDatabaseConnectionsAllowed"] == 4
    assert metrics["SessionPinningEvents"] == 0
    assert metrics["ClientConnectionsSetupSucceeded"] >= SYSBENCH_THREADS
    assert count_sessions(server, server.app_user) <= 4 + 1  # + the health-check connection


# ---------------------------------------------------------------------------------------------------------
# Authentication


@pytest.fixture(params=CLIENT_AUTH_TYPES)
async def auth_proxy(request: pytest.FixtureRequest, server: MariaDBServer) -> AsyncIterator[Proxy]:
    """A proxy with debug logging asking clients for the parametrized password method."""
    async with running_proxy(config_for(server, auth_type=request.param, debug=True)) as running:
        running.auth_type = request.param  # type: ignore[attr-defined]
        yield running


async def test_auth_types_with_pymysql(auth_proxy: Proxy, server: MariaDBServer, caplog: Any) -> None:
    plugin = CLIENT_AUTH_PLUGINS[auth_proxy.auth_type]  # type: ignore[attr-defined]
    for user, password in ((server.app_user, server.app_password), (OTHER_USER, OTHER_PASSWORD)):
        conn = await pymysql_connect(auth_proxy, server, user=user, password=password)
        try:
            assert conn._auth_plugin_name == plugin  # what the proxy's greeting asked for
            assert await fetchval(conn, "SELECT CURRENT_USER()") == f"{user}@%"
        finally:
            await in_thread(conn.close)
    metrics = auth_proxy.metrics()
    assert metrics["ClientConnectionsSetupSucceeded"] == 2
    assert metrics["ClientConnectionsSetupFailedAuth"] == 0
    logged = [*caplog.get_records("setup"), *caplog.records]
    assert any(record.name.startswith("rdsproxy") for record in logged), "nothing logged: the password check is vacuous"


async def test_auth_types_with_mariadb_cli(auth_proxy: Proxy, server: MariaDBServer) -> None:
    for user, password in ((server.app_user, server.app_password), (OTHER_USER, OTHER_PASSWORD)):
        code, out, err = await mariadb_cli(auth_proxy, server, "SELECT CURRENT_USER()", user=user, password=password)
        assert (code, out.strip()) == (0, f"{user}@%"), err
    assert auth_proxy.metrics()["ClientConnectionsSetupSucceeded"] == 2


async def test_wrong_password_and_unknown_user_get_1045(auth_proxy: Proxy, server: MariaDBServer) -> None:
    attempts = [(server.app_user, WRONG_PASSWORD), ("nobody_here", WRONG_PASSWORD), (OTHER_USER, "")]
    for user, password in attempts:
        error = await pymysql_error(pymysql_connect(auth_proxy, server, user=user, password=password))
        assert (error.args[0], error.sqlstate) == (ER_ACCESS_DENIED, "28000"), error
        assert f"Access denied for user '{user}'" in error.args[1]
        assert WRONG_PASSWORD not in error.args[1]
    for user, password in attempts[:2]:
        code, _, err = await mariadb_cli(auth_proxy, server, "SELECT 1", user=user, password=password)
        assert code == 1
        assert "ERROR 1045 (28000)" in err, err
    metrics = auth_proxy.metrics()
    assert metrics["ClientConnectionsSetupFailedAuth"] == len(attempts) + 2
    assert metrics["ClientConnectionsSetupSucceeded"] == 0
    # the right password still works afterwards
    conn = await pymysql_connect(auth_proxy, server)
    assert await fetchval(conn, "SELECT 1") == 1
    await in_thread(conn.close)


async def test_backend_ed25519_user_gets_error_naming_the_plugin(proxy: Proxy, server: MariaDBServer) -> None:
    error = await pymysql_error(pymysql_connect(proxy, server, user=ED25519_USER, password=ED25519_PASSWORD))
    # the proxy authenticated the client; the server then wants a plugin the proxy does not speak, and says so
    assert (error.args[0], error.sqlstate) == (1053, "08S01"), error
    assert "authentication plugin 'client_ed25519'" in error.args[1], error
    assert ED25519_PASSWORD not in error.args[1]
    code, _, err = await mariadb_cli(proxy, server, "SELECT 1", user=ED25519_USER, password=ED25519_PASSWORD)
    assert code == 1 and "ed25519" in err, err
    metrics = proxy.metrics()
    assert metrics["ClientConnectionsSetupSucceeded"] == 0
    assert metrics["DatabaseConnectionsSetupFailed"] >= 2
    # other users are unaffected
    conn = await pymysql_connect(proxy, server)
    assert await fetchval(conn, "SELECT 1") == 1
    await in_thread(conn.close)


async def test_unknown_database_gets_1049_at_connect(proxy: Proxy, server: MariaDBServer) -> None:
    error = await pymysql_error(pymysql_connect(proxy, server, database=MISSING_DATABASE))
    assert (error.args[0], error.sqlstate) == (ER_BAD_DB, "42000"), error
    assert MISSING_DATABASE in error.args[1]
    code, _, err = await mariadb_cli(proxy, server, "SELECT 1", database=MISSING_DATABASE)
    assert code == 1 and "ERROR 1049 (42000)" in err, err
    assert proxy.metrics()["ClientConnectionsSetupSucceeded"] == 0
    await wait_released(proxy)
    # the backend used for the check went back clean: the next client gets its own database
    conn = await pymysql_connect(proxy, server)
    assert await fetchval(conn, "SELECT DATABASE()") == server.app_database
    await in_thread(conn.close)


# ---------------------------------------------------------------------------------------------------------
# KILL through proxy connection ids


def server_sessions_running(server: MariaDBServer, text: str) -> int:
    return int(server.sql(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = '{text}'"))


async def test_kill_query_stops_a_running_sleep(proxy: Proxy, server: MariaDBServer) -> None:
    sleeper = await pymysql_connect(proxy, server)
    killer = await pymysql_connect(proxy, server)
    try:
        assert sleeper.thread_id() != killer.thread_id()
        sleeping = asyncio.ensure_future(fetch(sleeper, "SELECT SLEEP(30)"))
        await wait_for(lambda: server_sessions_running(server, "SELECT SLEEP(30)") == 1, "the sleep to start")
        await fetch(killer, f"KILL QUERY {sleeper.thread_id()}")
        try:
            result = await asyncio.wait_for(sleeping, DEADLINE)
        except pymysql.err.OperationalError as exc:
            assert exc.args[0] == ER_QUERY_INTERRUPTED, exc
        else:
            assert result == [(1,)]  # SLEEP returns 1 when interrupted, 0 when it ran its course
        assert server_sessions_running(server, "SELECT SLEEP(30)") == 0
        # both connections carry on
        assert await fetchval(sleeper, "SELECT 'sleeper'") == "sleeper"
        assert await fetchval(killer, "SELECT 'killer'") == "killer"
        await wait_released(proxy)
        # KILL QUERY of an idle client is harmless
        await fetch(killer, f"KILL QUERY {sleeper.thread_id()}")
        assert await fetchval(sleeper, "SELECT 2") == 2
    finally:
        await in_thread(sleeper.close)
        await in_thread(killer.close)


async def test_kill_connection_closes_the_target_client(proxy: Proxy, server: MariaDBServer) -> None:
    victim = await pymysql_connect(proxy, server)
    killer = await pymysql_connect(proxy, server)
    try:
        assert await fetchval(victim, "SELECT 1") == 1
        await fetch(killer, f"KILL {victim.thread_id()}")
        await wait_for(lambda: proxy.metrics()["ClientConnections"] == 1, "the killed client to be closed")
        with pytest.raises(pymysql.err.MySQLError):
            await fetch(victim, "SELECT 1")
        assert await fetchval(killer, "SELECT 'still here'") == "still here"
        await wait_released(proxy)
    finally:
        await in_thread(killer.close)


async def test_kill_connection_of_a_busy_client_stops_its_query(proxy: Proxy, server: MariaDBServer) -> None:
    victim = await pymysql_connect(proxy, server)
    killer = await pymysql_connect(proxy, server)
    try:
        sleeping = asyncio.ensure_future(fetch(victim, "SELECT SLEEP(600)"))
        await wait_for(lambda: server_sessions_running(server, "SELECT SLEEP(600)") == 1, "the sleep to start")
        await fetch(killer, f"KILL CONNECTION {victim.thread_id()}")
        with pytest.raises(pymysql.err.MySQLError):
            await asyncio.wait_for(sleeping, DEADLINE)
        await wait_for(lambda: proxy.metrics()["ClientConnections"] == 1, "the killed client to be closed")
        # like KILL on a server, the statement stops too: its server session does not sleep on for 10 minutes
        await wait_for(lambda: server_sessions_running(server, "SELECT SLEEP(600)") == 0, "the sleep to be stopped")
        assert await fetchval(killer, "SELECT 'still here'") == "still here"
        await wait_released(proxy)
    finally:
        await in_thread(killer.close)


async def test_kill_unknown_or_foreign_id(proxy: Proxy, server: MariaDBServer) -> None:
    conn = await pymysql_connect(proxy, server)
    other = await pymysql_connect(proxy, server, user=OTHER_USER, password=OTHER_PASSWORD)
    try:
        for statement in ("KILL 999999", "KILL QUERY 999999", "KILL CONNECTION 999999"):
            error = await pymysql_error(fetch(conn, statement))
            assert (error.args[0], error.sqlstate) == (ER_NO_SUCH_THREAD, "HY000"), error
        # another user's connection is not ours to kill
        error = await pymysql_error(fetch(conn, f"KILL {other.thread_id()}"))
        assert error.args[0] == ER_KILL_DENIED, error
        assert await fetchval(other, "SELECT CURRENT_USER()") == f"{OTHER_USER}@%"
        assert await fetchval(conn, "SELECT 1") == 1
    finally:
        await in_thread(conn.close)
        await in_thread(other.close)


# ---------------------------------------------------------------------------------------------------------
# COM_RESET_CONNECTION, COM_CHANGE_USER, unknown commands (raw protocol)


async def test_com_reset_connection_resets_session_state(proxy: Proxy, server: MariaDBServer) -> None:
    client = await RawClient.connect(proxy, server.app_user, server.app_password, server.app_database)
    try:
        await client.query("SET @leftover = 42")
        await client.query("SET time_zone = '+05:00'")
        await client.query("CREATE TEMPORARY TABLE my_reset_tmp (id INT)")
        assert await client.value("SELECT @leftover") == "42"
        assert proxy.pinned_sessions()[0]["reasons"] == ["user_variable", "temp_table"]
        assert borrowed(proxy) == 1

        await client.command(p.com_reset_connection())
        assert proxy.pinned_sessions() == []
        assert await client.value("SELECT @leftover") is None
        assert await client.value("SELECT @@time_zone") == "SYSTEM"
        assert await client.value("SELECT DATABASE()") == server.app_database
        with pytest.raises(RawError) as raised:
            await client.query("SELECT * FROM my_reset_tmp")
        assert raised.value.code == ER_NO_SUCH_TABLE
        await wait_released(proxy)

        # tracked state alone (not pinned) is reset too, also when the reset follows the SET's answer at once
        # (while the proxy is still reading the new state back): repeated, as that timing varies
        default_sql_mode = await client.value("SELECT @@sql_mode")
        for _ in range(20):
            await client.query("SET autocommit = 0")
            await client.query("SET sql_mode = 'ANSI'")
            await client.command(p.com_reset_connection())
            assert await client.value("SELECT @@autocommit") == "1"
            assert await client.value("SELECT @@sql_mode") == default_sql_mode
        await wait_released(proxy)
    finally:
        await client.close()


async def test_com_change_user_reauthenticates_and_resets(proxy: Proxy, server: MariaDBServer) -> None:
    client = await RawClient.connect(proxy, server.app_user, server.app_password, server.app_database)
    try:
        await client.query("SET @leftover = 'app data'")
        await client.query("SET time_zone = '+03:00'")
        assert proxy.pinned_sessions() != []

        await client.change_user(OTHER_USER, OTHER_PASSWORD, server.app_database)
        assert await client.value("SELECT CURRENT_USER()") == f"{OTHER_USER}@%"
        assert await client.value("SELECT @leftover") is None
        assert await client.value("SELECT @@time_zone") == "SYSTEM"
        assert proxy.pinned_sessions() == []
        await wait_released(proxy)

        await client.change_user(server.app_user, server.app_password, server.app_database)
        assert await client.value("SELECT CURRENT_USER()") == f"{server.app_user}@%"
        failed_before = proxy.metrics()["ClientConnectionsSetupFailedAuth"]
        with pytest.raises(RawError) as raised:
            await client.change_user(OTHER_USER, WRONG_PASSWORD, server.app_database)
        assert (raised.value.code, raised.value.sqlstate) == (ER_ACCESS_DENIED, "28000")
        assert await client.closed_by_peer()
        assert proxy.metrics()["ClientConnectionsSetupFailedAuth"] == failed_before + 1
    finally:
        await client.close()
    await wait_released(proxy)


async def test_unknown_command_gets_1047_and_the_connection_stays(proxy: Proxy, server: MariaDBServer) -> None:
    client = await RawClient.connect(proxy, server.app_user, server.app_password, server.app_database)
    try:
        for command in (0x60, 0xEE, p.COM_CREATE_DB):
            with pytest.raises(RawError) as raised:
                await client.command(bytes([command]) + b"payload")
            assert raised.value.code == ER_UNKNOWN_COM
        assert await client.value("SELECT 'alive'") == "alive"
        await client.command(p.com_ping())
        await wait_released(proxy)
        assert proxy.metrics()["ClientConnections"] == 1
    finally:
        await client.close()
