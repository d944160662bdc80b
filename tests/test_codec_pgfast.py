"""The PostgreSQL fast paths (ServerScanner.feed_ready/take_events, PgRequestState.take_plain), compiled and pure."""

from __future__ import annotations

import struct

import pytest
from codec_impls import IMPLEMENTATION_NAMES, backend_stream, load_implementation, pg_message, startup_packet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rdsproxy._codec as codec
from rdsproxy._codec import flags
from rdsproxy.errors import ProtocolViolation
from rdsproxy.protocol.pg.session import PgSession

PROTOCOL_3_0 = 196608
STARTUP = startup_packet(PROTOCOL_3_0, b"user\0alice\0database\0app\0\0")
INSPECT_LIMIT = 16 * 1024
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STATE_FIELDS = (
    "outstanding",
    "batch_open",
    "copy_in",
    "syncs_since_execute",
    "status",
    "pinned",
    "failing",
    "flush_pending",
    "discarding",
    "pin_mask",
    "inspect_limit",
    "quiet",
    "in_transaction",
    "releasable",
)


@pytest.fixture(scope="module", params=IMPLEMENTATION_NAMES)
def impl(request):
    return load_implementation(request.param)


@pytest.fixture(scope="module")
def twins():
    return load_implementation("compiled"), load_implementation("pure")


# ---------------------------------------------------------------------------------------------- message builders
def query(sql: bytes) -> bytes:
    return pg_message(b"Q", sql + b"\0")


def parse(sql: bytes, name: bytes = b"", param_types: tuple[int, ...] = ()) -> bytes:
    body = name + b"\0" + sql + b"\0" + struct.pack("!h", len(param_types))
    return pg_message(b"P", body + b"".join(struct.pack("!i", oid) for oid in param_types))


def bind(params: tuple[bytes, ...] = (), portal: bytes = b"", statement: bytes = b"") -> bytes:
    body = portal + b"\0" + statement + b"\0" + struct.pack("!h", 0) + struct.pack("!h", len(params))
    body += b"".join(struct.pack("!i", len(value)) + value for value in params)
    return pg_message(b"B", body + struct.pack("!h", 0))


def describe(kind: bytes = b"P", name: bytes = b"") -> bytes:
    return pg_message(b"D", kind + name + b"\0")


def execute(portal: bytes = b"", max_rows: int = 0) -> bytes:
    return pg_message(b"E", portal + b"\0" + struct.pack("!i", max_rows))


def close(kind: bytes = b"S", name: bytes = b"") -> bytes:
    return pg_message(b"C", kind + name + b"\0")


FLUSH = pg_message(b"H")
SYNC = pg_message(b"S")
TERMINATE = pg_message(b"X")
FUNCTION_CALL = pg_message(b"F", struct.pack("!i", 1598) + struct.pack("!hh", 0, 0) + struct.pack("!h", 0))
COPY_DATA = pg_message(b"d", b"1\tone\n")


def extended(sql: bytes = b"SELECT $1::int", *, end: bytes = SYNC) -> bytes:
    return parse(sql, param_types=(23,)) + bind((b"7",)) + describe() + execute() + end


def ready(status: bytes = b"I") -> bytes:
    return pg_message(b"Z", status)


def row_description(*names: bytes) -> bytes:
    fields = b"".join(
        name + b"\0" + struct.pack("!ihihih", 16384, index + 1, 23, 4, -1, 0) for index, name in enumerate(names)
    )
    return pg_message(b"T", struct.pack("!h", len(names)) + fields)


def data_row(*values: bytes) -> bytes:
    return pg_message(b"D", struct.pack("!h", len(values)) + b"".join(struct.pack("!i", len(v)) + v for v in values))


def select_response(rows: int, status: bytes = b"I") -> bytes:
    return (
        row_description(b"id", b"label")
        + b"".join(data_row(b"%d" % n, b"label-%06d" % n) for n in range(rows))
        + pg_message(b"C", b"SELECT %d\0" % rows)
        + ready(status)
    )


# ---------------------------------------------------------------------------------------------- helpers
def new_state(impl):
    """A PgRequestState set up like PgSession.__init__ does."""
    state = impl.PgRequestState()
    state.pin_mask = flags.PIN_MASK
    state.inspect_limit = INSPECT_LIMIT
    return state


def ready_framer(impl, max_message_size: int | None = None):
    """A ClientFramer past startup."""
    framer = impl.ClientFramer()
    buf, messages = framer.feed(STARTUP)
    assert buf == STARTUP and len(messages) == 1
    assert not framer.in_startup and framer.pending == 0
    if max_message_size is not None:
        framer.max_message_size = max_message_size
    return framer


def snapshot(state) -> dict:
    return {name: getattr(state, name) for name in STATE_FIELDS}


def framer_snapshot(framer) -> tuple:
    return framer.in_startup, framer.pending, framer.max_message_size


def full_path(data: bytes, initial: dict | None = None):
    """(session, batch) of a PgSession (active implementation) fed `data` through ClientFramer + client_messages."""
    session = PgSession()
    for name, value in (initial or {}).items():
        setattr(session, name, value)
    framer = ready_framer(codec.ACTIVE)
    buf, msgs = framer.feed(data)
    assert framer.pending == 0
    batch = session.client_messages(buf, msgs)
    return session, batch


def assert_same_as_full_path(state, result: int, data: bytes, initial: dict | None = None) -> None:
    session, batch = full_path(data, initial)
    assert batch.requests == result
    assert batch.forward == (data or None)
    assert batch.reply == b""
    assert not batch.terminate
    assert batch.new_pins == []
    for name in ("outstanding", "batch_open", "flush_pending", "syncs_since_execute", "pinned", "status"):
        assert getattr(session, name) == getattr(state, name), name


def scan_events(impl, data: bytes, interesting: bytes | None = None) -> list:
    scanner = impl.ServerScanner() if interesting is None else impl.ServerScanner(interesting)
    return scanner.feed(data)


# ---------------------------------------------------------------------------------------------- feed_ready
@pytest.mark.parametrize("status", [b"I", b"T", b"E"])
def test_feed_ready_one_ready_for_query(impl, status):
    scanner = impl.ServerScanner()
    assert scanner.feed_ready(ready(status)) == (1 << 8) | status[0]
    assert scanner.take_events() == []
    assert scanner.at_boundary


@pytest.mark.parametrize("statuses", [b"II", b"ITE", b"TTTT", b"EI", b"I" * 300])
def test_feed_ready_several_ready_for_query(impl, statuses):
    scanner = impl.ServerScanner()
    data = b"".join(ready(bytes([status])) for status in statuses)
    assert scanner.feed_ready(data) == (len(statuses) << 8) | statuses[-1]
    assert scanner.take_events() == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        data_row(b"1"),
        pg_message(b"C", b"SELECT 1\0"),
        data_row(b"1", b"x") * 5 + pg_message(b"C", b"SELECT 5\0"),
        row_description(b"a") + data_row(b"1"),
        pg_message(b"1") + pg_message(b"2") + pg_message(b"n") + pg_message(b"N", b"SNOTICE\0\0"),
    ],
)
def test_feed_ready_nothing_interesting(impl, data):
    scanner = impl.ServerScanner()
    assert scanner.feed_ready(data) == 0
    assert scanner.take_events() == []
    assert scanner.at_boundary


@pytest.mark.parametrize(
    "data",
    [
        pg_message(b"E", b"SERROR\0C42P01\0Mnope\0\0"),
        pg_message(b"S", b"TimeZone\0UTC\0"),
        pg_message(b"G", b"\0\0\0"),
        pg_message(b"W", b"\0\0\0"),
        pg_message(b"E", b"SERROR\0C42P01\0Mnope\0\0") + ready(b"I"),
        ready(b"T") + pg_message(b"S", b"application_name\0x\0") + ready(b"T"),
        data_row(b"1") + pg_message(b"C", b"COPY 0\0") + pg_message(b"G", b"\0\0\0") + data_row(b"2"),
        ready(b"I") + ready(b"I") + pg_message(b"W", b"\0\0\0"),
        pg_message(b"K", struct.pack("!ii", 42, 7)) + ready(b"I"),
        pg_message(b"Z"),  # ReadyForQuery without its status byte
        pg_message(b"Z", b"II"),  # ... or with two
        backend_stream(50),
    ],
)
def test_feed_ready_other_events(impl, data):
    scanner = impl.ServerScanner()
    expected = scan_events(impl, data)
    assert expected  # the case does hold a message other than a plain ReadyForQuery
    assert scanner.feed_ready(data) == -1
    assert scanner.take_events() == expected
    assert scanner.take_events() == []
    assert scanner.take_events() == []
    # the scanner stays usable and in step
    assert scanner.feed_ready(ready(b"T")) == (1 << 8) | ord("T")
    assert scanner.take_events() == []


def test_take_events_empty_before_any_feed(impl):
    scanner = impl.ServerScanner()
    assert scanner.take_events() == []
    scanner.feed(backend_stream(3))  # plain feed() never leaves events for take_events
    assert scanner.take_events() == []


def test_take_events_holds_only_the_last_refused_chunk(impl):
    scanner = impl.ServerScanner()
    first = pg_message(b"E", b"SERROR\0Mone\0\0")
    second = pg_message(b"S", b"TimeZone\0UTC\0") + ready(b"I")
    assert scanner.feed_ready(first) == -1
    assert scanner.feed_ready(second) == -1
    assert scanner.take_events() == scan_events(impl, second)
    assert scanner.take_events() == []


def test_feed_ready_respects_interesting(impl):
    error = pg_message(b"E", b"SERROR\0Mx\0\0")
    scanner = impl.ServerScanner(b"Z")
    assert scanner.feed_ready(error + ready(b"E")) == (1 << 8) | ord("E")
    assert scanner.take_events() == []
    scanner = impl.ServerScanner(b"")
    assert scanner.feed_ready(error + ready(b"I")) == 0
    scanner = impl.ServerScanner(b"ZD")
    assert scanner.feed_ready(data_row(b"1") + ready(b"I")) == -1
    assert scanner.take_events() == scan_events(impl, data_row(b"1") + ready(b"I"), b"ZD")


def test_feed_ready_accepts_bytearray_and_memoryview(impl):
    data = ready(b"I") + ready(b"T")
    for wrapped in (bytearray(data), memoryview(data)):
        scanner = impl.ServerScanner()
        assert scanner.feed_ready(wrapped) == (2 << 8) | ord("T")


@pytest.mark.parametrize("status", [b"I", b"T", b"E"])
def test_feed_ready_ready_for_query_split_byte_by_byte(impl, status):
    data = data_row(b"1") + ready(b"I") + pg_message(b"C", b"SELECT 1\0") + ready(status)
    scanner = impl.ServerScanner()
    count = 0
    last = 0
    results = []
    for index in range(len(data)):
        packed = scanner.feed_ready(data[index : index + 1])
        results.append(packed)
        assert packed >= 0
        assert scanner.take_events() == []
        if packed:
            count += packed >> 8
            last = packed & 0xFF
    assert (count << 8) | last == impl.ServerScanner().feed_ready(data) == (2 << 8) | status[0]
    # each ReadyForQuery is reported by the chunk that holds its last byte, exactly once
    assert [index for index, packed in enumerate(results) if packed] == [
        len(data_row(b"1") + ready(b"I")) - 1,
        len(data) - 1,
    ]
    assert scanner.at_boundary


@pytest.mark.parametrize("cut", range(1, 6))
def test_feed_ready_ready_for_query_header_split(impl, cut):
    data = ready(b"T") + ready(b"I")
    scanner = impl.ServerScanner()
    first = scanner.feed_ready(data[:cut])
    second = scanner.feed_ready(data[cut:])
    assert (first, second) == (0, (2 << 8) | ord("I"))


def test_feed_ready_error_split_across_chunks(impl):
    error = pg_message(b"E", b"SERROR\0C57014\0Mcanceling statement\0\0")
    data = error + ready(b"I")
    scanner = impl.ServerScanner()
    seen = []
    for index in range(len(data)):
        packed = scanner.feed_ready(data[index : index + 1])
        if packed == -1:
            seen += scanner.take_events()
        elif packed:
            seen.append(("rfq", packed))
    assert seen == [(ord("E"), error[5:], 1), ("rfq", (1 << 8) | ord("I"))]


@pytest.mark.parametrize("rows", [0, 1, 500])
@pytest.mark.parametrize("status", [b"I", b"T"])
def test_feed_ready_select_response(impl, rows, status):
    data = select_response(rows, status)
    scanner = impl.ServerScanner()
    assert scanner.feed_ready(data) == (1 << 8) | status[0]
    assert scanner.take_events() == []
    # the same stream in pieces: only the piece that ends the ReadyForQuery reports it
    scanner = impl.ServerScanner()
    pieces = [data[start : start + 97] for start in range(0, len(data), 97)]
    results = [scanner.feed_ready(piece) for piece in pieces]
    assert results[:-1] == [0] * (len(pieces) - 1)
    assert results[-1] == (1 << 8) | status[0]


def test_feed_ready_pipelined_responses(impl):
    data = select_response(3, b"T") + select_response(2, b"T") + pg_message(b"C", b"COMMIT\0") + ready(b"I")
    assert impl.ServerScanner().feed_ready(data) == (3 << 8) | ord("I")


def test_feed_ready_invalid_length(impl):
    scanner = impl.ServerScanner()
    with pytest.raises(ProtocolViolation):
        scanner.feed_ready(b"Z" + struct.pack("!i", 3))
    with pytest.raises(ProtocolViolation):
        scanner.feed_ready(ready(b"I"))  # broken for good


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(
        st.one_of(
            st.builds(ready, st.sampled_from([b"I", b"T", b"E"])),
            st.builds(data_row, st.binary(max_size=20)),
            st.builds(
                pg_message, st.sampled_from([b"C", b"E", b"S", b"G", b"W", b"N", b"Z", b"1"]), st.binary(max_size=8)
            ),
        ),
        max_size=12,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=10),
)
def test_feed_ready_matches_feed(impl, parts, cuts):
    stream = b"".join(parts)
    reference = impl.ServerScanner()
    scanner = impl.ServerScanner()
    points = sorted({cut for cut in cuts if 0 < cut < len(stream)})
    bounds = [0, *points, len(stream)]
    for start, end in zip(bounds, bounds[1:]):
        piece = stream[start:end]
        events = reference.feed(piece)
        packed = scanner.feed_ready(piece)
        if all(kind == ord("Z") and len(payload) == 1 for kind, payload, _ in events):
            assert packed == ((len(events) << 8) | events[-1][1][0] if events else 0)
            assert scanner.take_events() == []
        else:
            assert packed == -1
            assert scanner.take_events() == events
        assert scanner.at_boundary == reference.at_boundary


# ---------------------------------------------------------------------------------------------- take_plain
def test_request_state_defaults(impl):
    state = impl.PgRequestState()
    assert snapshot(state) == {
        "outstanding": 0,
        "batch_open": False,
        "copy_in": False,
        "syncs_since_execute": 0,
        "status": ord("I"),
        "pinned": False,
        "failing": None,
        "flush_pending": False,
        "discarding": False,
        "pin_mask": 0,
        "inspect_limit": INSPECT_LIMIT,
        "quiet": True,
        "in_transaction": False,
        "releasable": True,
    }


def test_request_state_properties(impl):
    state = impl.PgRequestState()
    state.pinned = True
    assert state.quiet and not state.releasable
    state.pinned = False
    state.status = ord("T")
    assert state.in_transaction and not state.quiet and not state.releasable
    state.status = ord("I")
    state.outstanding = 1
    assert not state.quiet and not state.releasable and not state.in_transaction
    state.outstanding = 0
    state.batch_open = True
    assert not state.quiet and not state.releasable


def test_pg_session_is_a_request_state():
    session = PgSession()
    assert isinstance(session, codec.PgRequestState)
    assert session.pin_mask == flags.PIN_MASK
    assert session.inspect_limit == INSPECT_LIMIT
    assert PgSession(exclude_variable_sets=True).pin_mask == flags.PIN_MASK & ~flags.PIN_SET


def test_take_plain_simple_query(impl):
    state = new_state(impl)
    framer = ready_framer(impl)
    data = query(b"SELECT 1")
    assert state.take_plain(framer, data) == 1
    assert state.outstanding == 1
    assert not state.batch_open and not state.flush_pending
    assert state.syncs_since_execute == 0
    assert framer_snapshot(framer) == (False, 0, framer.max_message_size)
    assert_same_as_full_path(state, 1, data)


def test_take_plain_pipelined_queries(impl):
    state = new_state(impl)
    framer = ready_framer(impl)
    data = query(b"SELECT 1") + query(b"SELECT 2; SELECT 3") + query(b"")
    assert state.take_plain(framer, data) == 3
    assert state.outstanding == 3
    assert_same_as_full_path(state, 3, data)


def test_take_plain_extended_batch(impl):
    state = new_state(impl)
    framer = ready_framer(impl)
    data = extended()
    assert state.take_plain(framer, data) == 1
    assert state.outstanding == 1
    assert not state.batch_open and not state.flush_pending
    assert state.syncs_since_execute == 1
    assert_same_as_full_path(state, 1, data)


def test_take_plain_extended_flush_then_sync(impl):
    state = new_state(impl)
    framer = ready_framer(impl)
    first = extended(end=FLUSH)
    assert state.take_plain(framer, first) == 1
    assert state.outstanding == 0
    assert state.batch_open and state.flush_pending
    assert state.syncs_since_execute == 0
    assert_same_as_full_path(state, 1, first)
    assert state.take_plain(framer, SYNC) == 0
    assert state.outstanding == 1
    assert not state.batch_open and not state.flush_pending
    assert state.syncs_since_execute == 1
    session, _ = full_path(first)
    batch = session.client_messages(SYNC, [(ord("S"), 5, 5)])
    assert batch.requests == 0
    for name in ("outstanding", "batch_open", "flush_pending", "syncs_since_execute"):
        assert getattr(session, name) == getattr(state, name)


def test_take_plain_extended_in_pieces(impl):
    """A driver that sends Parse/Bind/Describe, then Execute, then Sync in separate writes."""
    state = new_state(impl)
    framer = ready_framer(impl)
    assert state.take_plain(framer, parse(b"SELECT now()") + bind() + describe()) == 0
    assert state.batch_open and state.outstanding == 0
    assert state.take_plain(framer, execute()) == 1
    assert state.take_plain(framer, close(b"P") + close(b"S") + SYNC + SYNC) == 0
    assert state.outstanding == 2 and state.syncs_since_execute == 2 and not state.batch_open


def test_take_plain_several_executes_and_syncs(impl):
    state = new_state(impl)
    framer = ready_framer(impl)
    data = parse(b"INSERT INTO t VALUES ($1)") + (bind((b"1",)) + execute()) * 3 + SYNC + query(b"COMMIT")
    assert state.take_plain(framer, data) == 4
    assert state.outstanding == 2
    assert state.syncs_since_execute == 0
    assert_same_as_full_path(state, 4, data)


def test_take_plain_empty_chunk(impl):
    state = new_state(impl)
    framer = ready_framer(impl)
    before = snapshot(state)
    assert state.take_plain(framer, b"") == 0
    assert snapshot(state) == before


def test_take_plain_keeps_existing_counters(impl):
    initial = {"outstanding": 2, "batch_open": True, "syncs_since_execute": 3, "flush_pending": True}
    state = new_state(impl)
    for name, value in initial.items():
        setattr(state, name, value)
    framer = ready_framer(impl)
    data = SYNC + SYNC + query(b"SELECT 1") + parse(b"SELECT 2") + FLUSH
    assert state.take_plain(framer, data) == 1
    assert state.outstanding == 5
    assert state.syncs_since_execute == 0
    assert state.batch_open and state.flush_pending
    assert_same_as_full_path(state, 1, data, initial)


def test_take_plain_statement_at_the_limit(impl):
    sql = b"SELECT '" + b"x" * (INSPECT_LIMIT - len(b"SELECT ''")) + b"'"
    assert len(sql) == INSPECT_LIMIT
    for data in (query(sql), parse(sql) + bind() + execute() + SYNC):
        state = new_state(impl)
        assert state.take_plain(ready_framer(impl), data) == 1
        assert_same_as_full_path(state, 1, data)


def test_take_plain_follows_pin_mask_and_inspect_limit(impl):
    state = new_state(impl)
    framer = ready_framer(impl)
    sql = b"SET search_path TO x"
    state.pin_mask = flags.PIN_MASK & ~flags.PIN_SET  # exclude_variable_sets
    assert state.take_plain(framer, query(sql)) == 1
    state.pin_mask = flags.PIN_SET
    assert state.take_plain(framer, query(b"LISTEN x")) == 1
    assert state.take_plain(framer, query(sql)) == -1
    state.inspect_limit = 8
    assert state.take_plain(framer, query(b"SELECT 1")) == 1  # exactly the limit
    assert state.take_plain(framer, query(b"SELECT 10")) == -1
    assert state.outstanding == 3
    session = PgSession(exclude_variable_sets=True)
    framer = ready_framer(codec.ACTIVE)
    assert session.take_plain(framer, query(sql)) == 1
    assert not session.pinned


def test_take_plain_repeated_parse_text_is_judged_like_a_new_one(impl):
    # the compiled twin remembers the last Parse text's flags: a different text of the same length, one that
    # pins, a changed pin mask and a simple Query with the remembered text must all be judged afresh
    state = new_state(impl)
    framer = ready_framer(impl)
    plain, pinning = b"SELECT $1::int  ", b"LISTEN channel_1"
    assert len(plain) == len(pinning)
    for _ in range(3):
        assert state.take_plain(framer, extended(plain)) == 1
    assert state.take_plain(framer, extended(pinning)) == -1
    assert state.take_plain(framer, extended(plain)) == 1
    assert state.take_plain(framer, query(pinning)) == -1
    state.pin_mask = flags.PIN_MASK & ~flags.PIN_LISTEN
    assert state.take_plain(framer, extended(pinning)) == 1
    assert state.take_plain(framer, extended(pinning)) == 1
    state.pin_mask = flags.PIN_MASK
    assert state.take_plain(framer, extended(pinning)) == -1
    assert state.outstanding == 6


def test_pg_session_take_plain():
    session = PgSession()
    framer = ready_framer(codec.ACTIVE)
    assert session.take_plain(framer, query(b"SELECT 1") + extended()) == 2
    assert session.outstanding == 2
    assert session.take_plain(framer, query(b"LISTEN x")) == -1
    assert session.outstanding == 2 and not session.pinned


PINNING_SQL = [
    b"SET search_path TO x",
    b"SELECT pg_advisory_lock(1)",
    b"CREATE TEMP TABLE t(a int)",
    b"PREPARE p AS SELECT 1",
    b"LISTEN x",
    b"DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    b"DISCARD ALL",
    b"LOAD 'auto_explain'",
    b"SELECT set_config('search_path', 'x', false)",
]
TOO_LONG = b"SELECT '" + b"x" * (INSPECT_LIMIT - len(b"SELECT ''") + 1) + b"'"
REFUSED_CHUNKS = {
    "named_parse": parse(b"SELECT 1", name=b"s1") + bind(statement=b"s1") + execute() + SYNC,
    "named_parse_alone": parse(b"SELECT 1", name=b"s1"),
    **{f"pin_query_{n}": query(sql) for n, sql in enumerate(PINNING_SQL)},
    **{f"pin_parse_{n}": extended(sql) for n, sql in enumerate(PINNING_SQL)},
    "pin_after_plain": query(b"SELECT 1") + extended() + query(PINNING_SQL[0]),
    "too_long_query": query(TOO_LONG),
    "too_long_parse": extended(TOO_LONG),
    "partial_end": query(b"SELECT 1") + query(b"SELECT 2")[:-1],
    "partial_header": query(b"SELECT 1") + b"Q\0\0",
    "lone_type_byte": b"S",
    "terminate": TERMINATE,
    "query_then_terminate": query(b"SELECT 1") + TERMINATE,
    "function_call": FUNCTION_CALL,
    "copy_data": COPY_DATA,
    "copy_done": pg_message(b"c"),
    "copy_fail": pg_message(b"f", b"no\0"),
    "unknown_type": pg_message(b"z"),
    "sync_then_copy_data": SYNC + COPY_DATA,
    "length_below_4": b"S" + struct.pack("!i", 3),
    "length_zero_after_plain": query(b"SELECT 1") + b"H" + struct.pack("!i", 0),
    "negative_length": b"Q" + struct.pack("!i", -5) + b"SELECT 1\0",
    "empty_query_body": pg_message(b"Q"),
    "empty_parse_body": pg_message(b"P"),
    "parse_missing_query_nul": pg_message(b"P", b"\0SELECT 1"),
    "length_past_end": b"Q" + struct.pack("!i", 100) + b"SELECT 1\0",
}


def refusal_case(impl, name: str):
    """(state, framer, data) for one refusal."""
    return new_state(impl), ready_framer(impl), REFUSED_CHUNKS[name]


def assert_refused(impl, state, framer, data, framer_check: bool = True) -> None:
    before = snapshot(state)
    framer_before = framer_snapshot(framer)
    assert state.take_plain(framer, data) == -1
    assert snapshot(state) == before
    assert framer_snapshot(framer) == framer_before
    if framer_check:
        # the framer still cuts the next chunk exactly as a twin that never saw take_plain
        twin = ready_framer(impl)
        follow = query(b"SELECT 42")
        assert framer.feed(follow) == twin.feed(follow)


def test_pinning_sql_is_classified_as_pinning(impl):
    for sql in PINNING_SQL:
        assert impl.classify_pg(sql) & flags.PIN_MASK, sql


@pytest.mark.parametrize("name", sorted(REFUSED_CHUNKS))
def test_take_plain_refuses(impl, name):
    state, framer, data = refusal_case(impl, name)
    assert_refused(impl, state, framer, data)


@pytest.mark.parametrize("name", ["plain", "extended", "flush"])
@pytest.mark.parametrize(
    "condition",
    [
        "failing",
        "discarding",
        "copy_in",
        "startup",
        "held_partial",
        "held_header",
        "bytearray",
        "bytes_subclass",
        "memoryview",
        "over_max_size",
        "broken",
    ],
)
def test_take_plain_refuses_conditions(impl, name, condition):
    data = {"plain": query(b"SELECT 1"), "extended": extended(), "flush": extended(end=FLUSH)}[name]
    state = new_state(impl)
    state.outstanding = 1
    state.syncs_since_execute = 1
    framer = ready_framer(impl)
    framer_check = True
    if condition == "failing":
        state.failing = ("57P01", "terminating connection")
    elif condition == "discarding":
        state.discarding = True
        state.batch_open = True
    elif condition == "copy_in":
        state.copy_in = True
    elif condition == "startup":
        framer = impl.ClientFramer()
        framer_check = False
    elif condition == "held_partial":
        framer.feed(query(b"SELECT 99")[:7])
        framer_check = False
    elif condition == "held_header":
        framer.feed(b"Q\0")
        framer_check = False
    elif condition == "bytearray":
        data = bytearray(data)
    elif condition == "bytes_subclass":

        class Chunk(bytes):
            pass

        data = Chunk(data)
    elif condition == "memoryview":
        data = memoryview(data)
    elif condition == "over_max_size":
        framer.max_message_size = 8  # the proxy lowers it before authentication
        framer_check = False
    elif condition == "broken":
        with pytest.raises(ProtocolViolation):
            framer.feed(b"Q" + struct.pack("!i", 2))
        framer_check = False
    assert_refused(impl, state, framer, data, framer_check)
    if condition == "held_partial":
        assert framer.feed(query(b"SELECT 99")[7:]) == (query(b"SELECT 99"), [(ord("Q"), 5, 15)])
    elif condition == "startup":
        assert framer.in_startup and framer.pending == 0
    elif condition == "broken":
        with pytest.raises(ProtocolViolation):
            framer.feed(query(b"SELECT 1"))


def test_take_plain_max_message_size_boundary(impl):
    data = query(b"SELECT 1")  # length field 13
    state = new_state(impl)
    assert state.take_plain(ready_framer(impl, 13), data) == 1
    assert_refused(impl, new_state(impl), ready_framer(impl, 12), data, framer_check=False)


def test_take_plain_refusal_then_full_path(impl):
    """A refused chunk is left whole for the full path, which pins where take_plain would not decide."""
    state = new_state(impl)
    framer = ready_framer(impl)
    data = query(b"SELECT 1") + parse(b"SELECT 1", name=b"s1") + bind(statement=b"s1") + execute() + SYNC
    assert state.take_plain(framer, data) == -1
    session, batch = full_path(data)
    assert session.pinned
    assert batch.requests == 2
    assert batch.forward == data
    assert session.outstanding == 2


# ---------------------------------------------------------------------------------------------- hypothesis
PLAIN_SQL = [
    b"",
    b"SELECT 1",
    b"select * from t where id = $1",
    b"SELECT 'LISTEN x'",
    b"/* SET search_path */ SELECT 2",
    b"INSERT INTO t VALUES (1)",
    b"BEGIN",
    b"COMMIT",
    b"SELECT 1; SELECT 2",
    b"WITH x AS (SELECT 1) SELECT * FROM x",
    b"SET LOCAL statement_timeout = 5",
    "SELECT 'é'".encode(),
]

plain_sql = st.one_of(
    st.sampled_from(PLAIN_SQL),
    st.integers(min_value=0, max_value=10**9).map(lambda n: b"SELECT %d" % n),
)
plain_messages = st.one_of(
    st.builds(query, plain_sql),
    st.builds(lambda sql, types: parse(sql, param_types=types), plain_sql, st.lists(st.integers(0, 3000)).map(tuple)),
    st.builds(bind, st.lists(st.binary(max_size=8), max_size=3).map(tuple)),
    st.builds(describe, st.sampled_from([b"P", b"S"])),
    st.builds(execute, st.just(b""), st.integers(min_value=0, max_value=100)),
    st.builds(close, st.sampled_from([b"P", b"S"])),
    st.just(FLUSH),
    st.just(SYNC),
)
refusing_messages = st.one_of(
    st.builds(query, st.sampled_from(PINNING_SQL)),
    st.builds(parse, st.sampled_from(PINNING_SQL)),
    st.builds(lambda name: parse(b"SELECT 1", name=name), st.sampled_from([b"s", b"stmt_1"])),
    st.sampled_from([TERMINATE, FUNCTION_CALL, COPY_DATA, pg_message(b"c"), b"S" + struct.pack("!i", 3)]),
)


@st.composite
def chunks_of_requests(draw):
    """(initial state, framer condition, data) where data is mostly plain and sometimes refused."""
    messages = draw(st.lists(plain_messages, min_size=1, max_size=10))
    if draw(st.integers(0, 5)) == 0:
        messages.insert(draw(st.integers(0, len(messages))), draw(refusing_messages))
    data = b"".join(messages)
    if draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(0, len(data) - 1))]
    initial = {
        "outstanding": draw(st.integers(0, 3)),
        "batch_open": draw(st.booleans()),
        "syncs_since_execute": draw(st.integers(0, 3)),
        "flush_pending": draw(st.booleans()),
        "status": draw(st.sampled_from(b"ITE")),
        "pinned": draw(st.booleans()),
    }
    rare = draw(st.integers(0, 19))
    if rare == 0:
        initial["failing"] = ("08006", "backend gone")
    elif rare == 1:
        initial["discarding"] = True
    elif rare == 2:
        initial["copy_in"] = True
    condition = draw(st.sampled_from(["ready"] * 17 + ["startup", "held", "bytearray"]))
    return initial, condition, data


def prepared(impl, initial: dict, condition: str, data: bytes):
    state = new_state(impl)
    for name, value in initial.items():
        setattr(state, name, value)
    framer = impl.ClientFramer() if condition == "startup" else ready_framer(impl)
    if condition == "held":
        framer.feed(b"Q\0\0")
    return state, framer, bytearray(data) if condition == "bytearray" else data


@FAST
@given(case=chunks_of_requests())
def test_take_plain_parity(twins, case):
    initial, condition, data = case
    results = []
    for impl in twins:
        state, framer, chunk = prepared(impl, initial, condition, data)
        result = state.take_plain(framer, chunk)
        results.append((result, snapshot(state), framer_snapshot(framer)))
    assert results[0] == results[1]


@FAST
@given(case=chunks_of_requests())
def test_take_plain_matches_full_path(impl, case):
    initial, condition, data = case
    state, framer, chunk = prepared(impl, initial, condition, data)
    before = snapshot(state)
    framer_before = framer_snapshot(framer)
    result = state.take_plain(framer, chunk)
    assert framer_snapshot(framer) == framer_before
    if result == -1:
        assert snapshot(state) == before
        return
    assert condition == "ready"
    assert not any(key in initial for key in ("failing", "discarding", "copy_in"))
    assert_same_as_full_path(state, result, data, initial)
