"""MySQL framing codecs: MyClientFramer, packet_payload and MyResponseScanner, each tested compiled and pure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from codec_impls import (
    COM_FIELD_LIST,
    COM_PING,
    COM_QUERY,
    COM_STATISTICS,
    COM_STMT_EXECUTE,
    COM_STMT_FETCH,
    COM_STMT_PREPARE,
    CURSOR_EXISTS,
    IMPLEMENTATION_NAMES,
    LAST_ROW_SENT,
    LOCAL_INFILE,
    MAX_PHYSICAL,
    MORE_RESULTS,
    PREPARE_OK,
    RESPONSE_DONE,
    binary_row,
    chunks,
    column_definition,
    eof_packet,
    err_packet,
    lenenc_bytes,
    lenenc_int,
    load_implementation,
    my_packet,
    my_stream,
    ok_packet,
    prepare_response,
    response_scripts,
    result_set,
    text_row,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdsproxy.errors import ProtocolViolation

FIXTURES = json.loads((Path(__file__).parent / "data" / "mariadb_responses.json").read_text())
IN_TRANS, AUTOCOMMIT, IN_TRANS_READONLY = 0x0001, 0x0002, 0x2000

QUERY = my_packet(b"\x03SELECT 1")
PING = my_packet(b"\x0e")


@pytest.fixture(scope="module", params=IMPLEMENTATION_NAMES)
def impl(request):
    return load_implementation(request.param)


@pytest.fixture(params=[False, True], ids=["eof", "deprecate_eof"])
def deprecate_eof(request):
    return request.param


def cut_packets(framer, pieces: list[bytes]) -> list[tuple[int, bytes, int]]:
    """(seq, raw bytes, payload length) of every logical packet the framer cuts from the pieces."""
    cut = []
    for piece in pieces:
        buf, packets = framer.feed(piece)
        assert buf == b"" or packets[-1][2] == len(buf)  # buf holds exactly the complete packets
        assert not packets or packets[0][1] == 0
        cut += [(seq, buf[start:end], size) for seq, start, end, size in packets]
    return cut


# ---------------------------------------------------------------------------------------------- MyClientFramer
def test_cuts_commands_zero_copy(impl):
    framer = impl.MyClientFramer()
    data = QUERY + PING + my_packet(b"", 7)
    buf, packets = framer.feed(data)
    assert buf is data
    assert packets == [(0, 0, 13, 9), (0, 13, 18, 1), (7, 18, 22, 0)]
    assert framer.pending == 0


def test_incomplete_packet_is_held_back(impl):
    framer = impl.MyClientFramer()
    buf, packets = framer.feed(QUERY + PING[:3])
    assert buf == QUERY
    assert packets == [(0, 0, 13, 9)]
    assert framer.pending == 3
    buf, packets = framer.feed(PING[3:] + QUERY[:6])
    assert buf == PING
    assert packets == [(0, 0, 5, 1)]
    assert framer.pending == 6
    assert framer.feed(QUERY[6:8]) == (b"", [])
    buf, packets = framer.feed(QUERY[8:])
    assert buf == QUERY
    assert impl.myframe.packet_payload(buf, *packets[0][1:3]) == b"\x03SELECT 1"


def test_framer_byte_at_a_time_matches_whole_buffer(impl):
    stream = QUERY + my_packet(b"\x16SELECT ?", 0) + PING + my_packet(b"", 0) + my_packet(b"\x02app" * 50, 3)
    whole = cut_packets(impl.MyClientFramer(), [stream])
    assert [raw for _, raw, _ in whole] == [QUERY, my_packet(b"\x16SELECT ?"), PING, my_packet(b""), whole[-1][1]]
    assert cut_packets(impl.MyClientFramer(), [stream[i : i + 1] for i in range(len(stream))]) == whole


def test_accepts_bytearray_and_memoryview(impl):
    framer = impl.MyClientFramer()
    for data in (bytearray(QUERY), memoryview(QUERY + PING)):
        buf, packets = framer.feed(data)
        assert type(buf) is bytes
        assert buf[packets[0][1] : packets[0][2]] == QUERY


@pytest.mark.parametrize("size", [MAX_PHYSICAL - 1, MAX_PHYSICAL, MAX_PHYSICAL + 1000, 2 * MAX_PHYSICAL + 5])
def test_large_payload_split_across_physical_packets(impl, size):
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    raw = my_packet(payload)
    assert len(raw) == size + 4 * (size // MAX_PHYSICAL + 1)
    framer = impl.MyClientFramer()
    received = []
    for piece in chunks(raw + PING, list(range(1 << 20, len(raw), 1 << 20))):
        buf, packets = framer.feed(piece)
        received += [
            (seq, buf[start:end], impl.myframe.packet_payload(buf, start, end), length)
            for seq, start, end, length in packets
        ]
    assert len(received) == 2
    seq, big_raw, big_payload, length = received[0]
    assert (seq, length) == (0, size)
    assert big_raw == raw  # forwardable as-is: every physical header kept
    assert big_payload == payload
    assert received[1][1:] == (PING, b"\x0e", 1)
    assert framer.pending == 0


def test_large_packet_is_not_rescanned_per_chunk(impl):
    framer = impl.MyClientFramer()
    raw = my_packet(b"\x03" + b"y" * (MAX_PHYSICAL + 10), seq=0)
    for index, piece in enumerate(chunks(raw, list(range(4096, len(raw), 4096)))):
        buf, packets = framer.feed(piece)
        if buf:
            break
        assert framer.pending == min((index + 1) * 4096, len(raw))
    assert packets == [(0, 0, len(raw), MAX_PHYSICAL + 11)]


def test_sequence_ids_wrap_within_a_logical_packet(impl):
    raw = my_packet(b"z" * MAX_PHYSICAL, seq=255)
    assert raw[3] == 255 and raw[MAX_PHYSICAL + 4 + 3] == 0
    buf, packets = impl.MyClientFramer().feed(raw)
    assert packets == [(255, 0, len(raw), MAX_PHYSICAL)]


def test_packet_payload_of_a_single_physical_packet(impl):
    data = PING + QUERY
    assert impl.myframe.packet_payload(data, 5, len(data)) == b"\x03SELECT 1"
    assert impl.myframe.packet_payload(bytearray(data), 0, 5) == b"\x0e"
    assert type(impl.myframe.packet_payload(data, 0, 5)) is bytes


@pytest.mark.parametrize(("start", "end"), [(0, 4), (0, 14), (1, 13), (0, 12), (13, 13)])
def test_packet_payload_rejects_offsets_that_are_not_a_packet(impl, start, end):
    with pytest.raises(ValueError, match="not a whole logical packet"):
        impl.myframe.packet_payload(QUERY + b"\x00", start, end)


def test_sequence_break_inside_a_logical_packet(impl):
    first = MAX_PHYSICAL.to_bytes(3, "little") + b"\x00" + b"a" * MAX_PHYSICAL
    framer = impl.MyClientFramer()
    assert framer.feed(first) == (b"", [])
    with pytest.raises(ProtocolViolation, match="sequence id 2 does not follow 0 within one logical packet"):
        framer.feed(b"\x01\x00\x00\x02b")
    with pytest.raises(ProtocolViolation, match="after a protocol violation"):
        framer.feed(PING)


def test_sequence_ids_of_separate_packets_are_not_checked(impl):
    buf, packets = impl.MyClientFramer().feed(my_packet(b"\x0e", 9) + my_packet(b"\x0e", 3))
    assert [seq for seq, *_ in packets] == [9, 3]


def test_oversized_packet_rejected_from_its_header(impl):
    framer = impl.MyClientFramer(max_packet_size=1000)
    buf, packets = framer.feed(my_packet(b"q" * 1000))
    assert packets == [(0, 0, 1004, 1000)]
    with pytest.raises(ProtocolViolation, match="payload of 1001 bytes or more exceeds the limit of 1000 bytes"):
        framer.feed((1001).to_bytes(3, "little") + b"\x00")  # before any body arrives


def test_oversize_counts_every_physical_packet(impl):
    framer = impl.MyClientFramer(max_packet_size=MAX_PHYSICAL + 5)
    first = MAX_PHYSICAL.to_bytes(3, "little") + b"\x00" + b"a" * MAX_PHYSICAL
    assert framer.feed(first) == (b"", [])
    with pytest.raises(ProtocolViolation, match=f"payload of {MAX_PHYSICAL + 6} bytes or more exceeds"):
        framer.feed(b"\x06\x00\x00\x01")


def test_max_packet_size_is_writable(impl):
    framer = impl.MyClientFramer(64)
    assert framer.max_packet_size == 64
    framer.max_packet_size = 4096
    assert framer.max_packet_size == 4096
    buf, packets = framer.feed(my_packet(b"x" * 1000))
    assert packets[0][3] == 1000
    with pytest.raises(AttributeError):
        framer.pending = 1


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=700), max_size=30))
def test_random_chunkings_of_client_stream(impl, cuts):
    stream = QUERY + my_packet(b"\x16SELECT ?") + my_packet(b"\x17" + bytes(300)) + PING + my_packet(b"") + QUERY
    expected = cut_packets(impl.MyClientFramer(), [stream])
    framer = impl.MyClientFramer()
    assert cut_packets(framer, chunks(stream, cuts)) == expected
    assert framer.pending == 0


# ---------------------------------------------------------------------------------------------- MyResponseScanner
def scan(scanner, pieces: list[bytes]) -> list[tuple[int, int, int, int]]:
    """Events with their end offsets made absolute in the whole stream."""
    events = []
    offset = 0
    for piece in pieces:
        for kind, status, end, extra in scanner.feed(piece):
            assert 0 < end <= len(piece)
            events.append((kind, status, offset + end, extra))
        offset += len(piece)
    return events


def scanner_for(impl, deprecate_eof: bool, *commands, cursor: bool = False):
    scanner = impl.MyResponseScanner(deprecate_eof)
    for command in commands:
        scanner.expect(command, cursor=cursor)
    return scanner


def test_ok_response(impl):
    scanner = scanner_for(impl, False, COM_QUERY)
    assert not scanner.idle
    data = my_stream([ok_packet(IN_TRANS | AUTOCOMMIT, affected_rows=3, insert_id=300)])
    assert scanner.feed(data) == [(RESPONSE_DONE, IN_TRANS | AUTOCOMMIT, len(data), 0)]
    assert scanner.idle
    assert scanner.at_boundary
    assert scanner.last_status == IN_TRANS | AUTOCOMMIT
    assert (scanner.last_affected_rows, scanner.last_insert_id) == (3, 300)


def test_ok_with_long_counters_and_session_state(impl):
    scanner = scanner_for(impl, True, COM_QUERY)
    payload = ok_packet(0x4002, affected_rows=1 << 40, insert_id=(1 << 64) - 1, info=b"\x00\x0a\x01\x08autocommit")
    assert scanner.feed(my_stream([payload])) == [(RESPONSE_DONE, 0x4002, len(payload) + 4, 0)]
    assert (scanner.last_affected_rows, scanner.last_insert_id) == (1 << 40, (1 << 64) - 1)


def test_err_response_has_no_status(impl):
    scanner = scanner_for(impl, False, COM_QUERY)
    scanner.last_status = AUTOCOMMIT
    data = my_stream([err_packet()])
    assert scanner.feed(data) == [(RESPONSE_DONE, -1, len(data), 1)]
    assert scanner.last_status == AUTOCOMMIT  # an ERR carries none: the last one stays
    assert (scanner.last_affected_rows, scanner.last_insert_id) == (-1, 0)


def test_text_result_set(impl, deprecate_eof):
    rows = [text_row(b"%d" % n, None, b"v" * n) for n in range(300)]
    data = my_stream(result_set(3, rows, deprecate_eof, IN_TRANS))
    scanner = scanner_for(impl, deprecate_eof, COM_QUERY)
    assert scanner.feed(data) == [(RESPONSE_DONE, IN_TRANS, len(data), 0)]
    assert scanner.last_affected_rows == -1  # ROW_COUNT() after a result set


def test_binary_rows_starting_with_zero_are_not_ok_packets(impl, deprecate_eof):
    rows = [binary_row(b"\x00" * 7) for _ in range(5)] + [b"\x00\x00\x00\x02\x00\x00\x00"]  # looks like an OK
    data = my_stream(result_set(1, rows, deprecate_eof))
    assert scanner_for(impl, deprecate_eof, COM_STMT_EXECUTE).feed(data) == [(RESPONSE_DONE, AUTOCOMMIT, len(data), 0)]


def test_text_row_starting_with_fe_without_deprecate_eof(impl):
    # 0xFE opens an 8-byte lenenc length: such a row is at least 9 bytes long, an EOF at most 5
    long_row = b"\xfe" + (9).to_bytes(8, "little") + b"123456789"
    data = my_stream(result_set(1, [long_row, b"\xfe" * 9], False))
    assert scanner_for(impl, False, COM_QUERY).feed(data) == [(RESPONSE_DONE, AUTOCOMMIT, len(data), 0)]


def test_huge_row_starting_with_fe_under_deprecate_eof(impl):
    value = b"r" * (MAX_PHYSICAL + 100)
    row = lenenc_bytes(value)  # 0xFE + 8 bytes: the first physical packet is 0xFFFFFF long
    assert row[0] == 0xFE
    data = my_stream(result_set(1, [text_row(b"a"), row, text_row(b"b")], True, IN_TRANS))
    scanner = scanner_for(impl, True, COM_QUERY)
    pieces = chunks(data, list(range(65536, len(data), 65536)))
    assert scan(scanner, pieces) == [(RESPONSE_DONE, IN_TRANS, len(data), 0)]


def test_multiple_results(impl, deprecate_eof):
    more = AUTOCOMMIT | MORE_RESULTS
    payloads = (
        result_set(1, [text_row(b"1")], deprecate_eof, more)
        + [ok_packet(more, affected_rows=2)]
        + result_set(2, [text_row(b"x", b"y")] * 3, deprecate_eof, more)
        + [ok_packet(AUTOCOMMIT, affected_rows=5, insert_id=9)]
    )
    data = my_stream(payloads)
    scanner = scanner_for(impl, deprecate_eof, COM_QUERY)
    assert scanner.feed(data) == [(RESPONSE_DONE, AUTOCOMMIT, len(data), 0)]
    assert (scanner.last_affected_rows, scanner.last_insert_id) == (5, 9)


def test_error_ends_multiple_results(impl, deprecate_eof):
    payloads = result_set(1, [text_row(b"1")], deprecate_eof, AUTOCOMMIT | MORE_RESULTS) + [err_packet()]
    data = my_stream(payloads)
    assert scanner_for(impl, deprecate_eof, COM_QUERY).feed(data) == [(RESPONSE_DONE, -1, len(data), 1)]


def test_error_in_the_middle_of_rows(impl, deprecate_eof):
    rows = [text_row(b"%d" % n) for n in range(40)]
    payloads = result_set(1, rows, deprecate_eof)[:-1] + [err_packet(1242, b"Subquery returns more than 1 row")]
    data = my_stream(payloads) + my_stream([ok_packet(IN_TRANS)])
    scanner = scanner_for(impl, deprecate_eof, COM_QUERY, COM_PING)
    assert scanner.feed(data) == [
        (RESPONSE_DONE, -1, len(my_stream(payloads)), 1),
        (RESPONSE_DONE, IN_TRANS, len(data), 0),
    ]


def test_local_infile(impl, deprecate_eof):
    prompt = my_stream([b"\xfbdata.csv"])
    final = my_packet(ok_packet(AUTOCOMMIT, affected_rows=3), seq=5)
    scanner = scanner_for(impl, deprecate_eof, COM_QUERY)
    scanner.last_status = AUTOCOMMIT
    assert scanner.feed(prompt) == [(LOCAL_INFILE, AUTOCOMMIT, len(prompt), 0)]
    assert not scanner.idle  # the same command goes on: no new expect()
    assert scanner.feed(final) == [(RESPONSE_DONE, AUTOCOMMIT, len(final), 0)]
    assert scanner.idle


def test_local_infile_in_multiple_results(impl, deprecate_eof):
    data = my_stream(
        [ok_packet(AUTOCOMMIT | MORE_RESULTS), b"\xfbrows.csv", err_packet(1062, b"Duplicate entry", b"23000")]
    )
    events = scanner_for(impl, deprecate_eof, COM_QUERY).feed(data)
    assert [(kind, extra) for kind, _, _, extra in events] == [(LOCAL_INFILE, 0), (RESPONSE_DONE, 1)]


def test_cursor_response_ends_after_the_column_definitions(impl, deprecate_eof):
    columns = [lenenc_int(2), column_definition(b"id"), column_definition(b"note")]
    terminator = ok_packet(0x0042, header=0xFE) if deprecate_eof else eof_packet(0x0042)
    opened = my_stream(columns + [terminator])
    scanner = scanner_for(impl, deprecate_eof, COM_STMT_EXECUTE, cursor=True)
    assert scanner.feed(opened) == [(RESPONSE_DONE, 0x0042, len(opened), 0)]
    assert scanner.last_status & CURSOR_EXISTS
    scanner.expect(COM_STMT_FETCH)
    rows = [binary_row(b"%d" % n, None) for n in range(10)]
    fetched = my_stream(rows + [terminator])
    assert scanner.feed(fetched) == [(RESPONSE_DONE, 0x0042, len(fetched), 0)]
    scanner.expect(COM_STMT_FETCH)
    last = my_stream([ok_packet(0x0082, header=0xFE) if deprecate_eof else eof_packet(0x0082)])
    assert scanner.feed(last) == [(RESPONSE_DONE, 0x0082, len(last), 0)]
    assert scanner.last_status & LAST_ROW_SENT


def test_cursor_requested_but_not_opened(impl):
    # without CURSOR_EXISTS in the metadata EOF the server streams the rows as usual
    data = my_stream(result_set(1, [binary_row(b"a")] * 3, False, AUTOCOMMIT))
    scanner = scanner_for(impl, False, COM_STMT_EXECUTE, cursor=True)
    assert scanner.feed(data) == [(RESPONSE_DONE, AUTOCOMMIT, len(data), 0)]


def test_cursor_flag_without_a_requested_cursor_does_not_end_the_response(impl):
    # a stored procedure's own cursor can set CURSOR_EXISTS on a result set whose rows still follow
    payloads = result_set(1, [text_row(b"1")], False, AUTOCOMMIT, metadata_status=AUTOCOMMIT | CURSOR_EXISTS)
    data = my_stream(payloads)
    assert scanner_for(impl, False, COM_QUERY).feed(data) == [(RESPONSE_DONE, AUTOCOMMIT, len(data), 0)]


@pytest.mark.parametrize(("columns", "params"), [(2, 3), (0, 2), (3, 0), (0, 0)])
def test_prepare(impl, deprecate_eof, columns, params):
    payloads = prepare_response(0xDEADBEEF, columns, params, deprecate_eof)
    first = len(my_stream(payloads[:1]))
    data = my_stream(payloads)
    scanner = scanner_for(impl, deprecate_eof, COM_STMT_PREPARE)
    scanner.last_status = IN_TRANS
    # the status is the last one seen: that of the definitions' EOF when there is one
    final_status = AUTOCOMMIT if not deprecate_eof and (columns or params) else IN_TRANS
    assert scanner.feed(data) == [
        (PREPARE_OK, IN_TRANS, first, 0xDEADBEEF),
        (RESPONSE_DONE, final_status, len(data), 0),
    ]
    expected_packets = 1 + columns + params + (0 if deprecate_eof else (columns > 0) + (params > 0))
    assert len(payloads) == expected_packets


def test_prepare_error(impl):
    data = my_stream([err_packet(1064, b"You have an error in your SQL syntax", b"42000")])
    assert scanner_for(impl, True, COM_STMT_PREPARE).feed(data) == [(RESPONSE_DONE, -1, len(data), 1)]


def test_field_list(impl, deprecate_eof):
    terminator = ok_packet(AUTOCOMMIT, header=0xFE) if deprecate_eof else eof_packet(AUTOCOMMIT)
    data = my_stream([column_definition(b"id"), column_definition(b"label"), terminator])
    assert scanner_for(impl, deprecate_eof, COM_FIELD_LIST).feed(data) == [(RESPONSE_DONE, AUTOCOMMIT, len(data), 0)]
    error = my_stream([err_packet()])
    assert scanner_for(impl, deprecate_eof, COM_FIELD_LIST).feed(error) == [(RESPONSE_DONE, -1, len(error), 1)]


def test_statistics_is_one_string_packet(impl):
    scanner = scanner_for(impl, False, COM_STATISTICS, COM_PING)
    scanner.last_status = AUTOCOMMIT
    text = my_stream([b"Uptime: 40  Threads: 1  Questions: 12  Slow queries: 0  Opens: 17"])
    data = text + my_stream([ok_packet(AUTOCOMMIT)])
    assert scanner.feed(data) == [(RESPONSE_DONE, AUTOCOMMIT, len(text), 0), (RESPONSE_DONE, AUTOCOMMIT, len(data), 0)]


@pytest.mark.parametrize("command", [0x02, 0x0C, 0x0D, 0x0E, 0x1A, 0x1B, 0x1F])
def test_simple_commands_answer_ok_eof_or_err(impl, command):
    for payload, expected in [
        (ok_packet(AUTOCOMMIT), (AUTOCOMMIT, 0)),
        (eof_packet(AUTOCOMMIT), (AUTOCOMMIT, 0)),
        (ok_packet(AUTOCOMMIT, header=0xFE), (AUTOCOMMIT, 0)),
        (err_packet(1094, b"Unknown thread id: 5", b"HY000"), (-1, 1)),
    ]:
        data = my_stream([payload])
        assert scanner_for(impl, False, command).feed(data) == [(RESPONSE_DONE, expected[0], len(data), expected[1])]


def test_pipelined_commands_in_one_chunk(impl, deprecate_eof):
    responses = [
        my_stream([ok_packet(IN_TRANS)]),
        my_stream(prepare_response(7, 1, 1, deprecate_eof)),
        my_stream(result_set(1, [binary_row(b"z")], deprecate_eof, IN_TRANS)),
        my_stream([err_packet()]),
        my_stream([ok_packet(AUTOCOMMIT)]),
    ]
    scanner = scanner_for(impl, deprecate_eof, COM_QUERY, COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_QUERY, COM_QUERY)
    assert scanner.outstanding == 5
    data = b"".join(responses)
    ends = [sum(map(len, responses[: n + 1])) for n in range(len(responses))]
    events = scanner.feed(data)
    assert [(kind, end) for kind, _, end, _ in events] == [
        (RESPONSE_DONE, ends[0]),
        (PREPARE_OK, ends[0] + len(my_stream(prepare_response(7, 1, 1, deprecate_eof)[:1]))),
        (RESPONSE_DONE, ends[1]),
        (RESPONSE_DONE, ends[2]),
        (RESPONSE_DONE, ends[3]),
        (RESPONSE_DONE, ends[4]),
    ]
    prepare_status = IN_TRANS if deprecate_eof else AUTOCOMMIT  # that of the EOF after the definitions
    statuses = [status for kind, status, _, _ in events if kind == RESPONSE_DONE]
    assert statuses == [IN_TRANS, prepare_status, IN_TRANS, -1, AUTOCOMMIT]
    assert scanner.idle and scanner.outstanding == 0


def test_expect_while_a_response_is_under_way(impl):
    scanner = scanner_for(impl, False, COM_QUERY)
    data = my_stream(result_set(1, [text_row(b"1")] * 5, False))
    assert scanner.feed(data[:20]) == []
    scanner.expect(COM_PING)
    assert scanner.outstanding == 2
    tail = data[20:] + my_stream([ok_packet()])
    assert [end for _, _, end, _ in scanner.feed(tail)] == [len(data) - 20, len(tail)]


def test_scanner_byte_at_a_time_matches_whole_buffer(impl, deprecate_eof):
    commands = [COM_QUERY, COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_QUERY, COM_FIELD_LIST, COM_STATISTICS]
    stream = b"".join(
        [
            my_stream(result_set(2, [text_row(b"a" * 300, None)] * 20, deprecate_eof, AUTOCOMMIT | MORE_RESULTS)),
            my_stream([ok_packet(IN_TRANS, affected_rows=300)]),
            my_stream(prepare_response(3, 2, 2, deprecate_eof)),
            my_stream(result_set(1, [binary_row(b"q")] * 4, deprecate_eof, IN_TRANS)),
            my_stream([b"\xfbfile", ok_packet(IN_TRANS)]),
            my_stream([column_definition(b"f"), eof_packet()]),
            my_stream([b"Uptime: 1"]),
        ]
    )
    whole = scan(scanner_for(impl, deprecate_eof, *commands), [stream])
    kinds = [RESPONSE_DONE, PREPARE_OK, RESPONSE_DONE, RESPONSE_DONE, LOCAL_INFILE, RESPONSE_DONE, RESPONSE_DONE]
    assert [kind for kind, *_ in whole] == [*kinds, RESPONSE_DONE]
    assert whole[-1][2] == len(stream)
    scanner = scanner_for(impl, deprecate_eof, *commands)
    assert scan(scanner, [stream[i : i + 1] for i in range(len(stream))]) == whole
    assert scanner.idle and scanner.at_boundary


def test_at_boundary_and_reset(impl):
    scanner = scanner_for(impl, False, COM_QUERY)
    data = my_stream(result_set(1, [text_row(b"x" * 100)], False))
    scanner.feed(data[:2])
    assert not scanner.at_boundary
    scanner.feed(data[2:30])
    assert not scanner.at_boundary
    scanner.reset()
    assert scanner.at_boundary and scanner.idle and scanner.last_status == -1
    with pytest.raises(ProtocolViolation, match="unexpected data from the server"):
        scanner.feed(data)


def test_unexpected_data_breaks_the_scanner_until_reset(impl):
    scanner = impl.MyResponseScanner(False)
    with pytest.raises(ProtocolViolation, match="unexpected data from the server"):
        scanner.feed(my_stream([ok_packet()]))
    scanner.expect(COM_QUERY)
    with pytest.raises(ProtocolViolation, match="used after a protocol violation"):
        scanner.feed(my_stream([ok_packet()]))
    scanner.reset()
    scanner.expect(COM_QUERY)
    assert scanner.feed(my_stream([ok_packet()]))[0][0] == RESPONSE_DONE


def test_data_after_the_last_response(impl):
    scanner = scanner_for(impl, False, COM_QUERY)
    with pytest.raises(ProtocolViolation, match="unexpected data"):
        scanner.feed(my_stream([ok_packet()]) + my_stream([ok_packet()]))


@pytest.mark.parametrize(
    ("command", "payloads", "message"),
    [
        (COM_QUERY, [b""], "empty packet"),
        (COM_QUERY, [b"\xfc\x01"], "malformed column count"),
        (COM_QUERY, [b"\x02\x01"], "malformed column count"),  # a metadata-follows byte: unsupported capability
        (COM_QUERY, [b"\x01", column_definition(b"a"), text_row(b"1")], "expected an EOF packet"),
        (COM_STMT_PREPARE, [ok_packet()], "malformed COM_STMT_PREPARE response"),
        (COM_QUERY, [b"\x00\xfe\x01\x02"], "truncated OK or EOF packet"),
        (COM_QUERY, [b"\x00\x00\xfe" + bytes(5)], "truncated OK or EOF packet"),
        (COM_PING, [b"\xfe\x00\x00"], "truncated OK or EOF packet"),
    ],
)
def test_malformed_responses(impl, command, payloads, message):
    with pytest.raises(ProtocolViolation, match=message):
        scanner_for(impl, False, command).feed(my_stream(payloads))


def test_cached_metadata_flag(impl, deprecate_eof):
    terminator = ok_packet(AUTOCOMMIT, header=0xFE) if deprecate_eof else eof_packet(AUTOCOMMIT)
    eof = [] if deprecate_eof else [eof_packet()]
    definitions = [column_definition(b"a"), column_definition(b"b")]
    with_definitions = my_stream([b"\x02\x01", *definitions, *eof, binary_row(b"1", b"2"), terminator])
    skipped = my_stream([b"\x02\x00", *eof, binary_row(b"1", b"2"), terminator])
    plain = my_stream([b"\x02", *definitions, *eof, terminator])  # no flag byte: definitions follow
    scanner = impl.MyResponseScanner(deprecate_eof, cache_metadata=True)
    assert scanner.cache_metadata
    for data in (with_definitions, skipped, plain):
        scanner.expect(COM_STMT_EXECUTE)
        assert scanner.feed(data) == [(RESPONSE_DONE, AUTOCOMMIT, len(data), 0)]
    with pytest.raises(ProtocolViolation, match="without telling the scanner"):
        scanner_for(impl, deprecate_eof, COM_STMT_EXECUTE).feed(skipped)


def test_progress_reports_are_skipped(impl):
    progress = b"\xff\xff\xff\x01\x01\x00\x10\x00\x00\x00\x04stage"
    data = my_stream([progress, progress, ok_packet(AUTOCOMMIT)])
    assert scanner_for(impl, False, COM_QUERY).feed(data) == [(RESPONSE_DONE, AUTOCOMMIT, len(data), 0)]


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (0x11, "authentication"),
        (0x01, "no response"),
        (0x19, "no response"),
        (0x18, "no response"),
        (0x12, "replication"),
    ],
)
def test_commands_that_cannot_be_expected(impl, command, reason):
    with pytest.raises(ValueError, match=reason):
        impl.MyResponseScanner(False).expect(command)


def test_expect_argument_checks(impl):
    scanner = impl.MyResponseScanner(False)
    with pytest.raises(ValueError, match="out of range"):
        scanner.expect(256)
    with pytest.raises(ValueError, match="only COM_STMT_EXECUTE"):
        scanner.expect(COM_QUERY, cursor=True)
    assert scanner.idle


def test_read_only_attributes(impl):
    scanner = impl.MyResponseScanner(True)
    assert scanner.deprecate_eof
    for name in ("at_boundary", "idle", "outstanding", "deprecate_eof", "last_affected_rows", "last_insert_id"):
        with pytest.raises(AttributeError):
            setattr(scanner, name, 1)
    scanner.last_status = 0x4002
    assert scanner.last_status == 0x4002


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=response_scripts(st), cuts=st.lists(st.integers(min_value=1, max_value=3000), max_size=12))
def test_scanner_finds_every_generated_response_end(impl, script, cuts):
    deprecate, commands, stream, expected = script
    scanner = impl.MyResponseScanner(deprecate)
    for command, cursor in commands:
        scanner.expect(command, cursor=cursor)
    assert scan(scanner, chunks(stream, cuts)) == expected
    assert scanner.idle and scanner.at_boundary


# ---------------------------------------------------------------------------------------------- real MariaDB traffic
# Responses captured from MariaDB 10.11 by tests/data/capture_mariadb_responses.py without and with
# CLIENT_DEPRECATE_EOF, then with MARIADB_CLIENT_CACHE_METADATA too: every response must end exactly where the
# recording of that one command ended.
MODES = [(False, False), (True, False), (True, True)]
MODE_IDS = ["eof", "deprecate_eof", "cache_metadata"]
FAILING = {
    "error_no_table",
    "error_syntax",
    "error_mid_rows",
    "multi_error",
    "field_list_error",
    "init_db_error",
    "process_kill_error",
    "prepare_error",
    "execute_error",
    "fetch_error",
}


def recorded(mode: tuple[bool, bool]) -> list[dict]:
    return [record for record in FIXTURES if (record["deprecate_eof"], record["cache_metadata"]) == mode]


def recorded_stream(mode: tuple[bool, bool]) -> tuple[bytes, list[int]]:
    stream = b""
    ends = []
    for record in recorded(mode):
        stream += bytes.fromhex(record["response"])
        ends.append(len(stream))
    return stream, ends


def recorded_scanner(impl, mode: tuple[bool, bool], records: list[dict] | None = None):
    scanner = impl.MyResponseScanner(*mode)
    for record in recorded(mode) if records is None else records:
        scanner.expect(record["command"], cursor=record["cursor"])
    return scanner


def test_fixture_covers_every_grammar():
    names = {record["name"] for record in FIXTURES}
    assert all(len(recorded(mode)) == len(names) for mode in MODES)
    commands = {record["command"] for record in FIXTURES}
    assert {0x02, 0x03, 0x04, 0x09, 0x0C, 0x0D, 0x0E, 0x16, 0x17, 0x1A, 0x1B, 0x1C, 0x1F} <= commands
    assert FAILING <= names
    assert {"local_infile", "execute_cursor", "multi_results", "call_procedure", "prepare_neither"} <= names
    # with cached metadata the server skipped the column definitions of a re-executed statement
    execute = next(r for r in recorded((True, True)) if r["name"] == "execute_rows")
    assert bytes.fromhex(execute["response"])[4:6] == b"\x02\x00"


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_real_responses_end_where_recorded(impl, mode):
    stream, ends = recorded_stream(mode)
    scanner = recorded_scanner(impl, mode)
    events = scanner.feed(stream)
    done = [event for event in events if event[0] == RESPONSE_DONE]
    assert [end for _, _, end, _ in done] == ends
    records = recorded(mode)
    assert [record["name"] for record, (_, _, _, failed) in zip(records, done) if failed] == [
        record["name"] for record in records if record["name"] in FAILING
    ]
    assert scanner.idle and scanner.at_boundary
    status = {record["name"]: event[1] for record, event in zip(records, done)}
    assert status["begin"] & IN_TRANS and status["commit"] == AUTOCOMMIT
    assert status["start_read_only"] & (IN_TRANS | IN_TRANS_READONLY) == IN_TRANS | IN_TRANS_READONLY
    assert not status["set_autocommit_off"] & AUTOCOMMIT and status["set_autocommit_on"] & AUTOCOMMIT
    assert status["execute_cursor"] & CURSOR_EXISTS
    assert status["fetch_rest"] & LAST_ROW_SENT and not status["fetch_rest"] & CURSOR_EXISTS
    assert status["error_mid_rows"] == -1


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_real_responses_one_command_at_a_time(impl, mode):
    prepared = []
    for record in recorded(mode):
        response = bytes.fromhex(record["response"])
        scanner = recorded_scanner(impl, mode, [record])
        events = scanner.feed(response)
        assert events[-1][0] == RESPONSE_DONE and events[-1][2] == len(response), record["name"]
        assert scanner.idle, record["name"]
        if record["name"].startswith("prepare_") and record["name"] != "prepare_error":
            assert events[0][0] == PREPARE_OK
            assert events[0][2] == 4 + response[0]  # right after the COM_STMT_PREPARE_OK packet
            prepared.append(events[0][3])
        if record["name"] == "local_infile":
            assert events[0][:3:2] == (LOCAL_INFILE, record["infile_prompt_end"])
        if record["name"] == "insert_rows":
            assert (scanner.last_affected_rows, scanner.last_insert_id) == (400, 0)
    # the ids the server handed out, in order (one went to the failed prepare)
    assert [statement_id - prepared[0] for statement_id in prepared] == [0, 1, 2, 3, 5]


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_real_responses_byte_at_a_time(impl, mode):
    stream, _ = recorded_stream(mode)
    whole = recorded_scanner(impl, mode).feed(stream)
    assert scan(recorded_scanner(impl, mode), [stream[i : i + 1] for i in range(len(stream))]) == whole


@settings(max_examples=30, deadline=None)
@given(mode=st.sampled_from(MODES), cuts=st.lists(st.integers(min_value=1, max_value=150_000), max_size=40))
def test_real_responses_random_chunks(impl, mode, cuts):
    stream, _ = recorded_stream(mode)
    whole = recorded_scanner(impl, mode).feed(stream)
    assert scan(recorded_scanner(impl, mode), chunks(stream, cuts)) == whole


# ---------------------------------------------------------------------------------------------- the hot paths
SELECT = my_packet(b"\x03SELECT c FROM sbtest1 WHERE id=42")
EXECUTE = my_packet(b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00*\x00\x00\x00\x00\x00\x00\x00")
EXECUTE_CURSOR = my_packet(b"\x17\x01\x00\x00\x00\x01\x01\x00\x00\x00")


def test_take_command_takes_one_plain_query(impl):
    framer = impl.MyClientFramer()
    assert framer.take_command(SELECT) == COM_QUERY
    assert framer.take_command(my_packet(b"\x03BEGIN")) == COM_QUERY
    assert framer.take_command(my_packet(b"\x03")) == COM_QUERY  # an empty statement: the server answers it
    assert framer.pending == 0
    assert framer.feed(QUERY) == (QUERY, [(0, 0, len(QUERY), 9)])  # the framer was left as it was


def test_take_command_takes_stmt_execute_and_says_whether_it_opens_a_cursor(impl):
    framer = impl.MyClientFramer()
    assert framer.take_command(EXECUTE) == COM_STMT_EXECUTE
    assert framer.take_command(EXECUTE_CURSOR) == COM_STMT_EXECUTE | 0x100
    assert framer.take_command(my_packet(b"\x17\x01\x00\x00\x00")) == COM_STMT_EXECUTE  # no flags byte


@pytest.mark.parametrize(
    "sql",
    [
        b"SET autocommit=0",
        b"SET @x = 1",
        b"USE app",
        b"SELECT LAST_INSERT_ID()",
        b"SELECT ROW_COUNT()",
        b"KILL 7",
        b"LOCK TABLES t WRITE",
        b"SELECT GET_LOCK('a', 1)",
        b"CREATE TEMPORARY TABLE t (a int)",
        b"SELECT 1 /*!40101 , 2 */",
        b"SELECT CONNECTION_ID()",
        b"SELECT 'connection_id'",  # only mentioned, but the full path decides what to rewrite
        b"select Connection_Id()",
        b"SELECT '" + b"x" * (16 * 1024) + b"'",
    ],
)
def test_take_command_leaves_statements_the_session_acts_on(impl, sql):
    assert impl.MyClientFramer().take_command(my_packet(b"\x03" + sql)) == -1


def test_take_command_inspection_limit(impl):
    framer = impl.MyClientFramer()
    assert impl.myframe.MAX_INSPECTED_STATEMENT == 16 * 1024
    longest = b"SELECT '" + b"x" * (16 * 1024 - 9) + b"'"
    assert len(longest) == 16 * 1024
    assert framer.take_command(my_packet(b"\x03" + longest)) == COM_QUERY
    assert framer.take_command(my_packet(b"\x03" + longest + b" ")) == -1


@pytest.mark.parametrize(
    "data",
    [
        b"",
        my_packet(b""),  # an empty command packet
        my_packet(b"\x03SELECT 1", 1),  # not a new command
        SELECT + SELECT,  # more than one command
        SELECT[:-1],  # incomplete
        SELECT + b"\x01",
        PING,
        my_packet(b"\x01"),  # COM_QUIT
        my_packet(b"\x16SELECT ?"),  # COM_STMT_PREPARE
        my_packet(b"\x19\x01\x00\x00\x00"),  # COM_STMT_CLOSE
        b"\xff\xff\xff\x00" + b"\x03" + b"x" * 20,  # a continued packet
    ],
)
def test_take_command_leaves_everything_else(impl, data):
    framer = impl.MyClientFramer()
    assert framer.take_command(data) == -1
    assert framer.pending == 0


def test_take_command_needs_bytes(impl):
    framer = impl.MyClientFramer()
    assert framer.take_command(bytearray(SELECT)) == -1
    assert framer.take_command(memoryview(SELECT)) == -1


def test_take_command_respects_the_packet_limit(impl):
    framer = impl.MyClientFramer(max_packet_size=10)
    assert framer.take_command(my_packet(b"\x03SELECT 12")) == COM_QUERY  # 10 bytes
    assert framer.take_command(my_packet(b"\x03SELECT 123")) == -1


def test_take_command_not_while_bytes_are_held(impl):
    framer = impl.MyClientFramer()
    assert framer.feed(SELECT[:3]) == (b"", [])
    assert framer.take_command(SELECT) == -1
    assert framer.pending == 3


def test_take_command_not_after_a_protocol_violation(impl):
    framer = impl.MyClientFramer(max_packet_size=4)
    with pytest.raises(ProtocolViolation):
        framer.feed(SELECT)
    framer.max_packet_size = 1000
    assert framer.take_command(SELECT) == -1


def done_answer(status: int, affected_rows: int = -1) -> int:
    return (affected_rows + 1) << 17 | 1 << 16 | status


def test_feed_done_packs_a_result_set(impl, deprecate_eof):
    scanner = scanner_for(impl, deprecate_eof, COM_QUERY)
    stream = my_stream(result_set(1, [text_row(b"abc")], deprecate_eof, status=AUTOCOMMIT))
    assert scanner.feed_done(stream[:7]) == 0
    assert scanner.feed_done(stream[7:]) == done_answer(AUTOCOMMIT)
    assert scanner.take_events() == []
    assert scanner.idle and (scanner.last_affected_rows, scanner.last_insert_id) == (-1, 0)


def test_feed_done_packs_an_ok(impl):
    scanner = scanner_for(impl, True, COM_QUERY, COM_QUERY)
    assert scanner.feed_done(my_stream([ok_packet(IN_TRANS | AUTOCOMMIT, 70000)])) == done_answer(3, 70000)
    assert scanner.feed_done(my_stream([ok_packet(0, 0)])) == done_answer(0, 0)  # status 0: still non-zero


def test_feed_done_packs_an_executed_statement(impl, deprecate_eof):
    scanner = scanner_for(impl, deprecate_eof, COM_STMT_EXECUTE)
    stream = my_stream(result_set(2, [binary_row(b"x", None)], deprecate_eof, status=IN_TRANS))
    assert scanner.feed_done(stream) == done_answer(IN_TRANS)


@pytest.mark.parametrize(
    "payloads",
    [
        [err_packet()],
        [ok_packet(AUTOCOMMIT, 1, 7)],  # a last insert id
        [ok_packet(AUTOCOMMIT, 1 << 40)],  # too many rows to pack
        [b"\xfb/tmp/rows.csv"],  # LOCAL INFILE
    ],
)
def test_feed_done_leaves_other_news_as_events(impl, payloads):
    scanner = scanner_for(impl, True, COM_QUERY)
    stream = my_stream(payloads)
    expected = scanner_for(impl, True, COM_QUERY).feed(stream)
    assert scanner.feed_done(stream) == -1
    assert scanner.take_events() == expected
    assert scanner.take_events() == []


def test_feed_done_leaves_two_responses_as_events(impl):
    scanner = scanner_for(impl, True, COM_QUERY, COM_QUERY)
    stream = my_stream([ok_packet(AUTOCOMMIT)]) + my_stream([ok_packet(AUTOCOMMIT)])
    assert scanner.feed_done(stream) == -1
    assert [event[0] for event in scanner.take_events()] == [RESPONSE_DONE, RESPONSE_DONE]


def test_feed_done_leaves_prepare_as_events(impl):
    scanner = scanner_for(impl, True, COM_STMT_PREPARE)
    assert scanner.feed_done(my_stream(prepare_response(5, 1, 1, True))) == -1
    assert [event[0] for event in scanner.take_events()] == [PREPARE_OK, RESPONSE_DONE]


def test_feed_done_status_never_seen(impl):
    # COM_STATISTICS ends with the last status seen, -1 on a fresh connection: not packable
    scanner = scanner_for(impl, True, COM_STATISTICS)
    assert scanner.feed_done(my_stream([b"Uptime: 5"])) == -1
    assert scanner.take_events() == [(RESPONSE_DONE, -1, 13, 0)]


def test_feed_done_raises_like_feed(impl):
    scanner = impl.MyResponseScanner(True)
    with pytest.raises(ProtocolViolation, match="unexpected data"):
        scanner.feed_done(my_stream([ok_packet()]))
    with pytest.raises(ProtocolViolation, match="used after a protocol violation"):
        scanner.feed_done(b"")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=response_scripts(st), cuts=st.lists(st.integers(min_value=1, max_value=3000), max_size=12))
def test_feed_done_tells_what_feed_tells(impl, script, cuts):
    deprecate, commands, stream, _ = script
    scanners = [impl.MyResponseScanner(deprecate), impl.MyResponseScanner(deprecate)]
    for scanner in scanners:
        for command, cursor in commands:
            scanner.expect(command, cursor=cursor)
    plain, hot = scanners
    for piece in chunks(stream, cuts):
        events = plain.feed(piece)
        done = hot.feed_done(piece)
        if done > 0:
            assert len(events) == 1
            kind, status, _end, failed = events[0]
            assert (kind, failed, status) == (RESPONSE_DONE, 0, done & 0xFFFF)
            assert hot.last_insert_id == 0
            assert hot.last_affected_rows == (done >> 17) - 1
        elif done == 0:
            assert events == []
        else:
            assert hot.take_events() == events != []
        for name in ("at_boundary", "idle", "outstanding", "last_status", "last_affected_rows", "last_insert_id"):
            assert getattr(hot, name) == getattr(plain, name), name


# ---------------------------------------------------------------------------------------------- MyRequestState
def test_request_state_starts_quiet_releasable_and_in_autocommit(impl):
    state = impl.MyRequestState()
    assert (state.outstanding, state.status, state.row_count, state.failing, state.wanted) == (
        0,
        AUTOCOMMIT,
        -1,
        None,
        {},
    )
    assert not (state.infile or state.pinned or state.refresh_needed or state.refresh_last_insert_id)
    assert not state.reads_last_insert_id
    assert state.quiet and state.releasable and not state.in_transaction


@pytest.mark.parametrize(
    ("field", "value", "quiet"),
    [
        ("outstanding", 1, False),
        ("infile", True, False),
        ("status", AUTOCOMMIT | IN_TRANS, False),
        ("status", AUTOCOMMIT | 0x0008, False),  # more results to come
        ("status", AUTOCOMMIT | 0x0040, False),  # an open cursor
        ("status", AUTOCOMMIT | IN_TRANS_READONLY, True),
        ("pinned", True, True),
        ("refresh_needed", True, True),
    ],
)
def test_request_state_keeps_its_backend_while_anything_holds_it(impl, field, value, quiet):
    state = impl.MyRequestState()
    setattr(state, field, value)
    assert getattr(state, field) == value
    assert state.quiet is quiet
    assert state.releasable is (quiet and field == "status")
    assert state.in_transaction is bool(state.status & IN_TRANS)


def test_request_state_subclass_adds_fields(impl):
    class Session(impl.MyRequestState):
        __slots__ = ("extra",)

    session = Session()
    session.extra = 1
    session.outstanding = 2
    assert (session.extra, session.outstanding, session.releasable) == (1, 2, False)
