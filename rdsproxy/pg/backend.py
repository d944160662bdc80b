"""One PostgreSQL server connection: startup and auth, the proxy's own queries, and forwarding to a client."""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING, Any, Optional

from .._codec import BackendLane, ServerScanner
from ..backend import ATTACHED, CONNECTING, IDLE, INTERNAL, BackendConnection
from ..errors import AuthenticationFailed, ProtocolViolation
from ..pool import BackendUnavailable
from ..protocol.pg import messages
from ..protocol.pg.auth import BackendAuthenticator
from ..sockets import open_connection

if TYPE_CHECKING:
    from .client import PgClient

_STARTUP_INTERESTING = b"RSKEZ"
_INTERNAL_INTERESTING = b"ZEDS"
_FORWARD_INTERESTING = b"ZSEGW"

_R, _S, _K, _E, _Z, _D = (ord(c) for c in "RSKEZD")


class InternalQueryError(Exception):
    """The server answered one of the proxy's own queries with an error."""

    def __init__(self, fields: dict[str, str]):
        super().__init__(f"{fields.get('C', '?????')}: {fields.get('M', 'error')}")
        self.fields = fields


def _parse_data_row(payload: bytes) -> list[Optional[str]]:
    (count,) = struct.unpack_from("!h", payload, 0)
    pos = 2
    row: list[Optional[str]] = []
    for _ in range(count):
        (size,) = struct.unpack_from("!i", payload, pos)
        pos += 4
        if size < 0:
            row.append(None)
        else:
            row.append(payload[pos : pos + size].decode("utf-8", "replace"))
            pos += size
    return row


def _without_fatal_errors(data: bytes, events: list) -> tuple[bytes, Optional[str]]:
    """`data` minus the FATAL ErrorResponses in it, and the server's reason from the last one.

    A FATAL error ends this server connection, not the client's: the client hears about the loss from the proxy
    (08006, quoting the server's reason) and stays open. A message split across chunks is left as is.
    """
    reason = None
    for mtype, payload, end in reversed(events):
        if mtype == _E and (b"VFATAL\x00" in payload or b"VPANIC\x00" in payload):
            start = end - len(payload) - 5
            if start >= 0:
                data = data[:start] + data[end:]
                reason = reason or messages.parse_error_fields(payload).get("M")
    return data, reason


class PgBackend(BackendConnection):
    """A pooled PostgreSQL server connection."""

    def __init__(self, address: str, user: str, password: Optional[str], database: str, owner: Any) -> None:
        super().__init__(address, (user, database), owner)
        self.user = user
        self.database = database
        self.scanner = ServerScanner(_STARTUP_INTERESTING)
        self._auth = BackendAuthenticator(user, password)
        self.server_params: dict[str, str] = {}
        self.process_id = 0
        self.secret_key = 0
        self.applied: dict[str, str] = {}  # tracked parameters set on this connection (beyond server defaults)
        self.client: Optional[PgClient] = None
        self.fatal_reason: Optional[str] = None  # why the server ended this connection, when it said so
        self._rows: list[list[Optional[str]]] = []
        self._error: Optional[dict[str, str]] = None

    # while attached, the compiled lane forwards and accounts ReadyForQuery; the rest comes to the methods below
    data_received = BackendLane.pg_data_received

    def forward_events(self, client: PgClient, data: bytes) -> None:
        """An attached chunk held state-changing messages (feed_ready said -1): forward it, then apply them."""
        events = self.scanner.take_events()
        if _E in [event[0] for event in events]:
            data, fatal_reason = _without_fatal_errors(data, events)
            self.fatal_reason = fatal_reason or self.fatal_reason
        client.transport.write(data)  # type: ignore[union-attr]
        if events:
            client.backend_events(events)

    def data_received_unattached(self, data: bytes) -> None:
        try:
            events = self.scanner.feed(data)
        except ProtocolViolation as exc:
            self._fail(BackendUnavailable(f"protocol error from the database: {exc}"))
            return
        if self.state == CONNECTING:
            self._startup_events(events)
        elif self.state == INTERNAL:
            self._internal_events(events)
        else:
            # an idle pooled connection has nothing to say unless it is being shut down: don't reuse it
            self.broken = True
            self.owner.idle_backend_lost(self)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.state == CONNECTING or self.state == INTERNAL:
            self._fail(BackendUnavailable("the database closed the connection"))
        self._lost()

    # ------------------------------------------------------------------ startup
    async def start(self, startup_params: dict[str, str]) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        params = {"user": self.user, "database": self.database, **startup_params}
        self.transport.write(messages.startup_message(params))  # type: ignore[union-attr]
        await self._waiter

    def _startup_events(self, events: list) -> None:
        for mtype, payload, _end in events:
            if mtype == _R:
                try:
                    reply = self._auth.handle(payload)
                except (AuthenticationFailed, ProtocolViolation) as exc:
                    self._fail(BackendUnavailable(f"authentication to the database failed: {exc}", sqlstate="28P01"))
                    return
                if reply:
                    self.transport.write(reply)  # type: ignore[union-attr]
            elif mtype == _S:
                name, value = messages.parse_parameter_status(payload)
                self.server_params[name] = value
            elif mtype == _K:
                self.process_id, self.secret_key = messages.parse_backend_key_data(payload)
            elif mtype == _E:
                fields = messages.parse_error_fields(payload)
                self._fail(
                    BackendUnavailable(
                        f"the database refused the connection: {fields.get('M', '')}",
                        sqlstate=fields.get("C", "08006"),
                        fatal_fields=fields,
                    )
                )
                return
            elif mtype == _Z:
                self.state = IDLE
                self.scanner.interesting = _FORWARD_INTERESTING
                self._resolve(None)

    # ------------------------------------------------------------------ the proxy's own queries
    async def query(self, sql: bytes) -> list[list[Optional[str]]]:
        """Run SQL (simple protocol) for the proxy itself; returns the rows of the last result."""
        if not self.writable():
            self.broken = True
            raise BackendUnavailable("the database closed the connection")
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._rows = []
        self._error = None
        previous_client = self.client
        self.client = None
        self.state = INTERNAL
        self.scanner.interesting = _INTERNAL_INTERESTING
        self.transport.write(messages.query(sql))  # type: ignore[union-attr]
        try:
            return await self._waiter
        finally:
            self.client = previous_client
            self.scanner.interesting = _FORWARD_INTERESTING
            if self.state == INTERNAL:
                self.state = ATTACHED if previous_client is not None else IDLE

    def _internal_events(self, events: list) -> None:
        for mtype, payload, _end in events:
            if mtype == _D:
                self._rows.append(_parse_data_row(payload))
            elif mtype == _E:
                self._error = messages.parse_error_fields(payload)
            elif mtype == _Z:
                if payload[:1] != b"I":
                    # our own statements never leave a transaction open; if one did, this connection is unsafe
                    self.broken = True
                if self._error is not None:
                    self._reject(InternalQueryError(self._error))  # only this statement failed, not the connection
                else:
                    self._resolve(self._rows)

    def goodbye(self) -> bytes:
        return messages.terminate()


async def connect(
    address: str,
    host: str,
    port: int,
    user: str,
    password: Optional[str],
    database: str,
    owner: Any,
    *,
    timeout: float = 10.0,
    startup_params: Optional[dict[str, str]] = None,
) -> PgBackend:
    """Open and authenticate a server connection; raises BackendUnavailable."""
    try:
        _, backend = await asyncio.wait_for(
            open_connection(owner.relay, lambda: PgBackend(address, user, password, database, owner), host, port),
            timeout,
        )
    except (OSError, asyncio.TimeoutError) as exc:
        raise BackendUnavailable(f"could not connect to the database at {address}: {exc}", sqlstate="08001") from None
    try:
        await asyncio.wait_for(backend.start(startup_params or {}), timeout)
    except asyncio.TimeoutError:
        backend.transport.abort()  # type: ignore[union-attr]
        raise BackendUnavailable(f"the database at {address} did not finish startup in {timeout:g} s") from None
    return backend
