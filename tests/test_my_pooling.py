"""MySQL transaction pooling on real MariaDB with real clients: multiplexing, pinning, state isolation, failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Union

import aiomysql
import pymysql
import pytest
from pooltools import POLL_TIMEOUT, BystanderLoop, Gate, PeakSampler, poll

from rdsproxy import Proxy
from rdsproxy.config import AuthConfig, EndpointConfig, ProxyConfig, ProxySettings, TargetGroupConfig
from rdsproxy.protocol.mysql import packets as p
from rdsproxy.protocol.mysql.auth import BackendAuthenticator
from rdsproxy.protocol.mysql.session import statement_digest
from rdsproxy.testing import MariaDBServer, running_proxy, start_mariadb

# MariaDB keeps one slot of max_connections for the proxy's health check: the budget is a percentage of 20.
SERVER_MAX_CONNECTIONS = 21
PERCENT_FOR_POOL_SIZE = {1: 5, 2: 10, 4: 20, 10: 50}
MESSAGE_TIMEOUT = 20.0
APP = MariaDBServer.app_database
RELOAD_USER = "reloader"  # FLUSH TABLES WITH READ LOCK needs the RELOAD privilege
RELOAD_PASSWORD = "reloader-secret"
TRACK_DATABASES = tuple(f"trackdb{index}" for index in range(4))
PIN_LOCKS = tuple(f"pinned_lock_{index}" for index in range(4))
LONG_STATEMENT = "SELECT 1 /* " + "x" * (16 * 1024) + " */"

SCHEMA = """
CREATE TABLE counters (id INT PRIMARY KEY, n INT NOT NULL);
CREATE TABLE ledger (client_id INT, round INT, thread_id BIGINT, PRIMARY KEY (client_id, round));
CREATE TABLE shadowed (owner VARCHAR(20) NOT NULL);
INSERT INTO shadowed VALUES ('real');
CREATE TABLE pin_items (id INT PRIMARY KEY);
INSERT INTO pin_items VALUES (1), (2), (3), (4), (5);
CREATE TABLE pin_other (x INT);
CREATE TABLE parents (id BIGINT AUTO_INCREMENT PRIMARY KEY, owner INT NOT NULL);
CREATE TABLE children (id BIGINT AUTO_INCREMENT PRIMARY KEY, parent_id BIGINT NOT NULL, owner INT NOT NULL);
CREATE TABLE notes (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(40) NOT NULL);
"""

# Everything a MySQL session could carry over to whoever gets its backend next, in one row. No double quotes
# and no ||: clients run it under sql_mode ANSI_QUOTES and PIPES_AS_CONCAT too.
SESSION_STATE_SQL = (
    "SELECT @@pseudo_thread_id AS thread_id, DATABASE() AS db, @@autocommit AS autocommit,"
    " @@sql_mode AS sql_mode, @@time_zone AS time_zone, @@character_set_client AS character_set_client,"
    " @@character_set_connection AS character_set_connection, @@character_set_results AS character_set_results,"
    " @@collation_connection AS collation_connection, @@tx_isolation AS tx_isolation,"
    " @@tx_read_only AS tx_read_only, @@auto_increment_increment AS auto_increment_increment,"
    " @@wait_timeout AS wait_timeout, @@interactive_timeout AS interactive_timeout,"
    " @@net_write_timeout AS net_write_timeout, @@session_track_schema AS session_track_schema,"
    " @@query_cache_type AS query_cache_type, @@max_join_size = @@global.max_join_size AS default_max_join_size,"
    " @owner AS user_variable, (SELECT GROUP_CONCAT(owner) FROM app.shadowed) AS shadowed,"
    f" {' + '.join(f'(IS_USED_LOCK({name!r}) <=> @@pseudo_thread_id)' for name in PIN_LOCKS)} AS locks_held"
)
TRACKED_COLUMNS = (
    "db",
    "autocommit",
    "sql_mode",
    "time_zone",
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
    "tx_isolation",
    "tx_read_only",
    "auto_increment_increment",
    "wait_timeout",
    "interactive_timeout",
    "net_write_timeout",
    "session_track_schema",
    "query_cache_type",
)
# The parts of SESSION_STATE_SQL that no client of a clean pool can see any other value of.
CLEAN_STATE = {"default_max_join_size": 1, "user_variable": None, "shadowed": "real", "locks_held": 0}


def picked(state: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """The entries of `state` that `expected` has opinions about, to compare the two in one assert."""
    return {key: state[key] for key in expected}


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server() -> Iterator[MariaDBServer]:
    """A private server small enough that the pool budget is a few connections; tests here kill its sessions."""
    # query_cache_type=ON at start is what lets sessions switch the query cache on and off for themselves;
    # a private tmpdir keeps the internal temporary tables of information_schema queries away from other servers
    tmpdir = tempfile.mkdtemp(prefix="mytmp.", dir="/tmp")
    settings = {"query_cache_type": "ON", "max_allowed_packet": "64M", "tmpdir": tmpdir}
    with start_mariadb(max_connections=SERVER_MAX_CONNECTIONS, settings=settings) as my:
        my.sql(SCHEMA, database=APP)
        for database in TRACK_DATABASES:
            my.create_database(database, owner=my.app_user)
        my.create_user(RELOAD_USER, RELOAD_PASSWORD, databases=[APP])
        my.sql(f"GRANT RELOAD ON *.* TO '{RELOAD_USER}'@'%'")
        yield my
    shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture(scope="module")
def server_defaults(server: MariaDBServer) -> dict[str, Any]:
    """What a fresh aiomysql session of the app user sees, read directly from the server."""

    async def read() -> dict[str, Any]:
        conn = await aiomysql.connect(
            host=server.host,
            port=server.port,
            user=server.app_user,
            password=server.app_password,
            db=APP,
            autocommit=True,
        )
        try:
            return await fetch_row(conn, SESSION_STATE_SQL)
        finally:
            conn.close()

    state = asyncio.run(read())
    return {key: state[key] for key in (*TRACKED_COLUMNS, *CLEAN_STATE)}


def make_config(
    server: MariaDBServer,
    *,
    pool_size: int,
    proxy_settings: Optional[dict[str, Any]] = None,
    **target_group: Any,
) -> ProxyConfig:
    target_group.setdefault("connection_borrow_timeout", 10.0)
    return ProxyConfig(
        proxy=ProxySettings(name="my-pooling-test", engine_family="MYSQL", **(proxy_settings or {})),
        endpoints=[EndpointConfig(listen="127.0.0.1:0")],
        target_group=TargetGroupConfig(
            targets=[server.address()],
            database=APP,
            max_connections_percent=PERCENT_FOR_POOL_SIZE[pool_size],
            **target_group,
        ),
        auth=[
            AuthConfig(username=server.app_user, password=server.app_password),
            AuthConfig(username=RELOAD_USER, password=RELOAD_PASSWORD),
        ],
    )


async def proxy_sessions_on_server(server: MariaDBServer) -> int:
    count = await asyncio.to_thread(
        server.sql,
        f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER IN ('{server.app_user}', '{RELOAD_USER}')",
    )
    return int(count)


@contextlib.asynccontextmanager
async def pooled_proxy(server: MariaDBServer, *, pool_size: int, **config: Any) -> AsyncIterator[Proxy]:
    """A proxy whose pool budget is exactly `pool_size`; on exit, waits until the server saw all its
    connections go, so the next test starts with the whole budget free."""
    async with running_proxy(make_config(server, pool_size=pool_size, **config)) as proxy:
        assert proxy.metrics()["MaxDatabaseConnectionsAllowed"] == pool_size
        yield proxy
    await poll(lambda: proxy_sessions_on_server(server), "the proxy's connections to leave the server", want=0)


def metric(proxy: Proxy, name: str) -> float:
    return proxy.metrics()[name]


def no_backend_opening(proxy: Proxy) -> bool:
    """True when every backend the pools count against their budget is open (none still connecting)."""
    return sum(target.pool.total for target in proxy.targets.all) == metric(proxy, "DatabaseConnections")


async def connect_aiomysql(
    proxy: Proxy,
    server: MariaDBServer,
    *,
    user: Optional[str] = None,
    password: Optional[str] = None,
    db: Optional[str] = APP,
    autocommit: bool = True,
    **kwargs: Any,
) -> aiomysql.Connection:
    host, port = proxy.address("default")
    return await aiomysql.connect(
        host=host,
        port=port,
        user=user or server.app_user,
        password=password or server.app_password,
        db=db,
        autocommit=autocommit,
        connect_timeout=MESSAGE_TIMEOUT,
        **kwargs,
    )


def connect_pymysql(proxy: Proxy, server: MariaDBServer, **kwargs: Any) -> pymysql.Connection:
    """Blocking: call from a worker thread, the proxy lives on the test's event loop."""
    host, port = proxy.address("default")
    kwargs.setdefault("database", APP)
    return pymysql.connect(
        host=host,
        port=port,
        user=server.app_user,
        password=server.app_password,
        connect_timeout=10,
        read_timeout=MESSAGE_TIMEOUT,
        **kwargs,
    )


async def root_connection(server: MariaDBServer) -> aiomysql.Connection:
    return await aiomysql.connect(unix_socket=server.socket_path, user=server.superuser, autocommit=True)


async def fetch_row(conn: aiomysql.Connection, sql: str) -> dict[str, Any]:
    async with conn.cursor(aiomysql.DictCursor) as cursor:
        await cursor.execute(sql)
        row = await cursor.fetchone()
    assert row is not None, sql
    return dict(row)


async def fetch_value(conn: aiomysql.Connection, sql: str) -> Any:
    async with conn.cursor() as cursor:
        await cursor.execute(sql)
        row = await cursor.fetchone()
    return row[0] if row else None


async def execute(conn: aiomysql.Connection, sql: str) -> int:
    async with conn.cursor() as cursor:
        return await cursor.execute(sql)


async def thread_id(conn: aiomysql.Connection) -> int:
    # CONNECTION_ID() would do too; @@pseudo_thread_id is the server session's own id
    return int(await fetch_value(conn, "SELECT @@pseudo_thread_id"))


def close_all(clients: list[aiomysql.Connection]) -> None:
    for client in clients:
        client.close()


def error_code(exc: BaseException) -> int:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1


def error_sqlstate(exc: BaseException) -> Optional[str]:
    return getattr(exc, "sqlstate", None)  # PyMySQL >= 1.1 keeps the ERR packet's SQLSTATE


async def hold_concurrent_transactions(clients: list[aiomysql.Connection], sql: str) -> list[dict[str, Any]]:
    """Run `sql` in a transaction on every client at once, each holding its transaction until all are
    inside: that takes one distinct backend per client."""
    gate = Gate(len(clients))

    async def one(client: aiomysql.Connection) -> dict[str, Any]:
        await client.begin()
        row = await fetch_row(client, sql)
        await gate.wait()
        await client.commit()
        return row

    return list(await asyncio.gather(*(one(client) for client in clients)))


class TransactionLoop(BystanderLoop):
    """A bystander aiomysql client."""

    async def transaction(self) -> None:
        await self.conn.begin()
        assert await fetch_value(self.conn, f"SELECT {self.completed} + 1") == self.completed + 1
        await fetch_value(self.conn, "SELECT COUNT(*) FROM app.pin_items")
        await self.conn.commit()


@contextlib.asynccontextmanager
async def transaction_loop(proxy: Proxy, server: MariaDBServer) -> AsyncIterator[TransactionLoop]:
    conn = await connect_aiomysql(proxy, server)
    loop = TransactionLoop(conn)
    loop.start()
    try:
        await loop.progress()
        yield loop
        await loop.progress()
        await loop.stop()
    finally:
        loop.stopping = True
        conn.close()


# ----------------------------------------------------------------------------------------------------------
# A raw wire-protocol client, for what real drivers never send

# The wire-relevant capabilities aiomysql asks for, so raw clients share backends with aiomysql ones.
RAW_CAPABILITIES = (
    p.CLIENT_LONG_PASSWORD
    | p.CLIENT_LONG_FLAG
    | p.CLIENT_MULTI_STATEMENTS
    | p.CLIENT_MULTI_RESULTS
    | p.CLIENT_PROTOCOL_41
    | p.CLIENT_SECURE_CONNECTION
    | p.CLIENT_PLUGIN_AUTH
    | p.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | p.CLIENT_TRANSACTIONS
)


class RawMyClient:
    """Speaks the MySQL client protocol packet by packet (no CLIENT_DEPRECATE_EOF; one statement at a time)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.handshake: Optional[p.ServerHandshake] = None

    @classmethod
    async def open(cls, address: tuple[str, int]) -> RawMyClient:
        reader, writer = await asyncio.open_connection(address[0], address[1], limit=2**20)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def packet(self) -> tuple[int, bytes]:
        header = await asyncio.wait_for(self.reader.readexactly(4), MESSAGE_TIMEOUT)
        size = int.from_bytes(header[:3], "little")
        return header[3], await asyncio.wait_for(self.reader.readexactly(size), MESSAGE_TIMEOUT)

    async def greeting(self) -> p.ServerHandshake:
        seq, payload = await self.packet()
        assert seq == 0
        self.handshake = p.parse_handshake_v10(payload)
        return self.handshake

    async def login(self, user: str, password: str, database: Optional[str] = APP) -> None:
        """Handshake v10 and mysql_native_password (following an auth switch if asked), up to the OK."""
        handshake = await self.greeting()
        authenticator = BackendAuthenticator(user, password)
        plugin, answer = authenticator.first_response(handshake)
        response = p.handshake_response41(
            capabilities=RAW_CAPABILITIES, username=user, auth_response=answer, database=database, auth_plugin=plugin
        )
        self.send(p.packet(1, response))
        while not authenticator.ok:
            seq, payload = await self.packet()
            assert payload[:1] != b"\xff", f"login failed: {p.parse_err(payload)}"
            reply = authenticator.handle(payload)
            if reply is not None:
                self.send(p.packet(seq + 1, reply))

    async def response(self) -> Union[p.OkPacket, p.ErrPacket, list[list[Optional[bytes]]]]:
        """One text-protocol response: an OK, an ERR, or the rows of a result set."""
        _, first = await self.packet()
        if first[:1] == b"\x00":
            return p.parse_ok(first)
        if first[:1] == b"\xff":
            return p.parse_err(first)
        columns = p.parse_column_count(first)
        for _ in range(columns):
            await self.packet()
        _, eof = await self.packet()
        assert eof[:1] == b"\xfe", eof
        rows = []
        while True:
            _, row = await self.packet()
            if row[:1] == b"\xfe" and len(row) < 9:
                return rows
            if row[:1] == b"\xff":
                return p.parse_err(row)
            rows.append(p.parse_text_row(row, columns))

    async def query(self, sql: str) -> Union[p.OkPacket, p.ErrPacket, list[list[Optional[bytes]]]]:
        self.send(p.packet(0, p.com_query(sql.encode())))
        return await self.response()

    async def value(self, sql: str) -> Optional[bytes]:
        rows = await self.query(sql)
        assert isinstance(rows, list) and len(rows) == 1, rows
        return rows[0][0]

    async def read_to_close(self) -> list[tuple[int, bytes]]:
        """Every packet the proxy sends until it closes the connection."""
        data = await asyncio.wait_for(self.reader.read(), MESSAGE_TIMEOUT)
        packets = []
        pos = 0
        while pos < len(data):
            assert len(data) - pos >= 4, f"truncated packet header: {data[pos:]!r}"
            size = int.from_bytes(data[pos : pos + 3], "little")
            assert pos + 4 + size <= len(data), f"truncated packet: {data[pos : pos + 64]!r}"
            packets.append((data[pos + 3], data[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        return packets

    def abort(self) -> None:
        """Vanish without COM_QUIT, like a crashed client: RST instead of FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.close()


async def raw_login(proxy: Proxy, server: MariaDBServer) -> RawMyClient:
    raw = await RawMyClient.open(proxy.address("default"))
    await raw.login(server.app_user, server.app_password)
    return raw


# ----------------------------------------------------------------------------------------------- multiplexing

CLIENTS = 300
PYMYSQL_CLIENTS = 30
ROUNDS = 4


async def test_300_clients_multiplex_onto_10_backends(server: MariaDBServer) -> None:
    await asyncio.to_thread(
        server.sql,
        f"TRUNCATE counters; TRUNCATE ledger; INSERT INTO counters SELECT seq, 0 FROM seq_0_to_{CLIENTS - 1}",
        database=APP,
    )
    executor = ThreadPoolExecutor(max_workers=PYMYSQL_CLIENTS)
    loop = asyncio.get_running_loop()
    async with pooled_proxy(server, pool_size=10) as proxy:
        target = proxy.targets.all[0]
        watcher = await root_connection(server)
        watcher_of_all = await root_connection(server)  # one query at a time per connection

        async def proxy_backends() -> float:
            return metric(proxy, "DatabaseConnections")

        busiest: list[Any] = []  # the server's app sessions when server_sessions last saw its peak

        async def server_sessions() -> float:
            # Every app session but the proxy's health check. While the check reconnects, its new session exists
            # before the proxy knows its id: such a sample cannot tell the two apart, and is skipped.
            monitor = target.monitor
            monitor_id = getattr(monitor, "thread_id", 0)
            async with watcher.cursor() as cursor:
                await cursor.execute(
                    "SELECT ID, COMMAND, STATE, LEFT(INFO, 40) FROM information_schema.PROCESSLIST WHERE USER = 'app'"
                )
                rows = await cursor.fetchall()
            if not monitor_id or target.monitor is not monitor:
                return 0
            sessions = [row for row in rows if row[0] != monitor_id]
            if len(sessions) > len(busiest):
                busiest[:] = sessions
            return len(sessions)

        async def all_server_sessions() -> float:
            return await fetch_value(
                watcher_of_all, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'"
            )

        # Every client is connected before any works: 300 open client sessions. A third of the aiomysql clients
        # leave autocommit off (aiomysql's default), so their transactions begin implicitly.
        semaphore = asyncio.Semaphore(50)

        async def connect(index: int) -> aiomysql.Connection:
            async with semaphore:
                return await connect_aiomysql(proxy, server, autocommit=index % 3 != 0)

        aio_clients = await asyncio.gather(*(connect(index) for index in range(CLIENTS - PYMYSQL_CLIENTS)))
        py_clients = await asyncio.gather(
            *(loop.run_in_executor(executor, connect_pymysql, proxy, server) for _ in range(PYMYSQL_CLIENTS))
        )
        assert metric(proxy, "ClientConnections") == CLIENTS
        threads_seen: set[int] = set()

        async def aio_work(client_id: int, client: aiomysql.Connection) -> None:
            for round_number in range(1, ROUNDS + 1):
                await client.begin()
                tid = await thread_id(client)
                await execute(client, f"UPDATE counters SET n = n + 1 WHERE id = {client_id}")
                assert await fetch_value(client, f"SELECT n FROM counters WHERE id = {client_id}") == round_number
                await execute(client, f"INSERT INTO ledger VALUES ({client_id}, {round_number}, @@pseudo_thread_id)")
                # the whole transaction runs on one backend, whoever else is busy
                assert await thread_id(client) == tid
                await client.commit()
                threads_seen.add(tid)
                await client.begin()
                await execute(client, f"UPDATE counters SET n = n + 100 WHERE id = {client_id}")
                await client.rollback()
                assert await fetch_value(client, f"SELECT n FROM counters WHERE id = {client_id}") == round_number
                if not client.get_autocommit():
                    await client.commit()  # the SELECT began a transaction

        def py_work(client_id: int, client: pymysql.Connection) -> None:
            # PyMySQL's default: autocommit off, every transaction ends with commit() or rollback()
            with client.cursor() as cursor:
                for round_number in range(1, ROUNDS + 1):
                    # the UPDATE begins the transaction (a SELECT without tables would not)
                    cursor.execute(f"UPDATE counters SET n = n + 1 WHERE id = {client_id}")
                    cursor.execute("SELECT @@pseudo_thread_id")
                    (tid,) = cursor.fetchone()
                    cursor.execute(f"SELECT n FROM counters WHERE id = {client_id}")
                    assert cursor.fetchone() == (round_number,)
                    cursor.execute(f"INSERT INTO ledger VALUES ({client_id}, {round_number}, @@pseudo_thread_id)")
                    cursor.execute("SELECT @@pseudo_thread_id")
                    assert cursor.fetchone() == (tid,)
                    client.commit()
                    threads_seen.add(tid)
                    cursor.execute(f"UPDATE counters SET n = n + 100 WHERE id = {client_id}")
                    client.rollback()
                    cursor.execute(f"SELECT n FROM counters WHERE id = {client_id}")
                    assert cursor.fetchone() == (round_number,)
                    client.commit()

        proxy_peak = PeakSampler(proxy_backends)
        server_peak = PeakSampler(server_sessions, 0.005)
        all_sessions_peak = PeakSampler(all_server_sessions, 0.005)
        with proxy_peak, server_peak, all_sessions_peak:
            await asyncio.gather(
                *(aio_work(index, client) for index, client in enumerate(aio_clients)),
                *(
                    loop.run_in_executor(executor, py_work, CLIENTS - PYMYSQL_CLIENTS + index, client)
                    for index, client in enumerate(py_clients)
                ),
            )
        close_all(aio_clients)
        await asyncio.gather(*(loop.run_in_executor(executor, client.close) for client in py_clients))
        executor.shutdown()
        close_all([watcher, watcher_of_all])

        assert proxy_peak.samples > 10 and server_peak.samples > 10
        assert proxy_peak.peak <= 10
        assert 2 <= server_peak.peak <= 10, f"the server's app sessions at the peak: {busiest}"
        assert all_sessions_peak.peak <= 10 + 1  # and the health check
        metrics = proxy.metrics()
        # aiomysql and PyMySQL sessions differ in capabilities, so they need backends of their own: idle ones of
        # one kind are closed to make room for the other within the budget, and server sessions come and go
        assert 2 <= len(threads_seen) <= metrics["DatabaseConnectionsSetupSucceeded"]
        totals = await asyncio.to_thread(
            server.sql,
            "SELECT (SELECT SUM(n) FROM counters), (SELECT COUNT(*) FROM counters WHERE n <> "
            f"{ROUNDS}), (SELECT COUNT(*) FROM ledger), (SELECT COUNT(DISTINCT thread_id) FROM ledger)",
            database=APP,
        )
        committed, wrong_counters, ledger_rows, ledger_threads = map(int, totals.split())
        assert (committed, wrong_counters, ledger_rows) == (CLIENTS * ROUNDS, 0, CLIENTS * ROUNDS)
        assert ledger_threads == len(threads_seen)
        assert metrics["SessionPinningEvents"] == 0
        assert metrics["DatabaseConnectionBorrowTimeouts"] == 0


# --------------------------------------------------------------------------------------------- no state leaks

SQL_MODES = ("ANSI_QUOTES", "PIPES_AS_CONCAT,NO_ZERO_DATE", "STRICT_ALL_TABLES", "", "NO_BACKSLASH_ESCAPES")
TIME_ZONES = ("+01:00", "-05:30", "+09:00", "+03:00", "-08:00", "+05:45")
# (statement, character_set_client, character_set_connection, character_set_results, collation_connection)
CHARSETS = (
    ("SET NAMES latin1", "latin1", "latin1", "latin1", "latin1_swedish_ci"),
    ("SET NAMES utf8mb4 COLLATE utf8mb4_bin", "utf8mb4", "utf8mb4", "utf8mb4", "utf8mb4_bin"),
    ("SET NAMES ascii", "ascii", "ascii", "ascii", "ascii_general_ci"),
    ("SET CHARACTER SET latin1", "latin1", "utf8mb4", "latin1", "utf8mb4_general_ci"),
    ("SET character_set_results = NULL", "utf8mb4", "utf8mb4", None, "utf8mb4_general_ci"),
)
ISOLATION_LEVELS = ("READ UNCOMMITTED", "READ COMMITTED", "SERIALIZABLE", "REPEATABLE READ")
QUERY_CACHE_TYPES = ("OFF", "DEMAND", "ON")


async def open_tracked_client(
    proxy: Proxy, server: MariaDBServer, index: int, defaults: dict[str, Any]
) -> tuple[aiomysql.Connection, dict[str, Any]]:
    """A client with only tracked state (session variables, current database): it must not pin.

    Returns the client and the values it must see in every transaction.
    """
    database = TRACK_DATABASES[index % len(TRACK_DATABASES)]
    how = index % 3  # the current database by the handshake, by USE, or by COM_INIT_DB
    autocommit = index % 4 != 1
    client = await connect_aiomysql(proxy, server, db=database if how == 0 else APP, autocommit=autocommit)
    if how == 1:
        await execute(client, f"USE {database}")
    elif how == 2:
        await client.select_db(database)
    expected = {**defaults, "db": database, "autocommit": int(autocommit)}
    if index == 0:
        return client, expected  # changes nothing else: sees the server's defaults (but its own database)
    sql_mode = SQL_MODES[index % len(SQL_MODES)]
    time_zone = TIME_ZONES[index % len(TIME_ZONES)]
    # several assignments in one SET, in the session and @@session spellings
    await execute(
        client,
        f"SET SESSION sql_mode = '{sql_mode}', @@session.time_zone = '{time_zone}',"
        f" auto_increment_increment = {index + 1}, wait_timeout = {1000 + index}",
    )
    expected.update(sql_mode=sql_mode, time_zone=time_zone, auto_increment_increment=index + 1)
    expected["wait_timeout"] = 1000 + index
    charset_statement, *charsets = CHARSETS[index % len(CHARSETS)]
    await execute(client, charset_statement)
    expected.update(zip(("character_set_client", "character_set_connection"), charsets[:2]))
    expected.update(character_set_results=charsets[2], collation_connection=charsets[3])
    isolation = ISOLATION_LEVELS[index % len(ISOLATION_LEVELS)]
    await execute(client, f"SET SESSION TRANSACTION ISOLATION LEVEL {isolation}")
    expected["tx_isolation"] = isolation.replace(" ", "-")
    if index % 5 == 2:
        await execute(client, "SET SESSION TRANSACTION READ ONLY")
        expected["tx_read_only"] = 1
    await execute(client, f"SET @@session.interactive_timeout = {2000 + index}, net_write_timeout = {30 + index}")
    expected.update(interactive_timeout=2000 + index, net_write_timeout=30 + index)
    if index % 2:
        await execute(client, "SET session_track_schema = OFF")
        expected["session_track_schema"] = 0
    query_cache_type = QUERY_CACHE_TYPES[index % len(QUERY_CACHE_TYPES)]
    await execute(client, f"SET query_cache_type = {query_cache_type}")
    expected["query_cache_type"] = query_cache_type
    if not autocommit:
        await client.commit()
    return client, expected


PINNED_SETUP = (
    "SET @owner = {index}",
    "CREATE TEMPORARY TABLE app.shadowed (owner VARCHAR(20) NOT NULL)",
    "INSERT INTO app.shadowed VALUES ('pinned-{index}')",
    "SELECT GET_LOCK('pinned_lock_{index}', 0)",
    "SET SESSION max_join_size = {join_size}",
    "PREPARE pinned_statement FROM 'SELECT {index}'",
    "SET time_zone = '+0{index}:30'",
    "USE trackdb{index}",
)


async def open_pinned_client(
    proxy: Proxy, server: MariaDBServer, index: int, defaults: dict[str, Any]
) -> tuple[aiomysql.Connection, dict[str, Any]]:
    """A client that leaves every kind of session state on its backend (and is therefore pinned)."""
    client = await connect_aiomysql(proxy, server)
    for statement in PINNED_SETUP:
        await execute(client, statement.format(index=index, join_size=1000 + index))
    expected = {
        **defaults,
        "db": f"trackdb{index}",
        "time_zone": f"+0{index}:30",
        "default_max_join_size": 0,
        "user_variable": index,
        "shadowed": f"pinned-{index}",
        "locks_held": 1,
    }
    return client, expected


async def test_concurrent_sessions_see_only_their_own_state(
    server: MariaDBServer, server_defaults: dict[str, Any]
) -> None:
    async with pooled_proxy(server, pool_size=4) as proxy:
        pinned = [await open_pinned_client(proxy, server, index, server_defaults) for index in range(2)]
        tracked = await asyncio.gather(
            *(open_tracked_client(proxy, server, index, server_defaults) for index in range(12))
        )
        metrics = proxy.metrics()
        assert metrics["SessionPinningEvents"] == 2
        assert metrics["DatabaseConnectionsCurrentlySessionPinned"] == 2
        pinned_threads: dict[int, int] = {}
        tracked_on_backend: dict[int, set[int]] = {}

        async def pinned_rounds(index: int, client: aiomysql.Connection, expected: dict[str, Any]) -> None:
            for round_number in range(8):
                if round_number % 2:
                    await client.begin()
                state = await fetch_row(client, SESSION_STATE_SQL)
                if round_number % 2:
                    await client.commit()
                assert picked(state, expected) == expected, f"pinned client {index}"
                assert pinned_threads.setdefault(index, state["thread_id"]) == state["thread_id"]
                assert await fetch_value(client, "EXECUTE pinned_statement") == index
                await asyncio.sleep(0.002 * (index + 1))

        async def tracked_rounds(index: int, client: aiomysql.Connection, expected: dict[str, Any]) -> None:
            for round_number in range(10):
                if round_number == 5:
                    # a tracked change made inside a transaction sticks, like on a plain server
                    await client.begin()
                    await execute(client, f"SET net_write_timeout = {100 + index}")
                    await client.commit()
                    expected = {**expected, "net_write_timeout": 100 + index}
                if round_number % 2:
                    await client.begin()
                    state = await fetch_row(client, SESSION_STATE_SQL)
                    await fetch_value(client, "SELECT SLEEP(0.002)")
                    await client.commit()
                else:
                    state = await fetch_row(client, SESSION_STATE_SQL)
                    if not expected["autocommit"]:
                        await client.commit()  # reading app.shadowed began a transaction
                assert picked(state, expected) == expected, f"tracked client {index}, round {round_number}"
                assert state["thread_id"] not in pinned_threads.values()
                tracked_on_backend.setdefault(state["thread_id"], set()).add(index)
                await asyncio.sleep(0.001 * (index % 3))

        await asyncio.gather(
            *(pinned_rounds(index, client, expected) for index, (client, expected) in enumerate(pinned)),
            *(tracked_rounds(index, client, {**CLEAN_STATE, **own}) for index, (client, own) in enumerate(tracked)),
        )
        assert metric(proxy, "SessionPinningEvents") == 2  # the tracked clients never pinned
        # twelve clients with different values took turns on the two unpinned backends
        assert len(tracked_on_backend) <= 2
        assert max(len(clients) for clients in tracked_on_backend.values()) >= 6
        close_all([client for client, _ in pinned + tracked])

        # Pinned backends are reset (COM_RESET_CONNECTION) before they go back: nothing of theirs is left.
        await poll(
            lambda: (metric(proxy, "DatabaseConnectionsCurrentlySessionPinned"), metric(proxy, "ClientConnections")),
            "pinned backends to be reset and returned",
            want=(0, 0),
        )
        await poll(lambda: metric(proxy, "DatabaseConnectionsCurrentlyBorrowed"), "the resets to finish", want=0)
        fresh = [await connect_aiomysql(proxy, server) for _ in range(4)]
        states = await hold_concurrent_transactions(fresh, SESSION_STATE_SQL)
        close_all(fresh)
        assert set(pinned_threads.values()) <= {state["thread_id"] for state in states}, "pinned backends not reused"
        clean = {**server_defaults, **CLEAN_STATE}
        assert [picked(state, clean) for state in states] == [clean] * len(states)


async def test_pinned_backend_is_reset_before_the_next_client_gets_it(
    server: MariaDBServer, server_defaults: dict[str, Any]
) -> None:
    async with pooled_proxy(server, pool_size=1) as proxy:
        leaver, expected = await open_pinned_client(proxy, server, 3, server_defaults)
        await execute(leaver, "LOCK TABLES app.pin_items WRITE, app.shadowed READ")
        state = await fetch_row(leaver, SESSION_STATE_SQL)
        assert picked(state, expected) == expected
        leaver_thread = state["thread_id"]
        reasons = ["user_variable", "temp_table", "get_lock", "set", "prepare", "lock_tables"]
        assert proxy.pinned_sessions() == [{"user": "app", "database": "app", "reasons": reasons}]
        successor = await connect_aiomysql(proxy, server)
        requests_before = metric(proxy, "DatabaseConnectionRequests")
        # The successor queues for the only backend while the leaver still holds it...
        waiting = asyncio.ensure_future(fetch_row(successor, SESSION_STATE_SQL))
        await poll(lambda: metric(proxy, "DatabaseConnectionRequests") > requests_before, "the borrow request")
        assert not waiting.done()
        leaver.close()
        # ...and gets it back only after the reset: same server session, none of the leaver's state.
        state = await asyncio.wait_for(waiting, POLL_TIMEOUT)
        assert state["thread_id"] == leaver_thread
        clean = {**server_defaults, **CLEAN_STATE}
        assert picked(state, clean) == clean
        # the table locks are gone too: a write to the table it had locked goes through at once
        assert await execute(successor, "SET STATEMENT lock_wait_timeout = 5 FOR INSERT INTO pin_other VALUES (3)") == 1
        assert await thread_id(successor) == leaver_thread
        metrics = proxy.metrics()
        assert metrics["DatabaseConnectionsCurrentlySessionPinned"] == 0
        assert metrics["DatabaseConnectionsSetupSucceeded"] == 1
        assert metrics["SessionPinningEvents"] == 1
        assert proxy.pinned_sessions() == []
        with pytest.raises(pymysql.err.MySQLError) as caught:
            await execute(successor, "EXECUTE pinned_statement")  # pins the successor: checked last
        assert error_code(caught.value) == 1243  # unknown prepared statement handler
        successor.close()


# ------------------------------------------------------------------------------------- tracked, not pinned


class TrackedCase:
    """A change of tracked session state, how to read it back, and the value the changer must see."""

    def __init__(
        self,
        statements: tuple[str, ...],
        readback: str,
        value: Any,
        *,
        select_db: Optional[str] = None,
        connect_db: Optional[str] = None,
    ) -> None:
        self.statements = statements
        self.readback = readback
        self.value = value
        self.select_db = select_db
        self.connect_db = connect_db


CHARSET_READBACK = "SELECT CONCAT_WS('/', @@character_set_client, @@character_set_connection,"
CHARSET_READBACK += " IFNULL(@@character_set_results, 'NULL'), @@collation_connection)"
TRACKED_CASES = {
    "autocommit": TrackedCase(("SET autocommit = 0",), "SELECT @@autocommit", 0),
    "sql_mode": TrackedCase(("SET SESSION sql_mode = 'ANSI_QUOTES'",), "SELECT @@sql_mode", "ANSI_QUOTES"),
    "time_zone": TrackedCase(("SET time_zone = '+05:30'",), "SELECT @@time_zone", "+05:30"),
    "names": TrackedCase(("SET NAMES latin1",), CHARSET_READBACK, "latin1/latin1/latin1/latin1_swedish_ci"),
    "character_set_results": TrackedCase(
        ("SET character_set_results = NULL",), CHARSET_READBACK, "utf8mb4/utf8mb4/NULL/utf8mb4_general_ci"
    ),
    "collation_connection": TrackedCase(
        ("SET collation_connection = 'utf8mb4_bin'",), "SELECT @@collation_connection", "utf8mb4_bin"
    ),
    "tx_isolation": TrackedCase(
        ("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",), "SELECT @@tx_isolation", "SERIALIZABLE"
    ),
    "tx_isolation_variable": TrackedCase(
        ("SET SESSION tx_isolation = 'READ-COMMITTED'",), "SELECT @@tx_isolation", "READ-COMMITTED"
    ),
    "tx_read_only": TrackedCase(("SET SESSION TRANSACTION READ ONLY",), "SELECT @@tx_read_only", 1),
    "auto_increment_increment": TrackedCase(
        ("SET auto_increment_increment = 5",), "SELECT @@auto_increment_increment", 5
    ),
    "wait_timeout": TrackedCase(("SET @@session.wait_timeout = 1234",), "SELECT @@wait_timeout", 1234),
    "interactive_timeout": TrackedCase(
        ("SET SESSION interactive_timeout = 2345",), "SELECT @@interactive_timeout", 2345
    ),
    "net_write_timeout": TrackedCase(("SET net_write_timeout = 77",), "SELECT @@net_write_timeout", 77),
    "session_track_schema": TrackedCase(("SET session_track_schema = OFF",), "SELECT @@session_track_schema", 0),
    "query_cache_type": TrackedCase(("SET query_cache_type = DEMAND",), "SELECT @@query_cache_type", "DEMAND"),
    "use": TrackedCase(("USE trackdb1",), "SELECT DATABASE()", "trackdb1"),
    "com_init_db": TrackedCase((), "SELECT DATABASE()", "trackdb2", select_db="trackdb2"),
    "handshake_database": TrackedCase((), "SELECT DATABASE()", "trackdb3", connect_db="trackdb3"),
}


@pytest.mark.parametrize("case_name", list(TRACKED_CASES))
async def test_tracked_state_is_replayed_and_does_not_pin(server: MariaDBServer, case_name: str) -> None:
    case = TRACKED_CASES[case_name]
    # One backend: a pinned client would keep the other from ever getting a connection.
    async with pooled_proxy(server, pool_size=1, connection_borrow_timeout=3) as proxy:
        changer = await connect_aiomysql(proxy, server, db=case.connect_db or APP)
        other = await connect_aiomysql(proxy, server)
        default = await fetch_value(other, case.readback)
        assert default != case.value
        for statement in case.statements:
            await execute(changer, statement)
        if case.select_db is not None:
            await changer.select_db(case.select_db)
        threads = set()
        for round_number in range(4):
            in_transaction = round_number % 2 == 1
            for client, expected in ((changer, case.value), (other, default)):
                if in_transaction:
                    await client.begin()
                assert await fetch_value(client, case.readback) == expected, f"round {round_number}"
                threads.add(await thread_id(client))
                if in_transaction:
                    await client.commit()
        assert len(threads) == 1  # both took turns on the only backend
        assert proxy.pinned_sessions() == []
        metrics = proxy.metrics()
        assert metrics["SessionPinningEvents"] == 0
        assert metrics["DatabaseConnectionsCurrentlySessionPinned"] == 0
        assert metrics["DatabaseConnectionBorrowTimeouts"] == 0
        # a client that comes later sees the server's default
        late = await connect_aiomysql(proxy, server)
        assert await fetch_value(late, case.readback) == default
        close_all([changer, other, late])


async def test_sessions_in_one_state_share_it_with_their_backends(server: MariaDBServer) -> None:
    """States are shared dicts, so the check on every borrow is a pointer comparison; a SET gets its own."""
    async with pooled_proxy(server, pool_size=1, connection_borrow_timeout=3) as proxy:
        first = await connect_aiomysql(proxy, server)
        second = await connect_aiomysql(proxy, server)
        for client in (first, second, first):
            assert await fetch_value(client, "SELECT 1") == 1
        one, other = (client.session for client in proxy.engine.clients)
        assert one.wanted is other.wanted
        (target,) = proxy.targets.all
        (backend,) = target.pool._idle[next(iter(target.pool._idle))]
        assert backend.applied is one.wanted
        await execute(second, "SET time_zone = '+03:00'")
        assert await fetch_value(second, "SELECT @@time_zone") == "+03:00"
        assert await fetch_value(first, "SELECT @@time_zone") != "+03:00"  # synced back on the shared backend
        assert one.wanted is not other.wanted
        assert one.wanted != other.wanted
        close_all([first, second])


# ---------------------------------------------------------------------------------------------- pinning rules


class PinCase:
    """Statements that pin a session, the reason they must record, and what then holds on its backend only."""

    def __init__(
        self,
        reason: str,
        statements: tuple[str, ...],
        *,
        check: Optional[tuple[str, Any]] = None,
        check_error: Optional[tuple[str, int]] = None,
        right_after: Optional[tuple[str, Any]] = None,
        released: Optional[tuple[str, Any]] = None,
        released_statement: Optional[str] = None,
        user: Optional[str] = None,
        transactions: bool = True,
    ) -> None:
        self.reason = reason
        self.statements = statements
        self.check = check  # (sql, value) that holds only on the pinned backend
        self.check_error = check_error  # (sql, error code) that fails only on the pinned backend
        self.right_after = right_after  # (sql, value) run once, right after the statements
        # (expression, value) on the same backend once the client has gone and the backend was reset
        self.released = released
        self.released_statement = released_statement  # succeeds once the client has gone
        self.user = user
        self.transactions = transactions  # BEGIN would end the state (LOCK TABLES), so run no transactions


PIN_CASES = {
    "lock_tables": PinCase(
        "lock_tables",
        ("LOCK TABLES app.pin_items WRITE",),
        check_error=("SELECT COUNT(*) FROM app.pin_other", 1100),  # not locked with LOCK TABLES
        released=("(SELECT COUNT(*) FROM app.pin_other)", 0),  # error 1100 while the session still locks
        transactions=False,
    ),
    "flush_tables_with_read_lock": PinCase(
        "flush_tables_with_read_lock",
        ("FLUSH TABLES WITH READ LOCK",),
        check_error=("INSERT INTO app.pin_other VALUES (1)", 1223),  # conflicting read lock
        released_statement="SET STATEMENT lock_wait_timeout = 5 FOR INSERT INTO app.pin_other VALUES (2)",
        user=RELOAD_USER,
        transactions=False,
    ),
    "get_lock": PinCase(
        "get_lock",
        ("SELECT GET_LOCK('pin_lock', 0)",),
        check=("SELECT IS_USED_LOCK('pin_lock') = @@pseudo_thread_id", 1),
        released=("IS_FREE_LOCK('pin_lock')", 1),
    ),
    "set_user_variable": PinCase(
        "user_variable", ("SET @pinned = 7",), check=("SELECT @pinned", 7), released=("@pinned", None)
    ),
    "select_into_user_variable": PinCase(
        "user_variable",
        ("SELECT MAX(id) INTO @pinned FROM app.pin_items",),
        check=("SELECT @pinned", 5),
        released=("@pinned", None),
    ),
    "assign_user_variable": PinCase(
        "user_variable", ("SELECT @pinned := 9",), check=("SELECT @pinned", 9), released=("@pinned", None)
    ),
    "set_max_join_size": PinCase(
        "set",
        ("SET SESSION max_join_size = 1000000",),
        check=("SELECT @@max_join_size", 1000000),
        released=("@@max_join_size = @@global.max_join_size", 1),
    ),
    "set_sort_buffer_size": PinCase(
        "set",
        ("SET SESSION sort_buffer_size = 1048576",),
        check=("SELECT @@sort_buffer_size", 1048576),
        released=("@@sort_buffer_size = @@global.sort_buffer_size", 1),
    ),
    "temp_table": PinCase(
        "temp_table",
        ("CREATE TEMPORARY TABLE app.shadowed (owner VARCHAR(20))", "INSERT INTO app.shadowed VALUES ('pinned')"),
        check=("SELECT GROUP_CONCAT(owner) FROM app.shadowed", "pinned"),
        released=("(SELECT GROUP_CONCAT(owner) FROM app.shadowed)", "real"),
    ),
    "prepare": PinCase(
        "prepare",
        ("PREPARE pinned_statement FROM 'SELECT 7'", "EXECUTE pinned_statement"),
        check=("EXECUTE pinned_statement", 7),
    ),
    "executable_comment": PinCase("executable_comment", ("SELECT /*!40001 SQL_NO_CACHE */ 1",)),
    "mariadb_executable_comment": PinCase("executable_comment", ("SELECT 1 /*M!100100 + 1 */",)),
    "statement_too_long": PinCase("statement_too_long", (LONG_STATEMENT,)),
    "sql_calc_found_rows": PinCase(
        "sql_calc_found_rows",
        ("SELECT SQL_CALC_FOUND_ROWS id FROM app.pin_items ORDER BY id LIMIT 1",),
        right_after=("SELECT FOUND_ROWS()", 5),
    ),
}


@pytest.mark.parametrize("case_name", list(PIN_CASES))
async def test_session_state_pins_the_client_to_its_backend(server: MariaDBServer, case_name: str) -> None:
    case = PIN_CASES[case_name]
    await asyncio.to_thread(server.sql, "TRUNCATE pin_other", database=APP)
    pinned_user = case.user or server.app_user
    password = RELOAD_PASSWORD if case.user == RELOAD_USER else server.app_password
    async with pooled_proxy(server, pool_size=2) as proxy:
        background = [await connect_aiomysql(proxy, server) for _ in range(3)]
        client = await connect_aiomysql(proxy, server, user=pinned_user, password=password)
        stop = asyncio.Event()
        pinned_thread: Optional[int] = None
        after_pin: list[int] = []  # thread ids the other clients got for queries sent after the pin

        async def keep_busy(other: aiomysql.Connection) -> None:
            while not stop.is_set():
                pin_known = pinned_thread is not None
                tid = await thread_id(other)
                if pin_known:
                    after_pin.append(tid)
                await asyncio.sleep(0.001)

        busy = [asyncio.ensure_future(keep_busy(other)) for other in background]
        try:
            await asyncio.sleep(0.02)
            assert metric(proxy, "SessionPinningEvents") == 0
            for statement in case.statements:
                await execute(client, statement)
            if case.right_after is not None:
                sql, expected = case.right_after
                assert await fetch_value(client, sql) == expected
            pinned_thread = await thread_id(client)
            for round_number in range(8):
                in_transaction = case.transactions and round_number % 2 == 1
                if in_transaction:
                    await client.begin()
                assert await thread_id(client) == pinned_thread
                if case.check is not None:
                    sql, expected = case.check
                    assert await fetch_value(client, sql) == expected
                if case.check_error is not None:
                    sql, code = case.check_error
                    with pytest.raises(pymysql.err.MySQLError) as caught:
                        await execute(client, sql)
                    assert error_code(caught.value) == code
                if in_transaction:
                    await client.commit()
                await asyncio.sleep(0.005)
        finally:
            stop.set()
            await asyncio.gather(*busy)
        assert len(after_pin) >= 3, "the other clients did not run alongside the pinned one"
        assert pinned_thread not in after_pin, "another client got the pinned backend"
        metrics = proxy.metrics()
        assert metrics["SessionPinningEvents"] == 1
        assert metrics[f"SessionPinningEvents.{case.reason}"] == 1
        assert metrics["DatabaseConnectionsCurrentlySessionPinned"] == 1
        assert [session["reasons"][0] for session in proxy.pinned_sessions()] == [case.reason]
        assert [session["user"] for session in proxy.pinned_sessions()] == [pinned_user]
        client.close()
        await poll(lambda: metric(proxy, "DatabaseConnectionsCurrentlySessionPinned"), "the pin to end", want=0)
        await poll(lambda: metric(proxy, "DatabaseConnectionsCurrentlyBorrowed"), "the reset to finish", want=0)

        # A new client of the same user gets the reset backend (the pool reuses the warmest one first) and
        # none of the state the pinned client left there.
        successor = await connect_aiomysql(proxy, server, user=pinned_user, password=password)
        expression, expected = case.released or ("NULL", None)
        for _attempt in range(20):
            # one statement, so the check runs on the backend whose id it reports (BEGIN would unlock tables)
            async with successor.cursor() as cursor:
                await cursor.execute(f"SELECT @@pseudo_thread_id, {expression}")
                tid, value = await cursor.fetchone()
            if tid == pinned_thread:
                assert value == expected
                break
        else:
            raise AssertionError(f"the pinned backend {pinned_thread} was not reused")
        if case.released_statement is not None:
            await execute(successor, case.released_statement)
        assert metric(proxy, "SessionPinningEvents") == 1
        close_all([successor, *background])


async def test_exclude_variable_sets_filter_keeps_set_from_pinning(server: MariaDBServer) -> None:
    async with pooled_proxy(
        server, pool_size=1, session_pinning_filters=["EXCLUDE_VARIABLE_SETS"], connection_borrow_timeout=3
    ) as proxy:
        client = await connect_aiomysql(proxy, server)
        other = await connect_aiomysql(proxy, server)
        await execute(client, "SET SESSION max_join_size = 1000000")
        await execute(client, "SET SESSION sort_buffer_size = 1048576")
        # the only backend is free for the other client: the SETs did not pin
        assert await thread_id(other) == await thread_id(client)
        assert metric(proxy, "SessionPinningEvents") == 0
        assert proxy.pinned_sessions() == []
        # the filter is about variable SETs only
        await execute(client, "CREATE TEMPORARY TABLE still_pins (x INT)")
        metrics = proxy.metrics()
        assert metrics["SessionPinningEvents"] == 1
        assert metrics["SessionPinningEvents.temp_table"] == 1
        assert "SessionPinningEvents.set" not in metrics
        close_all([client, other])


@pytest.mark.parametrize("debug_logging", [True, False])
async def test_debug_logging_names_pin_reason_and_statement_digest(
    server: MariaDBServer, caplog: pytest.LogCaptureFixture, debug_logging: bool
) -> None:
    caplog.set_level(logging.INFO, logger="rdsproxy.debug")
    statement = "SET @logged = 1"
    async with pooled_proxy(server, pool_size=2, proxy_settings={"debug_logging": debug_logging}) as proxy:
        client = await connect_aiomysql(proxy, server)
        await execute(client, statement)
        assert metric(proxy, "SessionPinningEvents.user_variable") == 1
        client.close()
    pins = [record.getMessage() for record in caplog.records if record.name == "rdsproxy.debug"]
    if not debug_logging:
        assert pins == []
        return
    digest = statement_digest(statement.encode())
    assert any("reason=user_variable" in message and f"statement={digest}" in message for message in pins), pins
    assert not any("@logged" in message for message in pins), "the statement text itself must not be logged"


def com_stmt_prepare(sql: str) -> bytes:
    return p.packet(0, bytes([p.COM_STMT_PREPARE]) + sql.encode())


def com_stmt_execute(statement_id: int) -> bytes:
    # no parameters: statement id, flags (no cursor), iteration count 1
    return p.packet(0, struct.pack("<BIBI", p.COM_STMT_EXECUTE, statement_id, 0, 1))


async def prepare_statement(raw: RawMyClient, sql: str) -> tuple[int, int]:
    """COM_STMT_PREPARE: (statement id, column count); reads the parameter and column definitions."""
    raw.send(com_stmt_prepare(sql))
    _, ok = await raw.packet()
    assert ok[:1] == b"\x00", p.parse_err(ok) if ok[:1] == b"\xff" else ok
    statement_id, columns, params = struct.unpack_from("<IHH", ok, 1)
    for count in (params, columns):
        if count:
            for _ in range(count + 1):  # the definitions and an EOF
                await raw.packet()
    return statement_id, columns


async def execute_statement(raw: RawMyClient, statement_id: int) -> list[bytes]:
    """COM_STMT_EXECUTE of a statement whose one column is a string: its values (binary protocol rows)."""
    raw.send(com_stmt_execute(statement_id))
    _, first = await raw.packet()
    assert first[:1] not in (b"\x00", b"\xff"), first
    assert p.parse_column_count(first) == 1
    await raw.packet()  # column definition
    await raw.packet()  # EOF
    values = []
    while True:
        _, row = await raw.packet()
        if row[:1] == b"\xfe" and len(row) < 9:
            return values
        # 0x00 header, a one-byte NULL bitmap (offset 2), then the length-encoded string
        value, _ = p.read_lenenc_str(row, 2)
        values.append(value)


async def test_com_stmt_prepare_pins_the_client(server: MariaDBServer) -> None:
    async with pooled_proxy(server, pool_size=2) as proxy:
        background = [await connect_aiomysql(proxy, server) for _ in range(3)]
        raw = await raw_login(proxy, server)
        try:
            assert metric(proxy, "SessionPinningEvents") == 0
            statement_id, columns = await prepare_statement(raw, "SELECT CAST(@@pseudo_thread_id AS CHAR)")
            assert columns == 1
            pinned_thread = int(await raw.value("SELECT @@pseudo_thread_id"))
            seen_by_others: list[int] = []
            for _ in range(6):
                # the statement exists on the pinned backend only, and is executed there
                assert await execute_statement(raw, statement_id) == [str(pinned_thread).encode()]
                seen_by_others += await asyncio.gather(*(thread_id(other) for other in background))
                assert int(await raw.value("SELECT @@pseudo_thread_id")) == pinned_thread
            assert pinned_thread not in seen_by_others
            metrics = proxy.metrics()
            assert metrics["SessionPinningEvents"] == 1
            assert metrics["SessionPinningEvents.prepared_statement"] == 1
            assert [session["reasons"] for session in proxy.pinned_sessions()] == [["prepared_statement"]]
            # COM_STMT_CLOSE has no response; the session stays pinned and usable
            raw.send(p.packet(0, struct.pack("<BI", p.COM_STMT_CLOSE, statement_id)))
            assert int(await raw.value("SELECT @@pseudo_thread_id")) == pinned_thread
            counts = await raw.query("SHOW SESSION STATUS LIKE 'Com_stmt_close'")
            assert counts == [[b"Com_stmt_close", b"1"]]
        finally:
            raw.close()
        await poll(lambda: metric(proxy, "DatabaseConnectionsCurrentlySessionPinned"), "the pin to end", want=0)
        close_all(background)


# ------------------------------------------------------------------------- LAST_INSERT_ID() and ROW_COUNT()

INSERTERS = 40
PYMYSQL_INSERTERS = 4
INSERT_ROUNDS = 6


async def test_last_insert_id_and_row_count_answer_for_the_clients_own_writes(server: MariaDBServer) -> None:
    await asyncio.to_thread(server.sql, "TRUNCATE parents; TRUNCATE children", database=APP)
    executor = ThreadPoolExecutor(max_workers=PYMYSQL_INSERTERS)
    loop = asyncio.get_running_loop()
    async with pooled_proxy(server, pool_size=2) as proxy:
        clients = [await connect_aiomysql(proxy, server) for _ in range(INSERTERS)]
        py_clients = await asyncio.gather(
            *(
                loop.run_in_executor(executor, lambda: connect_pymysql(proxy, server, autocommit=True))
                for _ in range(PYMYSQL_INSERTERS)
            )
        )

        async def aio_rounds(owner: int, client: aiomysql.Connection) -> None:
            async with client.cursor() as cursor:
                for round_number in range(INSERT_ROUNDS):
                    await cursor.execute(f"INSERT INTO parents (owner) VALUES ({owner})")
                    parent = cursor.lastrowid
                    assert parent > 0
                    await asyncio.sleep(0.001 * (owner % 4))  # others write meanwhile, on the same backends
                    assert await fetch_value(client, "SELECT LAST_INSERT_ID()") == parent
                    await cursor.execute(f"INSERT INTO children (parent_id, owner) VALUES (LAST_INSERT_ID(), {owner})")
                    child = cursor.lastrowid
                    assert await fetch_value(client, "SELECT LAST_INSERT_ID()") == child
                    assert await fetch_value(client, f"SELECT parent_id FROM children WHERE id = {child}") == parent
                    assert (
                        await cursor.execute(f"INSERT INTO parents (owner) VALUES ({owner}), ({owner}), ({owner})") == 3
                    )
                    first = cursor.lastrowid
                    assert await fetch_value(client, "SELECT ROW_COUNT()") == 3
                    assert await fetch_value(client, "SELECT LAST_INSERT_ID()") == first
                    assert await cursor.execute(f"DELETE FROM parents WHERE owner = {owner} AND id >= {first}") == 3
                    await asyncio.sleep(0.001 * (owner % 3))
                    row = await fetch_row(client, "SELECT LAST_INSERT_ID() AS id, ROW_COUNT() AS row_count")
                    assert row == {"id": first, "row_count": 3}
                    if round_number % 2:
                        # inside a transaction the backend itself answers, for this client alone
                        await client.begin()
                        await cursor.execute(f"INSERT INTO parents (owner) VALUES ({owner})")
                        assert await fetch_value(client, "SELECT LAST_INSERT_ID()") == cursor.lastrowid
                        await client.commit()
                        await cursor.execute(f"DELETE FROM parents WHERE id = {cursor.lastrowid}")

        def py_rounds(owner: int, client: pymysql.Connection) -> None:
            with client.cursor() as cursor:
                for _ in range(INSERT_ROUNDS):
                    cursor.execute(f"INSERT INTO parents (owner) VALUES ({owner})")
                    parent = cursor.lastrowid
                    assert client.insert_id() == parent
                    cursor.execute("SELECT LAST_INSERT_ID()")
                    assert cursor.fetchone() == (parent,)
                    cursor.execute(f"INSERT INTO children (parent_id, owner) VALUES (LAST_INSERT_ID(), {owner})")
                    child = cursor.lastrowid
                    cursor.execute(f"SELECT parent_id FROM children WHERE id = {child}")
                    assert cursor.fetchone() == (parent,)
                    cursor.execute(f"UPDATE children SET owner = owner + 0 WHERE id = {child}")
                    cursor.execute("SELECT ROW_COUNT()")
                    assert cursor.fetchone() == (0,)  # matched but not changed: the server's answer

        await asyncio.gather(
            *(aio_rounds(owner, client) for owner, client in enumerate(clients)),
            *(
                loop.run_in_executor(executor, py_rounds, INSERTERS + index, client)
                for index, client in enumerate(py_clients)
            ),
        )
        close_all(clients)
        await asyncio.gather(*(loop.run_in_executor(executor, client.close) for client in py_clients))
        executor.shutdown()
        assert metric(proxy, "SessionPinningEvents") == 0
        inserters = INSERTERS + PYMYSQL_INSERTERS
        summary = await asyncio.to_thread(
            server.sql,
            "SELECT (SELECT COUNT(*) FROM children),"
            " (SELECT COUNT(*) FROM children c JOIN parents p ON p.id = c.parent_id AND p.owner = c.owner),"
            " (SELECT COUNT(*) FROM parents)",
            database=APP,
        )
        assert list(map(int, summary.split())) == [inserters * INSERT_ROUNDS] * 3


async def test_a_state_sync_does_not_pass_for_a_last_insert_id_sync(server: MariaDBServer) -> None:
    """A backend synced only for session variables keeps the LAST_INSERT_ID it had: the proxy must not record the
    client's value on it, or the client's next LAST_INSERT_ID() there would read another session's value."""
    await asyncio.to_thread(server.sql, "TRUNCATE parents; TRUNCATE children", database=APP)
    async with pooled_proxy(server, pool_size=2) as proxy:
        writer = await connect_aiomysql(proxy, server)
        other_state = await connect_aiomysql(proxy, server)
        holder = await connect_aiomysql(proxy, server)
        # holder keeps one backend while other_state leaves its time zone on the second one (idle backends are
        # handed out warmest first)
        await holder.begin()
        held = await thread_id(holder)
        await execute(other_state, "SET time_zone = '+05:00'")
        assert await fetch_value(other_state, "SELECT @@time_zone") == "+05:00"
        await holder.commit()
        # the writer inserts on the first backend, then holder takes it back
        async with writer.cursor() as cursor:
            await cursor.execute("INSERT INTO parents (owner) VALUES (1)")
            parent = cursor.lastrowid
        assert parent > 0
        await holder.begin()
        assert await thread_id(holder) == held
        # the writer's next statements can only run on the second backend: a time zone sync first, then a write
        # that reads LAST_INSERT_ID() on the server (a bare SELECT LAST_INSERT_ID() the proxy answers itself)
        assert await fetch_value(writer, "SELECT @@time_zone") != "+05:00"
        async with writer.cursor() as cursor:
            await cursor.execute("INSERT INTO children (parent_id, owner) VALUES (LAST_INSERT_ID(), 1)")
            child = cursor.lastrowid
        assert await thread_id(writer) != held
        assert await fetch_value(writer, f"SELECT parent_id FROM children WHERE id = {child}") == parent
        await holder.commit()
        close_all([writer, other_state, holder])


@pytest.mark.parametrize(
    ("setter", "expected"),
    [
        ("SELECT LAST_INSERT_ID(42)", 42),
        ("DO LAST_INSERT_ID(42)", 42),
        ("UPDATE parents SET owner = LAST_INSERT_ID(42)", 42),
        # no row, so the expression never runs: the client's own value (none yet) stays, not the backend's
        ("UPDATE parents SET owner = LAST_INSERT_ID(42) WHERE false", 0),
    ],
)
async def test_last_insert_id_set_by_an_expression_follows_the_client(
    server: MariaDBServer, setter: str, expected: int
) -> None:
    """LAST_INSERT_ID(expr) sets the session's value to expr, and no OK packet need report it (a SELECT answers
    with rows, an UPDATE that matches nothing reports 0): the client's later LAST_INSERT_ID() must answer what a
    direct connection would, on whichever backend it runs."""
    await asyncio.to_thread(
        server.sql, "TRUNCATE parents; TRUNCATE children; INSERT INTO parents (owner) VALUES (1)", database=APP
    )
    async with pooled_proxy(server, pool_size=2) as proxy:
        other = await connect_aiomysql(proxy, server)
        setter_client = await connect_aiomysql(proxy, server)
        holder = await connect_aiomysql(proxy, server)
        # another session leaves its own value on the backend first (idle backends are handed out warmest first)
        await execute(other, "SELECT LAST_INSERT_ID(99)")
        used = await thread_id(other)
        await execute(setter_client, setter)
        assert await thread_id(setter_client) == used
        # the backend the value was set on is busy now: what follows runs on the other one
        await holder.begin()
        assert await thread_id(holder) == used
        assert await fetch_value(setter_client, "SELECT LAST_INSERT_ID()") == expected
        async with setter_client.cursor() as cursor:
            await cursor.execute("INSERT INTO children (parent_id, owner) VALUES (LAST_INSERT_ID(), 1)")
            child = cursor.lastrowid
        assert await thread_id(setter_client) != used
        assert await fetch_value(setter_client, f"SELECT parent_id FROM children WHERE id = {child}") == expected
        assert await fetch_value(other, "SELECT LAST_INSERT_ID()") == 99
        await holder.commit()
        assert metric(proxy, "SessionPinningEvents") == 0
        close_all([other, setter_client, holder])


async def test_connection_id_is_the_clients_own_proxy_connection_id(server: MariaDBServer) -> None:
    # The handshake gives each client a proxy-issued id, the one KILL through the proxy acts on. CONNECTION_ID()
    # must say the same: a client that reads it to KILL its own query later must not hit another client.
    async with pooled_proxy(server, pool_size=1) as proxy:
        clients = [await connect_aiomysql(proxy, server) for _ in range(3)]
        handshake_ids = [client.server_thread_id[0] for client in clients]
        assert len(set(handshake_ids)) == 3
        assert [await fetch_value(client, "SELECT CONNECTION_ID()") for client in clients] == handshake_ids
        close_all(clients)


# --------------------------------------------------------------------------------------------- borrow timeout


async def test_borrow_timeout_gives_error_1040_and_keeps_the_client(server: MariaDBServer) -> None:
    await asyncio.to_thread(server.sql, "TRUNCATE notes", database=APP)
    async with pooled_proxy(server, pool_size=1, connection_borrow_timeout=1) as proxy:
        holder = await connect_aiomysql(proxy, server)
        waiter = await connect_aiomysql(proxy, server)
        raw_waiter = await raw_login(proxy, server)  # logs in while the backend is free
        try:
            await holder.begin()
            await execute(holder, "INSERT INTO notes (note) VALUES ('held')")
            timeouts_before = metric(proxy, "DatabaseConnectionBorrowTimeouts")

            with pytest.raises(pymysql.err.OperationalError) as caught:
                await fetch_value(waiter, "SELECT 1")
            assert (error_code(caught.value), error_sqlstate(caught.value)) == (1040, "08004")
            message = caught.value.args[1]
            assert proxy.config.proxy.name in message
            assert "connection_borrow_timeout=1 s" in message
            # the SQLSTATE, which drivers do not show
            error = await raw_waiter.query("SELECT 1")
            assert isinstance(error, p.ErrPacket)
            assert (error.code, error.sqlstate) == (1040, "08004")
            assert "connection_borrow_timeout=1 s" in error.message
            assert metric(proxy, "DatabaseConnectionBorrowTimeouts") == timeouts_before + 2

            await holder.commit()
            assert await fetch_value(waiter, "SELECT COUNT(*) FROM notes") == 1
            await waiter.begin()
            assert await fetch_value(waiter, "SELECT 'still usable'") == "still usable"
            await waiter.commit()
            assert await raw_waiter.value("SELECT 'raw still usable'") == b"raw still usable"
            assert metric(proxy, "ClientConnections") == 3
        finally:
            raw_waiter.close()
            close_all([holder, waiter])


# ------------------------------------------------------------------------------------ backends that die


async def test_idle_backends_killed_idle_clients_notice_nothing(server: MariaDBServer) -> None:
    loop = asyncio.get_running_loop()
    async with pooled_proxy(server, pool_size=4) as proxy:
        clients = [await connect_aiomysql(proxy, server, autocommit=index % 2 == 0) for index in range(3)]
        py_client = await asyncio.to_thread(connect_pymysql, proxy, server, autocommit=True)
        py_cursor = py_client.cursor()
        try:
            await hold_concurrent_transactions(clients, "SELECT 1 AS one")
            await loop.run_in_executor(None, py_cursor.execute, "SELECT 1")
            assert metric(proxy, "DatabaseConnections") >= 3

            killed = await asyncio.to_thread(server.kill_connections, server.app_user)
            assert killed >= 4  # the pooled backends and the health check
            await poll(lambda: metric(proxy, "DatabaseConnections"), "the proxy to drop dead backends", want=0)

            for number, client in enumerate(clients):
                assert await fetch_value(client, f"SELECT {number}") == number
                await client.begin()
                assert await fetch_value(client, "SELECT COUNT(*) FROM app.pin_items") == 5
                await client.commit()
            await loop.run_in_executor(None, py_cursor.execute, "SELECT 42")
            assert py_cursor.fetchone() == (42,)
            assert metric(proxy, "ClientConnections") == 4
        finally:
            close_all(clients)
            await asyncio.to_thread(py_client.close)


@pytest.mark.parametrize("when", ["idle_in_transaction", "running_a_query"])
async def test_backend_killed_mid_transaction_fails_that_transaction_only(server: MariaDBServer, when: str) -> None:
    await asyncio.to_thread(server.sql, "TRUNCATE notes", database=APP)
    async with pooled_proxy(server, pool_size=4) as proxy:
        victim = await connect_aiomysql(proxy, server)
        watcher = await root_connection(server)
        try:
            async with transaction_loop(proxy, server) as bystander:
                await victim.begin()
                await execute(victim, "INSERT INTO notes (note) VALUES ('lost')")
                victim_thread = await thread_id(victim)
                if when == "running_a_query":
                    sleeping = asyncio.ensure_future(fetch_value(victim, "SELECT SLEEP(30)"))
                    await poll(
                        lambda: fetch_value(
                            watcher,
                            f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {victim_thread}"
                            " AND INFO LIKE 'SELECT SLEEP%'",
                        ),
                        "the query to run",
                        want=1,
                    )
                await execute(watcher, f"KILL CONNECTION {victim_thread}")
                if when == "running_a_query":
                    with pytest.raises(pymysql.err.MySQLError) as caught:
                        await asyncio.wait_for(sleeping, MESSAGE_TIMEOUT)
                    assert (error_code(caught.value), error_sqlstate(caught.value)) == (1053, "08S01")
                    assert "rolled back" in caught.value.args[1]
                await poll(
                    lambda: fetch_value(
                        watcher, f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {victim_thread}"
                    ),
                    "the killed session to end",
                    want=0,
                )
                await poll(lambda: metric(proxy, "DatabaseConnectionsCurrentlyInTransaction") <= 1, "the proxy")

                if when == "idle_in_transaction":
                    with pytest.raises(pymysql.err.OperationalError) as caught:
                        await execute(victim, "INSERT INTO notes (note) VALUES ('after the loss')")
                    assert (error_code(caught.value), error_sqlstate(caught.value)) == (1053, "08S01")
                    assert "rolled back" in caught.value.args[1]
                await victim.rollback()  # the driver's usual reaction; the transaction is gone anyway

                # the client kept its connection; its next transaction runs on another backend
                await victim.begin()
                await execute(victim, "INSERT INTO notes (note) VALUES ('next')")
                assert await thread_id(victim) != victim_thread
                await victim.commit()
                assert await fetch_value(victim, "SELECT GROUP_CONCAT(note) FROM notes") == "next"
                await bystander.progress()
        finally:
            victim.close()
            watcher.close()


# ------------------------------------------------------------------------------------------- bad input


class BadInput:
    """What a misbehaving client sends, after a complete login unless `before_login`."""

    def __init__(
        self,
        payload: bytes,
        *,
        before_login: bool = False,
        half_close: bool = False,
        connection_kept: bool = False,
    ) -> None:
        self.payload = payload
        self.before_login = before_login
        self.half_close = half_close  # shut our side after sending, as a client that stops in the middle
        self.connection_kept = connection_kept  # an ERR for the command, and the connection stays usable


BAD_INPUTS = {
    "wrong_sequence_id": BadInput(p.packet(3, p.com_query(b"SELECT 1"))),
    "wrong_sequence_id_in_continuation": BadInput(
        p.packet(0, p.com_query(b"x" * (p.MAX_PACKET_CHUNK - 1)))[: 4 + p.MAX_PACKET_CHUNK] + p.packet(7, b"SELECT 1")
    ),
    "wrong_handshake_sequence_id": BadInput(
        p.packet(5, p.handshake_response41(capabilities=RAW_CAPABILITIES, username="app", auth_response=b"x" * 20)),
        before_login=True,
    ),
    "truncated_packet_then_close": BadInput(p.packet(0, p.com_query(b"SELECT 'cut short'"))[:10], half_close=True),
    "truncated_header_then_close": BadInput(b"\x20\x00", half_close=True),
    "oversized_handshake_response": BadInput(
        struct.pack("<I", 1_000_000)[:3] + b"\x01" + b"x" * 100, before_login=True
    ),
    "garbage_handshake_response": BadInput(p.packet(1, b"\xde\xad\xbe\xef" * 8), before_login=True),
    "empty_command": BadInput(p.packet(0, b"")),
    "unknown_command": BadInput(p.packet(0, b"\x60garbage"), connection_kept=True),
    "unknown_command_0xff": BadInput(p.packet(0, b"\xff\xff\xff\xff"), connection_kept=True),
    "com_process_kill_too_short": BadInput(p.packet(0, bytes([p.COM_PROCESS_KILL]) + b"\x01")),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input_affects_only_that_client(server: MariaDBServer, case: str) -> None:
    bad_input = BAD_INPUTS[case]
    async with pooled_proxy(server, pool_size=4) as proxy:
        async with transaction_loop(proxy, server) as bystander:
            raw = await RawMyClient.open(proxy.address("default"))
            try:
                if bad_input.before_login:
                    await raw.greeting()
                else:
                    await raw.login(server.app_user, server.app_password)
                    assert await raw.value("SELECT 1") == b"1"
                await poll(lambda: no_backend_opening(proxy), "backend connections being opened")
                backends_before = metric(proxy, "DatabaseConnections")
                opened_before = metric(proxy, "DatabaseConnectionsSetupSucceeded")
                clients_before = metric(proxy, "ClientConnections")

                raw.send(bad_input.payload)
                if bad_input.connection_kept:
                    error = await raw.response()
                    assert isinstance(error, p.ErrPacket), error
                    assert error.code == 1047
                    received = []
                else:
                    if bad_input.half_close:
                        raw.writer.write_eof()
                    received = await raw.read_to_close()

                if not bad_input.connection_kept:
                    assert received, "the proxy closed the connection without saying why"
                    error = p.parse_err(received[-1][1])
                    assert (error.code, error.sqlstate) == (1047, "08S01")
                    assert "Traceback" not in error.message and "Error(" not in error.message
                    await poll(lambda: metric(proxy, "ClientConnections"), "the client to go", want=clients_before - 1)
                await bystander.progress()
                # the pool carries on with the backends it had: none was lost, replaced or added
                assert metric(proxy, "DatabaseConnections") == backends_before
                assert metric(proxy, "DatabaseConnectionsSetupSucceeded") == opened_before
                if bad_input.connection_kept:
                    assert await raw.value("SELECT 'still here'") == b"still here"
                    assert metric(proxy, "ClientConnections") == clients_before
            finally:
                raw.close()


async def test_query_over_16_mb_split_across_packets_works(server: MariaDBServer) -> None:
    size = p.MAX_PACKET_CHUNK + 1_000_000
    async with pooled_proxy(server, pool_size=2) as proxy:
        async with transaction_loop(proxy, server) as bystander:
            client = await connect_aiomysql(proxy, server)
            try:
                sql = "SELECT LENGTH('" + "x" * size + "')"
                assert await fetch_value(client, sql) == size
                assert await fetch_value(client, "SELECT 'after'") == "after"
                assert metric(proxy, "SessionPinningEvents.statement_too_long") == 1
            finally:
                client.close()
            await bystander.progress()


# --------------------------------------------------------------------------------- clients that vanish


@pytest.mark.parametrize("how", ["reset", "com_quit"])
async def test_client_leaving_mid_transaction_leaks_nothing(server: MariaDBServer, how: str) -> None:
    await asyncio.to_thread(server.sql, "TRUNCATE notes", database=APP)
    # One backend only: if the abandoned one were handed on with its transaction open, the next client would
    # be inside it and would see the uncommitted row.
    async with pooled_proxy(server, pool_size=1, connection_borrow_timeout=30) as proxy:
        watcher = await root_connection(server)
        try:
            async with transaction_loop(proxy, server) as bystander:
                raw = await raw_login(proxy, server)
                assert isinstance(await raw.query("BEGIN"), p.OkPacket)
                assert isinstance(await raw.query("INSERT INTO notes (note) VALUES ('uncommitted')"), p.OkPacket)
                abandoned_thread = int(await raw.value("SELECT @@pseudo_thread_id"))
                if how == "reset":
                    raw.abort()
                else:
                    raw.send(p.packet(0, p.com_quit()))
                    raw.close()

                async def open_transaction_of_abandoned() -> int:
                    return await fetch_value(
                        watcher,
                        "SELECT COUNT(*) FROM information_schema.INNODB_TRX"
                        f" WHERE trx_mysql_thread_id = {abandoned_thread}",
                    )

                # InnoDB refreshes INNODB_TRX only when nobody read it for 100 ms: poll slower than that
                await poll(open_transaction_of_abandoned, "the abandoned transaction to end", want=0, interval=0.25)
                await bystander.progress()

            conn = await connect_aiomysql(proxy, server)
            try:
                for _ in range(3):
                    await conn.begin()
                    assert await fetch_value(conn, "SELECT COUNT(*) FROM notes") == 0
                    assert await fetch_value(conn, "SELECT @@in_transaction") == 1  # its own, just begun
                    await conn.commit()
                    assert await fetch_value(conn, "SELECT @@in_transaction") == 0
            finally:
                conn.close()
        finally:
            watcher.close()
    assert await asyncio.to_thread(server.sql, "SELECT COUNT(*) FROM notes", database=APP) == "0"
