"""The MySQL/MariaDB engine: wires client sessions, backend connections, pools and targets together."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from ..client import SHUTDOWN
from ..engine import Engine, MonitorOwner, ProbeResult
from ..protocol.mysql import packets as p
from ..protocol.mysql.session import READ_STATE_SQL, TRACKED_VARIABLES
from . import backend as my_backend
from .backend import BASE_CAPABILITIES, InternalQueryError, MyBackend
from .client import PROXY_CAPABILITIES, MyClient

if TYPE_CHECKING:
    from ..config import ProxyConfig
    from ..metrics import Metrics
    from ..targets import Target

log = logging.getLogger("rdsproxy.engine")

PROBE_SQL = b"SELECT @@global.read_only, @@global.max_connections"
# Until a target has been reached, clients are greeted with this version.
DEFAULT_SERVER_VERSION = "5.5.5-10.11.0-MariaDB-rdsproxy"

CLIENT_AUTH_PLUGINS = {
    "MYSQL_NATIVE_PASSWORD": "mysql_native_password",
    "MYSQL_CACHING_SHA2_PASSWORD": "caching_sha2_password",
}


class MyEngine(Engine):
    """Everything the MySQL side of the proxy shares between its connections."""

    family = "MYSQL"
    client_class = MyClient
    InternalQueryError = InternalQueryError

    def __init__(self, config: ProxyConfig, metrics: Metrics) -> None:
        super().__init__(config, metrics)
        self.server_version = DEFAULT_SERVER_VERSION
        self.server_capabilities = PROXY_CAPABILITIES | BASE_CAPABILITIES
        self._connections: dict[int, MyClient] = {}
        self._next_connection_id = 1
        self._baselines: dict[Any, dict[str, Optional[str]]] = {}
        self._known_databases: set[tuple[str, str]] = set()

    def apply_config(self, config: ProxyConfig) -> None:
        super().apply_config(config)
        # the greeting names one plugin before the user is known; others are reached by an auth switch
        self.client_auth_plugin = self.auth_plugin_for(config.auth[0].username)

    def auth_plugin_for(self, user: str) -> str:
        auth = self.config.user(user) or self.config.auth[0]
        return CLIENT_AUTH_PLUGINS[auth.client_password_auth_type or "MYSQL_NATIVE_PASSWORD"]

    def offered_capabilities(self, wanted: int) -> int:
        """Capabilities to offer clients: only what the servers also do, since their bytes are forwarded as-is."""
        return wanted & (self.server_capabilities | p.CLIENT_CONNECT_WITH_DB)

    # ------------------------------------------------------------------ connection ids and KILL
    def register_connection(self, client: MyClient) -> int:
        connection_id = self._next_connection_id
        self._next_connection_id = connection_id + 1 if connection_id < 0xFFFFFFFF else 1
        self._connections[connection_id] = client
        return connection_id

    def client_gone(self, client: MyClient) -> None:
        super().client_gone(client)
        if self._connections.get(client.connection_id) is client:
            del self._connections[client.connection_id]

    def kill(self, issuer: MyClient, scope: str, connection_id: int) -> None:
        """KILL [QUERY|CONNECTION] <proxy connection id>: act on the backend serving that client now."""
        target = self._connections.get(connection_id)
        if target is None:
            issuer._send(1, p.err_packet(1094, "HY000", f"Unknown thread id: {connection_id}"))
            return
        if target.user != issuer.user:
            issuer._send(1, p.err_packet(1095, "HY000", f"You are not owner of thread {connection_id}"))
            return
        backend = target.backend
        if scope == "CONNECTION":
            if target is not issuer and backend is not None and target.session.outstanding > 0:
                # dropping that backend does not stop its statement on the server (SLEEP, a long scan): kill it
                # there too; the server's answer to this KILL QUERY is the issuer's answer
                issuer.session.outstanding += 1
                issuer.send_command(p.packet(0, p.com_query(b"KILL QUERY %d" % backend.thread_id)), p.COM_QUERY)
            else:
                issuer._send(1, p.ok_packet(status=issuer.session.ok_status()))
            if target is not issuer:
                target.terminate(SHUTDOWN, "Connection was killed")
            else:
                issuer.close()
            return
        if backend is None or target.session.outstanding == 0:
            issuer._send(1, p.ok_packet(status=issuer.session.ok_status()))  # nothing is running
            return
        # the issuer's own (borrowed) backend kills the query on the target's server session
        issuer.session.outstanding += 1
        issuer.send_command(p.packet(0, p.com_query(b"KILL QUERY %d" % backend.thread_id)), p.COM_QUERY)

    # ------------------------------------------------------------------ backends
    async def connect(self, target: Target, key: Any) -> MyBackend:
        user, capabilities, charset = key
        backend = await my_backend.connect(
            target.address, target.host, target.port, user, self.password_of(user), capabilities, charset, self
        )
        try:
            if self.init_query:
                await backend.query(self.init_query)
            backend.applied = await self._read_state(backend)
        except InternalQueryError as exc:
            backend.close()
            raise my_backend.BackendUnavailable(f"preparing a database connection failed: {exc}") from None
        self._baselines.setdefault(key, dict(backend.applied))
        return backend

    async def _read_state(self, backend: MyBackend) -> dict[str, Optional[str]]:
        rows = await backend.query(READ_STATE_SQL)
        return dict(zip(("database", *TRACKED_VARIABLES), rows[0]))

    def baseline(self, key: Any) -> dict[str, Optional[str]]:
        return dict(self._baselines.get(key, {}))

    async def initial_state(self, endpoint_name: str, key: Any, database: Optional[str]) -> dict[str, Optional[str]]:
        """The session state a new client starts with; checks its database exists (once per user and database)."""
        user = key[0]
        if key in self._baselines and (database is None or (user, database) in self._known_databases):
            return dict(self._baselines[key], database=database)
        backend = await self.borrow(endpoint_name, key)
        try:
            if database is not None and backend.applied.get("database") != database:
                await backend.command(p.COM_INIT_DB, bytes([p.COM_INIT_DB]) + database.encode())
                backend.applied = {**backend.applied, "database": database}  # never changed in place: shared
        except BaseException:
            if backend.broken:
                self.discard_backend(backend)
            else:
                self.return_clean(backend)
            raise
        self.return_clean(backend)
        if database is not None:
            self._known_databases.add((user, database))
        return dict(self._baselines.get(key, backend.applied), database=database)

    async def reset_pinned(self, backend: MyBackend) -> None:
        await backend.command(p.COM_RESET_CONNECTION, bytes([p.COM_RESET_CONNECTION]))
        if self.init_query:
            await backend.query(self.init_query)
        backend.last_insert_id = 0
        backend.applied = await self._read_state(backend)

    # ------------------------------------------------------------------ monitoring connections (targets.py)
    async def open_monitor(self, target: Target) -> MyBackend:
        auth = self.config.auth[0]
        monitor = await my_backend.connect(
            target.address,
            target.host,
            target.port,
            auth.username,
            self.password_of(auth.username),
            0,
            45,
            MonitorOwner(),
        )
        self.server_version = monitor.server_version or self.server_version
        self.server_capabilities = monitor.server_capabilities or self.server_capabilities
        return monitor

    async def probe(self, monitor: MyBackend) -> ProbeResult:
        rows = await monitor.query(PROBE_SQL)
        read_only, max_connections = rows[0]
        # MariaDB and MySQL reserve one connection beyond max_connections for SUPER: nothing to subtract
        return ProbeResult(read_only in ("0", "OFF"), int(max_connections or 0), 0)
