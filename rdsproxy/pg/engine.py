"""The PostgreSQL engine: wires client sessions, backend connections, pools and targets together."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from typing import TYPE_CHECKING, Optional, Union

from ..engine import Engine, MonitorOwner, ProbeResult
from ..pool import BackendUnavailable, PoolKey
from ..protocol.pg import messages
from ..protocol.pg.auth import Md5Server, ScramSecret, ScramServer, ScramVerifier
from ..protocol.pg.session import CANONICAL_NAMES, TRACKED_REPORTED, sql_literal, sync_sql
from . import backend as pg_backend
from .backend import InternalQueryError, PgBackend
from .client import PgClient, welcome_block

if TYPE_CHECKING:
    from ..config import ProxyConfig
    from ..metrics import Metrics
    from ..targets import Target

log = logging.getLogger("rdsproxy.engine")

PROBE_SQL = (
    b"SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('max_connections'),"
    b" pg_catalog.current_setting('superuser_reserved_connections')"
)


class RandomPool:
    """Cryptographically random numbers drawn from a buffer of os.urandom output refilled in blocks.

    A connection storm then costs one getrandom call per few hundred logins instead of one per login.
    """

    __slots__ = ("_block", "_offset")

    BLOCK = 4096

    def __init__(self) -> None:
        self._block = b""
        self._offset = 0

    def randbits31(self) -> int:
        offset = self._offset
        if offset + 4 > len(self._block):
            self._block, offset = os.urandom(self.BLOCK), 0
        self._offset = offset + 4
        return int.from_bytes(self._block[offset : offset + 4], "big") & 0x7FFFFFFF


class PgEngine(Engine):
    """Everything the PostgreSQL side of the proxy shares between its connections."""

    family = "POSTGRESQL"
    client_class = PgClient
    InternalQueryError = InternalQueryError

    def __init__(self, config: ProxyConfig, metrics: Metrics) -> None:
        super().__init__(config, metrics)
        self._cancel_keys: dict[int, PgClient] = {}
        self._next_process_id = 1
        self._secrets: dict[tuple[str, str], ScramSecret] = {}
        self._validated_settings: dict[tuple, dict[str, str]] = {}
        self._decoy = ScramSecret.from_verifier(ScramVerifier.from_password(secrets.token_urlsafe(24)))
        self._cancel_secrets = RandomPool()

    # ------------------------------------------------------------------ credentials
    def authenticator_for(self, user: str) -> Optional[Union[ScramServer, Md5Server]]:
        auth = self.config.user(user)
        if auth is None:
            return None
        password = self.password_of(user)
        if password is None:
            return None
        if auth.client_password_auth_type == "POSTGRES_MD5":
            return Md5Server(user, password)
        secret = self._secrets.get((user, password))
        if secret is None:
            # PBKDF2 once per password, not per connection: a connection storm must stay cheap
            secret = ScramSecret.from_verifier(ScramVerifier.from_password(password))
            self._secrets = {k: v for k, v in self._secrets.items() if k[0] != user}
            self._secrets[(user, password)] = secret
        return ScramServer(secret)

    def decoy_authenticator(self, user: str) -> Union[ScramServer, Md5Server]:
        """For an unknown user: the method known users get, so the exchange does not reveal who exists."""
        if self.config.auth[0].client_password_auth_type == "POSTGRES_MD5":
            return Md5Server(user, secrets.token_urlsafe(24))
        return ScramServer(self._decoy)

    # ------------------------------------------------------------------ backends
    async def reset_pinned(self, backend: PgBackend) -> None:
        await backend.query(b"DISCARD ALL")
        if self.init_query:
            # DISCARD ALL also undid init_query's session settings: the backend must look new again
            await backend.query(self.init_query)
        backend.applied = {}

    async def connect(self, target: Target, key: PoolKey) -> PgBackend:
        """Open a pooled backend connection for (user, database) on `target` (the pool's connector)."""
        user, database = key
        password = self.password_of(user)
        backend = await pg_backend.connect(target.address, target.host, target.port, user, password, database, self)
        if self.init_query:
            try:
                await backend.query(self.init_query)
            except InternalQueryError as exc:
                backend.close()
                raise BackendUnavailable(f"init_query failed on the database: {exc}") from None
        if key not in target.pool.params_cache:
            target.pool.params_cache[key] = dict(backend.server_params)
        return backend

    def cached_welcome_block(self, endpoint_name: str, key: PoolKey, wanted: dict[str, str]) -> Optional[bytes]:
        """The ParameterStatus messages for a new client, if this (user, database, settings) was seen before.

        Encoded once per (target, user, database, settings): a connection storm reuses the bytes.
        """
        pool = self.pool_for(endpoint_name)
        if pool is None:
            return None
        cache_key = (key, frozenset(wanted.items()))
        block = pool.welcome_cache.get(cache_key)
        if block is None:
            base = pool.params_cache.get(key)
            spelled = self._validated_settings.get(cache_key)
            if base is None or spelled is None:
                return None
            block = welcome_block({**base, **spelled}, key[0])
            if len(pool.welcome_cache) > 4096:
                pool.welcome_cache.clear()
            pool.welcome_cache[cache_key] = block
        return block

    async def prepare_welcome(self, endpoint_name: str, key: PoolKey, wanted: dict[str, str]) -> dict[str, str]:
        """Validate a client's startup settings on a real backend and learn how the server spells them.

        Raises InternalQueryError with the server's error when a setting is invalid, as PostgreSQL refuses such a
        connection at startup. Done once per distinct (user, database, settings), so a storm pays it once.
        """
        backend = await self.borrow(endpoint_name, key)
        reported = [n for n in wanted if n in TRACKED_REPORTED]
        try:
            sql = sync_sql(wanted, backend.applied)
            if sql is not None:
                await backend.query(sql)
                backend.applied = dict(wanted)
            spelled: dict[str, str] = {}
            if reported:
                rows = await backend.query(
                    b"SELECT "
                    + b", ".join(b"pg_catalog.current_setting(%s)" % sql_literal(n).encode() for n in reported)
                )
                spelled = {CANONICAL_NAMES.get(n, n): v or "" for n, v in zip(reported, rows[0])}
        except BaseException:
            # an invalid setting fails its whole implicit transaction, leaving the backend as it was
            if backend.broken:
                self.discard_backend(backend)
            else:
                self.return_clean(backend)
            raise
        base = dict(backend.server_params)
        self.return_clean(backend)
        if len(self._validated_settings) > 4096:
            self._validated_settings.clear()
        self._validated_settings[(key, frozenset(wanted.items()))] = spelled
        return {**base, **spelled}

    # ------------------------------------------------------------------ monitoring connections (targets.py)
    async def open_monitor(self, target: Target) -> PgBackend:
        auth = self.config.auth[0]
        return await pg_backend.connect(
            target.address,
            target.host,
            target.port,
            auth.username,
            self.password_of(auth.username),
            self.default_database,
            MonitorOwner(),
            startup_params={"application_name": "rdsproxy-monitor"},
        )

    async def probe(self, monitor: PgBackend) -> ProbeResult:
        rows = await monitor.query(PROBE_SQL)
        in_recovery, max_connections, reserved = rows[0]
        return ProbeResult(in_recovery == "f", int(max_connections or 0), int(reserved or 0))

    # ------------------------------------------------------------------ cancel
    def register_cancel_key(self, client: PgClient) -> tuple[int, int]:
        process_id = self._next_process_id
        self._next_process_id = process_id + 1 if process_id < 0x7FFFFFFF else 1
        secret = self._cancel_secrets.randbits31()
        self._cancel_keys[process_id] = client
        return process_id, secret

    def cancel(self, process_id: int, secret: bytes) -> None:
        client = self._cancel_keys.get(process_id)
        if client is None or len(secret) != 4 or int.from_bytes(secret, "big") != client.secret_key:
            return  # like PostgreSQL: a wrong key is silently ignored
        backend = client.backend
        if backend is None or backend.process_id == 0:
            return  # nothing is running for that client
        target = self.target_of(backend)
        asyncio.ensure_future(_send_cancel(target.host, target.port, backend.process_id, backend.secret_key))

    def client_gone(self, client: PgClient) -> None:
        super().client_gone(client)
        if self._cancel_keys.get(client.process_id) is client:
            del self._cancel_keys[client.process_id]


async def _send_cancel(host: str, port: int, process_id: int, secret_key: int) -> None:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        writer.write(messages.cancel_request(process_id, secret_key.to_bytes(4, "big")))
        await writer.drain()
        writer.close()
    except (OSError, asyncio.TimeoutError) as exc:
        log.warning("could not forward a cancel request to %s:%s: %s", host, port, exc)
