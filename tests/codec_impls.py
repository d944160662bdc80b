"""Loads each codec implementation for the codec tests, builds PostgreSQL and MySQL wire messages for them, and holds
the RFC 7677 SCRAM-SHA-256 vector."""

from __future__ import annotations

import base64
import importlib
import struct

import pytest

from rdsproxy._codec import CodecSet, extensions_disabled

IMPLEMENTATION_NAMES = ("compiled", "pure")
_MODULE_SUFFIXES = {"compiled": "_c", "pure": "_py"}


# RFC 7677 section 3: SCRAM-SHA-256 exchange for user "user", password "pencil".
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def load_implementation(name: str) -> CodecSet:
    """Imports one implementation directly, whatever the selector in rdsproxy._codec picked."""
    suffix = _MODULE_SUFFIXES[name]
    try:
        pgframe = importlib.import_module(f"rdsproxy._codec.pgframe{suffix}")
        classify = importlib.import_module(f"rdsproxy._codec.classify{suffix}")
        myframe = importlib.import_module(f"rdsproxy._codec.myframe{suffix}")
        latency = importlib.import_module(f"rdsproxy._codec.latency{suffix}")
        relay = importlib.import_module(f"rdsproxy._codec.relay{suffix}")
        lane = importlib.import_module(f"rdsproxy._codec.lane{suffix}")
        scram = importlib.import_module(f"rdsproxy._codec.scram{suffix}")
    except ImportError:
        if name == "compiled" and extensions_disabled():
            pytest.skip("the compiled codecs are not built and RDSPROXY_NO_EXTENSIONS is set")
        raise  # a normal build must have them: fail rather than skip
    return CodecSet(name, pgframe, classify, myframe, latency, relay, lane, scram)


def pg_message(msg_type: bytes, payload: bytes = b"") -> bytes:
    """A typed message: type byte, Int32 length counting itself, payload."""
    return msg_type + struct.pack("!i", len(payload) + 4) + payload


def startup_packet(code: int, body: bytes = b"") -> bytes:
    """An untyped startup-phase packet: Int32 length counting itself, Int32 protocol/request code, body."""
    return struct.pack("!ii", len(body) + 8, code) + body


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """data split at the given offsets (sorted, deduplicated, clipped to the data)."""
    points = sorted({cut for cut in cuts if 0 < cut < len(data)})
    bounds = [0, *points, len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:])]


def backend_stream(rows: int = 200) -> bytes:
    """A realistic backend response: notice, row description, data rows, command complete, parameter status,
    a failing second statement and ReadyForQuery."""
    row_description = struct.pack("!h", 2) + b"".join(
        name + b"\0" + struct.pack("!ihihih", 16384, index + 1, 23, 4, -1, 0)
        for index, name in enumerate((b"id", b"label"))
    )
    data_rows = b"".join(
        pg_message(
            b"D",
            struct.pack("!h", 2)
            + struct.pack("!i", len(str(n)))
            + str(n).encode()
            + struct.pack("!i", 12)
            + b"label-%06d" % n,
        )
        for n in range(rows)
    )
    return b"".join(
        [
            pg_message(b"N", b"SNOTICE\0C00000\0Mhello\0\0"),
            pg_message(b"T", row_description),
            data_rows,
            pg_message(b"C", b"SELECT %d\0" % rows),
            pg_message(b"S", b"application_name\0demo\0"),
            pg_message(b"E", b'SERROR\0C42P01\0Mrelation "nope" does not exist\0\0'),
            pg_message(b"Z", b"I"),
        ]
    )


def split_messages(stream: bytes) -> list[tuple[int, bytes, int]]:
    """Every typed message of a well-formed stream as (type, payload, end offset)."""
    messages = []
    pos = 0
    while pos < len(stream):
        (length,) = struct.unpack_from("!i", stream, pos + 1)
        end = pos + 1 + length
        messages.append((stream[pos], stream[pos + 5 : end], end))
        pos = end
    return messages


# ---------------------------------------------------------------------------------------------- MySQL
MAX_PHYSICAL = 0xFFFFFF


def lenenc_int(value: int) -> bytes:
    """A MySQL length-encoded integer."""
    if value < 0xFB:
        return bytes([value])
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def lenenc_bytes(value: bytes) -> bytes:
    return lenenc_int(len(value)) + value


def my_packet(payload: bytes, seq: int = 0) -> bytes:
    """One logical packet: physical packets of at most 0xFFFFFF payload bytes, the last one shorter."""
    pieces = []
    pos = 0
    while True:
        chunk = payload[pos : pos + MAX_PHYSICAL]
        pieces.append(len(chunk).to_bytes(3, "little") + bytes([seq & 0xFF]) + chunk)
        seq += 1
        pos += MAX_PHYSICAL
        if len(chunk) < MAX_PHYSICAL:
            return b"".join(pieces)


def my_stream(payloads: list[bytes], seq: int = 1) -> bytes:
    """Logical packets with consecutive sequence ids, as a server sends a response (starting at `seq`)."""
    out = []
    for payload in payloads:
        packet = my_packet(payload, seq)
        seq += len(payload) // MAX_PHYSICAL + 1
        out.append(packet)
    return b"".join(out)


def ok_packet(
    status: int = 0x0002,
    affected_rows: int = 0,
    insert_id: int = 0,
    warnings: int = 0,
    header: int = 0x00,
    info: bytes = b"",
) -> bytes:
    """An OK packet payload (header 0xFE: the result set terminator under CLIENT_DEPRECATE_EOF)."""
    return (
        bytes([header])
        + lenenc_int(affected_rows)
        + lenenc_int(insert_id)
        + status.to_bytes(2, "little")
        + warnings.to_bytes(2, "little")
        + info
    )


def eof_packet(status: int = 0x0002, warnings: int = 0) -> bytes:
    return b"\xfe" + warnings.to_bytes(2, "little") + status.to_bytes(2, "little")


def err_packet(
    code: int = 1146, message: bytes = b"Table 'app.nope' doesn't exist", sqlstate: bytes = b"42S02"
) -> bytes:
    return b"\xff" + code.to_bytes(2, "little") + b"#" + sqlstate + message


def column_definition(name: bytes, column_type: int = 0xFD) -> bytes:
    return (
        lenenc_bytes(b"def")
        + lenenc_bytes(b"app")
        + lenenc_bytes(b"t")
        + lenenc_bytes(b"t")
        + lenenc_bytes(name)
        + lenenc_bytes(name)
        + b"\x0c"
        + (45).to_bytes(2, "little")
        + (1024).to_bytes(4, "little")
        + bytes([column_type])
        + b"\x00\x00\x00\x00\x00"
    )


def text_row(*values: bytes | None) -> bytes:
    return b"".join(b"\xfb" if value is None else lenenc_bytes(value) for value in values)


def binary_row(*values: bytes | None) -> bytes:
    """A binary protocol row of string columns: 0x00, NULL bitmap (offset 2), the non-NULL values."""
    bitmap = bytearray((len(values) + 9) // 8)
    for index, value in enumerate(values):
        if value is None:
            bitmap[(index + 2) // 8] |= 1 << ((index + 2) % 8)
    return b"\x00" + bytes(bitmap) + b"".join(lenenc_bytes(value) for value in values if value is not None)


def result_set(
    columns: int,
    rows: list[bytes],
    deprecate_eof: bool,
    status: int = 0x0002,
    *,
    metadata_status: int = 0x0002,
    terminator: bytes | None = None,
) -> list[bytes]:
    """Payloads of a result set: column count, definitions, [EOF], rows, terminator (EOF / OK 0xFE, or given)."""
    payloads = [lenenc_int(columns)] + [column_definition(b"c%d" % n) for n in range(columns)]
    if not deprecate_eof:
        payloads.append(eof_packet(metadata_status))
    payloads += rows
    if terminator is None:
        terminator = ok_packet(status, header=0xFE) if deprecate_eof else eof_packet(status)
    payloads.append(terminator)
    return payloads


def prepare_response(statement_id: int, columns: int, params: int, deprecate_eof: bool) -> list[bytes]:
    """Payloads of a successful COM_STMT_PREPARE response."""
    payloads = [
        b"\x00"
        + statement_id.to_bytes(4, "little")
        + columns.to_bytes(2, "little")
        + params.to_bytes(2, "little")
        + b"\x00\x00\x00"
    ]
    for count, prefix in ((params, b"?"), (columns, b"c")):
        payloads += [column_definition(prefix + b"%d" % n) for n in range(count)]
        if count and not deprecate_eof:
            payloads.append(eof_packet())
    return payloads


# Ground truth for MyResponseScanner: generated server responses with the events they must produce.
RESPONSE_DONE, LOCAL_INFILE, PREPARE_OK = 1, 2, 3
COM_QUERY, COM_FIELD_LIST, COM_STATISTICS, COM_PING = 0x03, 0x04, 0x09, 0x0E
COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_FETCH = 0x16, 0x17, 0x1C
MORE_RESULTS, CURSOR_EXISTS, LAST_ROW_SENT = 0x0008, 0x0040, 0x0080
LAST = object()  # an event status that is the status of the last OK/EOF packet before it


class ResponseScript:
    """A server byte stream for a sequence of commands, and the scanner events it must produce."""

    def __init__(self, deprecate_eof: bool) -> None:
        self.deprecate_eof = deprecate_eof
        self.commands: list[tuple[int, bool]] = []
        self._packets: list[tuple[bytes, int | None, list[tuple]]] = []  # payload, status it carries, events

    def add(self, payload: bytes, status: int | None = None, *events: tuple) -> None:
        self._packets.append((payload, status, list(events)))

    def also(self, event: tuple) -> None:
        """One more event at the end of the last packet added."""
        self._packets[-1][2].append(event)

    def terminator(self, status: int, *events: tuple) -> None:
        """A result set terminator: EOF, or OK with a 0xFE header under CLIENT_DEPRECATE_EOF."""
        payload = ok_packet(status, header=0xFE) if self.deprecate_eof else eof_packet(status)
        self.add(payload, status, *events)

    def columns(self, count: int, metadata_status: int = 0x0002) -> None:
        self.add(lenenc_int(count))
        for n in range(count):
            self.add(column_definition(b"c%d" % n))
        if not self.deprecate_eof:
            self.add(eof_packet(metadata_status), metadata_status)

    def build(self) -> tuple[bytes, list[tuple[int, int, int, int]]]:
        """(stream, events) with each event's end offset in the stream."""
        stream = []
        events = []
        offset = 0
        last = -1
        seq = 1
        for payload, status, packet_events in self._packets:
            packet = my_packet(payload, seq)
            seq += len(payload) // MAX_PHYSICAL + 1
            stream.append(packet)
            offset += len(packet)
            if status is not None:
                last = status
            for kind, event_status, extra in packet_events:
                events.append((kind, last if event_status is LAST else event_status, offset, extra))
        return b"".join(stream), events


def add_random_response(script: ResponseScript, draw, st) -> None:
    """Appends one command's response chosen by hypothesis (`draw`, strategies module `st`)."""
    kind = draw(
        st.sampled_from(["ok", "err", "results", "infile", "prepare", "fetch", "cursor", "fields", "statistics"])
    )
    status = draw(st.sampled_from([0x0002, 0x0003, 0x0000, 0x2003, 0x4002]))
    done = (RESPONSE_DONE, status, 0)
    failed = (RESPONSE_DONE, -1, 1)
    if kind == "ok":
        script.commands.append((draw(st.sampled_from([COM_QUERY, COM_PING, COM_STMT_EXECUTE])), False))
        script.add(ok_packet(status, draw(st.integers(0, 70000)), draw(st.integers(0, 1 << 40))), status, done)
    elif kind == "err":
        script.commands.append((COM_QUERY, False))
        script.add(err_packet(), None, failed)
    elif kind in ("results", "infile"):
        command = COM_QUERY if kind == "infile" else draw(st.sampled_from([COM_QUERY, COM_STMT_EXECUTE]))
        script.commands.append((command, False))
        if kind == "infile":
            script.add(b"\xfb/tmp/rows.csv", None, (LOCAL_INFILE, LAST, 0))
        results = draw(st.integers(1, 3))
        for index in range(results):
            more = MORE_RESULTS if index < results - 1 else 0
            events = () if more else (done,)
            if kind == "infile" and index == 0:  # the file was sent: the LOAD statement's own OK or ERR
                shape = draw(st.sampled_from(["ok", "err"]))
            else:
                shape = draw(st.sampled_from(["ok", "rows", "rows", "error"]))
            if shape == "err":
                script.add(err_packet(1062, b"Duplicate entry", b"23000"), None, failed)
                return
            if shape == "ok":
                script.add(ok_packet(status | more, 1, 7), status | more, *events)
                continue
            columns = draw(st.integers(1, 3))
            script.columns(columns)
            row = binary_row if command == COM_STMT_EXECUTE else text_row
            for _ in range(draw(st.integers(0, 4))):
                values = draw(
                    st.lists(st.one_of(st.none(), st.binary(max_size=300)), min_size=columns, max_size=columns)
                )
                script.add(row(*values))
            if shape == "error":
                script.add(err_packet(1242, b"Subquery returns more than 1 row", b"21000"), None, failed)
                return
            script.terminator(status | more, *events)
    elif kind == "prepare":
        script.commands.append((COM_STMT_PREPARE, False))
        if draw(st.booleans()):
            script.add(err_packet(1064, b"syntax error", b"42000"), None, failed)
            return
        statement_id = draw(st.integers(1, 0xFFFFFFFF))
        payloads = prepare_response(
            statement_id, draw(st.integers(0, 3)), draw(st.integers(0, 3)), script.deprecate_eof
        )
        script.add(payloads[0], None, (PREPARE_OK, LAST, statement_id))
        for payload in payloads[1:]:
            script.add(payload, 0x0002 if payload[0] == 0xFE else None)
        script.also((RESPONSE_DONE, LAST, 0))
    elif kind == "fetch":
        script.commands.append((COM_STMT_FETCH, False))
        for _ in range(draw(st.integers(0, 4))):
            script.add(binary_row(b"x", None))
        script.terminator(status | LAST_ROW_SENT, (RESPONSE_DONE, status | LAST_ROW_SENT, 0))
    elif kind == "cursor":
        script.commands.append((COM_STMT_EXECUTE, True))
        columns = draw(st.integers(1, 3))
        script.add(lenenc_int(columns))
        for n in range(columns):
            script.add(column_definition(b"c%d" % n))
        script.terminator(status | CURSOR_EXISTS, (RESPONSE_DONE, status | CURSOR_EXISTS, 0))
    elif kind == "fields":
        script.commands.append((COM_FIELD_LIST, False))
        for n in range(draw(st.integers(0, 3))):
            script.add(column_definition(b"f%d" % n))
        script.terminator(status, done)
    else:
        script.commands.append((COM_STATISTICS, False))
        script.add(b"Uptime: 5  Threads: 1  Questions: 9", None, (RESPONSE_DONE, LAST, 0))


def response_scripts(st, deprecate_eof: bool | None = None):
    """A hypothesis strategy of built (deprecate_eof, commands, stream, events) for a few pipelined commands."""

    @st.composite
    def scripts(draw):
        deprecate = draw(st.booleans()) if deprecate_eof is None else deprecate_eof
        script = ResponseScript(deprecate)
        for _ in range(draw(st.integers(1, 5))):
            add_random_response(script, draw, st)
        stream, events = script.build()
        return deprecate, script.commands, stream, events

    return scripts()
