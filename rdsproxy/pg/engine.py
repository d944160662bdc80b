"""The PostgreSQL engine: wires client sessions, backend connections, pools and targets together."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Optional, Union

from ..pool import BackendUnavailable, PoolKey, TargetPool
from ..protocol.pg import messages
from ..protocol.pg.auth import Md5Server, ScramServer, ScramVerifier
from ..protocol.pg.session import CANONICAL_NAMES, TRACKED_REPORTED, sql_literal, sync_sql
from . import backend as pg_backend
from .backend import InternalQueryError, PgBackend
from .client import AUTH, READY, STARTUP, PgClient

if TYPE_CHECKING:
    from ..config import ProxyConfig
    from ..metrics import Metrics
    from ..targets import Target, Targets

log = logging.getLogger("rdsproxy.engine")
debug_log = logging.getLogger("rdsproxy.debug")

# How often work waiting for a healthy target looks again (health checks flip targets back every interval).
TARGET_WAIT_POLL = 0.05

# Like PostgreSQL's authentication_timeout: a connection must finish startup and auth within this.
AUTHENTICATION_TIMEOUT = 60.0
UNAUTHENTICATED = (STARTUP, AUTH)

PROBE_SQL = (
    b"SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('max_connections'),"
    b" pg_catalog.current_setting('superuser_reserved_connections')"
)


class ProbeResult:
    __slots__ = ("writable", "max_connections", "reserved_connections")

    def __init__(self, writable: bool, max_connections: int, reserved_connections: int):
        self.writable = writable
        self.max_connections = max_connections
        self.reserved_connections = reserved_connections


class PgEngine:
    """Everything the PostgreSQL side of the proxy shares between its connections."""

    family = "POSTGRESQL"

    def __init__(self, config: ProxyConfig, metrics: Metrics) -> None:
        self.metrics = metrics
        self.clients: set = set()
        self.targets: Optional[Targets] = None
        self._cancel_keys: dict[int, PgClient] = {}
        self._next_process_id = 1
        self._verifiers: dict[tuple[str, str], ScramVerifier] = {}
        self._passwords: dict[str, str] = {}
        self._validated_settings: dict[tuple, dict[str, str]] = {}
        self._decoy = ScramVerifier.from_password(secrets.token_urlsafe(24))
        self.apply_config(config)

    def apply_config(self, config: ProxyConfig) -> None:
        """Take the settings that may change live (used at start and on SIGHUP)."""
        self.config = config
        tg = config.target_group
        self.proxy_name = config.proxy.name
        self.default_database = tg.database
        self.borrow_timeout = float(tg.connection_borrow_timeout)
        self.exclude_variable_sets = "EXCLUDE_VARIABLE_SETS" in tg.session_pinning_filters
        self.init_query = tg.init_query.encode() if tg.init_query else None
        self.debug_logging = config.proxy.debug_logging
        self._passwords = {}  # secrets are re-read: rotation takes effect for new connections

    # ------------------------------------------------------------------ credentials
    def password_of(self, user: str) -> Optional[str]:
        password = self._passwords.get(user)
        if password is None:
            auth = self.config.user(user)
            if auth is None:
                return None
            password = auth.resolve_password()
            self._passwords[user] = password
        return password

    def authenticator_for(self, user: str) -> Optional[Union[ScramServer, Md5Server]]:
        auth = self.config.user(user)
        if auth is None:
            return None
        password = self.password_of(user)
        if password is None:
            return None
        if auth.client_password_auth_type == "POSTGRES_MD5":
            return Md5Server(user, password)
        verifier = self._verifiers.get((user, password))
        if verifier is None:
            # PBKDF2 once per password, not per connection: a connection storm must stay cheap
            verifier = ScramVerifier.from_password(password)
            self._verifiers = {k: v for k, v in self._verifiers.items() if k[0] != user}
            self._verifiers[(user, password)] = verifier
        return ScramServer(verifier)

    def decoy_authenticator(self, user: str) -> Union[ScramServer, Md5Server]:
        """For an unknown user: the method known users get, so the exchange does not reveal who exists."""
        if self.config.auth[0].client_password_auth_type == "POSTGRES_MD5":
            return Md5Server(user, secrets.token_urlsafe(24))
        return ScramServer(self._decoy)

    # ------------------------------------------------------------------ targets and pools
    def pool_for(self, endpoint_name: str) -> Optional[TargetPool]:
        target = self.targets.for_endpoint(endpoint_name)  # type: ignore[union-attr]
        return target.pool if target is not None else None

    async def borrow(self, endpoint_name: str, key: PoolKey) -> PgBackend:
        pool = self.pool_for(endpoint_name)
        if pool is not None:
            return await pool.borrow(key, self.borrow_timeout)
        # No healthy target right now (a restart, a failover): new work waits for one to report in, within the
        # same connection_borrow_timeout, instead of failing at once.
        deadline = time.monotonic() + self.borrow_timeout
        while pool is None:
            if time.monotonic() >= deadline:
                raise BackendUnavailable(f"{self.proxy_name}: no available database target for this endpoint")
            await asyncio.sleep(TARGET_WAIT_POLL)
            pool = self.pool_for(endpoint_name)
        return await pool.borrow(key, max(deadline - time.monotonic(), 0.001))

    def _pool_of(self, backend: PgBackend) -> TargetPool:
        return self.targets.by_address[backend.address].pool  # type: ignore[union-attr]

    def return_clean(self, backend: PgBackend) -> None:
        self._pool_of(backend).give_back(backend)

    def discard_backend(self, backend: PgBackend) -> None:
        self._pool_of(backend).discard_borrowed(backend)

    def idle_backend_lost(self, backend: PgBackend) -> None:
        self._pool_of(backend).idle_backend_lost(backend)

    def return_backend(self, client: PgClient, backend: PgBackend) -> None:
        """A client left while holding a backend: reuse it only if provably clean."""
        backend.detach()
        session = client.session
        quiet = session.outstanding == 0 and not session.batch_open and session.status == ord("I")
        if quiet and not session.pinned:
            self.return_clean(backend)
        elif quiet and session.pinned:
            asyncio.ensure_future(self._discard_all(backend))
        else:
            # mid-transaction or mid-request: closing is the only way to be sure nothing leaks
            self.discard_backend(backend)

    async def _discard_all(self, backend: PgBackend) -> None:
        try:
            await backend.query(b"DISCARD ALL")
            if self.init_query:
                # DISCARD ALL also undid init_query's session settings: the backend must look new again
                await backend.query(self.init_query)
        except (InternalQueryError, BackendUnavailable, OSError) as exc:
            log.info("closing a pinned backend that could not be reset: %s", exc)
            self.discard_backend(backend)
            return
        backend.applied = {}
        if backend.broken:
            self.discard_backend(backend)
        else:
            self.return_clean(backend)

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

    def cached_welcome(self, endpoint_name: str, key: PoolKey, wanted: dict[str, str]) -> Optional[dict[str, str]]:
        """The ParameterStatus set for a new client, if this (user, database, settings) was seen before."""
        pool = self.pool_for(endpoint_name)
        if pool is None:
            return None
        base = pool.params_cache.get(key)
        spelled = self._validated_settings.get((key, frozenset(wanted.items())))
        if base is None or spelled is None:
            return None
        return {**base, **spelled}

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
            _MonitorOwner(),
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
        secret = secrets.randbits(31)
        self._cancel_keys[process_id] = client
        return process_id, secret

    def cancel(self, process_id: int, secret: bytes) -> None:
        client = self._cancel_keys.get(process_id)
        if client is None or len(secret) != 4 or int.from_bytes(secret, "big") != client.secret_key:
            return  # like PostgreSQL: a wrong key is silently ignored
        backend = client.backend
        if backend is None or backend.process_id == 0:
            return  # nothing is running for that client
        target = self.targets.by_address[backend.address]  # type: ignore[union-attr]
        asyncio.ensure_future(_send_cancel(target.host, target.port, backend.process_id, backend.secret_key))

    def client_gone(self, client: PgClient) -> None:
        self.clients.discard(client)
        if self._cancel_keys.get(client.process_id) is client:
            del self._cancel_keys[client.process_id]

    # ------------------------------------------------------------------ metrics and logging
    def record_pins(self, client: PgClient, pins: list[tuple[str, str]]) -> None:
        if len(client.session.pin_reasons) == len(pins):  # the session just became pinned: one event
            target = self.targets.for_endpoint(client.endpoint_name)  # type: ignore[union-attr]
            if target is not None:
                target.stats.record_pin(pins[0][0])
        if self.debug_logging:
            for reason, digest in pins:
                debug_log.info(
                    "client %d (user %s) pinned: reason=%s statement=%s",
                    client.process_id,
                    client.user,
                    reason,
                    digest,
                )

    def refresh_gauges(self) -> None:
        """Gauges derived from live sessions, computed when metrics are read rather than on the data path."""
        if self.targets is None:
            return
        counts: dict[str, list[int]] = {t.address: [0, 0] for t in self.targets.all}
        for client in self.clients:
            backend = client.backend
            if backend is not None and backend.address in counts:
                entry = counts[backend.address]
                entry[0] += client.session.status != ord("I")
                entry[1] += client.session.pinned
        for target in self.targets.all:
            in_txn, pinned = counts[target.address]
            target.stats.DatabaseConnectionsCurrentlyInTransaction = in_txn
            target.stats.DatabaseConnectionsCurrentlySessionPinned = pinned

    def observe_db_latency(self, client: PgClient, micros: int) -> None:
        backend = client.backend
        if backend is not None:
            self.targets.by_address[backend.address].stats.QueryDatabaseResponseLatency.observe(micros)  # type: ignore[union-attr]

    def sweep_idle_clients(self, idle_timeout: float, now: Optional[float] = None) -> int:
        now = time.monotonic() if now is None else now
        closed = 0
        for client in list(self.clients):
            if client.state != READY:
                if client.state in UNAUTHENTICATED and now - client.connected_at > AUTHENTICATION_TIMEOUT:
                    client.fatal("08P01", "canceling authentication due to timeout")
                    closed += 1
                continue
            if client.session.outstanding > 0 or client.pending is not None:
                continue
            if now - client.last_activity > idle_timeout:
                client.fatal("57P05", "terminating connection due to idle_client_timeout of the proxy")
                closed += 1
        return closed

    def drain(self) -> None:
        """Stop new work: idle clients are told and closed now, busy ones when their transaction ends."""
        for client in list(self.clients):
            client.draining = True
            session = client.session
            quiet = session.outstanding == 0 and not session.batch_open and session.status == ord("I")
            # a pinned client never gives its backend back, so "between transactions" is the moment to close it
            if client.pending is None and (client.backend is None or quiet):
                client.fatal("57P01", "terminating connection because the proxy is shutting down")

    def close_all(self) -> None:
        for client in list(self.clients):
            client.fatal("57P01", "terminating connection because the proxy is shutting down")
            if client.transport is not None:
                client.transport.abort()

    def client_factory(self, endpoint_name: str):
        stats = self.metrics.endpoint(endpoint_name)
        return lambda: PgClient(self, endpoint_name, stats)


class _MonitorOwner:
    """Owner of a health-check connection: it is not pooled, so its idle death needs no bookkeeping."""

    def idle_backend_lost(self, backend: PgBackend) -> None:
        backend.broken = True


async def _send_cancel(host: str, port: int, process_id: int, secret_key: int) -> None:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        writer.write(messages.cancel_request(process_id, secret_key.to_bytes(4, "big")))
        await writer.drain()
        writer.close()
    except (OSError, asyncio.TimeoutError) as exc:
        log.warning("could not forward a cancel request to %s:%s: %s", host, port, exc)
