"""The per-transaction data path in pure Python: borrow, forward and release backends (twin of lane_c).

ClientConnection, BackendConnection and TargetPool are subclasses of these classes. Whatever is not the plain
case (queueing for a backend, syncing session state, pins, errors) calls back into those subclasses.

Subclasses change behaviour through those hooks only: the compiled twin calls its own forward, attach,
try_borrow, give_back and ReadyForQuery accounting directly, so overriding them in Python would be ignored.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from .pgframe_py import PgRequestState

__all__ = [
    "STATE_NUMBERS",
    "BackendLane",
    "ClientLane",
    "EndpointCounters",
    "PoolLane",
    "Route",
    "TargetCounters",
    "Waiter",
    "monotonic",
]

# Connection states, the same numbers as rdsproxy.client and rdsproxy.backend (a test holds them equal).
CLIENT_READY = 3
CLIENT_CLOSED = 4
_PG_TERMINATE = b"X\x00\x00\x00\x04"  # PostgreSQL's Terminate message, whole
BACKEND_IDLE = 1
BACKEND_ATTACHED = 2

TRANSACTION_IDLE = 73  # ReadyForQuery status 'I'
MY_COM_QUERY = 0x03
MY_AFFECTED_SHIFT = 17  # myframe's packing of feed_done's answer: affected rows + 1 above this bit

# the same, for the test that holds them equal to rdsproxy.client's and rdsproxy.backend's
STATE_NUMBERS = {
    "client READY": CLIENT_READY,
    "client CLOSED": CLIENT_CLOSED,
    "backend IDLE": BACKEND_IDLE,
    "backend ATTACHED": BACKEND_ATTACHED,
}

SHUTDOWN = "shutdown"  # rdsproxy.client.SHUTDOWN

monotonic = time.monotonic


class EndpointCounters:
    """The numbers of an endpoint that every transaction bumps; the base of rdsproxy.metrics.EndpointStats."""

    __slots__ = ("QueryRequests", "QueryRequestsNoTLS", "QueryResponseLatency")


class TargetCounters:
    """The numbers of a target that every transaction bumps; the base of rdsproxy.metrics.TargetStats."""

    __slots__ = (
        "DatabaseConnectionRequests",
        "DatabaseConnectionsCurrentlyBorrowed",
        "DatabaseConnectionsBorrowLatency",
        "QueryDatabaseResponseLatency",
    )


class Route:
    """The pool serving an endpoint's borrows now, kept current by rdsproxy.targets (None: ask Targets.pool_for)."""

    __slots__ = ("pool",)

    def __init__(self) -> None:
        self.pool: Optional[PoolLane] = None


class ClientLane:
    """A client connection's data-path state; the base of rdsproxy.client.ClientConnection."""

    # One of these exists per client connection, most of them idle: slots keep each one small.
    __slots__ = (
        "engine",
        "endpoint_name",
        "stats",
        "route",
        "transport",
        "state",
        "user",
        "key",
        "backend",
        "pending",
        "session",
        "framer",
        "wanted",
        "_task",
        "_waiter",
        "last_activity",
        "connected_at",
        "request_started",
        "db_request_started",
        "reading_paused",
        "writing_paused",
        "draining",
        "expects",
        "_refreshing",
    )

    def __init__(self) -> None:
        # the compiled twin starts every field at its type's zero; so does this one
        self.engine = self.endpoint_name = self.stats = self.route = self.transport = self.user = self.key = None
        self.backend = self.pending = self.session = self.framer = self.wanted = self._task = self._waiter = None
        self.state = 0
        self.last_activity = self.connected_at = self.request_started = self.db_request_started = 0.0
        self.reading_paused = self.writing_paused = self.draining = False
        self.expects: Optional[list] = None  # MySQL: (command, cursor) of requests no backend's scanner expects yet
        self._refreshing = False  # MySQL: the proxy reads session state back on the backend (MyClient)

    # ------------------------------------------------------------------ forwarding requests
    def forward(self, data: bytes) -> None:
        """Send request bytes to this client's backend, borrowing one first when it has none."""
        if self.pending is not None:
            self.pending.append(data)
            # A client that keeps sending while it waits is stopped here, which bounds what it can queue. Not
            # earlier: pausing every waiting client costs two epoll_ctl calls per borrow when the pool is busy.
            self.pause_reading()  # type: ignore[attr-defined]
        elif self.backend is not None:
            self.backend.transport.write(data)
        else:
            self._borrow_and_send(data)

    def _borrow_and_send(self, data: bytes) -> None:
        pool = self.route.pool if self.route is not None else None
        backend = None
        if pool is None:
            pool = self.engine.targets.pool_for(self.endpoint_name)
        if pool is not None:
            backend = pool.try_borrow(self.key)
            if backend is not None and self._in_sync(backend):
                self.attach(backend)
                backend.transport.write(data)
                return
        self.pending = [data]
        if pool is not None and backend is None and not pool._closed:
            # none idle: queue in the pool, which hands the next free backend straight to _take
            self._waiter = pool._enqueue(self, self.key, self.engine.borrow_timeout)
        else:
            self.wait_for_backend(pool, backend)  # type: ignore[attr-defined]

    def _take(self, backend: BackendLane) -> None:
        # ClientConnection._borrowed's common case: the queued requests leave at once on the handed-over backend
        self._waiter = None
        self.attach(backend)
        pending = self.pending
        self.pending = None
        if pending:
            backend.transport.write(b"".join(pending) if len(pending) > 1 else pending[0])
        if self.reading_paused:
            self.resume_reading()  # type: ignore[attr-defined]

    def _in_sync(self, backend: BackendLane) -> bool:
        wanted = self.wanted
        if wanted is not None:
            # PostgreSQL's settings dicts are shared and never changed in place (Engine.shared_state): the same
            # object is the same settings, and an equal one is adopted so that the next check is a pointer compare
            if backend.applied is wanted:
                return True
            if backend.applied == wanted:
                backend.applied = wanted
                return True
            return False
        return self.sync_sql(backend) is None  # type: ignore[attr-defined]

    def attach(self, backend: BackendLane) -> None:
        """Make `backend` this client's: the server's replies go straight to the client from now on."""
        self.backend = backend
        backend.client = self
        backend.state = BACKEND_ATTACHED
        self.db_request_started = time.monotonic()
        if self.writing_paused:
            backend.pause_reading()
        if self.expects:
            # the replies to the requests queued meanwhile are what this backend's scanner must now expect
            scanner = backend.scanner
            for command, cursor in self.expects:
                scanner.expect(command, cursor=cursor)
            del self.expects[:]

    # ------------------------------------------------------------------ answers complete
    def responses_complete(self) -> None:
        """Every request in flight has its answer: account latencies, release the backend if the session allows."""
        now = time.monotonic()
        self.last_activity = now  # a long query is activity: idleness starts when its answer is complete
        self.stats.QueryResponseLatency.observe(int((now - self.request_started) * 1_000_000))
        backend = self.backend
        if backend is None:
            return
        pool = backend.pool
        pool.stats.QueryDatabaseResponseLatency.observe(int((now - self.db_request_started) * 1_000_000))
        self.db_request_started = now
        if self.session.releasable:
            self.backend = None
            if backend.reading_paused:
                backend.detach()
            else:
                backend.client = None
            pool.give_back(backend)
            if self.draining:
                self.terminate(SHUTDOWN, "terminating connection because the proxy is shutting down")  # type: ignore

    # ------------------------------------------------------------------ PostgreSQL
    def pg_data_received(self, data: bytes) -> None:
        """PgClient.data_received: plain requests accounted and forwarded here; the rest by data_received_full."""
        self.last_activity = now = time.monotonic()
        if self.state == CLIENT_READY:
            try:
                session = self.session
                was_quiet = session.outstanding == 0
                requests = session.take_plain(self.framer, data)
                if requests >= 0:
                    if requests:
                        stats = self.stats
                        stats.QueryRequests += requests
                        stats.QueryRequestsNoTLS += requests
                    if was_quiet and session.outstanding > 0:
                        self.request_started = now
                    self.forward(data)
                    return
            except Exception as exc:  # noqa: BLE001 - a proxy bug ends this connection only, quietly for the peer
                self.data_failed(exc)  # type: ignore[attr-defined]
                return
            # checked once take_plain refused the chunk, so plain requests never pay for the comparison
            if data == _PG_TERMINATE and not self.framer.pending:
                self.close()  # type: ignore[attr-defined]  # a lone Terminate: nothing to forward or account
                return
        self.data_received_full(data)  # type: ignore[attr-defined]

    def pg_ready_for_query(self, ready: int) -> None:
        """The attached backend forwarded a chunk whose only news is ReadyForQuery.

        `ready` is ServerScanner.feed_ready's answer: how many (above the low byte) and the last status (in it).
        """
        session = self.session
        if not isinstance(session, PgRequestState):
            raise TypeError(f"a PostgreSQL session was expected, not {type(session).__name__}")
        session.outstanding -= ready >> 8
        session.status = ready & 0xFF
        if session.outstanding <= 0:
            self.responses_complete()

    # ------------------------------------------------------------------ MySQL
    def my_data_received(self, data: bytes) -> None:
        """MyClient.data_received: a lone plain command accounted (as MySession.command would) and forwarded
        here; the rest by data_received_full."""
        self.last_activity = now = time.monotonic()
        if self.state == CLIENT_READY:
            try:
                session = self.session
                if session.failing is None and not session.infile:
                    taken = self.framer.take_command(data)
                    if taken >= 0:
                        command = taken & 0xFF
                        cursor = taken > 0xFF
                        if command == MY_COM_QUERY:
                            session.reads_last_insert_id = False
                        session.outstanding += 1
                        self.stats.QueryRequests += 1
                        self.stats.QueryRequestsNoTLS += 1
                        if session.outstanding == 1:
                            self.request_started = now
                        backend = self.backend
                        if backend is not None and self.pending is None:
                            backend.scanner.expect(command, cursor=cursor)
                            backend.transport.write(data)
                        else:
                            self.expects.append((command, cursor))  # type: ignore[attr-defined]
                            self.forward(data)
                        return
            except Exception as exc:  # noqa: BLE001 - a proxy bug ends this connection only, quietly for the peer
                self.data_failed(exc)  # type: ignore[attr-defined]
                return
        self.data_received_full(data)  # type: ignore[attr-defined]

    def my_response_ok(self, done: int) -> None:
        """The attached backend forwarded a chunk whose only news is one response that ended without error and
        without a last insert id (MyResponseScanner.feed_done's packed answer `done`)."""
        session = self.session
        session.outstanding -= 1
        session.status = done & 0xFFFF
        session.row_count = (done >> MY_AFFECTED_SHIFT) - 1  # as record_ok would (the insert id is 0)
        if session.outstanding <= 0 and not session.infile:
            if session.refresh_needed or self._refreshing:  # type: ignore[attr-defined]
                self._settled()  # type: ignore[attr-defined]
            else:
                self.responses_complete()


class BackendLane:
    """A pooled server connection's data-path state; the base of rdsproxy.backend.BackendConnection."""

    __slots__ = (
        "address",
        "key",
        "owner",
        "pool",
        "transport",
        "state",
        "client",
        "idle_since",
        "broken",
        "reading_paused",
        "scanner",
        "applied",
        "_waiter",
        "__dict__",  # engine subclasses keep their own, less used, fields here
        "__weakref__",
    )

    def __init__(self) -> None:
        self.address = self.key = self.owner = self.pool = self.transport = None
        self.client = self.scanner = self.applied = self._waiter = None
        self.state = 0
        self.idle_since = 0.0
        self.broken = self.reading_paused = False

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def detach(self) -> None:
        self.client = None
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------------ PostgreSQL
    def pg_data_received(self, data: bytes) -> None:
        """PgBackend.data_received: while attached, forward first, then account for what changes state."""
        client: Optional[Any] = self.client
        if client is None:
            self.data_received_unattached(data)  # type: ignore[attr-defined]
            return
        try:
            ready = self.scanner.feed_ready(data)
            if ready >= 0:  # the hot path: nothing but (maybe) ReadyForQuery in this chunk
                client.transport.write(data)
                if ready:
                    client.pg_ready_for_query(ready)
                return
            self.forward_events(client, data)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - never leave a half-handled backend in service
            self.forwarding_failed(exc)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ MySQL
    def my_data_received(self, data: bytes) -> None:
        """MyBackend.data_received: while attached, forward first, then account for the response's end."""
        client: Optional[Any] = self.client
        if client is None:
            self.data_received_unattached(data)  # type: ignore[attr-defined]
            return
        try:
            scanner = self.scanner
            done = scanner.feed_done(data)
            client.transport.write(data)
            if done > 0:  # the hot path: this chunk ended one response with an OK or a result set
                client.my_response_ok(done)
            elif done < 0:
                client.backend_events(scanner.take_events())
        except Exception as exc:  # noqa: BLE001 - never leave a half-handled backend in service
            self.forwarding_failed(exc)  # type: ignore[attr-defined]


class Waiter:
    """A queued borrow: `deliver(backend, None)` or `deliver(None, exc)` is called once, synchronously.

    `deliver` returns whether it took the backend (False: its borrower went away meanwhile, offer it to the next).
    A ClientLane's waiter delivers to that client (the pool's hot path hands backends to it directly); any other
    borrower's, to its `callback`.
    """

    __slots__ = ("key", "callback", "client", "enqueued", "deadline", "timeout", "pool")

    def __init__(
        self, key: Any, callback: Any, enqueued: float, timeout: float, pool: Any, client: Optional[ClientLane] = None
    ) -> None:
        self.key = key
        self.callback = callback
        self.client = client
        self.enqueued = float(enqueued)
        self.timeout = float(timeout)
        self.deadline = self.enqueued + self.timeout
        self.pool = pool

    def deliver(self, backend: Any, exc: Optional[BaseException]) -> Any:
        if self.client is not None:
            return self.client._borrowed(backend, exc)  # type: ignore[attr-defined]
        return self.callback(backend, exc)

    def cancel(self) -> None:
        """The borrower no longer wants a backend (it closed)."""
        self.pool._drop_waiter(self)


class PoolLane:
    """A target pool's idle backends, waiters and counters; the base of rdsproxy.pool.TargetPool."""

    __slots__ = (
        "_idle",
        "_idle_count",
        "_borrowed",
        "_total",
        "limit",
        "_waiters",
        "_expiry",
        "_expiry_at",
        "_closed",
        "stats",
        "__dict__",
        "__weakref__",
    )

    def __init__(self) -> None:
        self._idle: Any = None
        self._idle_count = self._borrowed = self._total = self.limit = 0
        self._waiters: Any = None
        self._expiry: Any = None
        self._expiry_at = 0.0
        self._closed = False
        self.stats: Any = None

    def try_borrow(self, key: Any) -> Optional[BackendLane]:
        """An idle backend for `key` right now, or None (then call `borrow_later` or `borrow`)."""
        # An idle backend for `key` implies nobody waits for `key` (it would have been handed over), so taking
        # it does not jump the FIFO queue.
        idle = self._idle.get(key)
        if not idle:
            return None
        backend = idle.pop()  # LIFO: the warmest connection, and lets the coldest age out
        self._idle_count -= 1
        stats = self.stats
        stats.DatabaseConnectionRequests += 1
        self._borrowed += 1
        stats.DatabaseConnectionsCurrentlyBorrowed = self._borrowed
        stats.DatabaseConnectionsBorrowLatency.observe_zero()
        return backend

    def give_back(self, backend: BackendLane) -> None:
        """A borrowed backend is clean and idle again: hand it to a waiter or keep it."""
        self._borrowed -= 1
        self.stats.DatabaseConnectionsCurrentlyBorrowed = self._borrowed
        if backend.broken or self._closed:
            self._discard(backend)  # type: ignore[attr-defined]
            return
        if self._waiters:
            if not self._hand_over(backend):
                self._place(backend)  # type: ignore[attr-defined]
            return
        idle = self._idle.get(backend.key)
        if idle is None:
            self._place(backend)  # type: ignore[attr-defined]
            return
        backend.idle_since = time.monotonic()
        idle.append(backend)
        self._idle_count += 1
        backend.state = BACKEND_IDLE

    def _enqueue(self, client: ClientLane, key: Any, timeout: float) -> Waiter:
        """TargetPool.borrow_later for a client: queue it (FIFO) for the next backend of `key`."""
        waiter = Waiter(key, None, time.monotonic(), timeout, self, client)
        self.queue(waiter)
        return waiter

    def queue(self, waiter: Waiter) -> None:
        """Put `waiter` at the end of the FIFO queue, count its request, and make room for it if the budget allows."""
        self.stats.DatabaseConnectionRequests += 1
        self._waiters.append(waiter)
        if self._expiry is None or waiter.deadline < self._expiry_at:
            self._arm_expiry(waiter.deadline)  # type: ignore[attr-defined]
        if self._idle_count or self._total < self.limit:  # else nothing can be opened or evicted for it
            self._make_room_for(waiter)  # type: ignore[attr-defined]

    def _hand_over(self, backend: BackendLane) -> bool:
        """Give `backend` to the first waiter if that is a client that can use it as is; False: ask _place."""
        waiter = self._waiters[0]
        if type(waiter) is not Waiter or waiter.client is None or waiter.key != backend.key:
            return False
        client = waiter.client
        if client.state == CLIENT_CLOSED or not client._in_sync(backend):
            return False
        self._waiters.popleft()
        now = time.monotonic()
        self._borrowed += 1
        self.stats.DatabaseConnectionsCurrentlyBorrowed = self._borrowed
        self.stats.DatabaseConnectionsBorrowLatency.observe(int((now - waiter.enqueued) * 1_000_000))
        try:
            client._take(backend)
        except Exception as exc:  # noqa: BLE001 - a borrower's bug must not lose the backend or the queue
            self._borrower_failed(backend, exc)  # type: ignore[attr-defined]
        return True
