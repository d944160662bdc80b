"""One PostgreSQL client connection: startup and auth by the proxy, then transaction-pooled forwarding."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Optional, Union

from .._codec import ClientFramer, ClientLane, parse_startup
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
from ..protocol.pg import messages
from ..protocol.pg.auth import Md5Server, ScramServer
from ..protocol.pg.session import PgSession
from .backend import InternalQueryError, PgBackend

if TYPE_CHECKING:
    from ..metrics import EndpointStats
    from .engine import PgEngine

log = logging.getLogger("rdsproxy.client")

_PASSWORD = ord("p")

# The largest message a client may send before it is authenticated (SCRAM and MD5 messages are tiny), and after.
MAX_SETUP_MESSAGE = 64 * 1024
MAX_CLIENT_MESSAGE = 256 * 1024 * 1024

SQLSTATES = {
    BORROW_TIMEOUT: "53300",
    UNAVAILABLE: "08006",
    BACKEND_LOST: "08006",
    SHUTDOWN: "57P01",
    IDLE_TIMEOUT: "57P05",
    AUTH_TIMEOUT: "08P01",
    PROTOCOL: "08P01",
    INTERNAL_ERROR: "XX000",
}


_AUTHENTICATION_OK = messages.authentication_ok()
_READY_IDLE = messages.ready_for_query(b"I")


def welcome_block(reported: dict[str, str], user: str) -> bytes:
    """The ParameterStatus messages a new client is welcomed with (the server's, and its own settings)."""
    statuses = [messages.parameter_status(k, v) for k, v in reported.items() if k != "session_authorization"]
    statuses.append(messages.parameter_status("session_authorization", user))
    return b"".join(statuses)


class PgClient(ClientConnection):
    """A PostgreSQL client connection: startup and auth by the proxy, then transaction-pooled forwarding."""

    __slots__ = ("database", "_auth", "_auth_failed_user", "process_id", "secret_key")

    def __init__(self, engine: PgEngine, endpoint_name: str, stats: EndpointStats) -> None:
        super().__init__(engine, endpoint_name, stats)
        self.framer = ClientFramer(MAX_SETUP_MESSAGE)
        self.session = PgSession(exclude_variable_sets=engine.exclude_variable_sets)
        # the settings ClientLane compares with a backend's: always the session's own dict, shared once the client is
        # authenticated (Engine.shared_state) and from then on replaced, never changed in place
        self.wanted = self.session.wanted
        self.database = ""
        self.backend: Optional[PgBackend] = None
        self._auth: Optional[Union[ScramServer, Md5Server]] = None
        self._auth_failed_user: Optional[str] = None
        self.process_id = 0
        self.secret_key = 0

    @property
    def connection_id(self) -> int:
        return self.process_id

    # ------------------------------------------------------------------ asyncio.Protocol
    # plain requests in the READY state are accounted and forwarded by the compiled lane; the rest comes here
    data_received = ClientLane.pg_data_received

    def data_received_full(self, data: bytes) -> None:
        try:
            buf, msgs = self.framer.feed(data)
            if not msgs:
                return
            if self.state == READY:
                self._requests(buf, msgs)
            else:
                self._setup_messages(buf, msgs)
        except Exception as exc:  # noqa: BLE001 - mapped to the client's error by data_failed
            self.data_failed(exc)

    def data_failed(self, exc: Exception) -> None:
        """Handling the client's bytes raised: end this connection with the error it deserves."""
        if isinstance(exc, ProtocolViolation):
            self.terminate(PROTOCOL, f"protocol violation: {exc}")
        elif isinstance(exc, AuthenticationFailed):
            self._auth_failed()
        else:  # a proxy bug must end this connection only, and quietly for the peer
            log.error("internal error while serving client %d; closing it", self.process_id, exc_info=exc)
            self.terminate(INTERNAL_ERROR, "internal error in the proxy; the connection was closed")

    def eof_received(self) -> bool:
        if self.framer.pending:
            # the client half-closed in the middle of a message: say why before closing, it may still read
            self.terminate(PROTOCOL, "protocol violation: the client closed its side in the middle of a message")
        return False  # close the transport

    # ------------------------------------------------------------------ steady state
    def _requests(self, buf: bytes, msgs: list) -> None:
        session = self.session
        was_quiet = session.outstanding == 0
        batch = session.client_messages(buf, msgs)
        if batch.requests:
            self.stats.QueryRequests += batch.requests
            self.stats.QueryRequestsNoTLS += batch.requests
        if batch.new_pins:
            self.engine.record_pins(self, batch.new_pins)
        if batch.reply:
            self.transport.write(batch.reply)  # type: ignore[union-attr]
        if was_quiet and session.outstanding > 0:
            self.request_started = time.monotonic()
        if batch.forward is not None:
            self.forward(batch.forward)
        if batch.terminate:
            self.close()

    def backend_events(self, events: list) -> None:
        """Called by the attached backend after it forwarded a chunk with state-changing messages."""
        session = self.session
        backend = self.backend
        backend.applied = session.server_events(events, backend.applied)  # type: ignore[union-attr]
        if session.wanted is not self.wanted:  # a SET (or its rollback) changed a tracked parameter
            session.wanted = self.wanted = self.engine.shared_state(session.wanted)
        if session.outstanding <= 0:
            self.responses_complete()

    def sync_sql(self, backend: PgBackend) -> Optional[bytes]:
        applied = backend.applied
        wanted = self.session.wanted
        if applied is wanted or applied == wanted:  # the common case, checked without building anything
            backend.applied = wanted  # adopted, so that the next check is a pointer comparison
            return None
        return self.session.sync_statements(applied)

    def synced(self, backend: PgBackend) -> None:
        backend.applied = self.session.wanted  # shared: neither is ever changed in place

    def invalid_settings(self, exc: InternalQueryError) -> None:
        self.fatal(exc.fields.get("C", "22023"), exc.fields.get("M", "invalid session setting"))

    def fail_requests(self, kind: str, message: str, sqlstate: Optional[str] = None) -> None:
        if kind != UNAVAILABLE or not sqlstate or not sqlstate.startswith("08"):
            sqlstate = SQLSTATES[kind]
        reply = self.session.fail_outstanding(sqlstate, message)
        if reply:
            self.transport.write(reply)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ startup and authentication
    def _setup_messages(self, buf: bytes, msgs: list) -> None:
        for mtype, start, end in msgs:
            if self.state == STARTUP and mtype == 0:
                self._startup_packet(buf[start:end])
            elif self.state == AUTH and mtype == _PASSWORD:
                self._password_message(buf[start:end])
            elif self.state == CLOSED:
                return
            else:
                raise ProtocolViolation(f"unexpected message {chr(mtype)!r} during connection setup")

    def _startup_packet(self, payload: bytes) -> None:
        code, body = parse_startup(payload)
        if code == messages.SSL_REQUEST_CODE or code == messages.GSSENC_REQUEST_CODE:
            self.transport.write(b"N")  # type: ignore[union-attr]  # TLS arrives with its own issue
            return
        if code == messages.CANCEL_REQUEST_CODE:
            self.engine.cancel(*body)
            self.close()
            return
        params: dict[str, str] = body  # type: ignore[assignment]  # a new dict: ours to change
        if params.get("replication", "false").lower() not in ("false", "0", "off", "no"):
            self.fatal("0A000", "replication connections are not supported through rdsproxy")
            return
        if "options" in params:
            params.update(messages.parse_options(params.pop("options")))
        self.user = params["user"]
        self.database = params.get("database") or self.engine.default_database
        self.key = (self.user, self.database)
        self.session.set_startup_params(params)
        unsupported = [k for k in params if k.startswith("_pq_.")]
        if code != messages.PROTOCOL_3_0 or unsupported:
            self.transport.write(messages.negotiate_protocol_version(0, unsupported))  # type: ignore[union-attr]
        self.state = AUTH
        self._auth = self.engine.authenticator_for(self.user)
        if self._auth is None:
            # unknown user: run the same exchange against a throwaway secret so the answer reveals nothing
            self._auth_failed_user = self.user
            self._auth = self.engine.decoy_authenticator(self.user)
        self.transport.write(self._auth.start())  # type: ignore[union-attr]

    def _password_message(self, body: bytes) -> None:
        auth = self._auth
        if isinstance(auth, Md5Server):
            auth.check(body)
            self._authenticated()
            return
        reply = auth.handle(body)  # type: ignore[union-attr]
        if auth.done:  # type: ignore[union-attr]
            self._authenticated(reply)  # SASL final and the welcome leave in one write
        else:
            self.transport.write(reply)  # type: ignore[union-attr]

    def _auth_failed(self) -> None:
        self.stats.ClientConnectionsSetupFailedAuth += 1
        self.fatal("28P01", f'password authentication failed for user "{self.user}"')

    def _authenticated(self, last_auth_reply: bytes = b"") -> None:
        if self._auth_failed_user is not None:
            raise AuthenticationFailed("unknown user")
        self._auth = None
        self.state = SETUP
        self.key = self.engine.shared_key(self.key)
        self.user, self.database = self.key
        self.session.wanted = self.wanted = self.engine.shared_state(self.session.wanted)  # startup settings, final
        block = self.engine.cached_welcome_block(self.endpoint_name, self.key, self.session.wanted)
        if block is not None:
            self._send_welcome(block, last_auth_reply)
            return
        if last_auth_reply:
            self.transport.write(last_auth_reply)  # type: ignore[union-attr]
        self.pause_reading()
        self._task = asyncio.ensure_future(self._prepare_welcome())

    async def _prepare_welcome(self) -> None:
        try:
            welcome = await self.engine.prepare_welcome(self.endpoint_name, self.key, self.session.wanted)
        except BackendUnavailable as exc:
            if exc.fatal_fields:
                fields = exc.fatal_fields
                self.fatal(fields.get("C", "08006"), fields.get("M", str(exc)), detail=fields.get("D"))
            else:
                self.fatal(exc.sqlstate, str(exc))
            return
        except InternalQueryError as exc:
            # an invalid startup setting: PostgreSQL refuses such a connection, and so do we
            self.fatal(exc.fields.get("C", "22023"), exc.fields.get("M", "invalid startup parameter"))
            return
        except BorrowTimeout as exc:
            engine = self.engine
            self.fatal("53300", f"{engine.proxy_name}: {exc} (connection_borrow_timeout={engine.borrow_timeout:g} s)")
            return
        if self.state != CLOSED:
            self._welcome(welcome)
            self.resume_reading()

    def _welcome(self, reported: dict[str, str]) -> None:
        self._send_welcome(welcome_block(reported, self.user))

    def _send_welcome(self, parameter_statuses: bytes, last_auth_reply: bytes = b"") -> None:
        self.process_id, self.secret_key = self.engine.register_cancel_key(self)
        self.transport.write(  # type: ignore[union-attr]
            last_auth_reply
            + _AUTHENTICATION_OK
            + parameter_statuses
            + messages.backend_key_data(self.process_id, self.secret_key)
            + _READY_IDLE
        )
        self.state = READY
        self.framer.max_message_size = MAX_CLIENT_MESSAGE
        self.stats.ClientConnectionsSetupSucceeded += 1

    # ------------------------------------------------------------------ closing
    def terminate(self, kind: str, message: str) -> None:
        self.fatal(SQLSTATES[kind], message)

    def fatal(self, sqlstate: str, message: str, *, detail: Optional[str] = None) -> None:
        """Send a FATAL error and close: the client's problem ends only this connection."""
        if self.state == CLOSED or self.transport is None:
            return
        try:
            self.transport.write(messages.error_response("FATAL", sqlstate, message, detail=detail))
        finally:
            self.close()
