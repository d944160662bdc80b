"""One MySQL/MariaDB server connection: handshake and auth, the proxy's own queries, forwarding to a client."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Optional

from .._codec import BackendLane, MyResponseScanner
from .._codec.myframe_py import RESPONSE_DONE
from ..backend import ATTACHED, CONNECTING, IDLE, INTERNAL, BackendConnection
from ..errors import AuthenticationFailed, ProtocolViolation
from ..pool import BackendUnavailable
from ..protocol.mysql import packets as p
from ..protocol.mysql.auth import BackendAuthenticator
from ..sockets import open_connection

if TYPE_CHECKING:
    from .client import MyClient

# Capabilities the proxy always asks a server for; the rest follow the client (they change the wire format).
BASE_CAPABILITIES = (
    p.CLIENT_LONG_PASSWORD
    | p.CLIENT_PROTOCOL_41
    | p.CLIENT_TRANSACTIONS
    | p.CLIENT_SECURE_CONNECTION
    | p.CLIENT_PLUGIN_AUTH
    | p.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | p.CLIENT_CONNECT_ATTRS
)
# Client capabilities that change what the server sends or accepts: backends are pooled per combination.
WIRE_CAPABILITIES = (
    p.CLIENT_FOUND_ROWS
    | p.CLIENT_LONG_FLAG
    | p.CLIENT_LOCAL_FILES
    | p.CLIENT_IGNORE_SPACE
    | p.CLIENT_INTERACTIVE
    | p.CLIENT_MULTI_STATEMENTS
    | p.CLIENT_MULTI_RESULTS
    | p.CLIENT_PS_MULTI_RESULTS
    | p.CLIENT_DEPRECATE_EOF
)


class InternalQueryError(Exception):
    """The server answered one of the proxy's own queries with an error."""

    def __init__(self, code: int, sqlstate: str, message: str):
        super().__init__(f"{code} ({sqlstate}): {message}")
        self.code = code
        self.sqlstate = sqlstate
        self.message = message


def split_packets(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Cut complete physical packets off the front of `buffer`: [(seq, payload)] (startup and internal use)."""
    out = []
    while len(buffer) >= 4:
        size = int.from_bytes(buffer[:3], "little")
        if len(buffer) < 4 + size:
            break
        out.append((buffer[3], bytes(buffer[4 : 4 + size])))
        del buffer[: 4 + size]
    return out


def parse_text_rows(payloads: list[bytes], deprecate_eof: bool) -> list[list[Optional[str]]]:
    """Rows of the last text result set in a complete COM_QUERY response (the proxy's own small queries)."""
    rows: list[list[Optional[str]]] = []
    i = 0
    while i < len(payloads):
        first = payloads[i]
        if first[:1] == b"\xff":
            error = p.parse_err(first)
            raise InternalQueryError(error.code, error.sqlstate, error.message)
        if first[:1] == b"\x00":
            i += 1  # OK: a statement without a result set
            continue
        columns, _ = p.read_lenenc_int(first, 0)
        i += 1 + columns + (0 if deprecate_eof else 1)
        rows = []
        while i < len(payloads):
            row = payloads[i]
            i += 1
            if row[:1] == b"\xff":
                error = p.parse_err(row)
                raise InternalQueryError(error.code, error.sqlstate, error.message)
            if row[:1] == b"\xfe" and len(row) < 0xFFFFFF:
                break
            values: list[Optional[str]] = []
            pos = 0
            while pos < len(row):
                if row[pos] == 0xFB:
                    values.append(None)
                    pos += 1
                else:
                    text, pos = p.read_lenenc_str(row, pos)
                    values.append(text.decode("utf-8", "replace"))
            rows.append(values)
    return rows


class MyBackend(BackendConnection):
    """A pooled MySQL/MariaDB server connection."""

    def __init__(
        self, address: str, user: str, password: Optional[str], capabilities: int, charset: int, owner: Any
    ) -> None:
        super().__init__(address, (user, capabilities & WIRE_CAPABILITIES, charset), owner)
        self.user = user
        self.wanted_capabilities = capabilities
        self.charset = charset
        self.capabilities = 0
        self.deprecate_eof = False
        self.scanner: Any = None
        self._auth = BackendAuthenticator(user, password)
        self._buffer = bytearray()
        self._seq = 0
        self.thread_id = 0
        self.server_version = ""
        self.server_capabilities = 0
        self.applied: dict[str, Optional[str]] = {}  # tracked state on this connection
        self.last_insert_id = 0
        self.client: Optional[MyClient] = None
        self.fatal_reason: Optional[str] = None
        self._internal_for_client = False
        self._started: Optional[asyncio.Future] = None  # resolved when the handshake is over

    # ------------------------------------------------------------------ asyncio.Protocol
    # while attached, the compiled lane forwards and accounts a response's end; the rest comes to the methods below
    data_received = BackendLane.my_data_received

    def data_received_unattached(self, data: bytes) -> None:
        if self.state == CONNECTING:
            self._buffer += data
            try:
                for seq, payload in split_packets(self._buffer):
                    self._startup_packet(seq, payload)
            except (ProtocolViolation, AuthenticationFailed) as exc:
                self._fail(BackendUnavailable(f"connecting to the database failed: {exc}", sqlstate="08S01"))
            return
        if self.state == INTERNAL:
            try:
                events = self.scanner.feed(data)
            except ProtocolViolation as exc:
                self._fail(BackendUnavailable(f"protocol error from the database: {exc}"))
                return
            self._buffer += data
            for kind, status, _end, _extra in events:
                if kind == RESPONSE_DONE:
                    payloads = [payload for _seq, payload in split_packets(self._buffer)]
                    try:
                        rows = parse_text_rows(payloads, self.deprecate_eof)
                    except InternalQueryError as exc:
                        self._reject(exc)
                    else:
                        if status >= 0 and status & 0x0001 and not self._internal_for_client:
                            self.broken = True  # our own statements never leave a transaction open
                        self._resolve(rows)
            return
        # an idle pooled connection has nothing to say unless it is being shut down: don't reuse it
        self.broken = True
        self.owner.idle_backend_lost(self)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.state == CONNECTING or self.state == INTERNAL:
            self._fail(BackendUnavailable("the database closed the connection", sqlstate="08S01"))
        self._lost()

    # ------------------------------------------------------------------ startup
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # The server speaks first: the handshake may be over before start() runs, so its waiter exists now.
        self._started = self._waiter = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        assert self._started is not None, "start() before the connection was made"
        await self._started

    def _startup_packet(self, seq: int, payload: bytes) -> None:
        if self.server_capabilities == 0:
            if payload[:1] == b"\xff":
                error = p.parse_err(payload)
                raise AuthenticationFailed(f"the database refused the connection: {error.message}")
            handshake = p.parse_handshake_v10(payload)
            self.server_capabilities = handshake.capabilities
            self.server_version = handshake.server_version
            self.thread_id = handshake.connection_id
            self.capabilities = (self.wanted_capabilities | BASE_CAPABILITIES) & handshake.capabilities
            self.deprecate_eof = bool(self.capabilities & p.CLIENT_DEPRECATE_EOF)
            self.scanner = MyResponseScanner(self.deprecate_eof)
            plugin, response = self._auth.first_response(handshake)
            reply = p.handshake_response41(
                capabilities=self.capabilities,
                username=self.user,
                auth_response=response,
                auth_plugin=plugin,
                charset=self.charset,
                connect_attrs={"_client_name": "rdsproxy", "program_name": "rdsproxy"},
            )
            self._send(seq + 1, reply)
            return
        answer = self._auth.handle(payload)
        if answer is not None:
            self._send(seq + 1, answer)
        elif self._auth.ok:
            self.state = IDLE
            self._buffer.clear()
            self._resolve(None)

    def _send(self, seq: int, payload: bytes) -> None:
        self.transport.write(p.packet(seq & 0xFF, payload))  # type: ignore[union-attr]

    # ------------------------------------------------------------------ the proxy's own queries
    async def query(self, sql: bytes) -> list[list[Optional[str]]]:
        """Run one statement (COM_QUERY) for the proxy itself; returns the rows of its last result set."""
        return await self._internal(p.COM_QUERY, p.com_query(sql))

    async def command(self, command: int, payload: bytes) -> list[list[Optional[str]]]:
        """Run a command with an OK/ERR answer (COM_RESET_CONNECTION, COM_INIT_DB) for the proxy itself."""
        return await self._internal(command, payload)

    async def _internal(self, command: int, payload: bytes) -> list[list[Optional[str]]]:
        if not self.writable():
            self.broken = True
            raise BackendUnavailable("the database closed the connection", sqlstate="08S01")
        self._waiter = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        previous_client = self.client
        # a read-back for an attached client runs inside that client's transaction, if it has one open
        self._internal_for_client = previous_client is not None
        self.client = None
        self.state = INTERNAL
        self.scanner.expect(command)
        self._send(0, payload)
        try:
            return await self._waiter
        finally:
            self.client = previous_client
            if self.state == INTERNAL:
                self.state = ATTACHED if previous_client is not None else IDLE

    def goodbye(self) -> bytes:
        return p.packet(0, bytes([p.COM_QUIT]))


async def connect(
    address: str,
    host: str,
    port: int,
    user: str,
    password: Optional[str],
    capabilities: int,
    charset: int,
    owner: Any,
    *,
    timeout: float = 10.0,
) -> MyBackend:
    """Open and authenticate a server connection; raises BackendUnavailable."""
    try:
        _, backend = await asyncio.wait_for(
            open_connection(
                owner.relay, lambda: MyBackend(address, user, password, capabilities, charset, owner), host, port
            ),
            timeout,
        )
    except (OSError, asyncio.TimeoutError) as exc:
        raise BackendUnavailable(f"could not connect to the database at {address}: {exc}", sqlstate="08S01") from None
    try:
        await asyncio.wait_for(backend.start(), timeout)
    except asyncio.TimeoutError:
        backend.transport.abort()  # type: ignore[union-attr]
        raise BackendUnavailable(f"the database at {address} did not finish the handshake in {timeout:g} s") from None
    return backend
