"""The data path lanes (ClientLane, BackendLane, PoolLane) borrow, forward and release alike, compiled and pure."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest
from codec_impls import (
    IMPLEMENTATION_NAMES,
    binary_row,
    column_definition,
    eof_packet,
    err_packet,
    lenenc_int,
    load_implementation,
    my_packet,
    my_stream,
    ok_packet,
    pg_message,
    result_set,
    text_row,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdsproxy import backend as backend_module
from rdsproxy import client as client_module
from rdsproxy._codec.myframe_py import AFFECTED_SHIFT, DONE_BIT  # feed_done's packing (the compiled twin's is private)
from rdsproxy.errors import ProtocolViolation
from rdsproxy.mysql.client import MAX_CLIENT_PACKET, MAX_SETUP_PACKET
from rdsproxy.pg.backend import _FORWARD_INTERESTING
from rdsproxy.protocol.mysql.session import MY_SESSION_SLOTS, MySessionRules

KEY = ("app", "app")
BORROW_TIMEOUT = 5.0
OTHER_KEY = ("other", "app")
ENDPOINT = "default"
READY, SETUP = client_module.READY, client_module.SETUP
IDLE, ATTACHED = backend_module.IDLE, backend_module.ATTACHED
STATUS_IDLE, STATUS_IN_TRANSACTION = ord("I"), ord("T")

QUERY = pg_message(b"Q", b"SELECT abalance FROM pgbench_accounts WHERE aid = 4242;\0")
NAMED_PARSE = pg_message(b"P", b"s1\0SELECT 1\0" + struct.pack("!h", 0))  # a named statement pins: full path
TERMINATE = pg_message(b"X")
ROWS = (
    pg_message(b"T", struct.pack("!h", 1) + b"abalance\0" + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0))
    + pg_message(b"D", struct.pack("!hi", 1, 1) + b"0")
    + pg_message(b"C", b"SELECT 1\0")
)
ERROR_ANSWER = pg_message(b"E", b'SERROR\0C42P01\0Mrelation "nope" does not exist\0\0') + pg_message(b"Z", b"I")
GARBAGE = b"D" + struct.pack("!i", 3)  # a length below 4: the scanner raises ProtocolViolation


# MySQL: client commands (sequence id 0) and server answers (sequence ids from 1) for a scanner with classic EOFs
IN_TRANS, AUTOCOMMIT, CURSOR_EXISTS, IN_TRANS_READONLY = 0x0001, 0x0002, 0x0040, 0x2000
COM_QUERY, COM_STMT_EXECUTE = 0x03, 0x17
RESPONSE_DONE, LOCAL_INFILE = 1, 2  # MyResponseScanner event kinds
MY_SELECT = my_packet(b"\x03SELECT c FROM sbtest1 WHERE id=42")  # no classify flag: take_command takes it
MY_EXECUTE = my_packet(b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00")  # statement 1, flags 0: no cursor
MY_EXECUTE_CURSOR = my_packet(b"\x17\x01\x00\x00\x00\x01\x01\x00\x00\x00")  # flags 1: opens a read-only cursor
MY_OK = my_stream([ok_packet(AUTOCOMMIT, affected_rows=3)])
MY_ROWS = my_stream(result_set(1, [text_row(b"abc"), text_row(b"def")], False, AUTOCOMMIT))
MY_BINARY_ROWS = my_stream(result_set(2, [binary_row(b"x", None)], False, AUTOCOMMIT))
# an opened cursor's answer ends at the metadata EOF only if the scanner was told the command opens a cursor
MY_CURSOR_OPENED = my_stream([lenenc_int(1), column_definition(b"id"), eof_packet(AUTOCOMMIT | CURSOR_EXISTS)])
MY_ERR = my_stream([err_packet()])
MY_INSERT_OK = my_stream([ok_packet(AUTOCOMMIT, affected_rows=1, insert_id=7)])
MY_INFILE_REQUEST = my_stream([b"\xfb/tmp/rows.csv"])
MY_GARBAGE = b"\x00\x00\x00\x01"  # an empty packet: the scanner raises ProtocolViolation


def answer(status: bytes = b"I") -> bytes:
    """The server's whole answer to QUERY: rows, CommandComplete, then ReadyForQuery with `status`."""
    return ROWS + pg_message(b"Z", status)


# ---------------------------------------------------------------------------------------------- fakes
class FakeTransport:
    """Records what is written and every pause/resume, as an asyncio transport would receive them."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.flow: list[str] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def pause_reading(self) -> None:
        self.flow.append("pause_reading")

    def resume_reading(self) -> None:
        self.flow.append("resume_reading")


class Targets:
    """Stands in for rdsproxy.targets.Targets: pool_for answers `pool` and records who asked."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.asked: list[str] = []

    def pool_for(self, endpoint_name: str) -> Any:
        self.asked.append(endpoint_name)
        return self.pool


def make_lanes(impl) -> SimpleNamespace:
    """Recording subclasses of one implementation's lanes, built on that same implementation's codecs.

    The compiled lane's typed fields refuse the pure classes, so every class here comes from `impl`.
    """
    lane, pgframe, myframe, Latency = impl.lane, impl.pgframe, impl.myframe, impl.latency.Latency

    class EndpointStats(lane.EndpointCounters):
        def __init__(self) -> None:
            self.QueryRequests = 0
            self.QueryRequestsNoTLS = 0
            self.QueryResponseLatency = Latency()

    class TargetStats(lane.TargetCounters):
        def __init__(self) -> None:
            self.DatabaseConnectionRequests = 0
            self.DatabaseConnectionsCurrentlyBorrowed = 0
            self.DatabaseConnectionsBorrowLatency = Latency()
            self.QueryDatabaseResponseLatency = Latency()

    class MySession(MySessionRules, myframe.MyRequestState):
        """The real MySession's rules on this implementation's request state (MySession itself is on the active
        one's, the pure one under RDSPROXY_NO_EXTENSIONS)."""

        __slots__ = MY_SESSION_SLOTS

    class Session(pgframe.PgRequestState):
        """A Python subclass, as PgSession is: the lane must see through it to the typed state."""

    class Client(lane.ClientLane):
        """Records every hook the lane calls; `sync_answer` and `wait_error` steer the hooks that decide."""

        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple] = []
            self.sync_answer: Any = None  # what sync_sql returns: None means "in sync"
            self.wait_error: Any = None  # raised by wait_for_backend when set

        def pause_reading(self) -> None:
            self.calls.append(("pause_reading",))

        def wait_for_backend(self, pool: Any, backend: Any) -> None:
            self.calls.append(("wait_for_backend", pool, backend))
            if self.wait_error is not None:
                raise self.wait_error

        def sync_sql(self, backend: Any) -> Any:
            self.calls.append(("sync_sql", backend))
            return self.sync_answer

        def terminate(self, kind: str, message: str) -> None:
            self.calls.append(("terminate", kind, message))

        def data_failed(self, exc: Exception) -> None:
            self.calls.append(("data_failed", exc))

        def data_received_full(self, data: bytes) -> None:
            self.calls.append(("data_received_full", data))

        def close(self) -> None:
            self.calls.append(("close",))

        def resume_reading(self) -> None:
            self.calls.append(("resume_reading",))

        def _borrowed(self, backend: Any, exc: Any) -> bool:
            self.calls.append(("_borrowed", backend, exc))
            return True

    class Backend(lane.BackendLane):
        def __init__(self, key: Any = KEY) -> None:
            super().__init__()
            self.calls: list[tuple] = []
            self.key = key
            self.transport = FakeTransport()
            self.scanner = pgframe.ServerScanner(_FORWARD_INTERESTING)  # PgBackend's steady state
            self.applied = {}

        def data_received_unattached(self, data: bytes) -> None:
            self.calls.append(("data_received_unattached", data))

        def forward_events(self, client: Any, data: bytes) -> None:
            self.calls.append(("forward_events", client, data))

        def forwarding_failed(self, exc: Exception) -> None:
            self.calls.append(("forwarding_failed", exc))

    class Pool(lane.PoolLane):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple] = []
            self._idle = {KEY: []}
            self._idle_count = 0
            self._borrowed = 0
            self._waiters = deque()
            self._closed = False
            self.stats = TargetStats()
            self.limit = self._total = 0  # the budget is spent: a queued client waits for a give-back

        def _arm_expiry(self, deadline: float) -> None:
            self.calls.append(("_arm_expiry", deadline))
            self._expiry, self._expiry_at = "armed", deadline

        def _make_room_for(self, waiter: Any) -> None:
            self.calls.append(("_make_room_for", waiter))

        def keep_idle(self, backend: Any) -> None:
            """What TargetPool._place does for a new backend when nobody waits."""
            backend.pool = self
            self._idle.setdefault(backend.key, []).append(backend)
            self._idle_count += 1
            backend.state = IDLE

        def _discard(self, backend: Any) -> None:
            self.calls.append(("_discard", backend))

        def _place(self, backend: Any) -> None:
            self.calls.append(("_place", backend))

        def _borrower_failed(self, backend: Any, exc: Exception) -> None:
            self.calls.append(("_borrower_failed", backend, exc))

    def ready_framer() -> Any:
        framer = pgframe.ClientFramer()
        framer.in_startup = False  # past startup, as PgClient's framer is once the client is READY
        return framer

    class MyClient(Client):
        """MyClient's own fields around the lane, and its two response hooks recorded."""

        def __init__(self) -> None:
            super().__init__()
            self.expects: list[tuple[int, bool]] = []  # as MyClient sets it (a PostgreSQL client keeps None)
            self._refreshing = False

        def backend_events(self, events: list) -> None:
            self.calls.append(("backend_events", events))

        def _settled(self) -> None:
            self.calls.append(("_settled",))

    class MyBackend(Backend):
        def __init__(self, key: Any = KEY) -> None:
            super().__init__(key)
            self.scanner = myframe.MyResponseScanner(False)  # classic EOFs: the cursor flag changes where answers end

    def my_ready_framer() -> Any:
        framer = myframe.MyClientFramer(MAX_SETUP_PACKET)
        framer.max_packet_size = MAX_CLIENT_PACKET  # raised once the client is authenticated, as MyClient does
        return framer

    return SimpleNamespace(
        impl=impl,
        lane=lane,
        Client=Client,
        Backend=Backend,
        Pool=Pool,
        Session=Session,
        EndpointStats=EndpointStats,
        ready_framer=ready_framer,
        # the same world for MySQL, for Rig(lanes.my): MySession's rules, MyClient's framer and MyBackend's scanner
        my=SimpleNamespace(
            lane=lane,
            Client=MyClient,
            Backend=MyBackend,
            Pool=Pool,
            Session=MySession,
            EndpointStats=EndpointStats,
            ready_framer=my_ready_framer,
            myframe=myframe,
        ),
    )


class Rig:
    """One pool holding `idle` backends and `clients` READY clients routed to it: the lane's world, bytes only."""

    def __init__(self, lanes: SimpleNamespace, *, idle: int = 1, clients: int = 1) -> None:
        self.lanes = lanes
        self.pool = lanes.Pool()
        self.backends = [lanes.Backend() for _ in range(idle)]
        for backend in self.backends:
            self.pool.keep_idle(backend)
        self.targets = Targets(self.pool)
        self.route = lanes.lane.Route()
        self.route.pool = self.pool
        self.clients = [self._new_client() for _ in range(clients)]

    def _new_client(self) -> Any:
        client = self.lanes.Client()
        client.engine = SimpleNamespace(targets=self.targets, borrow_timeout=BORROW_TIMEOUT)
        client.endpoint_name = ENDPOINT
        client.stats = self.lanes.EndpointStats()
        client.route = self.route
        client.transport = FakeTransport()
        client.state = READY
        client.key = KEY
        client.session = self.lanes.Session()
        client.framer = self.lanes.ready_framer()
        client.wanted = {}  # equal to every backend's `applied`: in sync
        return client

    @property
    def client(self) -> Any:
        return self.clients[0]

    @property
    def backend(self) -> Any:
        return self.backends[0]


@pytest.fixture(scope="module", params=IMPLEMENTATION_NAMES)
def lanes(request):
    return make_lanes(load_implementation(request.param))


@pytest.fixture(scope="module")
def twin_lanes():
    return make_lanes(load_implementation("compiled")), make_lanes(load_implementation("pure"))


def assert_released(rig: Rig, client: Any, backend: Any) -> None:
    assert client.backend is None
    assert backend.client is None
    assert backend.state == IDLE
    assert rig.pool._idle[KEY][-1] is backend
    assert rig.pool._borrowed == 0
    assert rig.pool.stats.DatabaseConnectionsCurrentlyBorrowed == 0


def assert_attached(client: Any, backend: Any) -> None:
    assert client.backend is backend
    assert backend.client is client
    assert backend.state == ATTACHED


# ---------------------------------------------------------------------------------------------- on a real relay
def relayed_lanes(lanes: SimpleNamespace) -> SimpleNamespace:
    """The recording lanes as PgClient and PgBackend are: data_received is the lane's entry point."""

    class Relayed:
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def connection_lost(self, exc: Any) -> None:
            self.calls.append(("connection_lost", exc))

    class RelayedClient(Relayed, lanes.Client):
        data_received = lanes.lane.ClientLane.pg_data_received

    class RelayedBackend(Relayed, lanes.Backend):
        data_received = lanes.lane.BackendLane.pg_data_received

    return SimpleNamespace(**{**vars(lanes), "Client": RelayedClient, "Backend": RelayedBackend})


async def receive_exactly(peer: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    received = b""
    while len(received) < size:
        chunk = await asyncio.wait_for(loop.sock_recv(peer, 65536), 5)
        assert chunk, f"the peer was closed after {received!r}"
        received += chunk
    return received


def socket_pair() -> tuple[socket.socket, socket.socket]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    return ours, peer


async def test_a_transaction_through_the_relay_reaches_the_lane_and_leaves_by_it(lanes):
    # The compiled relay hands received bytes to the lane's entry points, and the lane writes to the relay's
    # transports, both with C calls: the bytes and the bookkeeping must be those of the Python-level calls.
    relay = lanes.impl.relay.Relay(asyncio.get_running_loop())
    rig = Rig(relayed_lanes(lanes))
    client, backend = rig.client, rig.backend
    client_socket, client_peer = socket_pair()
    backend_socket, backend_peer = socket_pair()
    try:
        relay.adopt(client_socket, client)
        relay.adopt(backend_socket, backend)
        for _ in range(3):
            client_peer.send(QUERY)
            assert await receive_exactly(backend_peer, len(QUERY)) == QUERY
            assert client.backend is backend and backend.client is client
            backend_peer.send(answer())
            assert await receive_exactly(client_peer, len(answer())) == answer()
            assert_released(rig, client, backend)
        assert client.stats.QueryRequests == 3
        assert rig.pool.stats.QueryDatabaseResponseLatency.count == 3
        assert client.calls == [] and backend.calls == []  # neither the full path nor a failure hook
    finally:
        relay.close()
        client_peer.close()
        backend_peer.close()


async def test_a_subclass_that_overrides_data_received_is_served_by_its_own_method(lanes):
    class OwnClient(relayed_lanes(lanes).Client):
        def data_received(self, data: bytes) -> None:
            self.calls.append(("own data_received", data))

    relay = lanes.impl.relay.Relay(asyncio.get_running_loop())
    rig = Rig(SimpleNamespace(**{**vars(lanes), "Client": OwnClient}))
    client_socket, client_peer = socket_pair()
    try:
        relay.adopt(client_socket, rig.client)
        client_peer.send(QUERY)
        deadline = time.monotonic() + 5
        while not rig.client.calls and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert rig.client.calls == [("own data_received", QUERY)]
        assert rig.client.backend is None and rig.client.stats.QueryRequests == 0  # the lane was not involved
    finally:
        relay.close()
        client_peer.close()


# ---------------------------------------------------------------------------------------------- module constants
def test_state_numbers_are_the_connection_states(lanes):
    assert lanes.lane.STATE_NUMBERS == {
        "client READY": client_module.READY,
        "client CLOSED": client_module.CLOSED,
        "backend IDLE": backend_module.IDLE,
        "backend ATTACHED": backend_module.ATTACHED,
    }


def test_monotonic_reads_the_clock_of_time_monotonic(lanes):
    before = time.monotonic()
    value = lanes.lane.monotonic()
    after = time.monotonic()
    assert before <= value <= after


def test_route_starts_empty_and_holds_a_pool(lanes):
    route = lanes.lane.Route()
    assert route.pool is None
    pool = lanes.Pool()
    route.pool = pool
    assert route.pool is pool
    route.pool = None
    assert route.pool is None


# ---------------------------------------------------------------------------------------------- PoolLane
def test_try_borrow_takes_the_warmest_idle_backend_first(lanes):
    rig = Rig(lanes, idle=3)
    pool, (coldest, middle, warmest) = rig.pool, rig.backends
    assert pool.try_borrow(KEY) is warmest
    assert pool.try_borrow(KEY) is middle
    assert pool._idle[KEY] == [coldest]
    assert pool._idle_count == 1
    assert pool._borrowed == 2
    stats = pool.stats
    assert stats.DatabaseConnectionRequests == 2
    assert stats.DatabaseConnectionsCurrentlyBorrowed == 2
    assert stats.DatabaseConnectionsBorrowLatency.count == 2
    assert stats.DatabaseConnectionsBorrowLatency.buckets[0] == 2  # served from the idle list: waited 0 us


def test_borrow_and_give_back_keep_the_idle_list_and_every_reference_right(lanes):
    # the compiled twin takes a backend off the list without list.pop (which would free an emptied list's storage):
    # the list must still hold exactly the idle backends, and the references they count must not drift
    rig = Rig(lanes, idle=2)
    pool, (colder, warmer) = rig.pool, rig.backends
    references = sys.getrefcount(colder), sys.getrefcount(warmer)
    for _ in range(100):
        taken = [pool.try_borrow(KEY), pool.try_borrow(KEY)]
        assert taken == [warmer, colder] and pool._idle[KEY] == [] and pool.try_borrow(KEY) is None
        pool.give_back(taken.pop())
        pool.give_back(taken.pop())
        assert pool._idle[KEY] == [colder, warmer]
    assert (sys.getrefcount(colder), sys.getrefcount(warmer)) == references


@pytest.mark.parametrize("key", [OTHER_KEY, KEY], ids=["unknown key", "empty idle list"])
def test_try_borrow_without_an_idle_backend_counts_nothing(lanes, key):
    pool = Rig(lanes, idle=0).pool
    assert pool.try_borrow(key) is None
    assert (pool._idle_count, pool._borrowed) == (0, 0)
    assert pool.stats.DatabaseConnectionRequests == 0
    assert pool.stats.DatabaseConnectionsCurrentlyBorrowed == 0
    assert pool.stats.DatabaseConnectionsBorrowLatency.count == 0
    assert pool._idle == {KEY: []}  # no list created for the unknown key


def test_give_back_keeps_the_backend_idle(lanes):
    rig = Rig(lanes, idle=2)
    pool = rig.pool
    backend = pool.try_borrow(KEY)
    backend.state = ATTACHED
    before = time.monotonic()
    pool.give_back(backend)
    after = time.monotonic()
    assert pool._idle[KEY] == [rig.backends[0], backend]
    assert backend.state == IDLE
    assert before <= backend.idle_since <= after
    assert (pool._idle_count, pool._borrowed) == (2, 0)
    assert pool.stats.DatabaseConnectionsCurrentlyBorrowed == 0
    assert pool.calls == []


def test_give_back_hands_over_to_waiters(lanes):
    pool = Rig(lanes).pool
    backend = pool.try_borrow(KEY)
    backend.state = ATTACHED
    pool._waiters.append("a queued borrow")
    pool.give_back(backend)
    assert pool.calls == [("_place", backend)]
    assert pool._idle[KEY] == []
    assert backend.state == ATTACHED  # _place decides what becomes of it
    assert (pool._idle_count, pool._borrowed) == (0, 0)
    assert pool.stats.DatabaseConnectionsCurrentlyBorrowed == 0


@pytest.mark.parametrize("why", ["broken backend", "closed pool"])
def test_give_back_discards_broken_backends_and_everything_after_close(lanes, why):
    pool = Rig(lanes).pool
    backend = pool.try_borrow(KEY)
    pool._waiters.append("a queued borrow")  # discarding wins over handing over
    if why == "broken backend":
        backend.broken = True
    else:
        pool._closed = True
    pool.give_back(backend)
    assert pool.calls == [("_discard", backend)]
    assert pool._idle[KEY] == []
    assert (pool._idle_count, pool._borrowed) == (0, 0)
    assert pool.stats.DatabaseConnectionsCurrentlyBorrowed == 0


def test_give_back_of_a_key_without_idle_list_goes_to_place(lanes):
    pool = Rig(lanes).pool
    pool.try_borrow(KEY)
    stranger = lanes.Backend(OTHER_KEY)  # e.g. opened for a key whose list does not exist yet
    pool.give_back(stranger)
    assert pool.calls == [("_place", stranger)]
    assert OTHER_KEY not in pool._idle
    assert (pool._idle_count, pool._borrowed) == (0, 0)
    assert pool.stats.DatabaseConnectionsCurrentlyBorrowed == 0


# ---------------------------------------------------------------------------------------------- ClientLane.forward
def test_forward_while_pending_queues_and_pauses_the_client(lanes):
    rig = Rig(lanes)
    client = rig.client
    client.pending = [b"first"]
    client.forward(b"second")
    assert client.pending == [b"first", b"second"]
    assert client.calls == [("pause_reading",)]
    assert rig.backend.transport.written == []
    assert rig.pool._idle_count == 1  # nothing borrowed


def test_forward_writes_to_the_attached_backend(lanes):
    rig = Rig(lanes, idle=0)
    client, backend = rig.client, lanes.Backend()
    client.attach(backend)
    client.forward(QUERY)
    client.forward(b"more")
    assert backend.transport.written == [QUERY, b"more"]
    assert rig.targets.asked == []
    assert rig.pool.stats.DatabaseConnectionRequests == 0
    assert client.calls == []


def test_forward_borrows_from_the_route_pool_and_attaches(lanes):
    rig = Rig(lanes)
    client, backend = rig.client, rig.backend
    before = time.monotonic()
    client.forward(QUERY)
    after = time.monotonic()
    assert_attached(client, backend)
    assert before <= client.db_request_started <= after
    assert backend.transport.written == [QUERY]
    assert rig.targets.asked == []  # the route knew the pool
    assert (rig.pool._idle_count, rig.pool._borrowed) == (0, 1)
    assert rig.pool.stats.DatabaseConnectionRequests == 1
    assert client.pending is None
    assert client.calls == []
    client.forward(b"more")  # attached now: no second borrow
    assert backend.transport.written == [QUERY, b"more"]
    assert rig.pool.stats.DatabaseConnectionRequests == 1


@pytest.mark.parametrize("route", ["no route", "route without pool"])
def test_forward_asks_targets_when_the_route_has_no_pool(lanes, route):
    rig = Rig(lanes)
    client = rig.client
    if route == "no route":
        client.route = None
    else:
        rig.route.pool = None
    client.forward(QUERY)
    assert rig.targets.asked == [ENDPOINT]
    assert_attached(client, rig.backend)
    assert rig.backend.transport.written == [QUERY]


def test_forward_waits_for_a_target_when_there_is_no_pool(lanes):
    rig = Rig(lanes)
    rig.route.pool = None
    rig.targets.pool = None
    rig.client.forward(QUERY)
    assert rig.client.calls == [("wait_for_backend", None, None)]
    assert rig.client.pending == [QUERY]
    assert rig.pool.stats.DatabaseConnectionRequests == 0


def test_forward_queues_in_the_pool_when_no_backend_is_idle(lanes):
    rig = Rig(lanes, idle=0)
    client, pool = rig.client, rig.pool
    before = time.monotonic()
    client.forward(QUERY)
    waiter = client._waiter
    assert isinstance(waiter, lanes.lane.Waiter)
    assert list(pool._waiters) == [waiter]
    assert waiter.client is client and waiter.key == KEY and waiter.pool is pool
    assert before <= waiter.enqueued <= time.monotonic()
    assert waiter.timeout == BORROW_TIMEOUT and waiter.deadline == waiter.enqueued + BORROW_TIMEOUT
    assert pool.calls == [("_arm_expiry", waiter.deadline)]  # the first waiter arms the pool's one timer
    assert pool.stats.DatabaseConnectionRequests == 1
    assert client.calls == [] and client.pending == [QUERY] and client.backend is None
    client.forward(QUERY)  # a second request while queued waits with the first, and stops the client reading
    assert client.pending == [QUERY, QUERY] and client.calls == [("pause_reading",)]
    assert len(pool._waiters) == 1


def test_queued_client_makes_room_when_the_budget_allows(lanes):
    rig = Rig(lanes, idle=0)
    rig.pool.limit = 2  # room for one more connection: the pool is asked to open one for this waiter
    rig.client.forward(QUERY)
    assert rig.pool.calls[-1] == ("_make_room_for", rig.client._waiter)


def test_queued_client_on_a_closed_pool_goes_to_wait_for_backend(lanes):
    rig = Rig(lanes, idle=0)
    rig.pool._closed = True  # TargetPool.borrow_later answers the shutdown error
    rig.client.forward(QUERY)
    assert rig.client.calls == [("wait_for_backend", rig.pool, None)]
    assert not rig.pool._waiters


def test_give_back_hands_the_backend_to_the_queued_client(lanes):
    rig = Rig(lanes, idle=1, clients=2)
    first, second = rig.clients
    pool, backend = rig.pool, rig.backend
    first.forward(QUERY)  # takes the only backend
    second.reading_paused = True
    second.forward(QUERY)
    second.forward(b"more")  # both leave together on the handed-over backend
    second.calls.clear()
    first.session.outstanding = 0  # its answer is complete
    first.responses_complete()
    assert first.backend is None and second.backend is backend and backend.client is second
    assert backend.state == ATTACHED and second._waiter is None and second.pending is None
    assert backend.transport.written == [QUERY, QUERY + b"more"]
    assert not pool._waiters and pool._borrowed == 1 and pool.stats.DatabaseConnectionsCurrentlyBorrowed == 1
    assert pool.stats.DatabaseConnectionsBorrowLatency.count == 2  # the idle borrow and the queued one
    assert second.calls == [("resume_reading",)]
    assert pool.calls == [("_arm_expiry", pytest.approx(pool._expiry_at))]


def test_a_failing_hand_over_goes_to_borrower_failed(lanes):
    rig = Rig(lanes, idle=1, clients=2)
    first, second = rig.clients
    pool, backend = rig.pool, rig.backend
    first.forward(QUERY)
    second.forward(QUERY)
    failure = RuntimeError("the queued client broke")

    def broken_write(data: bytes) -> None:
        raise failure

    backend.transport.write = broken_write  # _take attaches, then its write of the queued request raises
    pool.calls.clear()
    first.session.outstanding = 0
    first.responses_complete()  # must not raise into the first client's path
    assert pool.calls == [("_borrower_failed", backend, failure)]
    assert first.backend is None and not pool._waiters


def test_target_pool_closes_a_backend_its_borrower_failed_to_take_and_that_client():
    """TargetPool._borrower_failed: the backend leaves the budget once, the client it was attached to is closed."""
    from rdsproxy.metrics import TargetStats
    from rdsproxy.pool import TargetPool

    async def never_connect(key: object) -> None:
        raise AssertionError("nothing is opened here")

    pool = TargetPool("t", never_connect, TargetStats("t"), limit=1, max_idle_percent=100, idle_backend_timeout=60)

    class Closeable:  # hashable, unlike SimpleNamespace: the pool keeps its open backends in a set
        closed = False

        def close(self) -> None:
            self.closed = True

    backend, client = Closeable(), Closeable()
    backend.key, backend.client, client.backend = KEY, client, backend
    pool._open_backends.add(backend)
    pool._total = pool._borrowed = pool.stats.DatabaseConnections = 1
    pool._borrower_failed(backend, RuntimeError("broken borrower"))
    assert backend.closed and client.closed
    assert backend.client is None and client.backend is None  # its closing cannot come back as a second discard
    assert pool.total == 0 and pool.borrowed == 0 and pool.stats.DatabaseConnections == 0


@pytest.mark.parametrize("obstacle", ["other key", "not in sync", "closed", "not a client"])
def test_give_back_leaves_other_waiters_to_place(lanes, obstacle):
    rig = Rig(lanes, idle=1, clients=2)
    first, second = rig.clients
    pool, backend = rig.pool, rig.backend
    first.forward(QUERY)
    second.forward(QUERY)
    waiter = second._waiter
    if obstacle == "other key":
        waiter.key = OTHER_KEY
    elif obstacle == "not in sync":
        second.wanted = {"TimeZone": "UTC"}
    elif obstacle == "closed":
        second.state = client_module.CLOSED
    else:
        pool._waiters[0] = lanes.lane.Waiter(KEY, lambda backend, exc: True, time.monotonic(), 1.0, pool)
    pool.calls.clear()
    first.session.outstanding = 0
    first.responses_complete()
    assert pool.calls == [("_place", backend)]  # TargetPool._place finds the right waiter, or keeps it idle
    assert second.backend is None and backend.client is None


def test_waiter_delivers_to_its_client_or_its_callback(lanes):
    rig = Rig(lanes, idle=0)
    rig.client.forward(QUERY)
    failure = RuntimeError("no backend")
    assert rig.client._waiter.deliver(None, failure) is True
    assert rig.client.calls == [("_borrowed", None, failure)]
    heard = []
    other = lanes.lane.Waiter(KEY, lambda backend, exc: heard.append((backend, exc)) or False, 1.0, 2.0, rig.pool)
    assert other.deliver(None, failure) is False and heard == [(None, failure)]
    assert other.deadline == 3.0 and other.client is None


def test_forward_adopts_equal_settings_so_the_next_check_is_by_identity(lanes):
    rig = Rig(lanes)
    client, backend = rig.client, rig.backend
    client.wanted = {"timezone": "UTC"}
    backend.applied = {"timezone": "UTC"}  # equal, another dict: settings dicts are never changed in place
    client.forward(QUERY)
    assert_attached(client, backend)
    assert backend.applied is client.wanted
    assert backend.transport.written == [QUERY]


def test_forward_hands_an_out_of_sync_backend_to_wait_for_backend(lanes):
    rig = Rig(lanes)
    client, backend = rig.client, rig.backend
    client.wanted = {"TimeZone": "UTC"}  # the backend's `applied` is {}
    client.forward(QUERY)
    assert client.calls == [("wait_for_backend", rig.pool, backend)]
    assert client.pending == [QUERY]
    assert client.backend is None and backend.client is None
    assert backend.transport.written == []
    assert rig.pool._borrowed == 1  # borrowed: the Python side syncs it, then attaches it


@pytest.mark.parametrize("plan", [None, b"SET TimeZone TO 'UTC'"], ids=["in sync", "needs sync"])
def test_forward_asks_sync_sql_when_wanted_is_none(lanes, plan):
    rig = Rig(lanes)
    client, backend = rig.client, rig.backend
    client.wanted = None
    client.sync_answer = plan
    client.forward(QUERY)
    if plan is None:
        assert client.calls == [("sync_sql", backend)]
        assert_attached(client, backend)
        assert backend.transport.written == [QUERY]
    else:
        assert client.calls == [("sync_sql", backend), ("wait_for_backend", rig.pool, backend)]
        assert client.pending == [QUERY]
        assert backend.transport.written == []


# ---------------------------------------------------------------------------------------------- ClientLane.attach
def test_attach_to_a_client_that_cannot_take_more_pauses_the_backend(lanes):
    rig = Rig(lanes)
    client, backend = rig.client, rig.backend
    client.writing_paused = True
    client.attach(backend)
    assert_attached(client, backend)
    assert backend.reading_paused
    assert backend.transport.flow == ["pause_reading"]


@pytest.mark.parametrize("expects", [None, []], ids=["PostgreSQL client", "nothing queued"])
def test_attach_without_queued_expectations_leaves_the_scanner_alone(lanes, expects):
    rig = Rig(lanes)
    client, backend = rig.client, rig.backend
    client.expects = expects
    client.attach(backend)  # a PostgreSQL ServerScanner has no expect(): touching it would raise
    assert_attached(client, backend)
    assert client.expects == expects and client.calls == []
    assert not backend.reading_paused and backend.transport.flow == []


def test_attach_hands_queued_expectations_to_the_backend_scanner(lanes):
    rig = Rig(lanes.my)
    client, backend = rig.client, rig.backend
    client.expects = [(COM_QUERY, False), (COM_STMT_EXECUTE, True)]  # sent while no backend was attached
    client.attach(backend)
    assert client.expects == []
    assert backend.scanner.outstanding == 2
    # in order, the second one opening a cursor: its answer ends at the metadata EOF
    assert backend.scanner.feed_done(MY_OK) > 0
    assert backend.scanner.feed_done(MY_CURSOR_OPENED) > 0
    assert backend.scanner.idle


# ---------------------------------------------------------------------------------------------- responses_complete
def borrowed(lanes) -> tuple[Rig, Any, Any]:
    """A rig whose client sent QUERY on its (borrowed) backend."""
    rig = Rig(lanes)
    rig.client.pg_data_received(QUERY)
    assert rig.client.backend is rig.backend
    return rig, rig.client, rig.backend


def test_responses_complete_releases_a_releasable_session(lanes):
    rig, client, backend = borrowed(lanes)
    client.session.outstanding = 0
    client.responses_complete()
    assert client.stats.QueryResponseLatency.count == 1
    assert rig.pool.stats.QueryDatabaseResponseLatency.count == 1
    assert_released(rig, client, backend)
    assert rig.pool._idle_count == 1
    assert client.last_activity >= client.request_started > 0
    assert client.calls == []


@pytest.mark.parametrize(
    "session_state",
    [{"pinned": True}, {"status": STATUS_IN_TRANSACTION}, {"outstanding": 1}, {"batch_open": True}],
    ids=["pinned", "in transaction", "outstanding", "batch open"],
)
def test_responses_complete_keeps_the_backend_of_a_busy_session(lanes, session_state):
    rig, client, backend = borrowed(lanes)
    session = client.session
    session.outstanding = 0
    for name, value in session_state.items():
        setattr(session, name, value)
    client.draining = True  # only a release ends a draining client
    client.responses_complete()
    assert client.stats.QueryResponseLatency.count == 1
    assert rig.pool.stats.QueryDatabaseResponseLatency.count == 1
    assert_attached(client, backend)
    assert (rig.pool._idle_count, rig.pool._borrowed) == (0, 1)
    assert client.calls == []


def test_responses_complete_without_backend_counts_the_client_latency_only(lanes):
    rig = Rig(lanes)
    rig.client.responses_complete()
    assert rig.client.stats.QueryResponseLatency.count == 1
    assert rig.pool.stats.QueryDatabaseResponseLatency.count == 0


def test_responses_complete_of_a_draining_client_terminates_it_after_release(lanes):
    rig, client, backend = borrowed(lanes)
    client.session.outstanding = 0
    client.draining = True
    client.responses_complete()
    assert_released(rig, client, backend)
    assert client.calls == [("terminate", "shutdown", "terminating connection because the proxy is shutting down")]


def test_responses_complete_resumes_a_paused_backend_on_release(lanes):
    rig, client, backend = borrowed(lanes)
    backend.pause_reading()  # the client could not keep up
    client.session.outstanding = 0
    client.responses_complete()
    assert_released(rig, client, backend)
    assert not backend.reading_paused
    assert backend.transport.flow == ["pause_reading", "resume_reading"]


# ------------------------------------------------------------------------------------------ ClientLane.pg_data_received
def test_client_data_plain_query_is_counted_and_forwarded(lanes):
    rig = Rig(lanes)
    client = rig.client
    before = time.monotonic()
    client.pg_data_received(QUERY)
    after = time.monotonic()
    assert (client.stats.QueryRequests, client.stats.QueryRequestsNoTLS) == (1, 1)
    assert client.session.outstanding == 1
    assert before <= client.request_started <= after
    assert client.last_activity == client.request_started
    assert rig.backend.transport.written == [QUERY]
    assert client.calls == []


def test_client_data_while_busy_keeps_the_first_request_start(lanes):
    rig = Rig(lanes)
    client = rig.client
    client.pg_data_received(QUERY)
    started = client.request_started
    client.pg_data_received(QUERY + QUERY)  # pipelined behind the first: its latency runs from the first
    assert client.request_started == started
    assert client.session.outstanding == 3
    assert client.stats.QueryRequests == 3
    assert rig.backend.transport.written == [QUERY, QUERY + QUERY]


def test_client_data_outside_ready_takes_the_full_path(lanes):
    rig = Rig(lanes)
    client = rig.client
    client.state = SETUP
    client.pg_data_received(QUERY)
    assert client.calls == [("data_received_full", QUERY)]
    assert client.stats.QueryRequests == 0
    assert client.session.outstanding == 0
    assert client.backend is None


@pytest.mark.parametrize("chunk", [NAMED_PARSE, QUERY[:-2]], ids=["named parse", "incomplete message"])
def test_client_data_refused_by_take_plain_takes_the_full_path(lanes, chunk):
    rig = Rig(lanes)
    client = rig.client
    client.pg_data_received(chunk)
    assert client.calls == [("data_received_full", chunk)]
    assert client.stats.QueryRequests == 0
    assert client.session.outstanding == 0
    assert rig.backend.transport.written == []


def test_a_lone_terminate_closes_the_client_without_the_full_path(lanes):
    rig = Rig(lanes)
    client = rig.client
    client.pg_data_received(TERMINATE)
    assert client.calls == [("close",)]
    assert rig.backend.transport.written == []
    assert client.session.outstanding == 0


@pytest.mark.parametrize("held", [True, False], ids=["after a held partial message", "behind a query"])
def test_a_terminate_with_other_bytes_takes_the_full_path(lanes, held):
    rig = Rig(lanes)
    client = rig.client
    if held:
        client.framer.feed(QUERY[:3])  # an incomplete message waits in the framer: the X completes nothing alone
        client.pg_data_received(TERMINATE)
        assert client.calls == [("data_received_full", TERMINATE)]
    else:
        client.pg_data_received(QUERY + TERMINATE)
        assert client.calls == [("data_received_full", QUERY + TERMINATE)]


def test_client_data_hook_failure_goes_to_data_failed(lanes):
    rig = Rig(lanes, idle=0)
    rig.route.pool = rig.targets.pool = None  # no healthy target: the client waits for one
    client = rig.client
    failure = RuntimeError("queueing failed")
    client.wait_error = failure
    client.pg_data_received(QUERY)  # must not raise
    assert client.calls == [("wait_for_backend", None, None), ("data_failed", failure)]
    assert client.stats.QueryRequests == 1  # counted before forwarding failed


# ----------------------------------------------------------------------------------------- BackendLane.pg_data_received
def test_backend_data_while_unattached_goes_to_its_own_handler(lanes):
    rig = Rig(lanes)
    rig.backend.pg_data_received(answer())
    assert rig.backend.calls == [("data_received_unattached", answer())]
    assert rig.client.transport.written == []


def test_backend_answer_is_forwarded_and_releases_the_backend(lanes):
    rig, client, backend = borrowed(lanes)
    backend.pg_data_received(answer())
    assert client.transport.written == [answer()]
    assert client.session.outstanding == 0
    assert client.session.status == STATUS_IDLE
    assert_released(rig, client, backend)
    assert client.stats.QueryResponseLatency.count == 1
    assert backend.calls == [] and client.calls == []


def test_backend_chunk_without_ready_for_query_is_forwarded_only(lanes):
    rig, client, backend = borrowed(lanes)
    backend.pg_data_received(ROWS)
    assert client.transport.written == [ROWS]
    assert client.session.outstanding == 1
    assert_attached(client, backend)
    assert client.stats.QueryResponseLatency.count == 0


def test_backend_error_response_goes_to_forward_events(lanes):
    rig, client, backend = borrowed(lanes)
    backend.pg_data_received(ERROR_ANSWER)
    assert backend.calls == [("forward_events", client, ERROR_ANSWER)]
    assert client.transport.written == []  # forward_events writes it, after filtering FATAL errors
    assert client.session.outstanding == 1
    assert_attached(client, backend)


def test_backend_garbage_goes_to_forwarding_failed(lanes):
    rig, client, backend = borrowed(lanes)
    backend.pg_data_received(GARBAGE)
    assert [call[0] for call in backend.calls] == ["forwarding_failed"]
    assert isinstance(backend.calls[0][1], ProtocolViolation)
    assert client.transport.written == []
    assert_attached(client, backend)


# ---------------------------------------------------------------------------------------------- pg_ready_for_query
@pytest.mark.parametrize(
    ("outstanding", "count", "status", "left", "released"),
    [
        (3, 2, STATUS_IDLE, 1, False),  # answers still owed: nothing completes
        (1, 1, STATUS_IN_TRANSACTION, 0, False),  # complete, but inside a transaction
        (2, 2, STATUS_IDLE, 0, True),
    ],
)
def test_pg_ready_for_query(lanes, outstanding, count, status, left, released):
    rig, client, backend = borrowed(lanes)
    client.session.outstanding = outstanding
    client.pg_ready_for_query((count << 8) | status)
    assert client.session.outstanding == left
    assert client.session.status == status
    assert client.stats.QueryResponseLatency.count == (0 if left else 1)
    if released:
        assert_released(rig, client, backend)
    else:
        assert_attached(client, backend)


# ---------------------------------------------------------------------------------------------- MySQL
class BrokenTransport(FakeTransport):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def write(self, data: bytes) -> None:
        raise self.exc


def raising(exc: Exception) -> Any:
    """A stand-in hook that raises `exc` (set on an instance, it shadows the recording method for both twins)."""

    def hook(*args: Any) -> None:
        raise exc

    return hook


def packed_done(status: int, affected_rows: int = -1) -> int:
    """MyResponseScanner.feed_done's answer for one response that ended well with `status`."""
    return (affected_rows + 1) << AFFECTED_SHIFT | DONE_BIT | status


def my_attached(lanes) -> tuple[Rig, Any, Any]:
    """A MySQL rig whose client holds the pool's only backend with nothing in flight (as between two statements)."""
    rig = Rig(lanes.my)
    client, backend = rig.client, rig.backend
    client.attach(rig.pool.try_borrow(KEY))
    client.calls.clear()
    return rig, client, backend


def my_sent(lanes, command: bytes = MY_SELECT) -> tuple[Rig, Any, Any]:
    """A MySQL rig whose client sent `command` on its attached backend, whose answer has not come yet."""
    rig, client, backend = my_attached(lanes)
    client.my_data_received(command)
    assert backend.transport.written == [command] and client.session.outstanding == 1
    return rig, client, backend


def assert_nothing_counted(client: Any, backend: Any) -> None:
    assert (client.stats.QueryRequests, client.stats.QueryRequestsNoTLS) == (0, 0)
    assert client.session.outstanding == 0
    assert client.expects == []
    assert backend.transport.written == []
    assert backend.scanner.idle


# ------------------------------------------------------------------------------------------ ClientLane.my_data_received
@pytest.mark.parametrize(
    ("command", "server_answer", "resets_last_insert_id"),
    [(MY_SELECT, MY_OK, True), (MY_EXECUTE, MY_BINARY_ROWS, False), (MY_EXECUTE_CURSOR, MY_CURSOR_OPENED, False)],
    ids=["query", "execute", "execute opening a cursor"],
)
def test_my_client_plain_command_is_counted_and_written_to_its_backend(
    lanes, command, server_answer, resets_last_insert_id
):
    rig, client, backend = my_attached(lanes)
    session = client.session
    session.reads_last_insert_id = True  # left by the previous statement: only a new COM_QUERY decides it again
    before = time.monotonic()
    client.my_data_received(command)
    after = time.monotonic()
    assert session.outstanding == 1
    assert (client.stats.QueryRequests, client.stats.QueryRequestsNoTLS) == (1, 1)
    assert before <= client.request_started <= after
    assert client.last_activity == client.request_started
    assert session.reads_last_insert_id is not resets_last_insert_id
    assert backend.transport.written == [command]
    assert client.expects == [] and client.pending is None and client.calls == []
    # the scanner expects this very command: its answer (a cursor's ends early) completes one response
    assert backend.scanner.feed_done(server_answer) > 0


def test_my_client_command_behind_another_keeps_the_first_request_start(lanes):
    rig, client, backend = my_sent(lanes)
    client.request_started = started = 1.0  # a marker: the pipelined command's latency runs from the first
    client.my_data_received(MY_EXECUTE)
    assert client.request_started == started
    assert client.session.outstanding == 2 and client.stats.QueryRequests == 2
    assert backend.transport.written == [MY_SELECT, MY_EXECUTE]
    assert backend.scanner.outstanding == 2


def test_my_client_command_without_backend_queues_its_expectation_in_the_pool(lanes):
    rig = Rig(lanes.my, idle=0)
    client, pool = rig.client, rig.pool
    client.my_data_received(MY_EXECUTE_CURSOR)
    assert client.expects == [(COM_STMT_EXECUTE, True)]  # for the scanner of whichever backend comes
    assert client.pending == [MY_EXECUTE_CURSOR]
    assert list(pool._waiters) == [client._waiter]
    assert client.backend is None and client.calls == []
    assert client.session.outstanding == 1 and client.stats.QueryRequests == 1


def test_my_client_command_borrows_an_idle_backend_that_expects_it(lanes):
    rig = Rig(lanes.my)
    client, backend = rig.client, rig.backend
    client.my_data_received(MY_EXECUTE_CURSOR)
    assert_attached(client, backend)
    assert client.calls == []
    assert client.expects == []  # queued before the borrow, handed to the scanner by attach
    assert backend.transport.written == [MY_EXECUTE_CURSOR]
    assert backend.scanner.feed_done(MY_CURSOR_OPENED) > 0


def test_my_queued_command_is_expected_by_the_backend_handed_over(lanes):
    rig = Rig(lanes.my, idle=1, clients=2)
    first, second = rig.clients
    backend = rig.backend
    first.my_data_received(MY_SELECT)  # takes the only backend
    second.my_data_received(MY_EXECUTE_CURSOR)  # waits for it
    backend.my_data_received(MY_OK)  # first's answer releases it to the waiter
    assert first.transport.written == [MY_OK] and first.backend is None
    assert_attached(second, backend)
    assert second.expects == []
    assert backend.transport.written == [MY_SELECT, MY_EXECUTE_CURSOR]
    backend.my_data_received(MY_CURSOR_OPENED)
    assert second.transport.written == [MY_CURSOR_OPENED]
    assert second.session.outstanding == 0
    assert second.session.status == AUTOCOMMIT | CURSOR_EXISTS
    assert_attached(second, backend)  # an open cursor holds the backend


def test_my_client_command_during_a_read_back_waits_behind_it(lanes):
    rig, client, backend = my_attached(lanes)
    client._refreshing, client.pending = True, []  # what MyClient._settled sets while it reads state back
    client.my_data_received(MY_SELECT)
    assert client.expects == [(COM_QUERY, False)]  # the read-back's own answer comes first on that scanner
    assert client.pending == [MY_SELECT]
    assert client.calls == [("pause_reading",)]
    assert backend.transport.written == []
    assert backend.scanner.idle


@pytest.mark.parametrize(
    ("session_state", "state", "data"),
    [
        ({"failing": (1053, "08S01", "Server shutdown in progress")}, READY, MY_SELECT),  # the ERR owed goes first
        # a LOCAL INFILE file's packets are not commands, even one whose sequence id wrapped to 0
        ({"infile": True}, READY, MY_SELECT),
        ({}, SETUP, MY_SELECT),
        ({}, READY, MY_SELECT + MY_SELECT),
        ({}, READY, MY_SELECT[:-1]),
        ({}, READY, my_packet(b"\x03SET autocommit=0")),  # tracked state: the session must see it
    ],
    ids=["failing", "infile", "setup", "two commands", "incomplete", "set statement"],
)
def test_my_client_data_the_fast_path_leaves_goes_to_data_received_full(lanes, session_state, state, data):
    rig, client, backend = my_attached(lanes)
    for name, value in session_state.items():
        setattr(client.session, name, value)
    client.state = state
    client.my_data_received(data)
    assert client.calls == [("data_received_full", data)]
    assert_nothing_counted(client, backend)
    assert client.framer.pending == 0  # nothing consumed: data_received_full feeds it all


@pytest.mark.parametrize("where", ["wait_for_backend", "backend transport"])
def test_my_client_failure_in_the_fast_path_goes_to_data_failed(lanes, where):
    failure = RuntimeError("the proxy is broken")
    if where == "wait_for_backend":
        rig = Rig(lanes.my, idle=0)
        rig.route.pool = rig.targets.pool = None  # no healthy target: the client waits for one
        client = rig.client
        client.wait_error = failure
        expected = [("wait_for_backend", None, None), ("data_failed", failure)]
    else:
        rig, client, backend = my_attached(lanes)
        backend.transport = BrokenTransport(failure)
        expected = [("data_failed", failure)]
    client.my_data_received(MY_SELECT)  # must not raise
    assert client.calls == expected
    assert client.stats.QueryRequests == 1  # counted before forwarding failed


# ----------------------------------------------------------------------------------------- BackendLane.my_data_received
@pytest.mark.parametrize(("server_answer", "row_count"), [(MY_OK, 3), (MY_ROWS, -1)], ids=["ok", "result set"])
def test_my_backend_answer_is_forwarded_and_releases_the_backend(lanes, server_answer, row_count):
    rig, client, backend = my_sent(lanes)
    session = client.session
    session.status = IN_TRANS | AUTOCOMMIT  # the answer's own status replaces it (else the backend stays)
    backend.my_data_received(server_answer)
    assert client.transport.written == [server_answer]
    assert session.outstanding == 0
    assert session.status == AUTOCOMMIT
    assert session.row_count == row_count  # the OK's affected rows; -1 after a result set, as ROW_COUNT()
    assert_released(rig, client, backend)
    assert client.stats.QueryResponseLatency.count == 1
    assert rig.pool.stats.QueryDatabaseResponseLatency.count == 1
    assert client.calls == [] and backend.calls == []


@pytest.mark.parametrize("holder", ["in transaction", "pinned"])
def test_my_backend_answer_keeps_the_backend_of_a_busy_session(lanes, holder):
    rig, client, backend = my_sent(lanes)
    if holder == "pinned":
        client.session.pinned = True
        server_answer = MY_OK
    else:
        server_answer = my_stream([ok_packet(IN_TRANS | AUTOCOMMIT)])
    backend.my_data_received(server_answer)
    assert client.transport.written == [server_answer]
    assert client.session.outstanding == 0
    assert client.stats.QueryResponseLatency.count == 1  # complete, but kept
    assert_attached(client, backend)
    assert client.calls == []


@pytest.mark.parametrize("why", ["refresh needed", "refreshing"])
def test_my_backend_answer_that_may_change_session_state_goes_to_settled(lanes, why):
    rig, client, backend = my_sent(lanes)
    if why == "refresh needed":
        client.session.refresh_needed = True  # e.g. a SET went by the full path: state must be read back
    else:
        client._refreshing = True
    backend.my_data_received(MY_OK)
    assert client.calls == [("_settled",)]
    assert client.transport.written == [MY_OK]
    assert (client.session.outstanding, client.session.row_count) == (0, 3)
    assert client.stats.QueryResponseLatency.count == 0  # _settled completes it after the read-back
    assert_attached(client, backend)


@pytest.mark.parametrize(
    ("server_answer", "events"),
    [
        (MY_ERR, [(RESPONSE_DONE, -1, len(MY_ERR), 1)]),
        (MY_INSERT_OK, [(RESPONSE_DONE, AUTOCOMMIT, len(MY_INSERT_OK), 0)]),  # the id must be recorded
        (MY_INFILE_REQUEST, [(LOCAL_INFILE, -1, len(MY_INFILE_REQUEST), 0)]),
    ],
    ids=["error", "last insert id", "local infile"],
)
def test_my_backend_answer_with_news_goes_to_backend_events(lanes, server_answer, events):
    rig, client, backend = my_sent(lanes)
    backend.my_data_received(server_answer)
    assert client.calls == [("backend_events", events)]
    assert client.transport.written == [server_answer]  # forwarded first, as it is
    assert client.session.outstanding == 1  # MyClient.backend_events accounts for it
    assert backend.scanner.take_events() == []  # taken by the lane
    assert_attached(client, backend)
    assert backend.calls == []


def test_my_backend_chunk_that_ends_nothing_is_forwarded_only(lanes):
    rig, client, backend = my_sent(lanes)
    half, rest = MY_ROWS[:30], MY_ROWS[30:]
    backend.my_data_received(half)
    assert client.transport.written == [half]
    assert client.session.outstanding == 1
    assert client.calls == [] and backend.calls == []
    assert_attached(client, backend)
    backend.my_data_received(rest)
    assert client.transport.written == [half, rest]
    assert_released(rig, client, backend)


def test_my_backend_data_while_unattached_goes_to_its_own_handler(lanes):
    rig = Rig(lanes.my)
    rig.backend.my_data_received(MY_OK)
    assert rig.backend.calls == [("data_received_unattached", MY_OK)]
    assert rig.client.transport.written == []


def test_my_backend_garbage_goes_to_forwarding_failed(lanes):
    rig, client, backend = my_sent(lanes)
    backend.my_data_received(MY_GARBAGE)
    assert [call[0] for call in backend.calls] == ["forwarding_failed"]
    assert isinstance(backend.calls[0][1], ProtocolViolation)
    assert client.transport.written == []  # refused before forwarding
    assert client.session.outstanding == 1 and client.calls == []
    assert_attached(client, backend)


@pytest.mark.parametrize(("hook", "server_answer"), [("_settled", MY_OK), ("backend_events", MY_ERR)])
def test_my_backend_client_hook_failure_goes_to_forwarding_failed(lanes, hook, server_answer):
    rig, client, backend = my_sent(lanes)
    client.session.refresh_needed = True  # an OK goes to _settled
    failure = RuntimeError("the proxy is broken")
    setattr(client, hook, raising(failure))
    backend.my_data_received(server_answer)  # must not raise
    assert backend.calls == [("forwarding_failed", failure)]
    assert client.transport.written == [server_answer]  # forwarded before the hook ran


# ---------------------------------------------------------------------------------------------- my_response_ok
@pytest.mark.parametrize(
    ("outstanding", "infile", "complete"),
    [(2, False, False), (1, True, False), (1, False, True)],
    ids=["another answer owed", "file being sent", "complete"],
)
def test_my_response_ok_accounts_one_answer(lanes, outstanding, infile, complete):
    rig, client, backend = my_attached(lanes)
    session = client.session
    session.outstanding, session.infile = outstanding, infile
    status = IN_TRANS_READONLY | IN_TRANS | AUTOCOMMIT  # a flag above the low byte: all 16 bits are kept
    client.my_response_ok(packed_done(status, affected_rows=70000))  # more than 16 bits of rows
    assert session.outstanding == outstanding - 1
    assert session.status == status
    assert session.row_count == 70000
    assert client.stats.QueryResponseLatency.count == (1 if complete else 0)
    assert_attached(client, backend)  # in a transaction: kept even when complete
    assert client.calls == []


def test_my_response_ok_after_a_result_set_releases_the_backend(lanes):
    rig, client, backend = my_attached(lanes)
    session = client.session
    session.outstanding, session.status, session.row_count = 1, IN_TRANS, 5
    client.my_response_ok(packed_done(0))  # status 0 and no rows count: the packing is still non-zero
    assert (session.outstanding, session.status, session.row_count) == (0, 0, -1)
    assert_released(rig, client, backend)
    assert client.calls == []


# ---------------------------------------------------------------------------------------------- the twins agree
PARITY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLIENTS = 2
EXTRA = pg_message(b"d", b"copy row\n")  # any bytes: forward() does not look at them

client_index = st.integers(0, CLIENTS - 1)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("query"), client_index, st.integers(1, 3)),  # how many Query messages in the chunk
        st.tuples(st.just("answer"), client_index, st.sampled_from([b"I", b"T"])),  # the last ReadyForQuery status
        st.tuples(st.just("forward while pending"), client_index, st.none()),
        st.tuples(st.just("toggle pin"), client_index, st.none()),
    ),
    min_size=1,
    max_size=40,
)


def apply(rig: Rig, operation: tuple) -> Any:
    """Runs one operation on `rig`; returns what it observed beyond the rig's state (or None)."""
    kind, index, argument = operation
    client = rig.clients[index]
    session = client.session
    if kind == "query":
        client.pg_data_received(QUERY * argument)
    elif kind == "answer":
        backend = client.backend
        if backend is None or session.outstanding <= 0:
            return None  # a server answers only what it was asked
        statuses = [b"T"] * (session.outstanding - 1) + [argument]
        backend.pg_data_received(b"".join(answer(status) for status in statuses))
    elif kind == "forward while pending":
        queued = client.pending = []
        client.forward(EXTRA)
        client.pending = None  # the wait ends outside the lane (ClientConnection._borrowed)
        return queued
    else:
        session.pinned = not session.pinned
    return None


def observe(rig: Rig) -> dict:
    """Everything the twins must agree on, with the rig's objects named so that both rigs compare."""
    names = {id(rig.pool): "pool"}
    names.update((id(backend), f"backend {n}") for n, backend in enumerate(rig.backends))
    names.update((id(client), f"client {n}") for n, client in enumerate(rig.clients))

    def plain(value: Any) -> Any:
        if id(value) in names:
            return names[id(value)]
        if isinstance(value, BaseException):
            return (type(value).__name__, str(value))
        return value

    pool = rig.pool
    return {
        "clients": [
            {
                "requests": (client.stats.QueryRequests, client.stats.QueryRequestsNoTLS),
                "responses": client.stats.QueryResponseLatency.count,
                "outstanding": client.session.outstanding,
                "status": client.session.status,
                "pinned": client.session.pinned,
                "backend": plain(client.backend),
                "pending": client.pending,
                "received": client.transport.written,
                "hooks": [tuple(plain(part) for part in call) for call in client.calls],
            }
            for client in rig.clients
        ],
        "backends": [
            {
                "state": backend.state,
                "client": plain(backend.client),
                "received": backend.transport.written,
                "hooks": [tuple(plain(part) for part in call) for call in backend.calls],
            }
            for backend in rig.backends
        ],
        "pool": {
            "idle": [plain(backend) for backend in pool._idle[KEY]],
            "idle count": pool._idle_count,
            "borrowed": pool._borrowed,
            "requests": pool.stats.DatabaseConnectionRequests,
            "currently borrowed": pool.stats.DatabaseConnectionsCurrentlyBorrowed,
            "borrow latencies": pool.stats.DatabaseConnectionsBorrowLatency.count,
            "response latencies": pool.stats.QueryDatabaseResponseLatency.count,
            "hooks": [tuple(plain(part) for part in call) for call in pool.calls],
        },
    }


@PARITY
@given(steps=operations)
def test_twins_agree_on_every_step(twin_lanes, steps):
    compiled_lanes, pure_lanes = twin_lanes
    compiled, pure = Rig(compiled_lanes, idle=CLIENTS, clients=CLIENTS), Rig(pure_lanes, idle=CLIENTS, clients=CLIENTS)
    for step in steps:
        compiled_extra, pure_extra = apply(compiled, step), apply(pure, step)
        state = observe(compiled)
        assert (state, compiled_extra) == (observe(pure), pure_extra), step
        # a backend is either idle in the pool or attached to exactly one client
        assert compiled.pool._idle_count + compiled.pool._borrowed == CLIENTS
        attached = [client.backend for client in compiled.clients if client.backend is not None]
        assert len(attached) == compiled.pool._borrowed == len(set(map(id, attached)))
