"""What every engine's client connection shares: borrowing and releasing backends, flow control, closing."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Optional

from ._codec import ClientLane
from .pool import BackendUnavailable, BorrowTimeout, Waiter

if TYPE_CHECKING:
    from .metrics import EndpointStats

log = logging.getLogger("rdsproxy.client")

# Connection states
STARTUP, AUTH, SETUP, READY, CLOSED = range(5)

# Neutral error kinds; each engine maps them to its own codes (SQLSTATE / MySQL error numbers).
BORROW_TIMEOUT = "borrow_timeout"  # no backend within connection_borrow_timeout (client keeps its connection)
UNAVAILABLE = "unavailable"  # no backend could be opened
BACKEND_LOST = "backend_lost"  # the backend died under a request or transaction
SHUTDOWN = "shutdown"  # the proxy is draining
IDLE_TIMEOUT = "idle_timeout"  # idle_client_timeout
AUTH_TIMEOUT = "auth_timeout"  # connection setup took too long
PROTOCOL = "protocol"  # the client broke the wire protocol
INTERNAL_ERROR = "internal"  # a bug in the proxy: never a traceback to the peer


class ClientConnection(ClientLane, asyncio.Protocol):
    """A client connection that holds a backend only while a transaction or a request is in flight.

    The plain path (forward, borrow an idle backend, release it when the answers are complete) is ClientLane's,
    compiled; this class does the rest: waiting, syncing session state, failures and closing.

    Engine subclasses frame and interpret the client's bytes, and implement: `terminate(kind, message)` (send a
    fatal error and close), `fail_requests(kind, message)` (answer in-flight requests with an error; the client
    stays), `sync_sql(backend)` / `synced(backend)` (bring a borrowed backend's session state in line with the
    client's), `invalid_settings(exc)`, and a `session` with `pinned`, `releasable`, `outstanding` and `quiet`.
    """

    __slots__ = ()  # every field is a ClientLane one: typed in the compiled twin

    def __init__(self, engine: Any, endpoint_name: str, stats: EndpointStats) -> None:
        super().__init__()
        self.engine = engine
        self.endpoint_name = endpoint_name
        self.stats = stats
        targets = engine.targets
        self.route = targets.route(endpoint_name) if targets is not None else None
        self.transport: Optional[asyncio.Transport] = None
        self.state = STARTUP
        self.user = ""
        self.key: Any = None
        self.backend: Any = None
        self.pending: Optional[list[bytes]] = None  # requests waiting for a backend
        self._task: Optional[asyncio.Future] = None
        self._waiter: Optional[Waiter] = None  # queued in a pool for a backend
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
        if self._waiter is not None:
            self._waiter.cancel()
            self._waiter = None
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

    # ------------------------------------------------------------------ engine hooks
    def terminate(self, kind: str, message: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def fail_requests(self, kind: str, message: str, sqlstate: Optional[str] = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def sync_sql(self, backend: Any) -> Optional[bytes]:
        return None

    async def apply_sync(self, backend: Any, plan: Any) -> None:
        await backend.query(plan)

    def synced(self, backend: Any) -> None:
        pass

    def invalid_settings(self, exc: Exception) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def authenticating(self) -> bool:
        return self.state == STARTUP or self.state == AUTH

    # ------------------------------------------------------------------ waiting for a backend
    def wait_for_backend(self, pool: Any, backend: Any) -> None:
        """ClientLane could not attach a backend at once: wait for a target (no pool), bring the borrowed one's
        session state in line first, or (no backend, which ClientLane leaves here only for a closing pool) let
        borrow_later answer. The request waits in `pending`."""
        if pool is None:  # no healthy target right now: wait for one
            self._task = asyncio.ensure_future(self._borrow_slow(None))
        elif backend is None:
            self._waiter = pool.borrow_later(self.key, self._borrowed, self.engine.borrow_timeout)
        else:  # its session state must be brought in line first
            self._task = asyncio.ensure_future(self._borrow_slow(backend))

    def _borrowed(self, backend: Any, exc: Optional[BaseException]) -> bool:
        """The pool's answer to this client's borrow: forward what waited, or fail it. Returns: backend taken."""
        self._waiter = None
        if self.state == CLOSED:
            return False
        if exc is not None:
            if isinstance(exc, BorrowTimeout):
                engine = self.engine
                self._fail_pending(
                    BORROW_TIMEOUT,
                    f"{engine.proxy_name}: {exc} (connection_borrow_timeout={engine.borrow_timeout:g} s)",
                )
            else:
                self._fail_pending(UNAVAILABLE, str(exc), getattr(exc, "sqlstate", None))
            return False
        if self.sync_sql(backend) is not None:
            self._task = asyncio.ensure_future(self._borrow_slow(backend))
            return True
        self.attach(backend)
        pending, self.pending = self.pending, None
        if pending:
            backend.transport.write(b"".join(pending) if len(pending) > 1 else pending[0])
        if self.reading_paused:
            self.resume_reading()
        return True

    async def _borrow_slow(self, backend: Any) -> None:
        """Wait for a healthy target (backend None), or bring a borrowed backend's session state in line first."""
        engine = self.engine
        syncing = False
        try:
            if backend is None:
                backend = await engine.borrow(self.endpoint_name, self.key)
            plan = self.sync_sql(backend)
            if plan is not None:
                syncing = True
                try:
                    await self.apply_sync(backend, plan)
                except engine.InternalQueryError as exc:
                    # the client's own settings are invalid: the same error the server would give
                    engine.return_clean(backend)
                    self.pending = None
                    self.invalid_settings(exc)
                    self.resume_reading()
                    return
                self.synced(backend)
                syncing = False
        except BorrowTimeout as exc:
            self._fail_pending(
                BORROW_TIMEOUT,
                f"{engine.proxy_name}: {exc} (connection_borrow_timeout={engine.borrow_timeout:g} s)",
            )
            return
        except BackendUnavailable as exc:
            self._fail_pending(UNAVAILABLE, str(exc), exc.sqlstate)
            return
        except asyncio.CancelledError:
            if backend is not None and backend.client is None:
                if syncing:
                    engine.discard_backend(backend)  # our statement is still in flight on it: not reusable
                else:
                    engine.return_clean(backend)
            raise
        if self.state == CLOSED:
            engine.return_clean(backend)
            return
        self.attach(backend)
        pending, self.pending = self.pending, None
        if pending:
            backend.transport.write(b"".join(pending) if len(pending) > 1 else pending[0])
        self.resume_reading()

    def _fail_pending(self, kind: str, message: str, sqlstate: Optional[str] = None) -> None:
        self.pending = None
        if self.state == CLOSED:
            return
        self.fail_requests(kind, message, sqlstate)
        self.resume_reading()

    def backend_lost(self, backend: Any) -> None:
        """The attached backend's connection died (server restart, killed session, network)."""
        self.backend = None
        self.engine.discard_backend(backend)
        if self.state == CLOSED:
            return
        if self.session.pinned:
            # its session state (temporary tables, prepared statements, ...) is gone: don't pretend otherwise
            self.terminate(BACKEND_LOST, "the database connection of this pinned session was lost")
            return
        if not backend.scanner.at_boundary:
            self.close()  # a response was cut in the middle: the client's stream cannot be repaired
            return
        reason = f" (the server said: {backend.fatal_reason})" if backend.fatal_reason else ""
        self.fail_requests(
            BACKEND_LOST, f"the database connection was lost{reason}; the current transaction was rolled back"
        )

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
