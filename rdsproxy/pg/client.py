"""One PostgreSQL client connection: startup and auth by the proxy, then transaction-pooled forwarding."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Optional, Union

from .._codec import ClientFramer
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

STARTUP, AUTH, SETUP, READY, CLOSED = range(5)
_PASSWORD = ord("p")

# The largest message a client may send before it is authenticated (SCRAM and MD5 messages are tiny), and after.
MAX_SETUP_MESSAGE = 64 * 1024
MAX_CLIENT_MESSAGE = 256 * 1024 * 1024


class PgClient(asyncio.Protocol):
    """A client connection. Holds a backend only while a transaction or a request is in flight."""

    def __init__(self, engine: PgEngine, endpoint_name: str, stats: EndpointStats) -> None:
        self.engine = engine
        self.endpoint_name = endpoint_name
        self.stats = stats
        self.transport: Optional[asyncio.Transport] = None
        self.state = STARTUP
        self.framer = ClientFramer(MAX_SETUP_MESSAGE)
        self.session = PgSession(exclude_variable_sets=engine.exclude_variable_sets)
        self.user = ""
        self.database = ""
        self.key = ("", "")
        self.backend: Optional[PgBackend] = None
        self.pending: Optional[list[bytes]] = None  # requests waiting for a backend
        self._task: Optional[asyncio.Future] = None
        self._auth: Optional[Union[ScramServer, Md5Server]] = None
        self._auth_failed_user: Optional[str] = None
        self.process_id = 0
        self.secret_key = 0
        self.last_activity = self.connected_at = time.monotonic()
        self.request_started = 0.0
        self.db_request_started = 0.0
        self.reading_paused = False
        self.writing_paused = False
        self.draining = False

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stats.ClientConnectionsReceived += 1
        self.stats.ClientConnections += 1
        self.stats.ClientConnectionsNoTLS += 1
        self.engine.clients.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        try:
            buf, msgs = self.framer.feed(data)
            if not msgs:
                return
            if self.state == READY:
                self._requests(buf, msgs)
            else:
                self._setup_messages(buf, msgs)
        except ProtocolViolation as exc:
            self.fatal("08P01", f"protocol violation: {exc}")
        except AuthenticationFailed:
            self._auth_failed()
        except Exception:  # noqa: BLE001 - a proxy bug must end this connection only, and quietly for the peer
            log.exception("internal error while serving client %d; closing it", self.process_id)
            self.fatal("XX000", "internal error in the proxy; the connection was closed")

    def eof_received(self) -> bool:
        if self.framer.pending:
            # the client half-closed in the middle of a message: say why before closing, it may still read
            self.fatal("08P01", "protocol violation: the client closed its side in the middle of a message")
        return False  # close the transport

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.stats.ClientConnections -= 1
        self.stats.ClientConnectionsNoTLS -= 1
        self.stats.ClientConnectionsClosed += 1
        self.engine.client_gone(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        backend = self.backend
        if backend is not None:
            self.backend = None
            self.engine.return_backend(self, backend)

    def pause_writing(self) -> None:
        # the client reads slower than the server sends: stop reading the server (bounded memory)
        self.writing_paused = True
        if self.backend is not None:
            self.backend.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.backend is not None:
            self.backend.resume_reading()

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and self.state != CLOSED:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and self.state != CLOSED:
            self.reading_paused = False
            self.transport.resume_reading()

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
        forward = batch.forward
        if forward is not None:
            backend = self.backend
            if backend is not None:
                backend.transport.write(forward)  # type: ignore[union-attr]
            elif self.pending is not None:
                self.pending.append(forward)
            else:
                self._borrow_and_send(forward)
        if batch.terminate:
            self.close()

    def _borrow_and_send(self, data: bytes) -> None:
        pool = self.engine.pool_for(self.endpoint_name)
        backend = pool.try_borrow(self.key) if pool is not None else None
        if backend is not None and self.session.sync_statements(backend.applied) is None:
            self._attach(backend)
            backend.transport.write(data)  # type: ignore[union-attr]
            return
        self.pending = [data]
        self.pause_reading()
        self._task = asyncio.ensure_future(self._borrow_slow(backend))

    async def _borrow_slow(self, backend: Optional[PgBackend]) -> None:
        engine = self.engine
        syncing = False
        try:
            if backend is None:
                backend = await engine.borrow(self.endpoint_name, self.key)
            sql = self.session.sync_statements(backend.applied)
            if sql is not None:
                syncing = True
                try:
                    await backend.query(sql)
                except InternalQueryError as exc:
                    # the client's own startup settings are invalid: the same error PostgreSQL would give
                    engine.return_clean(backend)
                    self.pending = None
                    self.fatal(exc.fields.get("C", "22023"), exc.fields.get("M", "invalid session setting"))
                    return
                backend.applied = dict(self.session.wanted)
                syncing = False
        except BorrowTimeout as exc:
            self._fail_pending(
                "53300",
                f"{engine.proxy_name}: {exc} (connection_borrow_timeout={engine.borrow_timeout:g} s)",
            )
            return
        except BackendUnavailable as exc:
            self._fail_pending(exc.sqlstate if exc.sqlstate.startswith("08") else "08006", str(exc))
            return
        except asyncio.CancelledError:
            if backend is not None and backend.client is None:
                if syncing:
                    engine.discard_backend(backend)  # our SET is still in flight on it: not reusable
                else:
                    engine.return_clean(backend)
            raise
        if self.state == CLOSED:
            engine.return_clean(backend)
            return
        self._attach(backend)
        pending, self.pending = self.pending, None
        if pending:
            backend.transport.write(b"".join(pending) if len(pending) > 1 else pending[0])  # type: ignore[union-attr]
        self.resume_reading()

    def _fail_pending(self, sqlstate: str, message: str) -> None:
        self.pending = None
        if self.state == CLOSED:
            return
        reply = self.session.fail_outstanding(sqlstate, message)
        if reply:
            self.transport.write(reply)  # type: ignore[union-attr]
        self.resume_reading()

    def _attach(self, backend: PgBackend) -> None:
        self.backend = backend
        backend.attach(self)
        self.db_request_started = time.monotonic()
        if self.writing_paused:
            backend.pause_reading()

    def backend_events(self, events: list) -> None:
        """Called by the attached backend after it forwarded a chunk with state-changing messages."""
        backend = self.backend
        session = self.session
        session.server_events(events, backend.applied)  # type: ignore[union-attr]
        if session.outstanding <= 0:
            now = time.monotonic()
            self.last_activity = now  # a long query is activity: idleness starts when its answer is complete
            self.stats.QueryResponseLatency.observe(int((now - self.request_started) * 1_000_000))
            self.engine.observe_db_latency(self, int((now - self.db_request_started) * 1_000_000))
            self.db_request_started = now
            if session.releasable:
                self.backend = None
                backend.detach()  # type: ignore[union-attr]
                self.engine.return_clean(backend)
                if self.draining:
                    self.fatal("57P01", "terminating connection because the proxy is shutting down")

    def backend_lost(self, backend: PgBackend) -> None:
        """The attached backend's connection died (server restart, pg_terminate_backend, network)."""
        self.backend = None
        self.engine.discard_backend(backend)
        if self.state == CLOSED:
            return
        if self.session.pinned:
            # its session state (temp tables, prepared statements, ...) is gone: don't pretend otherwise
            self.fatal("08006", "the database connection of this pinned session was lost")
            return
        if not backend.scanner.at_boundary:
            self.close()  # a response was cut in the middle: the client's stream cannot be repaired
            return
        reason = f" (the server said: {backend.fatal_reason})" if backend.fatal_reason else ""
        reply = self.session.fail_outstanding(
            "08006", f"the database connection was lost{reason}; the current transaction was rolled back"
        )
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
        packet = messages.parse_startup_packet(payload)
        if isinstance(packet, (messages.SSLRequest, messages.GSSENCRequest)):
            self.transport.write(b"N")  # type: ignore[union-attr]  # TLS arrives with its own issue
            return
        if isinstance(packet, messages.CancelRequest):
            self.engine.cancel(packet.process_id, packet.secret)
            self.close()
            return
        params = dict(packet.params)
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
        if packet.version != messages.PROTOCOL_3_0 or unsupported:
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
        self.transport.write(reply)  # type: ignore[union-attr]
        if auth.done:  # type: ignore[union-attr]
            self._authenticated()

    def _auth_failed(self) -> None:
        self.stats.ClientConnectionsSetupFailedAuth += 1
        self.fatal("28P01", f'password authentication failed for user "{self.user}"')

    def _authenticated(self) -> None:
        if self._auth_failed_user is not None:
            raise AuthenticationFailed("unknown user")
        self._auth = None
        self.state = SETUP
        welcome = self.engine.cached_welcome(self.endpoint_name, self.key, self.session.wanted)
        if welcome is not None:
            self._welcome(welcome)
            return
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
        reported = dict(reported)
        reported["session_authorization"] = self.user
        self.process_id, self.secret_key = self.engine.register_cancel_key(self)
        out = [messages.authentication_ok()]
        out.extend(messages.parameter_status(k, v) for k, v in reported.items())
        out.append(messages.backend_key_data(self.process_id, self.secret_key))
        out.append(messages.ready_for_query(b"I"))
        self.transport.write(b"".join(out))  # type: ignore[union-attr]
        self.state = READY
        self.framer.max_message_size = MAX_CLIENT_MESSAGE
        self.stats.ClientConnectionsSetupSucceeded += 1

    # ------------------------------------------------------------------ closing
    def fatal(self, sqlstate: str, message: str, *, detail: Optional[str] = None) -> None:
        """Send a FATAL error and close: the client's problem ends only this connection."""
        if self.state == CLOSED or self.transport is None:
            return
        try:
            self.transport.write(messages.error_response("FATAL", sqlstate, message, detail=detail))
        finally:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
