"""Authentication through the proxy with real clients and a real PostgreSQL: client and backend methods, secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any, Callable, Optional

import asyncpg
import psycopg
import pytest

from rdsproxy import Proxy
from rdsproxy.config import AuthConfig, EndpointConfig, ProxyConfig, ProxySettings, TargetGroupConfig
from rdsproxy.testing import PostgresServer, running_proxy, start_postgres

CLIENT_AUTH_TYPES = ["POSTGRES_SCRAM_SHA_256", "POSTGRES_MD5"]
BACKEND_METHODS = ["scram-sha-256", "md5", "password", "trust"]
BACKEND_PASSWORDS = {method: f"pw-{method}-Zq9!x" for method in BACKEND_METHODS}
# The trust user has no password on the server; clients still need one to get past the proxy.
TRUST_PROXY_PASSWORD = "proxy-only-trust-pw-Kf3"
WRONG_PASSWORD = "wrong-password-Vb7#"
SECRET_USER = "from_secret_file"
SECRET_PASSWORD = "from-a-secret-Hx5%"
NEVER_LOGGED = [*BACKEND_PASSWORDS.values(), TRUST_PROXY_PASSWORD, WRONG_PASSWORD, SECRET_PASSWORD]

# AuthenticationRequest codes (PostgreSQL protocol)
AUTH_MD5 = 5
AUTH_SASL = 10


def backend_user(method: str) -> str:
    return "be_" + method.replace("-", "_")


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with start_postgres(max_connections=30) as pg_server:
        for method in BACKEND_METHODS:
            password = None if method == "trust" else BACKEND_PASSWORDS[method]
            pg_server.create_user(backend_user(method), password, auth=method, databases=[pg_server.app_database])
        pg_server.create_user(SECRET_USER, SECRET_PASSWORD, databases=[pg_server.app_database])
        yield pg_server


@pytest.fixture(autouse=True)
def proxy_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every test runs with the proxy logging at DEBUG; no password may show up in what it logged."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    proxy_records = [record for record in records if record.name.startswith("rdsproxy")]
    assert proxy_records, "the proxy logged nothing: the password check below would be vacuous"
    logged = "\n".join(record.getMessage() for record in proxy_records)
    for password in NEVER_LOGGED:
        assert password not in logged


def make_config(server: PostgresServer, *extra_auth: AuthConfig, client_auth_type: Optional[str] = None) -> ProxyConfig:
    """A proxy in front of `server` with debug logging; the app user first (it also runs health checks)."""
    app = AuthConfig(username=server.app_user, password=server.app_password, client_password_auth_type=client_auth_type)
    return ProxyConfig(
        proxy=ProxySettings(name="auth-live", debug_logging=True),
        endpoints=[EndpointConfig(listen="127.0.0.1:0")],
        target_group=TargetGroupConfig(targets=[server.address()], database=server.app_database),
        auth=[app, *extra_auth],
    )


def backend_auth_entries(client_auth_type: Optional[str] = None) -> list[AuthConfig]:
    return [
        AuthConfig(
            username=backend_user(method),
            password=TRUST_PROXY_PASSWORD if method == "trust" else BACKEND_PASSWORDS[method],
            client_password_auth_type=client_auth_type,
        )
        for method in BACKEND_METHODS
    ]


@pytest.fixture(params=CLIENT_AUTH_TYPES)
async def proxy(request: pytest.FixtureRequest, server: PostgresServer) -> AsyncIterator[Proxy]:
    """A proxy asking clients for the parametrized password method, knowing the app and backend users."""
    config = make_config(server, *backend_auth_entries(request.param), client_auth_type=request.param)
    async with running_proxy(config) as running:
        yield running


# ---------------------------------------------------------------------------------------------------------
# The three clients: each connects as (user, password) and returns current_user, or raises.


async def via_asyncpg(proxy: Proxy, user: str, password: str, database: str) -> str:
    host, port = proxy.address("default")
    conn = await asyncpg.connect(
        host=host, port=port, user=user, password=password, database=database, ssl=False, statement_cache_size=0
    )
    try:
        return await conn.fetchval("SELECT current_user")
    finally:
        await conn.close()


async def via_psycopg(proxy: Proxy, user: str, password: str, database: str) -> str:
    host, port = proxy.address("default")
    async with await psycopg.AsyncConnection.connect(
        host=host, port=port, user=user, password=password, dbname=database, sslmode="disable", autocommit=True
    ) as conn:
        cursor = await conn.execute("SELECT current_user")
        row = await cursor.fetchone()
        assert row is not None
        return row[0]


class PsqlFailed(Exception):
    pass


async def via_psql(proxy: Proxy, user: str, password: str, database: str) -> str:
    host, port = proxy.address("default")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGPASSWORD"] = password
    process = await asyncio.create_subprocess_exec(
        *("psql", "-X", "-A", "-t", "-w", "-h", host, "-p", str(port), "-U", user, "-d", database),
        *("-c", "SELECT current_user"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    if process.returncode != 0:
        raise PsqlFailed(stderr.decode())
    return stdout.decode().strip()


CLIENTS: dict[str, Callable[..., Any]] = {"asyncpg": via_asyncpg, "psycopg": via_psycopg, "psql": via_psql}


async def expect_auth_failure(client: str, proxy: Proxy, user: str, password: str, database: str) -> None:
    """The client is refused with SQLSTATE 28P01 (asserted where the client exposes it) and the usual text."""
    expected = f'password authentication failed for user "{user}"'
    if client == "asyncpg":
        with pytest.raises(asyncpg.InvalidPasswordError) as asyncpg_error:
            await via_asyncpg(proxy, user, password, database)
        assert asyncpg_error.value.sqlstate == "28P01"
        assert expected in str(asyncpg_error.value)
    elif client == "psycopg":
        with pytest.raises(psycopg.OperationalError) as psycopg_error:
            await via_psycopg(proxy, user, password, database)
        assert expected in str(psycopg_error.value)
    else:
        with pytest.raises(PsqlFailed) as psql_error:
            await via_psql(proxy, user, password, database)
        assert expected in str(psql_error.value)


async def first_authentication_request(proxy: Proxy, user: str) -> int:
    """Send a bare StartupMessage and return the code of the proxy's first AuthenticationRequest."""
    host, port = proxy.address("default")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        body = struct.pack("!i", 196608) + b"user\x00" + user.encode() + b"\x00\x00"
        writer.write(struct.pack("!i", len(body) + 4) + body)
        header = await asyncio.wait_for(reader.readexactly(5), 30)
        assert header[:1] == b"R"
        payload = await reader.readexactly(struct.unpack("!i", header[1:])[0] - 4)
        return struct.unpack("!i", payload[:4])[0]
    finally:
        writer.close()


# ---------------------------------------------------------------------------------------------------------
# Client-facing authentication


async def test_proxy_asks_clients_for_the_configured_method(proxy: Proxy, server: PostgresServer) -> None:
    expected = AUTH_MD5 if proxy.config.user(server.app_user).client_password_auth_type == "POSTGRES_MD5" else AUTH_SASL
    assert await first_authentication_request(proxy, server.app_user) == expected


@pytest.mark.parametrize("client", sorted(CLIENTS))
async def test_clients_authenticate(proxy: Proxy, server: PostgresServer, client: str) -> None:
    user = await CLIENTS[client](proxy, server.app_user, server.app_password, server.app_database)
    assert user == server.app_user
    metrics = proxy.metrics()
    assert metrics["ClientConnectionsSetupSucceeded"] == 1
    assert metrics["ClientConnectionsSetupFailedAuth"] == 0


@pytest.mark.parametrize("client", sorted(CLIENTS))
async def test_wrong_password_is_refused(proxy: Proxy, server: PostgresServer, client: str) -> None:
    await expect_auth_failure(client, proxy, server.app_user, WRONG_PASSWORD, server.app_database)
    metrics = proxy.metrics()
    assert metrics["ClientConnectionsSetupFailedAuth"] == 1
    assert metrics["ClientConnectionsSetupSucceeded"] == 0
    # the refusal happened at the proxy: no backend was opened for it
    assert metrics["DatabaseConnectionsSetupSucceeded"] == 0
    # and the proxy still serves the right password afterwards
    assert await via_asyncpg(proxy, server.app_user, server.app_password, server.app_database) == server.app_user


@pytest.mark.parametrize("client", sorted(CLIENTS))
async def test_unknown_user_is_refused(proxy: Proxy, server: PostgresServer, client: str) -> None:
    await expect_auth_failure(client, proxy, "nobody_here", WRONG_PASSWORD, server.app_database)
    assert proxy.metrics()["ClientConnectionsSetupFailedAuth"] == 1


async def test_failures_are_counted_per_attempt(proxy: Proxy, server: PostgresServer) -> None:
    for _ in range(3):
        await expect_auth_failure("asyncpg", proxy, server.app_user, WRONG_PASSWORD, server.app_database)
    await expect_auth_failure("asyncpg", proxy, "nobody_here", server.app_password, server.app_database)
    metrics = proxy.metrics()
    assert metrics["ClientConnectionsSetupFailedAuth"] == 4
    assert metrics["ClientConnectionsReceived"] == 4
    assert metrics["ClientConnections"] == 0


async def test_user_known_to_server_but_not_to_proxy_is_refused(server: PostgresServer) -> None:
    """be_scram_sha_256 exists on the server, but the proxy has no secret for it: the proxy says no."""
    async with running_proxy(make_config(server)) as proxy:
        user = backend_user("scram-sha-256")
        await expect_auth_failure("asyncpg", proxy, user, BACKEND_PASSWORDS["scram-sha-256"], server.app_database)
        assert proxy.metrics()["ClientConnectionsSetupFailedAuth"] == 1


# ---------------------------------------------------------------------------------------------------------
# Backend authentication: the proxy logs in to the server with the user's own credentials


@pytest.mark.parametrize("method", BACKEND_METHODS)
async def test_backend_authentication_methods(proxy: Proxy, server: PostgresServer, method: str) -> None:
    user = backend_user(method)
    rule = server.sql(f"SELECT auth_method FROM pg_hba_file_rules WHERE '{user}' = ANY(user_name) AND type = 'host'")
    assert rule == method
    password = TRUST_PROXY_PASSWORD if method == "trust" else BACKEND_PASSWORDS[method]
    for client in sorted(CLIENTS):
        assert await CLIENTS[client](proxy, user, password, server.app_database) == user
    metrics = proxy.metrics()
    assert metrics["DatabaseConnectionsSetupFailed"] == 0
    assert metrics["DatabaseConnectionsSetupSucceeded"] >= 1
    # the backend really is that user's own connection on the server
    sessions = server.sql(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}'")
    assert int(sessions) >= 1


async def test_backend_refusing_the_proxy_is_reported_to_the_client(server: PostgresServer) -> None:
    """The proxy accepts the client, but the server refuses the proxy's stale password: the client hears why."""
    stale = AuthConfig(username=backend_user("md5"), password="stale-password-Qw2")
    async with running_proxy(make_config(server, stale)) as proxy:
        with pytest.raises(asyncpg.InvalidPasswordError) as refused:
            await via_asyncpg(proxy, stale.username, "stale-password-Qw2", server.app_database)
        assert refused.value.sqlstate == "28P01"
        assert proxy.metrics()["DatabaseConnectionsSetupFailed"] >= 1


# ---------------------------------------------------------------------------------------------------------
# Secrets


def secret_json(username: str, password: str) -> str:
    return json.dumps({"username": username, "password": password, "engine": "postgres", "port": 5432})


async def test_secret_from_file(server: PostgresServer, tmp_path: Any) -> None:
    secret_file = tmp_path / "secret.json"
    secret_file.write_text(secret_json(SECRET_USER, SECRET_PASSWORD))
    entry = AuthConfig(username=SECRET_USER, secret=f"file:{secret_file}")
    async with running_proxy(make_config(server, entry)) as proxy:
        for client in sorted(CLIENTS):
            assert await CLIENTS[client](proxy, SECRET_USER, SECRET_PASSWORD, server.app_database) == SECRET_USER
        await expect_auth_failure("asyncpg", proxy, SECRET_USER, WRONG_PASSWORD, server.app_database)


async def test_secret_from_environment(server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDSPROXY_LIVE_TEST_SECRET", secret_json(server.app_user, server.app_password))
    app = AuthConfig(username=server.app_user, secret="env:RDSPROXY_LIVE_TEST_SECRET")
    config = ProxyConfig(
        proxy=ProxySettings(name="auth-live-env", debug_logging=True),
        endpoints=[EndpointConfig(listen="127.0.0.1:0")],
        target_group=TargetGroupConfig(targets=[server.address()], database=server.app_database),
        auth=[app],
    )
    async with running_proxy(config) as proxy:
        for client in sorted(CLIENTS):
            assert await CLIENTS[client](proxy, server.app_user, server.app_password, server.app_database) == "app"
        await expect_auth_failure("psql", proxy, server.app_user, WRONG_PASSWORD, server.app_database)
