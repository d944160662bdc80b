"""MySQL packet framing in pure Python: the twin of myframe_c with the same API and behaviour."""

from __future__ import annotations

from collections import deque
from typing import Optional, Union

from ..errors import ProtocolViolation
from .classify_py import classify_mysql

__all__ = [
    "COM_CHANGE_USER",
    "COM_DEBUG",
    "COM_FIELD_LIST",
    "COM_INIT_DB",
    "COM_PING",
    "COM_PROCESS_KILL",
    "COM_QUERY",
    "COM_QUIT",
    "COM_RESET_CONNECTION",
    "COM_SET_OPTION",
    "COM_STATISTICS",
    "COM_STMT_CLOSE",
    "COM_STMT_EXECUTE",
    "COM_STMT_FETCH",
    "COM_STMT_PREPARE",
    "COM_STMT_RESET",
    "COM_STMT_SEND_LONG_DATA",
    "DEFAULT_MAX_PACKET_SIZE",
    "LOCAL_INFILE",
    "MAX_INSPECTED_STATEMENT",
    "MAX_PHYSICAL_PAYLOAD",
    "PREPARE_OK",
    "RESPONSE_DONE",
    "SERVER_MORE_RESULTS_EXISTS",
    "SERVER_SESSION_STATE_CHANGED",
    "SERVER_STATUS_AUTOCOMMIT",
    "SERVER_STATUS_CURSOR_EXISTS",
    "SERVER_STATUS_IN_TRANS",
    "SERVER_STATUS_IN_TRANS_READONLY",
    "SERVER_STATUS_LAST_ROW_SENT",
    "MyClientFramer",
    "MyRequestState",
    "MyResponseScanner",
    "packet_payload",
]

MAX_PHYSICAL_PAYLOAD = 0xFFFFFF  # a physical packet this long is continued by the next one
DEFAULT_MAX_PACKET_SIZE = 64 * 1024 * 1024
# Statements longer than this pin the session (RDS Proxy's rule): take_command leaves them to the full path.
MAX_INSPECTED_STATEMENT = 16 * 1024

# MyResponseScanner event kinds
RESPONSE_DONE = 1
LOCAL_INFILE = 2
PREPARE_OK = 3

COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_STATISTICS = 0x09
COM_PROCESS_KILL = 0x0C
COM_DEBUG = 0x0D
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = 0x1C
COM_RESET_CONNECTION = 0x1F

SERVER_STATUS_IN_TRANS = 0x0001
SERVER_STATUS_AUTOCOMMIT = 0x0002
SERVER_MORE_RESULTS_EXISTS = 0x0008
SERVER_STATUS_CURSOR_EXISTS = 0x0040
# A session with one of these status flags keeps its backend: a transaction, more results, an open cursor.
_HOLDING_STATUS = SERVER_STATUS_IN_TRANS | SERVER_MORE_RESULTS_EXISTS | SERVER_STATUS_CURSOR_EXISTS
SERVER_STATUS_LAST_ROW_SENT = 0x0080
SERVER_STATUS_IN_TRANS_READONLY = 0x2000
SERVER_SESSION_STATE_CHANGED = 0x4000

# Commands whose answer is not a plain response: the proxy must never queue them on the scanner.
_UNSCANNABLE_COMMANDS = {
    COM_QUIT: "COM_QUIT has no response",
    COM_STMT_SEND_LONG_DATA: "COM_STMT_SEND_LONG_DATA has no response",
    COM_STMT_CLOSE: "COM_STMT_CLOSE has no response",
    COM_CHANGE_USER: "COM_CHANGE_USER starts an authentication exchange, which the proxy handles itself",
    0x12: "COM_BINLOG_DUMP streams replication events, not a response",
    0x1E: "COM_BINLOG_DUMP_GTID streams replication events, not a response",
    0xFE: "COM_MULTI is not supported",
}

# Where a response stands, by the kind of packet expected next.
(
    G_IDLE,  # no response pending
    G_RESULT,  # the first packet of a result: OK / ERR / LOCAL INFILE request / column count
    G_COLUMNS,  # column definitions of a result set
    G_COLUMNS_EOF,  # the EOF after the column definitions (without CLIENT_DEPRECATE_EOF)
    G_ROWS,  # text or binary rows until the terminator
    G_PREPARE,  # COM_STMT_PREPARE_OK or ERR
    G_PREPARE_DEFINITIONS,  # parameter then column definitions of a prepared statement
    G_PREPARE_EOF,  # the EOF after one block of prepared-statement definitions
    G_FIELDS,  # COM_FIELD_LIST: column definitions until EOF
    G_SINGLE,  # COM_STATISTICS: one packet of any content
) = range(10)

# Packed answers of MyResponseScanner.feed_done: the low 16 bits hold the final status flags.
DONE_BIT = 1 << 16  # one response completed (keeps the answer non-zero whatever the status)
AFFECTED_SHIFT = 17  # affected rows + 1 above it (0: none, i.e. -1, after a result set)
_MAX_PACKED_AFFECTED = 1 << 40  # larger counts (never seen in practice) go the event-list way

# The most a decision reads of a packet's payload: an OK header with two 9-byte lenenc ints and the status.
HEAD_SIZE = 24

BytesLike = Union[bytes, bytearray, memoryview]


def _read_length(src: BytesLike, pos: int) -> int:
    return src[pos] | src[pos + 1] << 8 | src[pos + 2] << 16


class MyClientFramer:
    """Cuts the client->proxy stream into complete logical packets (commands), keeping raw bytes for forwarding."""

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self._max_packet_size = max_packet_size
        self._held = bytearray()
        # Held bytes needed before a scan can make progress: lets a large packet arriving in many chunks be
        # accumulated without rescanning it.
        self._need = 0
        self._broken = False

    @property
    def max_packet_size(self) -> int:
        return self._max_packet_size

    @max_packet_size.setter
    def max_packet_size(self, value: int) -> None:
        # applies to packet headers read from now on (the proxy raises it once a client is authenticated)
        self._max_packet_size = value

    @property
    def pending(self) -> int:
        return len(self._held)

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int, int]]]:
        """(buf, packets): the complete logical packets cut by this call; each is (seq, start, end, payload_len)
        where buf[start:end] is its raw bytes, headers included."""
        if self._broken:
            raise ProtocolViolation("client framer used after a protocol violation")
        if type(data) is not bytes:
            data = bytes(data)
        held = self._held
        if held:
            held += data
            if len(held) < self._need:
                return b"", []
            src = held
        else:
            src = data
        packets: list[tuple[int, int, int, int]] = []
        try:
            cut = self._scan(src, packets)
        except ProtocolViolation:
            self._broken = True
            raise
        if src is data:
            if cut == len(data):
                return data, packets
            self._held = bytearray(memoryview(data)[cut:])
            buf = data[:cut]
        elif cut == 0:
            buf = b""
        else:
            with memoryview(src) as view:
                buf = bytes(view[:cut])
                self._held = bytearray(view[cut:])
        self._need = self._held_need()
        return buf, packets

    def _scan(self, src: BytesLike, packets: list[tuple[int, int, int, int]]) -> int:
        """Appends the complete logical packets of src to `packets`; returns the offset where the incomplete tail
        starts."""
        total = len(src)
        limit = self._max_packet_size
        pos = 0
        while True:
            header = pos
            size = 0
            first_seq = previous_seq = -1
            while True:
                if total - header < 4:
                    return pos
                length = _read_length(src, header)
                seq = src[header + 3]
                if first_seq < 0:
                    first_seq = seq
                elif seq != (previous_seq + 1) & 0xFF:
                    raise ProtocolViolation(
                        f"packet sequence id {seq} does not follow {previous_seq} within one logical packet"
                    )
                previous_seq = seq
                size += length
                if size > limit:
                    raise ProtocolViolation(
                        f"packet payload of {size} bytes or more exceeds the limit of {limit} bytes"
                    )
                header += 4 + length
                if header > total:
                    return pos
                if length < MAX_PHYSICAL_PAYLOAD:
                    break
            packets.append((first_seq, pos, header, size))
            pos = header

    def _held_need(self) -> int:
        held = self._held
        available = len(held)
        header = 0
        while available - header >= 4:
            header += 4 + _read_length(held, header)
            if header > available:
                return header
        return header + 4

    def take_command(self, data: bytes) -> int:
        """The forwarding hot path: whether `data` is exactly one plain command that may be forwarded as it is.

        Taken: `data` is one whole single-packet command with sequence id 0 (nothing held back) that is a
        COM_QUERY whose SQL classify_mysql gives no flag at all (and that does not mention CONNECTION_ID), or a
        COM_STMT_EXECUTE; returns its command byte, with 0x100 added for a COM_STMT_EXECUTE that opens a cursor.
        Otherwise -1, with nothing consumed or changed: feed() and the session's full path handle it.
        """
        if type(data) is not bytes or self._broken or self._held:
            return -1
        total = len(data)
        if total < 5:
            return -1
        length = _read_length(data, 0)
        if length + 4 != total or length >= MAX_PHYSICAL_PAYLOAD or length > self._max_packet_size or data[3]:
            return -1
        command = data[4]
        if command == COM_QUERY:
            if length - 1 > MAX_INSPECTED_STATEMENT:
                return -1
            sql = data[5:]
            if b"connection_id" in sql.lower() or classify_mysql(sql):
                return -1
            return COM_QUERY
        if command == COM_STMT_EXECUTE:
            return COM_STMT_EXECUTE | 0x100 if length > 5 and data[9] else COM_STMT_EXECUTE
        return -1


def packet_payload(buf: BytesLike, start: int, end: int) -> bytes:
    """The reassembled payload of the logical packet buf[start:end] (its 4-byte headers stripped)."""
    parts = []
    pos = start
    with memoryview(buf) as view:
        if start < 0 or end > len(view):
            raise ValueError(f"buf[{start}:{end}] is not a whole logical packet")
        while True:
            if end - pos < 4:
                raise ValueError(f"buf[{start}:{end}] is not a whole logical packet")
            length = _read_length(view, pos)
            parts.append(view[pos + 4 : pos + 4 + length])
            pos += 4 + length
            if length < MAX_PHYSICAL_PAYLOAD:
                break
        if pos != end:
            raise ValueError(f"buf[{start}:{end}] is not a whole logical packet")
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)


def _lenenc_size(first: int) -> int:
    if first < 0xFB:
        return 1
    if first == 0xFC:
        return 3
    if first == 0xFD:
        return 4
    return 9 if first == 0xFE else 1


def _read_lenenc(buf: BytesLike, pos: int, size: int) -> int:
    if size == 1:
        return buf[pos] if buf[pos] < 0xFB else 0
    return int.from_bytes(buf[pos + 1 : pos + size], "little")


class MyResponseScanner:
    """Follows backend->proxy responses: knows where each command's response ends and its final status flags."""

    def __init__(self, deprecate_eof: bool, cache_metadata: bool = False) -> None:
        # deprecate_eof: CLIENT_DEPRECATE_EOF negotiated on this connection; cache_metadata: MariaDB's
        # MARIADB_CLIENT_CACHE_METADATA (a column count packet then says whether column definitions follow)
        self._deprecate_eof = bool(deprecate_eof)
        self._cache_metadata = bool(cache_metadata)
        self.reset()

    @property
    def deprecate_eof(self) -> bool:
        return self._deprecate_eof

    @property
    def cache_metadata(self) -> bool:
        return self._cache_metadata

    @property
    def at_boundary(self) -> bool:
        return not self._header and self._remaining == 0

    @property
    def idle(self) -> bool:
        return self._state == G_IDLE

    @property
    def outstanding(self) -> int:
        """Commands whose response has not ended yet, the current one included."""
        return len(self._queue) + (self._state != G_IDLE)

    @property
    def last_affected_rows(self) -> int:
        """Affected rows of the OK packet that ended the last completed response; -1 when it ended with a result
        set, an EOF or an ERR (what ROW_COUNT() reports), 0 for COM_STMT_PREPARE and COM_STATISTICS."""
        return self._last_affected_rows

    @property
    def last_insert_id(self) -> int:
        """Last insert id of the OK packet that ended the last completed response; 0 when it ended otherwise."""
        return self._last_insert_id

    @property
    def last_status(self) -> int:
        """Server status flags of the last OK/EOF seen (-1 before any); settable to seed it from the handshake."""
        return self._last_status

    @last_status.setter
    def last_status(self, value: int) -> None:
        self._last_status = value

    def reset(self) -> None:
        """Forgets every pending response and partial packet (the backend is being discarded or reset)."""
        self._queue: deque[tuple[int, bool]] = deque()
        self._state = G_IDLE
        self._cursor = False
        self._count = 0  # definitions still to come in G_COLUMNS / G_PREPARE_DEFINITIONS
        self._prepare_columns = 0  # column definitions following the parameter definitions of a prepare
        self._last_status = -1
        self._affected_rows = -1  # of the last OK packet read: -1 for an EOF packet
        self._insert_id = 0
        self._last_affected_rows = -1
        self._last_insert_id = 0
        self._header = bytearray()  # the first bytes of a physical header split across chunks
        self._remaining = 0  # payload bytes of the current physical packet still to come
        self._physical_length = 0
        self._continued = False  # the next physical packet continues the current logical packet
        self._head = bytearray()  # the first payload bytes of the current logical packet
        self._head_missing = 0
        self._first_length = 0  # payload length of the first physical packet of the current logical packet
        self._broken = False
        self._events: list[tuple[int, int, int, int]] | None = None  # of the last feed_done() that returned -1

    def expect(self, command: int, *, cursor: bool = False) -> None:
        """A command was sent to the server: queue its response grammar (FIFO; pipelined commands allowed)."""
        if not 0 <= command <= 0xFF:
            raise ValueError(f"command byte {command} is out of range")
        reason = _UNSCANNABLE_COMMANDS.get(command)
        if reason is not None:
            raise ValueError(f"cannot expect a response to command 0x{command:02x}: {reason}")
        if cursor and command != COM_STMT_EXECUTE:
            raise ValueError("only COM_STMT_EXECUTE opens a cursor")
        if command == COM_STMT_PREPARE:
            state = G_PREPARE
        elif command == COM_STMT_FETCH:
            state = G_ROWS
        elif command == COM_FIELD_LIST:
            state = G_FIELDS
        elif command == COM_STATISTICS:
            state = G_SINGLE
        else:
            state = G_RESULT
        if self._state == G_IDLE:
            self._state = state
            self._cursor = cursor
        else:
            self._queue.append((state, cursor))

    def feed(self, data: bytes) -> list[tuple[int, int, int, int]]:
        """Scans one chunk; returns events (kind, status_flags, end offset in this chunk, extra)."""
        if self._broken:
            raise ProtocolViolation("server response scanner used after a protocol violation")
        if type(data) is not bytes:
            data = bytes(data)
        events: list[tuple[int, int, int, int]] = []
        try:
            self._scan(data, events)
        except ProtocolViolation:
            self._broken = True
            raise
        return events

    def feed_done(self, data: bytes) -> int:
        """Scans one chunk for the forwarding hot path: its news packed in an int instead of an event list.

        Returns 0 when the chunk completed nothing; `(affected rows + 1) << 17 | 1 << 16 | status` when it
        completed exactly one response, without error, whose final OK/EOF left status flags `status` and no last
        insert id (affected rows -1, i.e. 0 above bit 17, when it ended with a result set); otherwise -1, and
        take_events() returns the events feed() would have.
        """
        events = self.feed(data)
        if not events:
            return 0
        if len(events) == 1:
            kind, status, _end, failed = events[0]
            affected = self._last_affected_rows
            if (
                kind == RESPONSE_DONE
                and not failed
                and 0 <= status <= 0xFFFF
                and not self._last_insert_id
                and affected < _MAX_PACKED_AFFECTED
            ):
                return (affected + 1) << AFFECTED_SHIFT | DONE_BIT | status
        self._events = events
        return -1

    def take_events(self) -> list[tuple[int, int, int, int]]:
        """The events of the last feed_done() that returned -1."""
        events = self._events
        self._events = None
        return events if events is not None else []

    def _scan(self, data: bytes, events: list[tuple[int, int, int, int]]) -> None:
        total = len(data)
        pos = 0
        while pos < total:
            if self._remaining:  # inside a physical payload begun in an earlier chunk
                take = min(self._remaining, total - pos)
                if self._head_missing:
                    copied = min(take, self._head_missing)
                    self._head += data[pos : pos + copied]
                    self._head_missing -= copied
                pos += take
                self._remaining -= take
                if self._remaining:
                    break
                if self._physical_length == MAX_PHYSICAL_PAYLOAD:
                    self._continued = True
                else:
                    self._continued = False
                    self._packet(self._head, 0, self._first_length, pos, events)
                continue
            if self._header or total - pos < 4:
                take = min(4 - len(self._header), total - pos)
                self._header += data[pos : pos + take]
                pos += take
                if len(self._header) < 4:
                    break
                length = _read_length(self._header, 0)
                self._header = bytearray()
            else:
                length = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
                pos += 4
            available = total - pos
            if self._continued:  # a continuation of the current logical packet, whose head is already kept
                self._physical_length = length
                if length > available:
                    self._remaining = length - available
                    self._head_missing = 0
                    break
                pos += length
                if length < MAX_PHYSICAL_PAYLOAD:
                    self._continued = False
                    self._packet(self._head, 0, self._first_length, pos, events)
                continue
            if self._state == G_IDLE:
                raise ProtocolViolation("unexpected data from the server")
            if length == 0:
                raise ProtocolViolation("empty packet from the server")
            if length <= available and length < MAX_PHYSICAL_PAYLOAD:
                first = data[pos]
                pos += length
                if self._state != G_ROWS or first == 0xFE or first == 0xFF:
                    self._packet(data, pos - length, length, pos, events)
                continue
            # The packet ends in a later chunk or continues in more physical packets: keep its head for later.
            self._first_length = self._physical_length = length
            wanted = min(length, HEAD_SIZE)
            self._head = bytearray(data[pos : pos + min(wanted, available)])
            self._head_missing = wanted - len(self._head)
            if length > available:
                self._remaining = length - available
                break
            pos += length
            self._continued = True

    def _packet(self, buf: BytesLike, off: int, length: int, end: int, events: list[tuple[int, int, int, int]]) -> None:
        """Advances the grammar over one complete logical packet whose payload starts at buf[off] (at least its
        first HEAD_SIZE bytes are there); `length` is its first physical packet's payload length."""
        state = self._state
        first = buf[off]
        if first == 0xFF:
            if length >= 3 and buf[off + 1] == 0xFF and buf[off + 2] == 0xFF:
                return  # MariaDB progress report (error code 0xFFFF): the command goes on
            self._affected_rows, self._insert_id = -1, 0
            self._finish(-1, 1, end, events)
            return
        if state == G_ROWS:
            if first == 0xFE and self._is_terminator(length):
                status = self._read_status(buf, off, length)
                self._affected_rows, self._insert_id = -1, 0  # ROW_COUNT() after a result set
                self._result_end(status, end, events)
            return
        if state == G_RESULT:
            if first == 0x00 or first == 0xFE:
                self._result_end(self._read_status(buf, off, length), end, events)
            elif first == 0xFB:
                events.append((LOCAL_INFILE, self._last_status, end, 0))
            else:
                self._start_result_set(buf, off, length)
            return
        if state == G_COLUMNS:
            self._count -= 1
            if self._count == 0:
                self._state = G_ROWS if self._deprecate_eof else G_COLUMNS_EOF
            return
        if state == G_COLUMNS_EOF:
            self._expect_eof(first, "column definitions")
            status = self._read_status(buf, off, length)
            if self._cursor and status & SERVER_STATUS_CURSOR_EXISTS:
                self._affected_rows, self._insert_id = -1, 0
                self._finish(status, 0, end, events)
            else:
                self._state = G_ROWS
            return
        if state == G_PREPARE:
            if first != 0x00 or length < 9:
                raise ProtocolViolation(f"malformed COM_STMT_PREPARE response (header 0x{first:02x})")
            statement_id = buf[off + 1] | buf[off + 2] << 8 | buf[off + 3] << 16 | buf[off + 4] << 24
            self._prepare_columns = buf[off + 5] | buf[off + 6] << 8
            self._count = buf[off + 7] | buf[off + 8] << 8
            events.append((PREPARE_OK, self._last_status, end, statement_id))
            self._next_prepare_block(end, events)
            return
        if state == G_PREPARE_DEFINITIONS:
            self._count -= 1
            if self._count == 0:
                if self._deprecate_eof:
                    self._next_prepare_block(end, events)
                else:
                    self._state = G_PREPARE_EOF
            return
        if state == G_PREPARE_EOF:
            self._expect_eof(first, "prepared statement definitions")
            self._read_status(buf, off, length)
            self._next_prepare_block(end, events)
            return
        if state == G_FIELDS:
            if first == 0xFE and length < MAX_PHYSICAL_PAYLOAD:
                self._finish(self._read_status(buf, off, length), 0, end, events)
            return
        self._affected_rows, self._insert_id = 0, 0  # G_SINGLE
        self._finish(self._last_status, 0, end, events)

    def _is_terminator(self, length: int) -> bool:
        # A text row may start with 0xFE (an 8-byte lenenc length), but then it is at least 9 bytes long, and
        # under CLIENT_DEPRECATE_EOF at least 0xFFFFFF.
        return length < MAX_PHYSICAL_PAYLOAD if self._deprecate_eof else length < 9

    def _expect_eof(self, first: int, after: str) -> None:
        if first != 0xFE:
            raise ProtocolViolation(f"expected an EOF packet after the {after}, got a packet starting 0x{first:02x}")

    def _read_status(self, buf: BytesLike, off: int, length: int) -> int:
        """Status flags of an OK or EOF packet (remembered as the last status, with the OK's counters)."""
        if length >= 7:  # OK packet: header, affected rows, last insert id, status
            limit = off + min(length, HEAD_SIZE)
            pos = off + 1
            size = _lenenc_size(buf[pos])
            if pos + size >= limit:
                raise ProtocolViolation("truncated OK or EOF packet from the server")
            affected_rows = _read_lenenc(buf, pos, size)
            pos += size
            size = _lenenc_size(buf[pos])
            if pos + size + 2 > limit:
                raise ProtocolViolation("truncated OK or EOF packet from the server")
            self._insert_id = _read_lenenc(buf, pos, size)
            self._affected_rows = affected_rows
            pos += size
        elif length >= 5 and buf[off] == 0xFE:  # EOF packet: header, warnings, status
            self._affected_rows, self._insert_id = -1, 0
            pos = off + 3
        else:
            raise ProtocolViolation("truncated OK or EOF packet from the server")
        self._last_status = buf[pos] | buf[pos + 1] << 8
        return self._last_status

    def _start_result_set(self, buf: BytesLike, off: int, length: int) -> None:
        """The column count packet: column definitions follow (unless a cached-metadata flag says they don't)."""
        first = buf[off]
        size = _lenenc_size(first) if first < 0xFE else 0
        metadata_follows = True
        count_length = length
        if self._cache_metadata and size + 1 == length:
            metadata_follows = buf[off + size] != 0
            count_length -= 1
        count = _read_lenenc(buf, off, size) if size == count_length else 0
        if count == 0:
            raise ProtocolViolation(
                f"malformed column count packet from the server ({length} bytes starting 0x{first:02x}); "
                "were result set metadata capabilities negotiated without telling the scanner?"
            )
        if metadata_follows:
            self._count = count
            self._state = G_COLUMNS
        else:
            self._state = G_ROWS if self._deprecate_eof else G_COLUMNS_EOF

    def _result_end(self, status: int, end: int, events: list[tuple[int, int, int, int]]) -> None:
        """An OK or a result set terminator: the response ends unless more results follow."""
        if status & SERVER_MORE_RESULTS_EXISTS:
            self._state = G_RESULT
        else:
            self._finish(status, 0, end, events)

    def _next_prepare_block(self, end: int, events: list[tuple[int, int, int, int]]) -> None:
        if self._count:
            self._state = G_PREPARE_DEFINITIONS
        elif self._prepare_columns:
            self._count = self._prepare_columns
            self._prepare_columns = 0
            self._state = G_PREPARE_DEFINITIONS
        else:
            self._affected_rows, self._insert_id = 0, 0
            self._finish(self._last_status, 0, end, events)

    def _finish(self, status: int, failed: int, end: int, events: list[tuple[int, int, int, int]]) -> None:
        events.append((RESPONSE_DONE, status, end, failed))
        self._last_affected_rows = self._affected_rows
        self._last_insert_id = self._insert_id
        if self._queue:
            self._state, self._cursor = self._queue.popleft()
        else:
            self._state = G_IDLE
            self._cursor = False


class MyRequestState:
    """The request accounting of one MySQL client session: the fields the compiled data path (lane_c) reads and
    writes on every command and response, as C fields rather than attribute lookups. MySession adds the rest."""

    __slots__ = (
        "outstanding",
        "status",
        "infile",
        "pinned",
        "refresh_needed",
        "refresh_last_insert_id",
        "reads_last_insert_id",
        "row_count",
        "failing",
        "wanted",
    )

    def __init__(self) -> None:
        self.outstanding = 0  # commands sent whose response is not complete yet
        self.status = SERVER_STATUS_AUTOCOMMIT  # server status flags of the last complete response
        self.infile = False  # the client is streaming a LOCAL INFILE file
        self.pinned = False
        self.refresh_needed = False  # a statement in flight may change tracked state: read it back afterwards
        self.refresh_last_insert_id = False  # ... and it sets LAST_INSERT_ID(expr): read that back too
        self.reads_last_insert_id = False  # the command being forwarded calls LAST_INSERT_ID(), with or without expr
        self.row_count = -1  # ROW_COUNT() after this client's last statement
        self.failing: Optional[tuple[int, str, str]] = None  # an ERR owed to the next command (lost transaction)
        self.wanted: dict[str, Optional[str]] = {}  # tracked variables (+ "database") this client expects: shared

    @property
    def in_transaction(self) -> bool:
        return bool(self.status & SERVER_STATUS_IN_TRANS)

    @property
    def quiet(self) -> bool:
        """Nothing in flight, no transaction, no open result or cursor: the backend could be handed back."""
        return self.outstanding == 0 and not self.infile and not self.status & _HOLDING_STATUS

    @property
    def releasable(self) -> bool:
        return (
            self.outstanding == 0
            and not self.infile
            and not self.status & _HOLDING_STATUS
            and not self.pinned
            and not self.refresh_needed
        )
