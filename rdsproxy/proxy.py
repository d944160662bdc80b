"""The public Proxy object: starts listeners, targets, pools and the admin server; drains on close."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

from .admin import AdminServer
from .config import ProxyConfig, parse_host_port
from .listener import Listener
from .metrics import Metrics
from .sockets import new_relay
from .targets import Targets

log = logging.getLogger("rdsproxy")

# How often the janitor reaps idle backends, closes idle clients and refreshes derived gauges.
JANITOR_INTERVAL = 1.0


def _make_engine(config: ProxyConfig, metrics: Metrics) -> Any:
    if config.proxy.engine_family == "POSTGRESQL":
        from .pg.engine import PgEngine

        return PgEngine(config, metrics)
    if config.proxy.engine_family == "MYSQL":
        from .mysql.engine import MyEngine

        return MyEngine(config, metrics)
    raise NotImplementedError(f"engine_family {config.proxy.engine_family!r} is not available yet")


class Proxy:
    """A running rdsproxy instance (use `async with Proxy(config) as proxy:` or start()/close())."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._metrics = Metrics(config.proxy.name)
        self.engine = _make_engine(config, self._metrics)
        self.targets = Targets(config, self.engine, self._metrics)
        self.engine.targets = self.targets
        self._listeners: dict[str, Listener] = {}
        self._admin: Optional[AdminServer] = None
        self._janitor: Optional[asyncio.Task] = None
        self._closed: Optional[asyncio.Event] = None
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._started:
            raise RuntimeError("proxy already started")
        self._started = True
        self._closed = asyncio.Event()
        relay = self.engine.relay = new_relay()
        try:
            await self.targets.start()
        except BaseException:
            if relay is not None:
                relay.close()
            raise
        try:
            for endpoint in self.config.endpoints:
                listener = Listener(endpoint, self.engine.client_factory(endpoint.name), self.engine.relay)
                await listener.start()
                self._listeners[endpoint.name] = listener
            if self.config.proxy.admin_listen:
                host, port = parse_host_port(self.config.proxy.admin_listen, what="proxy.admin_listen", allow_zero=True)
                self._admin = AdminServer(
                    self._metrics, health=self._health, stats=self._stats, refresh=self.engine.refresh_gauges
                )
                await self._admin.start(host, port)
        except BaseException:
            await self._shutdown(drain_timeout=0)
            raise
        self._janitor = asyncio.ensure_future(self._janitor_loop())
        log.info("proxy %s started", self.config.proxy.name)

    async def close(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, let in-flight transactions finish (up to drain_timeout s), then close everything."""
        if not self._started or self._closed is None or self._closed.is_set():
            return
        await self._shutdown(drain_timeout)

    async def _shutdown(self, drain_timeout: float) -> None:
        for listener in self._listeners.values():
            listener.stop_accepting()
        self.engine.drain()
        deadline = time.monotonic() + drain_timeout
        while self.engine.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.engine.close_all()
        if self._janitor is not None:
            self._janitor.cancel()
        await self.targets.close()
        if self._admin is not None:
            await self._admin.close()
        for listener in self._listeners.values():
            await listener.wait_closed()
        if self.engine.relay is not None:
            self.engine.relay.close()  # what is still open after the drain and close_all is cut here
        if self._closed is not None:
            self._closed.set()
        log.info("proxy %s closed", self.config.proxy.name)

    async def serve_forever(self) -> None:
        if not self._started:
            await self.start()
        assert self._closed is not None
        await self._closed.wait()

    async def __aenter__(self) -> Proxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def reload(self, config: ProxyConfig) -> None:
        """Apply what can change live: pool sizes, timeouts, secrets (listeners and targets stay)."""
        self.config = config
        self.engine.apply_config(config)
        self.targets.apply_config(config)
        log.info("configuration reloaded")

    # ------------------------------------------------------------------ introspection
    def address(self, endpoint_name: str = "default") -> tuple[str, int]:
        return self._listeners[endpoint_name].address

    @property
    def admin_address(self) -> Optional[tuple[str, int]]:
        return self._admin.address if self._admin is not None else None

    def metrics(self) -> dict[str, float]:
        self.engine.refresh_gauges()
        return self._metrics.snapshot()

    @property
    def metrics_registry(self) -> Metrics:
        return self._metrics

    def pinned_sessions(self) -> list[dict[str, Any]]:
        return [
            {"user": c.user, "database": c.database, "reasons": list(c.session.pin_reasons)}
            for c in self.engine.clients
            if c.session.pinned
        ]

    def _health(self) -> tuple[bool, dict]:
        return self.targets.healthy(), {"targets": self.targets.describe()}

    def _stats(self) -> dict:
        self.engine.refresh_gauges()
        return {
            "proxy": self.config.proxy.name,
            "targets": self.targets.describe(),
            "clients": len(self.engine.clients),
        }

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_INTERVAL)
            try:
                for target in self.targets.all:
                    target.pool.reap_idle()
                self.engine.sweep_idle_clients(self.config.proxy.idle_client_timeout)
                self.engine.refresh_gauges()
            except Exception:  # noqa: BLE001 - the janitor must survive anything
                log.exception("janitor pass failed")
