"""What every engine shares: credentials, pools per endpoint, returning backends, pins, idle sweeps, draining."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Optional

from .client import AUTH_TIMEOUT, IDLE_TIMEOUT, READY, SHUTDOWN
from .pool import BackendUnavailable, TargetPool

if TYPE_CHECKING:
    from .config import ProxyConfig
    from .metrics import Metrics
    from .targets import Target, Targets

log = logging.getLogger("rdsproxy.engine")
debug_log = logging.getLogger("rdsproxy.debug")

# How often work waiting for a healthy target looks again (health checks flip targets back every interval).
TARGET_WAIT_POLL = 0.05

# Distinct pool keys whose copies are shared between clients (Engine.shared_key); beyond it, each keeps its own.
MAX_SHARED_KEYS = 10_000
# Distinct session settings whose dicts are shared between clients and backends (Engine.shared_state).
MAX_SHARED_STATES = 1024

# Like PostgreSQL's authentication_timeout: a connection must finish startup and auth within this.
AUTHENTICATION_TIMEOUT = 60.0


def shared_copy(table: dict[Any, Any], key: Any, value: Any, limit: int) -> Any:
    """The object stored in `table` under `key`, storing `value` there first if there is none and `table` holds
    fewer than `limit` (beyond it, `value` itself: sharing is a saving, not a promise)."""
    shared = table.get(key)
    if shared is None:
        if len(table) >= limit:
            return value
        shared = table[key] = value
    return shared


class ProbeResult:
    """What a health probe learned about a target."""

    __slots__ = ("writable", "max_connections", "reserved_connections")

    def __init__(self, writable: bool, max_connections: int, reserved_connections: int):
        self.writable = writable
        self.max_connections = max_connections
        self.reserved_connections = reserved_connections


class Engine:
    """Base of the per-protocol engines; subclasses add authentication, backends, monitoring and cancel.

    Subclasses provide: `client_class`, `InternalQueryError`, `connect(target, key)`, `open_monitor(target)`,
    `probe(monitor)`, and `reset_pinned(backend)` (make a pinned session's backend clean again, or raise).
    """

    family = ""
    client_class: Any = None
    InternalQueryError: type = Exception

    def __init__(self, config: ProxyConfig, metrics: Metrics) -> None:
        self.metrics = metrics
        self.clients: set = set()
        self.targets: Optional[Targets] = None
        self._passwords: dict[str, str] = {}
        self._shared_keys: dict[Any, Any] = {}
        self._shared_states: dict[tuple, dict[str, Any]] = {}  # see shared_state
        self.relay: Any = None  # serves the data path's sockets while the proxy runs (None: asyncio's transports)
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

    def password_of(self, user: str) -> Optional[str]:
        password = self._passwords.get(user)
        if password is None:
            auth = self.config.user(user)
            if auth is None:
                return None
            password = auth.resolve_password()
            self._passwords[user] = password
        return password

    def shared_key(self, key: Any) -> Any:
        """One copy of a pool key (and the strings in it) for all the clients that use it.

        Ten thousand idle clients of one user would otherwise each hold their own user and database strings and
        tuple; only authenticated clients' keys are shared, and only a bounded number of them.
        """
        return shared_copy(self._shared_keys, key, key, MAX_SHARED_KEYS)

    def shared_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """One dict object for every session with these settings (never changed in place: a change replaces it).

        A client's wanted settings and a backend's applied ones are then usually the same object, and the check on
        every borrow (ClientLane._in_sync) is a pointer comparison instead of comparing every setting.
        """
        return shared_copy(self._shared_states, tuple(state.items()), state, MAX_SHARED_STATES)

    def client_factory(self, endpoint_name: str) -> Any:
        stats = self.metrics.endpoint(endpoint_name)
        client_class = self.client_class
        return lambda: client_class(self, endpoint_name, stats)

    def client_gone(self, client: Any) -> None:
        self.clients.discard(client)

    # ------------------------------------------------------------------ targets and pools
    def pool_for(self, endpoint_name: str) -> Optional[TargetPool]:
        return self.targets.pool_for(endpoint_name)  # type: ignore[union-attr]

    async def borrow(self, endpoint_name: str, key: Any) -> Any:
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

    def target_of(self, backend: Any) -> Target:
        return self.targets.by_address[backend.address]  # type: ignore[union-attr]

    # A pooled backend knows the pool that counts it: the one it goes back to even if targets were reloaded.
    def return_clean(self, backend: Any) -> None:
        backend.pool.give_back(backend)

    def discard_backend(self, backend: Any) -> None:
        backend.pool.discard_borrowed(backend)

    def idle_backend_lost(self, backend: Any) -> None:
        if backend.pool is not None:  # else it died before its pool took it in: the pool's opener hears of it
            backend.pool.idle_backend_lost(backend)

    def return_backend(self, client: Any, backend: Any) -> None:
        """A client left while holding a backend: reuse it only if provably clean."""
        backend.detach()
        session = client.session
        if session.quiet and not session.pinned:
            self.return_clean(backend)
        elif session.quiet and session.pinned:
            asyncio.ensure_future(self._reset_pinned_and_return(backend))
        else:
            # mid-transaction or mid-request: closing is the only way to be sure nothing leaks
            self.discard_backend(backend)

    async def _reset_pinned_and_return(self, backend: Any) -> None:
        try:
            await self.reset_pinned(backend)
        except (self.InternalQueryError, BackendUnavailable, OSError) as exc:
            log.info("closing a pinned backend that could not be reset: %s", exc)
            self.discard_backend(backend)
            return
        if backend.broken:
            self.discard_backend(backend)
        else:
            self.return_clean(backend)

    async def reset_pinned(self, backend: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ metrics and logging
    def record_pins(self, client: Any, pins: list[tuple[str, str]]) -> None:
        if len(client.session.pin_reasons) == len(pins):  # the session just became pinned: one event
            pool = self.pool_for(client.endpoint_name)
            if pool is not None:
                pool.stats.record_pin(pins[0][0])  # the pool's stats are its target's
        if self.debug_logging:
            for reason, digest in pins:
                debug_log.info(
                    "client %d (user %s) pinned: reason=%s statement=%s",
                    client.connection_id,
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
                entry[0] += client.session.in_transaction
                entry[1] += client.session.pinned
        for target in self.targets.all:
            in_txn, pinned = counts[target.address]
            target.stats.DatabaseConnectionsCurrentlyInTransaction = in_txn
            target.stats.DatabaseConnectionsCurrentlySessionPinned = pinned

    # ------------------------------------------------------------------ housekeeping
    def sweep_idle_clients(self, idle_timeout: float, now: Optional[float] = None) -> int:
        now = time.monotonic() if now is None else now
        closed = 0
        for client in list(self.clients):
            if client.state != READY:
                if client.authenticating and now - client.connected_at > AUTHENTICATION_TIMEOUT:
                    client.terminate(AUTH_TIMEOUT, "canceling authentication due to timeout")
                    closed += 1
                continue
            if client.session.outstanding > 0 or client.pending is not None:
                continue
            if now - client.last_activity > idle_timeout:
                client.terminate(IDLE_TIMEOUT, "terminating connection due to idle_client_timeout of the proxy")
                closed += 1
        return closed

    def drain(self) -> None:
        """Stop new work: idle clients are told and closed now, busy ones when their transaction ends."""
        for client in list(self.clients):
            client.draining = True
            # a pinned client never gives its backend back, so "between transactions" is the moment to close it
            if client.pending is None and (client.backend is None or client.session.quiet):
                client.terminate(SHUTDOWN, "terminating connection because the proxy is shutting down")

    def close_all(self) -> None:
        for client in list(self.clients):
            client.terminate(SHUTDOWN, "terminating connection because the proxy is shutting down")
            if client.transport is not None:
                client.transport.abort()


class MonitorOwner:
    """Owner of a health-check connection: it is not pooled, so its idle death needs no bookkeeping."""

    relay = None  # a few probes a second: asyncio's transports serve them

    def idle_backend_lost(self, backend: Any) -> None:
        backend.broken = True
