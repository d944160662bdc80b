"""PostgreSQL framing codecs: ClientFramer and ServerScanner, each tested compiled and pure."""

from __future__ import annotations

import struct

import pytest
from codec_impls import (
    IMPLEMENTATION_NAMES,
    backend_stream,
    chunks,
    load_implementation,
    pg_message,
    split_messages,
    startup_packet,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from rdsproxy.errors import ProtocolViolation

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

STARTUP = startup_packet(PROTOCOL_3_0, b"user\0alice\0database\0app\0\0")
QUERY = pg_message(b"Q", b"SELECT 1\0")
SYNC = pg_message(b"S")


@pytest.fixture(scope="module", params=IMPLEMENTATION_NAMES)
def impl(request):
    return load_implementation(request.param)


def payloads(buf: bytes, messages: list[tuple[int, int, int]]) -> list[tuple[int, bytes]]:
    return [(msg_type, buf[start:end]) for msg_type, start, end in messages]


def feed_all(framer, pieces: list[bytes]) -> list[tuple[int, bytes]]:
    cut = []
    for piece in pieces:
        buf, messages = framer.feed(piece)
        assert messages or buf == b""
        assert buf == b"" or messages[-1][2] == len(buf)  # buf holds exactly the complete messages
        cut += payloads(buf, messages)
    return cut


# ---------------------------------------------------------------------------------------------- ClientFramer
def test_startup_then_typed_messages(impl):
    framer = impl.ClientFramer()
    assert framer.in_startup
    data = STARTUP + QUERY + SYNC
    buf, messages = framer.feed(data)
    assert buf is data
    assert messages == [
        (0, 4, len(STARTUP)),
        (ord("Q"), len(STARTUP) + 5, len(STARTUP) + len(QUERY)),
        (ord("S"), len(data), len(data)),
    ]
    assert buf[4:8] == struct.pack("!i", PROTOCOL_3_0)  # the payload starts at the protocol code
    assert not framer.in_startup
    assert framer.pending == 0


@pytest.mark.parametrize("code", [SSL_REQUEST, GSSENC_REQUEST])
def test_encryption_requests_stay_in_startup(impl, code):
    framer = impl.ClientFramer()
    request = startup_packet(code)
    buf, messages = framer.feed(request)
    assert payloads(buf, messages) == [(0, struct.pack("!i", code))]
    assert framer.in_startup
    buf, messages = framer.feed(STARTUP + QUERY)
    assert [msg_type for msg_type, _, _ in messages] == [0, ord("Q")]
    assert not framer.in_startup


def test_cancel_request_leaves_startup(impl):
    framer = impl.ClientFramer()
    cancel = startup_packet(CANCEL_REQUEST, struct.pack("!ii", 1234, 5678))
    buf, messages = framer.feed(cancel)
    assert payloads(buf, messages) == [(0, struct.pack("!iii", CANCEL_REQUEST, 1234, 5678))]
    assert not framer.in_startup


def test_in_startup_is_writable(impl):
    framer = impl.ClientFramer()
    framer.in_startup = False
    buf, messages = framer.feed(QUERY)
    assert payloads(buf, messages) == [(ord("Q"), b"SELECT 1\0")]
    framer.in_startup = True
    buf, messages = framer.feed(startup_packet(SSL_REQUEST))
    assert messages == [(0, 4, 8)]


def test_incomplete_message_is_held_back(impl):
    framer = impl.ClientFramer()
    framer.in_startup = False
    data = QUERY + SYNC + QUERY[:7]
    buf, messages = framer.feed(data)
    assert buf == QUERY + SYNC
    assert len(messages) == 2
    assert framer.pending == 7
    rest = QUERY[7:] + SYNC
    buf, messages = framer.feed(rest)
    assert buf == QUERY + SYNC
    assert payloads(buf, messages) == [(ord("Q"), b"SELECT 1\0"), (ord("S"), b"")]
    assert framer.pending == 0


def test_partial_header_only(impl):
    framer = impl.ClientFramer()
    framer.in_startup = False
    assert framer.feed(b"Q\0\0") == (b"", [])
    assert framer.pending == 3
    buf, messages = framer.feed(QUERY[3:])
    assert buf == QUERY
    assert payloads(buf, messages) == [(ord("Q"), b"SELECT 1\0")]


def test_zero_copy_when_nothing_is_held(impl):
    framer = impl.ClientFramer()
    framer.in_startup = False
    data = QUERY * 3
    buf, _ = framer.feed(data)
    assert buf is data
    framer.feed(QUERY[:2])
    buf, _ = framer.feed(QUERY[2:])
    assert buf == QUERY  # leftover was joined: a new object
    data = SYNC + QUERY
    buf, _ = framer.feed(data)
    assert buf is data


def test_accepts_bytearray_and_memoryview(impl):
    framer = impl.ClientFramer()
    framer.in_startup = False
    for data in (bytearray(QUERY), memoryview(QUERY + SYNC)):
        buf, messages = framer.feed(data)
        assert isinstance(buf, bytes)
        assert payloads(buf, messages)[0] == (ord("Q"), b"SELECT 1\0")


def test_byte_at_a_time_matches_whole_buffer(impl):
    stream = STARTUP + QUERY + pg_message(b"P", b"\0SELECT $1\0\0\0") + SYNC + QUERY
    whole = feed_all(impl.ClientFramer(), [stream])
    one_by_one = feed_all(impl.ClientFramer(), [stream[i : i + 1] for i in range(len(stream))])
    assert one_by_one == whole
    assert [msg_type for msg_type, _ in whole] == [0, ord("Q"), ord("P"), ord("S"), ord("Q")]


def test_large_message_in_many_chunks(impl):
    framer = impl.ClientFramer()
    framer.in_startup = False
    big = pg_message(b"Q", b"x" * 1_000_000 + b"\0")
    received = []
    for index, piece in enumerate(chunks(big + SYNC, list(range(1000, len(big), 1000)))):
        buf, messages = framer.feed(piece)
        received += payloads(buf, messages)
        if index < len(big) // 1000 - 1:
            assert framer.pending == (index + 1) * 1000
    assert received == [(ord("Q"), b"x" * 1_000_000 + b"\0"), (ord("S"), b"")]
    assert framer.pending == 0


@pytest.mark.parametrize("length", [0, 4, 7, 10001, -1, 0x7FFFFFFF])
def test_bad_startup_length(impl, length):
    framer = impl.ClientFramer()
    with pytest.raises(ProtocolViolation, match="startup packet length|exceeds the limit"):
        framer.feed(struct.pack("!ii", length, PROTOCOL_3_0))


def test_startup_length_limits_are_inclusive(impl):
    framer = impl.ClientFramer()
    buf, messages = framer.feed(startup_packet(SSL_REQUEST))  # 8 bytes: the minimum
    assert messages == [(0, 4, 8)]
    body = b"x" * (10000 - 8)
    buf, messages = framer.feed(startup_packet(PROTOCOL_3_0, body))
    assert messages == [(0, 4, 10000)]


def test_startup_length_error_names_the_problem(impl):
    with pytest.raises(ProtocolViolation, match=r"startup packet length 20000 .*8\.\.10000"):
        impl.ClientFramer().feed(struct.pack("!ii", 20000, PROTOCOL_3_0))


@pytest.mark.parametrize("length", [0, 3, -5])
def test_typed_length_below_four(impl, length):
    framer = impl.ClientFramer()
    framer.in_startup = False
    with pytest.raises(ProtocolViolation, match=rf"'Q' has invalid length {length}"):
        framer.feed(b"Q" + struct.pack("!i", length))


def test_oversized_message_rejected_from_its_header(impl):
    framer = impl.ClientFramer(max_message_size=1000)
    framer.in_startup = False
    framer.feed(pg_message(b"Q", b"x" * 995))  # exactly 1000 bytes of length: allowed
    with pytest.raises(ProtocolViolation, match="message of 1001 bytes exceeds the limit of 1000 bytes"):
        framer.feed(b"Q" + struct.pack("!i", 1001))  # rejected before the body arrives


def test_oversized_startup_packet(impl):
    framer = impl.ClientFramer(max_message_size=100)
    with pytest.raises(ProtocolViolation, match="exceeds the limit of 100 bytes"):
        framer.feed(struct.pack("!i", 200))


def test_framer_unusable_after_error(impl):
    framer = impl.ClientFramer()
    framer.in_startup = False
    with pytest.raises(ProtocolViolation):
        framer.feed(b"Q\0\0\0\0")
    with pytest.raises(ProtocolViolation):
        framer.feed(QUERY)


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=30))
def test_random_chunkings_of_client_stream(impl, cuts):
    stream = (
        startup_packet(SSL_REQUEST)
        + STARTUP
        + QUERY
        + pg_message(b"P", b"s1\0SELECT $1\0\0\0")
        + pg_message(b"B", b"\0s1\0\0\0\0\0\0\0")
        + pg_message(b"E", b"\0\0\0\0\0")
        + SYNC
        + pg_message(b"X")
    )
    expected = feed_all(impl.ClientFramer(), [stream])
    framer = impl.ClientFramer()
    assert feed_all(framer, chunks(stream, cuts)) == expected
    assert framer.pending == 0


# ---------------------------------------------------------------------------------------------- ServerScanner
def interesting_messages(stream: bytes, interesting: bytes) -> list[tuple[int, bytes, int]]:
    return [message for message in split_messages(stream) if message[0] in interesting]


def scan_chunks(scanner, pieces: list[bytes]) -> list[tuple[int, bytes, int]]:
    """Events with their end offsets made absolute in the whole stream."""
    events = []
    offset = 0
    for piece in pieces:
        for msg_type, payload, end in scanner.feed(piece):
            assert 0 < end <= len(piece)
            events.append((msg_type, payload, offset + end))
        offset += len(piece)
    return events


def test_scanner_reports_only_interesting_messages(impl):
    stream = backend_stream()
    scanner = impl.ServerScanner()
    events = scanner.feed(stream)
    assert [(chr(t), p) for t, p, _ in events] == [
        ("S", b"application_name\0demo\0"),
        ("E", b'SERROR\0C42P01\0Mrelation "nope" does not exist\0\0'),
        ("Z", b"I"),
    ]
    assert events == interesting_messages(stream, b"ZESGHWK")
    assert events[-1][2] == len(stream)
    assert scanner.at_boundary
    assert all(type(payload) is bytes for _, payload, _ in events)


def test_scanner_default_and_custom_interesting(impl):
    assert impl.ServerScanner().interesting == b"ZESGHWK"
    stream = backend_stream(rows=5)
    scanner = impl.ServerScanner(b"TC")
    assert [chr(t) for t, _, _ in scanner.feed(stream)] == ["T", "C"]
    scanner.interesting = b"D"
    assert scanner.interesting == b"D"
    assert len(scanner.feed(stream)) == 5


def test_scanner_byte_at_a_time_matches_whole_buffer(impl):
    stream = backend_stream(rows=50)
    interesting = b"ZESNCT"
    whole = scan_chunks(impl.ServerScanner(interesting), [stream])
    assert whole == interesting_messages(stream, interesting)
    scanner = impl.ServerScanner(interesting)
    assert scan_chunks(scanner, [stream[i : i + 1] for i in range(len(stream))]) == whole
    assert scanner.at_boundary


def test_scanner_end_offsets_are_per_chunk(impl):
    first, second = pg_message(b"Z", b"T"), pg_message(b"C", b"BEGIN\0") + pg_message(b"Z", b"I")
    scanner = impl.ServerScanner()
    assert scanner.feed(first) == [(ord("Z"), b"T", len(first))]
    assert scanner.feed(second) == [(ord("Z"), b"I", len(second))]


def test_scanner_reassembles_split_interesting_message(impl):
    error = pg_message(b"E", b"SERROR\0C57014\0Mcanceling statement\0\0")
    scanner = impl.ServerScanner()
    assert scanner.feed(error[:3]) == []
    assert not scanner.at_boundary
    assert scanner.feed(error[3:10]) == []
    tail = error[10:] + pg_message(b"Z", b"I")
    assert scanner.feed(tail) == [
        (ord("E"), error[5:], len(error) - 10),
        (ord("Z"), b"I", len(tail)),
    ]
    assert scanner.at_boundary


def test_scanner_empty_body_message(impl):
    scanner = impl.ServerScanner(b"c")
    copy_done = pg_message(b"c")
    assert scanner.feed(copy_done[:4]) == []
    assert scanner.feed(copy_done[4:]) == [(ord("c"), b"", 1)]
    assert scanner.feed(copy_done) == [(ord("c"), b"", 5)]


def test_scanner_at_boundary(impl):
    scanner = impl.ServerScanner()
    assert scanner.at_boundary
    rows = pg_message(b"D", b"\0\1\0\0\0\1x") * 3
    scanner.feed(rows[:-2])
    assert not scanner.at_boundary
    assert scanner.feed(rows[-2:]) == []
    assert scanner.at_boundary
    scanner.feed(b"D")
    assert not scanner.at_boundary


def test_scanner_reset_forgets_partial_message(impl):
    scanner = impl.ServerScanner()
    scanner.feed(pg_message(b"E", b"SERROR\0\0")[:8])
    assert not scanner.at_boundary
    scanner.reset()
    assert scanner.at_boundary
    assert scanner.feed(pg_message(b"Z", b"I")) == [(ord("Z"), b"I", 6)]


@pytest.mark.parametrize("length", [0, 3, -1])
def test_scanner_rejects_length_below_four(impl, length):
    scanner = impl.ServerScanner()
    bad = b"D" + struct.pack("!i", length)
    with pytest.raises(ProtocolViolation, match=rf"'D' has invalid length {length}"):
        scanner.feed(pg_message(b"Z", b"I") + bad)
    scanner.reset()
    assert scanner.feed(bad[:2]) == []
    with pytest.raises(ProtocolViolation, match="invalid length"):
        scanner.feed(bad[2:])


def test_scanner_accepts_bytearray(impl):
    events = impl.ServerScanner().feed(bytearray(pg_message(b"Z", b"E")))
    assert events == [(ord("Z"), b"E", 6)]
    assert type(events[0][1]) is bytes


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=6000), max_size=40))
def test_scanner_random_chunkings(impl, cuts):
    stream = backend_stream(rows=40)
    scanner = impl.ServerScanner(b"ZESTC")
    assert scan_chunks(scanner, chunks(stream, cuts)) == interesting_messages(stream, b"ZESTC")
    assert scanner.at_boundary


def test_read_only_attributes(impl):
    with pytest.raises(AttributeError):
        impl.ClientFramer().pending = 1
    with pytest.raises(AttributeError):
        impl.ServerScanner().at_boundary = False


def test_max_message_size_can_be_raised_after_setup(impl):
    framer = impl.ClientFramer(64)
    framer.in_startup = False
    with pytest.raises(ProtocolViolation):
        framer.feed(b"Q" + (200).to_bytes(4, "big"))
    framer = impl.ClientFramer(64)
    framer.in_startup = False
    framer.max_message_size = 1024
    assert framer.max_message_size == 1024
    body = b"x" * 195 + b"\x00"
    buf, msgs = framer.feed(b"Q" + (200).to_bytes(4, "big") + body)
    assert msgs == [(ord("Q"), 5, 201)]


# --------------------------------------------------------------------------- parse_startup


def test_parse_startup_reads_a_startup_message(impl):
    version, params = impl.pgframe.parse_startup(STARTUP[4:])
    assert version == PROTOCOL_3_0
    assert params == {"user": "alice", "database": "app"}
    assert list(params) == ["user", "database"]  # in the order sent


def test_parse_startup_keeps_utf8_names_and_values_and_newer_minor_versions(impl):
    body = "user\0zoë\0application_name\0ünï\0_pq_.x\0on\0\0".encode()
    assert impl.pgframe.parse_startup(startup_packet(PROTOCOL_3_0 + 2, body)[4:]) == (
        PROTOCOL_3_0 + 2,
        {"user": "zoë", "application_name": "ünï", "_pq_.x": "on"},
    )


@pytest.mark.parametrize("code", [SSL_REQUEST, GSSENC_REQUEST])
def test_parse_startup_encryption_requests(impl, code):
    assert impl.pgframe.parse_startup(startup_packet(code)[4:]) == (code, None)


@pytest.mark.parametrize("secret", [b"\x01\x02\x03\x04", bytes(range(32)), b"s" * 256])
def test_parse_startup_cancel_request(impl, secret):
    payload = startup_packet(CANCEL_REQUEST, struct.pack("!I", 4242) + secret)[4:]
    assert impl.pgframe.parse_startup(payload) == (CANCEL_REQUEST, (4242, secret))


STARTUP_ERRORS = [
    (b"\x00\x03", "startup packet too short: 6 bytes"),
    (struct.pack("!I", PROTOCOL_3_0) + b"x" * 9993, "startup packet too long: 10001 bytes (limit 10000)"),
    (struct.pack("!I", SSL_REQUEST) + b"\0", "SSLRequest must be 8 bytes long, got 9"),
    (struct.pack("!I", GSSENC_REQUEST) + b"\0\0", "GSSENCRequest must be 8 bytes long, got 10"),
    (struct.pack("!II", CANCEL_REQUEST, 1) + b"abc", "CancelRequest has a bad length (15 bytes)"),
    (struct.pack("!I", CANCEL_REQUEST) + b"ab", "CancelRequest has a bad length (10 bytes)"),
    (struct.pack("!II", CANCEL_REQUEST, 1) + b"s" * 257, "the secret key must be 4 to 256 bytes"),
    (struct.pack("!I", (1234 << 16) | 5681), "unknown startup request code 1234.5681"),
    (struct.pack("!I", 2 << 16), "unsupported frontend protocol 2.0: the proxy supports 3.0"),
    (struct.pack("!I", PROTOCOL_3_0), "missing the final NUL"),
    (struct.pack("!I", PROTOCOL_3_0) + b"user", "startup parameter name is not NUL-terminated"),
    (struct.pack("!I", PROTOCOL_3_0) + b"user\0", "startup parameter 'user' has no value"),
    (struct.pack("!I", PROTOCOL_3_0) + b"user\0bob", "value of startup parameter 'user' is not NUL-terminated"),
    (struct.pack("!I", PROTOCOL_3_0) + b"user\0bob\0", "missing the final NUL"),
    (struct.pack("!I", PROTOCOL_3_0) + b"us\xffer\0bob\0\0", "startup packet parameter name is not valid UTF-8"),
    (struct.pack("!I", PROTOCOL_3_0) + b"user\0b\xffob\0\0", "value of parameter 'user' is not valid UTF-8"),
    (struct.pack("!I", PROTOCOL_3_0) + b"user\0a\0user\0b\0\0", "startup parameter 'user' appears more than once"),
    (struct.pack("!I", PROTOCOL_3_0) + b"user\0a\0\0x", "bytes after the NUL that ends the parameter list"),
    (struct.pack("!I", PROTOCOL_3_0) + b"database\0a\0\0", "no PostgreSQL user name specified"),
    (struct.pack("!I", PROTOCOL_3_0) + b"user\0\0\0", "no PostgreSQL user name specified"),
]


@pytest.mark.parametrize(("payload", "message"), STARTUP_ERRORS)
def test_parse_startup_refuses_malformed_packets_naming_the_problem(impl, payload, message):
    with pytest.raises(ProtocolViolation, match=message.replace("(", r"\(").replace(")", r"\)")):
        impl.pgframe.parse_startup(payload)
