# Declarations of lane_c's classes: relay_c delivers received bytes to the lane's entry points, and the lane writes
# to relay_c's transports, with C calls instead of Python method calls.

from .latency_c cimport Latency

cdef class PoolLane
cdef class BackendLane
cdef class ClientLane
cdef class Waiter


cdef class Port:
    # A transport the lane writes to with a C call (relay_c's RelayTransport); others get transport.write().
    cdef int _send(self, bytes data) except -1


# Which lane entry point a protocol's data_received is (ENTRY_*), so that a Port can call it directly.
cdef enum:
    ENTRY_NONE = 0
    ENTRY_CLIENT_PG = 1
    ENTRY_CLIENT_MY = 2
    ENTRY_BACKEND_PG = 3
    ENTRY_BACKEND_MY = 4

cdef int entry_of(object protocol) except -1
cdef int deliver(object protocol, int entry, object data) except -1


cdef class EndpointCounters:
    cdef public long long QueryRequests
    cdef public long long QueryRequestsNoTLS
    cdef public Latency QueryResponseLatency


cdef class TargetCounters:
    cdef public long long DatabaseConnectionRequests
    cdef public long long DatabaseConnectionsCurrentlyBorrowed
    cdef public Latency DatabaseConnectionsBorrowLatency
    cdef public Latency QueryDatabaseResponseLatency


cdef class Route:
    cdef public PoolLane pool


cdef class ClientLane:
    cdef public object engine
    cdef public object endpoint_name
    cdef public EndpointCounters stats
    cdef public Route route  # from Targets.route at connection; None: every borrow asks Targets.pool_for
    cdef public object transport
    cdef public int state
    cdef public object user
    cdef public object key
    cdef public BackendLane backend
    cdef public list pending  # requests waiting for a backend, or for the proxy's own exchange on it
    cdef public object session
    cdef public object framer
    cdef public object wanted  # PostgreSQL: a shared settings dict never changed in place; None: MyClient.sync_sql
    cdef public object _task
    cdef public object _waiter
    cdef public double last_activity
    cdef public double connected_at
    cdef public double request_started
    cdef public double db_request_started
    cdef public bint reading_paused
    cdef public bint writing_paused
    cdef public bint draining
    cdef public list expects  # MySQL: (command, cursor) of requests sent while no backend's scanner could expect them
    cdef public bint _refreshing  # MySQL: the proxy reads session state back on the backend (MyClient)
    cdef int _forward(self, data) except -1
    cdef int _borrow_and_send(self, data) except -1
    cdef int _take(self, BackendLane backend) except -1
    cdef bint _in_sync(self, BackendLane backend) except -1
    cdef int _attach(self, BackendLane backend) except -1
    cdef int _responses_complete(self) except -1
    cdef bint _releasable(self) except -1
    cdef int _pg_received(self, data) except -1
    cdef int _pg_ready(self, long long ready) except -1
    cdef int _my_received(self, data) except -1
    cdef int _my_response_ok(self, long long done) except -1


cdef class BackendLane:
    cdef public object address
    cdef public object key  # the pool key (user, database or capability profile)
    cdef public object owner  # the engine: told when an idle backend dies
    cdef public PoolLane pool  # the pool that counts this connection, once it joined one
    cdef public object transport
    cdef public int state
    cdef public ClientLane client
    cdef public double idle_since
    cdef public bint broken
    cdef public bint reading_paused
    cdef public object scanner
    cdef public object applied  # tracked session state set on this connection (beyond server defaults)
    cdef public object _waiter
    cdef int _pg_received(self, data) except -1
    cdef int _my_received(self, data) except -1


cdef class Waiter:
    cdef public object key
    cdef public object callback
    cdef public ClientLane client
    cdef public double enqueued
    cdef public double deadline
    cdef public double timeout
    cdef public object pool


cdef class PoolLane:
    cdef public dict _idle  # pool key -> idle backends, the warmest last; a key's list is never replaced
    cdef object _idle_key  # the key last looked up in _idle, and its list: the clients of one user and
    cdef list _idle_list  # database share one key object (Engine.shared_key), so most lookups need no hashing
    cdef dict _idle_of_dict  # the _idle they were found in
    cdef public Py_ssize_t _idle_count
    cdef public Py_ssize_t _borrowed
    cdef public Py_ssize_t _total  # open + opening backends: what counts against the budget
    cdef public Py_ssize_t limit
    cdef public object _waiters  # a deque of Waiter, FIFO
    cdef public object _expiry  # the timer for the earliest waiter's deadline
    cdef public double _expiry_at
    cdef public bint _closed
    cdef public TargetCounters stats
    cdef list _idle_of(self, key)
    cdef BackendLane _try_borrow(self, key)
    cdef int _give_back(self, BackendLane backend) except -1
    cdef Waiter _enqueue(self, ClientLane client, key, double timeout)
    cdef int _queue(self, Waiter waiter) except -1
    cdef bint _hand_over(self, BackendLane backend) except -1
