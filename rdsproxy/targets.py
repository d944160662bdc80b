"""Database targets: roles discovered by probing, health checks, and which target serves an endpoint."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._codec import Route
from .config import parse_host_port
from .errors import RdsProxyError
from .pool import TargetPool

if TYPE_CHECKING:
    from .config import ProxyConfig
    from .metrics import Metrics

log = logging.getLogger("rdsproxy.targets")

WRITER, READER, UNKNOWN = "WRITER", "READER", "UNKNOWN"


def connection_budget(max_connections: int, reserved: int, percent: int) -> int:
    """Backend connections the proxy may open to a server.

    `percent` applies to what ordinary users can get (max_connections minus the superuser reserve), less one
    slot that the proxy's own health-check connection occupies.
    """
    usable = max_connections - reserved - 1
    return max(1, (usable * percent) // 100)


class Target:
    """One database server of the target group."""

    def __init__(self, address: str, host: str, port: int, pool: TargetPool, stats: Any) -> None:
        self.address = address
        self.host = host
        self.port = port
        self.pool = pool
        self.stats = stats
        self.on_change: Callable[[], None] = _nothing  # told when role or health changes
        self._role = UNKNOWN
        self._healthy = False
        self.max_connections = 0
        self.reserved = 0
        self.monitor: Any = None
        self.last_error: Optional[str] = None

    @property
    def role(self) -> str:
        return self._role

    @role.setter
    def role(self, role: str) -> None:
        if role != self._role:
            self._role = role
            self.on_change()

    @property
    def healthy(self) -> bool:
        return self._healthy

    @healthy.setter
    def healthy(self, healthy: bool) -> None:
        if healthy != self._healthy:
            self._healthy = healthy
            self.on_change()

    def set_role(self, role: str) -> None:
        self.role = role
        self.stats.role = role


def _nothing() -> None:
    pass


class Targets:
    """The target group: keeps each target's role and health current, and picks targets for endpoints."""

    def __init__(self, config: ProxyConfig, engine: Any, metrics: Metrics) -> None:
        self.engine = engine
        self.config = config
        self.all: list[Target] = []
        self.by_address: dict[str, Target] = {}
        self._endpoint_roles = {e.name: e.target_role for e in config.endpoints}
        self._reader_turn = 0
        self._routes: dict[str, Route] = {}
        self._last_writer: Optional[Target] = None  # the writer most recently seen, for counting failovers
        self._task: Optional[asyncio.Task] = None
        tg = config.target_group
        for address in tg.targets:
            host, port = parse_host_port(address, what=f"target {address!r}")
            stats = metrics.target(address)
            target_ref: dict[str, Target] = {}

            async def connector(key: Any, _ref: dict[str, Target] = target_ref) -> Any:
                return await engine.connect(_ref["target"], key)

            pool = TargetPool(
                address,
                connector,
                stats,
                limit=1,  # until the first probe reads the server's max_connections
                max_idle_percent=tg.max_idle_connections_percent,
                idle_backend_timeout=tg.idle_backend_timeout,
            )
            target = Target(address, host, port, pool, stats)
            target.on_change = self._reroute
            target_ref["target"] = target
            self.all.append(target)
            self.by_address[address] = target

    async def start(self) -> None:
        await asyncio.gather(*(self.check(t) for t in self.all))
        self._task = asyncio.ensure_future(self._health_loop())

    def apply_config(self, config: ProxyConfig) -> None:
        self.config = config
        tg = config.target_group
        for target in self.all:
            target.pool.max_idle_percent = tg.max_idle_connections_percent
            target.pool.idle_backend_timeout = tg.idle_backend_timeout
            if target.max_connections:
                target.pool.set_limit(self._budget(target))

    def _budget(self, target: Target) -> int:
        return connection_budget(
            target.max_connections, target.reserved, self.config.target_group.max_connections_percent
        )

    async def check(self, target: Target) -> None:
        """Probe one target: role and connection limits; marks it unhealthy on failure."""
        try:
            if target.monitor is None or target.monitor.broken:
                target.monitor = await self.engine.open_monitor(target)
            result = await asyncio.wait_for(self.engine.probe(target.monitor), 10)
        except (RdsProxyError, OSError, asyncio.TimeoutError) as exc:
            self._unavailable(target, exc)
            return
        except Exception as exc:  # noqa: BLE001 - a proxy bug must not end the health loop, or failover with it
            log.error("health check of target %s failed unexpectedly", target.address, exc_info=exc)
            self._unavailable(target, exc)
            return
        if not target.healthy:
            log.info("target %s is up as %s", target.address, WRITER if result.writable else READER)
        target.healthy = True
        target.last_error = None
        target.set_role(WRITER if result.writable else READER)
        if result.writable:
            self._writer_seen(target)
        target.max_connections = result.max_connections
        target.reserved = result.reserved_connections
        target.pool.set_limit(self._budget(target))

    def _unavailable(self, target: Target, exc: Exception) -> None:
        if target.healthy or target.last_error is None:
            log.warning("target %s is unavailable: %s", target.address, exc)
        target.healthy = False
        target.last_error = str(exc) or type(exc).__name__
        if target.monitor is not None:
            target.monitor.close()
            target.monitor = None

    def _writer_seen(self, target: Target) -> None:
        """Count a failover on `target` when it takes the writer role from another target that lost it."""
        previous = self._last_writer
        if previous is target:
            return
        if previous is not None:
            if previous.healthy and previous.role == WRITER:
                return  # two writable targets at once (a promotion racing the old writer): not a takeover yet
            target.stats.FailoverEvents += 1
            log.warning("failover: target %s took over as WRITER from %s", target.address, previous.address)
        self._last_writer = target

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.target_group.health_check_interval)
            await asyncio.gather(*(self.check(t) for t in self.all))

    def writer(self) -> Optional[Target]:
        for target in self.all:
            if target.role == WRITER and target.healthy:
                return target
        return None

    def reader(self) -> Optional[Target]:
        readers = [t for t in self.all if t.role == READER and t.healthy]
        if not readers:
            return None
        self._reader_turn = (self._reader_turn + 1) % len(readers)
        return readers[self._reader_turn]

    def pool_for(self, endpoint_name: str) -> Optional[TargetPool]:
        """The pool of the target serving `endpoint_name` now (the writer, or the next reader), or None."""
        if self._endpoint_roles.get(endpoint_name) == "READ_ONLY":
            target = self.reader()
            return target.pool if target is not None else None
        for target in self.all:  # writer(), inline: every borrow asks
            if target.role == WRITER and target.healthy:
                return target.pool
        return None

    def route(self, endpoint_name: str) -> Route:
        """Where `endpoint_name`'s borrows go, kept current on every role or health change (for ClientLane).

        A READ_ONLY endpoint's route stays empty: each of its borrows picks the next reader in pool_for.
        """
        route = self._routes.get(endpoint_name)
        if route is None:
            route = self._routes[endpoint_name] = Route()
            self._reroute()
        return route

    def _reroute(self) -> None:
        writer = self.writer()
        pool = writer.pool if writer is not None else None
        for endpoint_name, route in self._routes.items():
            route.pool = None if self._endpoint_roles.get(endpoint_name) == "READ_ONLY" else pool

    def healthy(self) -> bool:
        return self.writer() is not None

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "address": t.address,
                "role": t.role,
                "healthy": t.healthy,
                "max_connections": t.max_connections,
                "pool_limit": t.pool.limit,
                "pool_total": t.pool.total,
                "pool_idle": t.pool.idle_count,
                "pool_borrowed": t.pool.borrowed,
                "last_error": t.last_error,
            }
            for t in self.all
        ]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        for target in self.all:
            target.pool.close()
            if target.monitor is not None:
                target.monitor.close()
