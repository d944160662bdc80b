"""One MySQL/MariaDB client connection: handshake and auth by the proxy, then transaction-pooled forwarding."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Optional

from .._codec import ClientLane, MyClientFramer, packet_payload
from .._codec.myframe_py import LOCAL_INFILE, RESPONSE_DONE
from ..client import (
    AUTH,
    AUTH_TIMEOUT,
    BACKEND_LOST,
    BORROW_TIMEOUT,
    CLOSED,
    IDLE_TIMEOUT,
    INTERNAL_ERROR,
    PROTOCOL,
    READY,
    SETUP,
    SHUTDOWN,
    STARTUP,
    UNAVAILABLE,
    ClientConnection,
)
from ..errors import AuthenticationFailed, ProtocolViolation
from ..pool import BackendUnavailable, BorrowTimeout
from ..protocol.mysql import packets as p
from ..protocol.mysql.auth import ClientAuthenticator, scramble
from ..protocol.mysql.session import (
    CHANGE_USER,
    FORWARD,
    KILL,
    QUIT,
    READ_STATE_AND_LAST_INSERT_ID_SQL,
    READ_STATE_SQL,
    REJECT,
    REPLY,
    RESET_CONNECTION,
    TRACKED_VARIABLES,
    MySession,
    sync_sql,
)
from .backend import WIRE_CAPABILITIES, InternalQueryError, MyBackend

if TYPE_CHECKING:
    from ..metrics import EndpointStats
    from .engine import MyEngine

log = logging.getLogger("rdsproxy.client")

# What the proxy offers clients (intersected with what the servers support: forwarded bytes must mean the same).
PROXY_CAPABILITIES = (
    p.CLIENT_LONG_PASSWORD
    | p.CLIENT_FOUND_ROWS
    | p.CLIENT_LONG_FLAG
    | p.CLIENT_CONNECT_WITH_DB
    | p.CLIENT_LOCAL_FILES
    | p.CLIENT_IGNORE_SPACE
    | p.CLIENT_PROTOCOL_41
    | p.CLIENT_INTERACTIVE
    | p.CLIENT_TRANSACTIONS
    | p.CLIENT_SECURE_CONNECTION
    | p.CLIENT_MULTI_STATEMENTS
    | p.CLIENT_MULTI_RESULTS
    | p.CLIENT_PS_MULTI_RESULTS
    | p.CLIENT_PLUGIN_AUTH
    | p.CLIENT_CONNECT_ATTRS
    | p.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | p.CLIENT_DEPRECATE_EOF
)

# The largest packet a client may send before it is authenticated, and after (a 16 MB+ query must work).
MAX_SETUP_PACKET = 64 * 1024
# A sync plan's step that sets LAST_INSERT_ID() on the backend (its payload: the value, as ASCII digits).
SET_LAST_INSERT_ID = -1
MAX_CLIENT_PACKET = 256 * 1024 * 1024

ERRORS = {  # neutral kind -> (MySQL error number, SQLSTATE)
    BORROW_TIMEOUT: (1040, "08004"),
    UNAVAILABLE: (1053, "08S01"),
    BACKEND_LOST: (1053, "08S01"),
    SHUTDOWN: (1053, "08S01"),
    IDLE_TIMEOUT: (4031, "HY000"),
    AUTH_TIMEOUT: (1043, "08S01"),
    PROTOCOL: (1047, "08S01"),
    INTERNAL_ERROR: (1105, "HY000"),
}
ACCESS_DENIED = (1045, "28000")


class MyClient(ClientConnection):
    """A MySQL client connection: the proxy is its server; backends are borrowed per transaction."""

    __slots__ = (
        "connection_id",
        "scramble",
        "capabilities",
        "charset",
        "database",
        "_auth",
        "_auth_user_known",
        "_seq",
        "_changing_user",
        "_used_password",
    )

    def __init__(self, engine: MyEngine, endpoint_name: str, stats: EndpointStats) -> None:
        super().__init__(engine, endpoint_name, stats)
        self.framer = MyClientFramer(MAX_SETUP_PACKET)
        self.session = MySession(exclude_variable_sets=engine.exclude_variable_sets)
        self.backend: Optional[MyBackend] = None
        self.connection_id = 0
        self.scramble = scramble()
        self.capabilities = 0
        self.charset = 45
        self.database: Optional[str] = None
        self._auth: Optional[ClientAuthenticator] = None
        self._auth_user_known = True
        self._seq = 0  # sequence id of our next packet during the handshake
        self._changing_user = False
        self._used_password = False
        # commands sent or queued whose response no backend scanner expects yet: (command, opens a cursor)
        self.expects: list[tuple[int, bool]] = []
        self._refreshing = False

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.connection_id = self.session.connection_id = self.engine.register_connection(self)
        greeting = p.handshake_v10(
            server_version=self.engine.server_version,
            connection_id=self.connection_id,
            scramble=self.scramble,
            capabilities=self.engine.offered_capabilities(PROXY_CAPABILITIES),
            charset=45,
            auth_plugin=self.engine.client_auth_plugin,
        )
        self._send(0, greeting)

    # a lone plain command in the READY state is accounted and forwarded by the compiled lane; the rest comes here
    data_received = ClientLane.my_data_received

    def data_received_full(self, data: bytes) -> None:
        try:
            buf, packets = self.framer.feed(data)
            for seq, start, end, _size in packets:
                if self.state == CLOSED:
                    return
                if self.state == READY:
                    self._command(seq, buf, start, end)
                else:
                    self._setup_packet(seq, packet_payload(buf, start, end))
        except Exception as exc:  # noqa: BLE001 - mapped to the client's error by data_failed
            self.data_failed(exc)

    def data_failed(self, exc: Exception) -> None:
        """Handling the client's bytes raised: end this connection with the error it deserves."""
        if isinstance(exc, ProtocolViolation):
            self.terminate(PROTOCOL, f"protocol violation: {exc}")
        elif isinstance(exc, AuthenticationFailed):
            self._auth_failed(exc)
        else:  # a proxy bug must end this connection only, and quietly for the peer
            log.error("internal error while serving client %d; closing it", self.connection_id, exc_info=exc)
            self.terminate(INTERNAL_ERROR, "internal error in the proxy; the connection was closed")

    def eof_received(self) -> bool:
        if self.framer.pending:
            self.terminate(PROTOCOL, "protocol violation: the client closed its side in the middle of a packet")
        return False

    def _send(self, seq: int, payload: bytes) -> None:
        self.transport.write(p.packet(seq & 0xFF, payload))  # type: ignore[union-attr]

    # ------------------------------------------------------------------ handshake and authentication
    def _setup_packet(self, seq: int, payload: bytes) -> None:
        if self.state == STARTUP:
            if seq != 1:
                raise ProtocolViolation(f"handshake response with sequence id {seq}, expected 1")
            self._handshake_response(payload)
        elif self.state == AUTH:
            self._seq = seq + 1  # an ERR for a refused answer follows it
            replies = self._auth.handle(payload)  # type: ignore[union-attr]
            self._auth_replies(seq, replies)
        else:
            raise ProtocolViolation("unexpected packet during connection setup")

    def _handshake_response(self, payload: bytes) -> None:
        response = p.parse_handshake_response41(payload)
        if response.capabilities & p.CLIENT_SSL:
            raise ProtocolViolation("the client asked for TLS, which this proxy does not offer yet")
        offered = self.engine.offered_capabilities(PROXY_CAPABILITIES)
        self.capabilities = response.capabilities & offered
        self.charset = response.charset
        self.session.deprecate_eof = bool(self.capabilities & p.CLIENT_DEPRECATE_EOF)
        self.user = response.username
        self.database = response.database if self.capabilities & p.CLIENT_CONNECT_WITH_DB else None
        self.key = (self.user, self.capabilities & WIRE_CAPABILITIES, self.charset)
        self._start_auth(response, 1)

    def _start_auth(self, response: Any, seq: int) -> None:
        self._used_password = bool(response.auth_response)
        password = self.engine.password_of(response.username) if self.engine.config.user(response.username) else None
        self._auth_user_known = password is not None
        self._auth = ClientAuthenticator(
            password=password, method=self.engine.auth_plugin_for(response.username), scramble=self.scramble
        )
        self.state = AUTH
        self._seq = seq + 1  # an ERR for a refused first answer follows it
        self._auth_replies(seq, self._auth.start(response))

    def _auth_replies(self, seq: int, replies: list[bytes]) -> None:
        for reply in replies:
            seq += 1
            self._send(seq, reply)
        self._seq = seq + 1
        if self._auth.done:  # type: ignore[union-attr]
            if not self._auth_user_known:
                raise AuthenticationFailed("unknown user")
            self._authenticated()

    def _auth_failed(self, exc: Exception) -> None:
        self.stats.ClientConnectionsSetupFailedAuth += 1
        code, sqlstate = ACCESS_DENIED
        host = self.transport.get_extra_info("peername", ("localhost",))[0] if self.transport else "localhost"
        self._error_and_close(
            self._seq,
            code,
            sqlstate,
            f"Access denied for user '{self.user}'@'{host}' (using password: {'YES' if self._used_password else 'NO'})",
        )

    def _authenticated(self) -> None:
        self._auth = None
        self.state = SETUP
        # one key object for every client of the same kind: the pool's lookup of its idle list is then a pointer
        # comparison instead of hashing and comparing a tuple (PoolLane._idle_of)
        self.key = self.engine.shared_key(self.key)
        self.pause_reading()
        self._task = asyncio.ensure_future(self._prepare_session())

    async def _prepare_session(self) -> None:
        """Learn the server's defaults for this kind of session and check the database exists (once per kind)."""
        try:
            wanted = await self.engine.initial_state(self.endpoint_name, self.key, self.database)
        except InternalQueryError as exc:
            self._error_and_close(self._seq, exc.code, exc.sqlstate, exc.message)
            return
        except BorrowTimeout as exc:
            code, sqlstate = ERRORS[BORROW_TIMEOUT]
            self._error_and_close(self._seq, code, sqlstate, f"{self.engine.proxy_name}: {exc}")
            return
        except BackendUnavailable as exc:
            code, sqlstate = ERRORS[UNAVAILABLE]
            self._error_and_close(self._seq, code, sqlstate, str(exc))
            return
        if self.state == CLOSED:
            return
        self.session.reset(None)
        self.session.wanted = self.engine.shared_state(wanted)
        self._send(self._seq, p.ok_packet(status=self.session.ok_status()))
        self.state = READY
        self.framer.max_packet_size = MAX_CLIENT_PACKET
        if self._changing_user:
            self._changing_user = False
        else:
            self.stats.ClientConnectionsSetupSucceeded += 1
        self.resume_reading()

    # ------------------------------------------------------------------ commands
    def _command(self, seq: int, buf: bytes, start: int, end: int) -> None:
        session = self.session
        if seq != 0 and not session.infile:
            raise ProtocolViolation(f"command packet with sequence id {seq}, expected 0")
        raw = buf[start:end] if (start or end != len(buf)) else buf
        action = session.command(raw, packet_payload(buf, start, end), attached=self.backend is not None)
        kind = action.kind
        if action.new_pins:
            self.engine.record_pins(self, action.new_pins)
        if kind == FORWARD:
            if action.expect >= 0:
                self.send_command(action.data, action.expect, cursor=action.cursor)
            else:
                self.forward(action.data)
        elif kind == REPLY:
            if action.data:
                self.transport.write(action.data)  # type: ignore[union-attr]
        elif kind == QUIT:
            self.close()
        elif kind == KILL:
            self.engine.kill(self, *action.argument)  # type: ignore[misc]
        elif kind == RESET_CONNECTION:
            self._reset_connection()
        elif kind == CHANGE_USER:
            self._change_user(packet_payload(buf, start, end))
        elif kind == REJECT:
            raise ProtocolViolation(action.data.decode())

    def send_command(self, data: bytes, expect: int, *, cursor: bool = False) -> None:
        """Forward a command whose response `expect` tells the backend's scanner how to follow."""
        self.stats.QueryRequests += 1
        self.stats.QueryRequestsNoTLS += 1
        if self.session.outstanding == 1:
            self.request_started = time.monotonic()
        if self.backend is not None and self.pending is None:
            self.backend.scanner.expect(expect, cursor=cursor)
        else:
            self.expects.append((expect, cursor))
        self.forward(data)

    def sync_sql(self, backend: MyBackend) -> Optional[list[tuple[int, bytes]]]:
        """The proxy's own commands that give `backend` this client's session state, or None."""
        session = self.session
        wanted = session.wanted
        applied = backend.applied
        if (applied is wanted or applied == wanted) and (
            not session.reads_last_insert_id or backend.last_insert_id == session.last_insert_id
        ):
            # the common case, checked on every borrow without building anything; an equal state is adopted, so
            # that the next check is a pointer comparison (states are shared, see Engine.shared_state)
            if applied is not wanted:
                backend.applied = wanted
            return None
        plan: list[tuple[int, bytes]] = []
        database = wanted.get("database")
        if database is not None and database != backend.applied.get("database"):
            plan.append((p.COM_INIT_DB, bytes([p.COM_INIT_DB]) + database.encode()))
        sets = sync_sql(wanted, backend.applied)
        if sets is not None:
            plan.append((p.COM_QUERY, sets))
        if self.session.reads_last_insert_id and backend.last_insert_id != self.session.last_insert_id:
            # the statement asks for LAST_INSERT_ID(): make this backend answer with the client's own value
            plan.append((SET_LAST_INSERT_ID, b"%d" % self.session.last_insert_id))
        return plan or None

    async def apply_sync(self, backend: MyBackend, plan: list[tuple[int, bytes]]) -> None:
        for command, payload in plan:
            if command == SET_LAST_INSERT_ID:
                await backend.query(b"SELECT LAST_INSERT_ID(%s)" % payload)
                # recorded only once set: a sync of session variables alone leaves the backend's value as it was
                backend.last_insert_id = int(payload)
            elif command == p.COM_QUERY:
                await backend.query(payload)
            else:
                await backend.command(command, payload)

    def synced(self, backend: MyBackend) -> None:
        backend.applied = self.session.wanted  # shared: neither is ever changed in place

    def invalid_settings(self, exc: InternalQueryError) -> None:
        # e.g. the current database was dropped meanwhile: the command fails, the client stays
        self.fail_requests(UNAVAILABLE, exc.message, None, code=(exc.code, exc.sqlstate))

    def fail_requests(
        self, kind: str, message: str, sqlstate: Optional[str] = None, *, code: Optional[tuple[int, str]] = None
    ) -> None:
        number, state = code or ERRORS[kind]
        self.expects.clear()
        reply = self.session.fail_outstanding(number, state, message)
        if reply:
            self.transport.write(reply)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ responses
    def backend_events(self, events: list) -> None:
        """Called by the attached backend after it forwarded a chunk that completed something."""
        session = self.session
        backend = self.backend
        for kind, status, _end, error in events:
            if kind == RESPONSE_DONE:
                session.response_done(status, bool(error))
                if not error:
                    scanner = backend.scanner  # type: ignore[union-attr]
                    session.record_ok(scanner.last_affected_rows, scanner.last_insert_id)
                    if scanner.last_insert_id:
                        backend.last_insert_id = scanner.last_insert_id  # type: ignore[union-attr]
            elif kind == LOCAL_INFILE:
                session.infile = True
        if session.outstanding <= 0 and not session.infile:
            self._settled()

    def _settled(self) -> None:
        """Every command sent has its complete response: read back changed state, or end the transaction."""
        session = self.session
        if session.refresh_needed and not self._refreshing:
            # cleared now, not when the read-back ends: a SET queued meanwhile must get a read-back of its own
            session.refresh_needed = False
            with_last_insert_id, session.refresh_last_insert_id = session.refresh_last_insert_id, False
            self._refreshing = True
            self.pending = []
            # the client may answer the forwarded OK at once: COM_RESET_CONNECTION or COM_CHANGE_USER must not
            # take the backend away while the read-back is on it, so its next command waits for the read-back
            self.pause_reading()
            self._task = asyncio.ensure_future(
                self._refresh_state(self.backend, with_last_insert_id)  # type: ignore[arg-type]
            )
        elif not self._refreshing:
            self.responses_complete()

    async def _refresh_state(self, backend: MyBackend, with_last_insert_id: bool = False) -> None:
        """Read back the tracked variables after a statement that may have changed them (SET, USE, ...), and the
        LAST_INSERT_ID() after LAST_INSERT_ID(expr)."""
        try:
            rows = await backend.query(READ_STATE_AND_LAST_INSERT_ID_SQL if with_last_insert_id else READ_STATE_SQL)
        except (InternalQueryError, BackendUnavailable) as exc:
            log.warning("could not read session state back from %s: %s; closing it", backend.address, exc)
            self._refreshing = False
            self.pending = None
            if backend.transport is not None:
                backend.transport.abort()  # backend_lost() follows and answers what is queued
            asyncio.get_running_loop().call_soon(self.resume_reading)  # after backend_lost()
            return
        values = rows[0]
        if with_last_insert_id:
            # the client's own value now, and this backend's: a later LAST_INSERT_ID() here needs no sync
            self.session.last_insert_id = backend.last_insert_id = int(values[-1])
            values = values[:-1]
        state = self.engine.shared_state(dict(zip(("database", *TRACKED_VARIABLES), values)))
        self.session.wanted = state
        backend.applied = state
        self._refreshing = False
        pending, self.pending = self.pending, None
        for command, cursor in self.expects:
            backend.scanner.expect(command, cursor=cursor)
        self.expects.clear()
        if pending:
            backend.transport.write(b"".join(pending))  # type: ignore[union-attr]
        elif self.session.outstanding <= 0:
            self.responses_complete()
        self.resume_reading()

    # ------------------------------------------------------------------ session commands
    def _reset_connection(self) -> None:
        backend = self.backend
        if backend is not None:
            self.backend = None
            self.engine.return_backend(self, backend)
        current_database = self.session.wanted.get("database")  # the reset keeps the current schema
        self.session.reset(None)
        self.session.wanted = self.engine.shared_state(dict(self.engine.baseline(self.key), database=current_database))
        self._send(1, p.ok_packet(status=self.session.ok_status()))

    def _change_user(self, payload: bytes) -> None:
        change = p.parse_com_change_user(payload, self.capabilities)
        backend = self.backend
        if backend is not None:
            self.backend = None
            self.engine.return_backend(self, backend)
        self.user = change.username
        self.database = change.database or None
        self.charset = change.charset or self.charset
        self.key = (self.user, self.capabilities & WIRE_CAPABILITIES, self.charset)
        self._changing_user = True
        self._start_auth(change, 0)

    # ------------------------------------------------------------------ closing
    def terminate(self, kind: str, message: str) -> None:
        code, sqlstate = ERRORS[kind]
        seq = self._seq if self.state != READY else 1
        self._error_and_close(seq, code, sqlstate, message)

    def _error_and_close(self, seq: int, code: int, sqlstate: str, message: str) -> None:
        if self.state == CLOSED or self.transport is None:
            return
        try:
            self._send(seq, p.err_packet(code, sqlstate, message))
        finally:
            self.close()
