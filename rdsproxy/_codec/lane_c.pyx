# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The per-transaction data path compiled: borrow, forward and release backends on typed state (twin of lane_py).

ClientConnection, BackendConnection and TargetPool are Python subclasses of these classes, whose fields are declared
in lane_c.pxd (so that relay_c can deliver bytes to them and be written to with C calls). Every transaction
crosses this code twice (the client's request, then the server's ReadyForQuery); here it runs without a Python
frame or a dictionary-backed attribute. Whatever is not the plain case (queueing for a backend, syncing session
state, pins, errors) calls back into the Python subclasses.

Subclasses change behaviour through those hooks only: the compiled twin calls its own forward, attach,
try_borrow, give_back and ReadyForQuery accounting directly, so overriding them in Python would be ignored.
"""

from cpython.bytearray cimport PyByteArray_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.ref cimport Py_DECREF

from .myframe_c cimport MyClientFramer, MyRequestState, MyResponseScanner
from .pgframe_c cimport ClientFramer, PgRequestState, ServerScanner

cdef extern from "Python.h":
    void Py_SET_SIZE(object o, Py_ssize_t size)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clock_id, timespec *tp)
    enum:
        CLOCK_MONOTONIC

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
cdef enum:
    CLIENT_READY = 3
    CLIENT_CLOSED = 4
    BACKEND_IDLE = 1
    BACKEND_ATTACHED = 2

cdef bytes _PG_TERMINATE = b"X\x00\x00\x00\x04"  # PostgreSQL's Terminate message, whole

cdef enum:
    TRANSACTION_IDLE = 73  # ReadyForQuery status 'I'
    MY_COM_QUERY = 0x03
    MY_AFFECTED_SHIFT = 17  # myframe's packing of feed_done's answer: affected rows + 1 above this bit

# the same, for Python (and the test that holds them equal to rdsproxy.client's and rdsproxy.backend's)
STATE_NUMBERS = {"client READY": CLIENT_READY, "client CLOSED": CLIENT_CLOSED, "backend IDLE": BACKEND_IDLE,
                 "backend ATTACHED": BACKEND_ATTACHED}

SHUTDOWN = "shutdown"  # rdsproxy.client.SHUTDOWN


cdef inline double _now() noexcept nogil:
    # time.monotonic() reads the same clock: values from both are compared with each other
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


def monotonic():
    """time.monotonic(), as the data path reads it."""
    return _now()


cdef class Port:
    """A transport the lane writes to with a C call: relay_c's transports derive from it (see lane_c.pxd)."""

    cdef int _send(self, bytes data) except -1:
        self.write(data)
        return 0


cdef inline int _write(object transport, object data) except -1:
    # the relay's transports take the bytes in a C call; asyncio's (RDSPROXY_RELAY=0) through write()
    if type(data) is bytes and isinstance(transport, Port):
        return (<Port>transport)._send(<bytes>data)
    transport.write(data)
    return 0


cdef int entry_of(object protocol) except -1:
    """Which of the lane's entry points `protocol.data_received` is (ENTRY_NONE for anything else), so that a
    Port can deliver received bytes with a C call; a subclass that overrides data_received gets ENTRY_NONE."""
    method = getattr(type(protocol), "data_received", None)
    if method is None:
        return ENTRY_NONE
    if method is _CLIENT_PG and isinstance(protocol, ClientLane):
        return ENTRY_CLIENT_PG
    if method is _CLIENT_MY and isinstance(protocol, ClientLane):
        return ENTRY_CLIENT_MY
    if method is _BACKEND_PG and isinstance(protocol, BackendLane):
        return ENTRY_BACKEND_PG
    if method is _BACKEND_MY and isinstance(protocol, BackendLane):
        return ENTRY_BACKEND_MY
    return ENTRY_NONE


cdef int deliver(object protocol, int entry, object data) except -1:
    """protocol.data_received(data), for an `entry` that entry_of(protocol) answered."""
    if entry == ENTRY_CLIENT_PG:
        return (<ClientLane>protocol)._pg_received(data)
    if entry == ENTRY_CLIENT_MY:
        return (<ClientLane>protocol)._my_received(data)
    if entry == ENTRY_BACKEND_PG:
        return (<BackendLane>protocol)._pg_received(data)
    if entry == ENTRY_BACKEND_MY:
        return (<BackendLane>protocol)._my_received(data)
    protocol.data_received(data)
    return 0


cdef class EndpointCounters:
    """The numbers of an endpoint that every transaction bumps; the base of rdsproxy.metrics.EndpointStats."""


cdef class TargetCounters:
    """The numbers of a target that every transaction bumps; the base of rdsproxy.metrics.TargetStats."""



cdef class Route:
    """The pool serving an endpoint's borrows now, kept current by rdsproxy.targets (None: ask Targets.pool_for)."""


cdef class ClientLane:
    """A client connection's data-path state; the base of rdsproxy.client.ClientConnection."""

    # ------------------------------------------------------------------ forwarding requests
    def forward(self, data):
        """Send request bytes to this client's backend, borrowing one first when it has none."""
        self._forward(data)

    cdef int _forward(self, data) except -1:
        if self.pending is not None:
            self.pending.append(data)
            # A client that keeps sending while it waits is stopped here, which bounds what it can queue. Not
            # earlier: pausing every waiting client costs two epoll_ctl calls per borrow when the pool is busy.
            self.pause_reading()
        elif self.backend is not None:
            _write(self.backend.transport, data)
        else:
            self._borrow_and_send(data)
        return 0

    cdef int _borrow_and_send(self, data) except -1:
        cdef PoolLane pool = self.route.pool if self.route is not None else None
        cdef BackendLane backend = None
        if pool is None:
            pool = self.engine.targets.pool_for(self.endpoint_name)
        if pool is not None:
            backend = pool._try_borrow(self.key)
            if backend is not None and self._in_sync(backend):
                self._attach(backend)
                _write(backend.transport, data)
                return 0
        self.pending = [data]
        if pool is not None and backend is None and not pool._closed:
            # none idle: queue in the pool, which hands the next free backend straight to _take
            self._waiter = pool._enqueue(self, self.key, self.engine.borrow_timeout)
        else:
            self.wait_for_backend(pool, backend)
        return 0

    cdef int _take(self, BackendLane backend) except -1:
        # ClientConnection._borrowed's common case: the queued requests leave at once on the handed-over backend
        self._waiter = None
        self._attach(backend)
        pending = self.pending
        self.pending = None
        if pending:
            _write(backend.transport, b"".join(pending) if len(pending) > 1 else pending[0])
        if self.reading_paused:
            self.resume_reading()
        return 0

    cdef bint _in_sync(self, BackendLane backend) except -1:
        cdef MyRequestState my
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
        session = self.session
        if isinstance(session, MyRequestState):
            my = <MyRequestState>session
            # MyClient.sync_sql's common case without its call: MySQL states are shared dicts (never changed in
            # place), and a backend adopts the client's when they are equal
            if backend.applied is my.wanted and not my.reads_last_insert_id:
                return True
        return self.sync_sql(backend) is None

    def attach(self, BackendLane backend not None):
        """Make `backend` this client's: the server's replies go straight to the client from now on."""
        self._attach(backend)

    cdef int _attach(self, BackendLane backend) except -1:
        self.backend = backend
        backend.client = self
        backend.state = BACKEND_ATTACHED
        self.db_request_started = _now()
        if self.writing_paused:
            backend.pause_reading()
        if self.expects:
            # the replies to the requests queued meanwhile are what this backend's scanner must now expect
            scanner = backend.scanner
            for command, cursor in self.expects:
                (<MyResponseScanner?>scanner)._expect(command, cursor)
            del self.expects[:]
        return 0

    # ------------------------------------------------------------------ answers complete
    def responses_complete(self):
        """Every request in flight has its answer: account latencies, release the backend if the session allows."""
        self._responses_complete()

    cdef int _responses_complete(self) except -1:
        cdef double now = _now()
        cdef BackendLane backend
        cdef PoolLane pool
        self.last_activity = now  # a long query is activity: idleness starts when its answer is complete
        self.stats.QueryResponseLatency._observe(<long long>((now - self.request_started) * 1000000))
        backend = self.backend
        if backend is None:
            return 0
        pool = backend.pool
        pool.stats.QueryDatabaseResponseLatency._observe(<long long>((now - self.db_request_started) * 1000000))
        self.db_request_started = now
        if self._releasable():
            self.backend = None
            if backend.reading_paused:
                backend.detach()
            else:
                backend.client = None
            pool._give_back(backend)
            if self.draining:
                self.terminate(SHUTDOWN, "terminating connection because the proxy is shutting down")
        return 0

    cdef bint _releasable(self) except -1:
        cdef PgRequestState pg
        session = self.session
        if isinstance(session, PgRequestState):
            pg = <PgRequestState>session
            return pg.outstanding == 0 and not pg.batch_open and pg.status == TRANSACTION_IDLE and not pg.pinned
        if isinstance(session, MyRequestState):
            return (<MyRequestState>session)._releasable()
        return bool(session.releasable)

    # ------------------------------------------------------------------ PostgreSQL
    def pg_data_received(self, data):
        """PgClient.data_received: plain requests accounted and forwarded here; the rest by data_received_full."""
        self._pg_received(data)

    cdef int _pg_received(self, data) except -1:
        cdef double now = _now()
        cdef PgRequestState session
        cdef long long requests
        cdef bint was_quiet
        self.last_activity = now
        if self.state == CLIENT_READY:
            try:
                session = <PgRequestState?>self.session
                was_quiet = session.outstanding == 0
                requests = session._take_plain(<ClientFramer?>self.framer, data)
                if requests >= 0:
                    if requests:
                        self.stats.QueryRequests += requests
                        self.stats.QueryRequestsNoTLS += requests
                    if was_quiet and session.outstanding > 0:
                        self.request_started = now
                    self._forward(data)
                    return 0
            except Exception as exc:  # noqa - a proxy bug ends this connection only, and quietly for the peer
                self.data_failed(exc)
                return 0
            # checked once take_plain refused the chunk, so plain requests never pay for the comparison
            if data == _PG_TERMINATE and not PyByteArray_GET_SIZE((<ClientFramer?>self.framer)._held):
                self.close()  # a lone Terminate (every client's last message): nothing to forward or account
                return 0
        self.data_received_full(data)
        return 0

    def pg_ready_for_query(self, long long ready):
        """The attached backend forwarded a chunk whose only news is ReadyForQuery.

        `ready` is ServerScanner.feed_ready's answer: how many (above the low byte) and the last status (in it).
        """
        self._pg_ready(ready)

    cdef int _pg_ready(self, long long ready) except -1:
        cdef PgRequestState session = <PgRequestState?>self.session
        session.outstanding -= ready >> 8
        session.status = ready & 0xFF
        if session.outstanding <= 0:
            self._responses_complete()
        return 0

    # ------------------------------------------------------------------ MySQL
    def my_data_received(self, data):
        """MyClient.data_received: a lone plain command accounted (as MySession.command would) and forwarded
        here; the rest by data_received_full."""
        self._my_received(data)

    cdef int _my_received(self, data) except -1:
        cdef double now = _now()
        cdef int taken, command
        cdef bint cursor
        cdef BackendLane backend
        cdef MyRequestState session
        self.last_activity = now
        if self.state == CLIENT_READY:
            try:
                session = <MyRequestState?>self.session
                if session.failing is None and not session.infile:
                    taken = (<MyClientFramer?>self.framer)._take_command(data)
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
                            (<MyResponseScanner?>backend.scanner)._expect(command, cursor)
                            _write(backend.transport, data)
                        else:
                            self.expects.append((command, cursor))
                            self._forward(data)
                        return 0
            except Exception as exc:  # noqa - a proxy bug ends this connection only, and quietly for the peer
                self.data_failed(exc)
                return 0
        self.data_received_full(data)
        return 0

    def my_response_ok(self, long long done):
        """The attached backend forwarded a chunk whose only news is one response that ended without error and
        without a last insert id (MyResponseScanner.feed_done's packed answer `done`)."""
        self._my_response_ok(done)

    cdef int _my_response_ok(self, long long done) except -1:
        cdef MyRequestState session = <MyRequestState?>self.session
        session.outstanding -= 1
        session.status = done & 0xFFFF
        session.row_count = (done >> MY_AFFECTED_SHIFT) - 1  # as record_ok would (the insert id is 0)
        if session.outstanding <= 0 and not session.infile:
            if session.refresh_needed or self._refreshing:
                self._settled()
            else:
                self._responses_complete()
        return 0


cdef class BackendLane:
    """A pooled server connection's data-path state; the base of rdsproxy.backend.BackendConnection."""

    def pause_reading(self):
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self):
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def detach(self):
        self.client = None
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------------ PostgreSQL
    def pg_data_received(self, data):
        """PgBackend.data_received: while attached, forward first, then account for what changes state."""
        self._pg_received(data)

    cdef int _pg_received(self, data) except -1:
        cdef ClientLane client = self.client
        cdef long long ready
        if client is None:
            self.data_received_unattached(data)
            return 0
        try:
            ready = (<ServerScanner?>self.scanner)._feed_ready(data)
            if ready >= 0:  # the hot path: nothing but (maybe) ReadyForQuery in this chunk
                _write(client.transport, data)
                if ready:
                    client._pg_ready(ready)
                return 0
            self.forward_events(client, data)
        except Exception as exc:  # noqa - never leave a half-handled backend in service
            self.forwarding_failed(exc)
        return 0

    # ------------------------------------------------------------------ MySQL
    def my_data_received(self, data):
        """MyBackend.data_received: while attached, forward first, then account for the response's end."""
        self._my_received(data)

    cdef int _my_received(self, data) except -1:
        cdef ClientLane client = self.client
        cdef long long done
        if client is None:
            self.data_received_unattached(data)
            return 0
        try:
            scanner = self.scanner
            done = (<MyResponseScanner?>scanner)._feed_done(data)
            _write(client.transport, data)
            if done > 0:  # the hot path: this chunk ended one response with an OK or a result set
                client._my_response_ok(done)
            elif done < 0:
                client.backend_events(scanner.take_events())
        except Exception as exc:  # noqa - never leave a half-handled backend in service
            self.forwarding_failed(exc)
        return 0


cdef class Waiter:
    """A queued borrow: `deliver(backend, None)` or `deliver(None, exc)` is called once, synchronously.

    `deliver` returns whether it took the backend (False: its borrower went away meanwhile, offer it to the next).
    A ClientLane's waiter delivers to that client (the pool's hot path hands backends to it directly); any other
    borrower's, to its `callback`.
    """

    def __init__(self, key, callback, double enqueued, double timeout, pool, ClientLane client=None):
        self.key = key
        self.callback = callback
        self.client = client
        self.enqueued = enqueued
        self.timeout = timeout
        self.deadline = enqueued + timeout
        self.pool = pool

    def deliver(self, backend, exc):
        if self.client is not None:
            return self.client._borrowed(backend, exc)
        return self.callback(backend, exc)

    def cancel(self):
        """The borrower no longer wants a backend (it closed)."""
        self.pool._drop_waiter(self)


cdef class PoolLane:
    """A target pool's idle backends, waiters and counters; the base of rdsproxy.pool.TargetPool."""

    def try_borrow(self, key):
        """An idle backend for `key` right now, or None (then call `borrow_later` or `borrow`)."""
        return self._try_borrow(key)

    cdef list _idle_of(self, key):
        cdef list idle
        if key is self._idle_key and self._idle is self._idle_of_dict:
            return self._idle_list
        idle = self._idle.get(key)
        if idle is not None:
            self._idle_key = key
            self._idle_list = idle
            self._idle_of_dict = self._idle
        return idle

    cdef BackendLane _try_borrow(self, key):
        # An idle backend for `key` implies nobody waits for `key` (it would have been handed over), so taking
        # it does not jump the FIFO queue.
        cdef list idle = self._idle_of(key)
        cdef BackendLane backend
        cdef TargetCounters stats = self.stats
        cdef Py_ssize_t size
        if idle is None:
            return None
        size = PyList_GET_SIZE(idle)
        if size == 0:
            return None
        # LIFO: the warmest connection, and lets the coldest age out. Taken as list.pop() would, but the list keeps
        # its capacity: pop() frees it when the last backend leaves (an idle list mostly holds 0-2 backends), and the
        # give-back's append allocates it again, two reallocs per transaction
        backend = <BackendLane>PyList_GET_ITEM(idle, size - 1)  # a new reference: the list's is released below
        Py_SET_SIZE(idle, size - 1)
        Py_DECREF(backend)
        self._idle_count -= 1
        stats.DatabaseConnectionRequests += 1
        self._borrowed += 1
        stats.DatabaseConnectionsCurrentlyBorrowed = self._borrowed
        stats.DatabaseConnectionsBorrowLatency._observe_zero()
        return backend

    def give_back(self, BackendLane backend not None):
        """A borrowed backend is clean and idle again: hand it to a waiter or keep it."""
        self._give_back(backend)

    cdef int _give_back(self, BackendLane backend) except -1:
        cdef list idle
        self._borrowed -= 1
        self.stats.DatabaseConnectionsCurrentlyBorrowed = self._borrowed
        if backend.broken or self._closed:
            self._discard(backend)
            return 0
        if self._waiters:
            if not self._hand_over(backend):
                self._place(backend)
            return 0
        idle = self._idle_of(backend.key)
        if idle is None:
            self._place(backend)
            return 0
        backend.idle_since = _now()
        idle.append(backend)
        self._idle_count += 1
        backend.state = BACKEND_IDLE
        return 0

    cdef Waiter _enqueue(self, ClientLane client, key, double timeout):
        """TargetPool.borrow_later for a client: queue it (FIFO) for the next backend of `key`."""
        cdef Waiter waiter = Waiter.__new__(Waiter)
        waiter.key = key
        waiter.client = client
        waiter.enqueued = _now()
        waiter.timeout = timeout
        waiter.deadline = waiter.enqueued + timeout
        waiter.pool = self
        self._queue(waiter)
        return waiter

    def queue(self, Waiter waiter not None):
        """Put `waiter` at the end of the FIFO queue, count its request, and make room for it if the budget allows."""
        self._queue(waiter)

    cdef int _queue(self, Waiter waiter) except -1:
        self.stats.DatabaseConnectionRequests += 1
        self._waiters.append(waiter)
        if self._expiry is None or waiter.deadline < self._expiry_at:
            self._arm_expiry(waiter.deadline)
        if self._idle_count or self._total < self.limit:  # else nothing can be opened or evicted for it
            self._make_room_for(waiter)
        return 0

    cdef bint _hand_over(self, BackendLane backend) except -1:
        """Give `backend` to the first waiter if that is a client that can use it as is; False: ask _place."""
        cdef TargetCounters stats = self.stats
        cdef Waiter waiter = self._waiters[0] if type(self._waiters[0]) is Waiter else None
        cdef ClientLane client
        cdef double now
        if waiter is None or waiter.client is None or waiter.key != backend.key:
            return False
        client = waiter.client
        if client.state == CLIENT_CLOSED or not client._in_sync(backend):
            return False
        self._waiters.popleft()
        now = _now()
        self._borrowed += 1
        stats.DatabaseConnectionsCurrentlyBorrowed = self._borrowed
        stats.DatabaseConnectionsBorrowLatency._observe(<long long>((now - waiter.enqueued) * 1000000))
        try:
            client._take(backend)
        except Exception as exc:  # noqa - a borrower's bug must not lose the backend or the queue
            self._borrower_failed(backend, exc)
        return True


# the entry points' descriptors, as a protocol class that uses one holds it (entry_of compares them)
cdef object _CLIENT_PG = ClientLane.__dict__["pg_data_received"]
cdef object _CLIENT_MY = ClientLane.__dict__["my_data_received"]
cdef object _BACKEND_PG = BackendLane.__dict__["pg_data_received"]
cdef object _BACKEND_MY = BackendLane.__dict__["my_data_received"]
