# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""MySQL packet framing compiled with Cython: the fast twin of myframe_py with the same API and behaviour."""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

from collections import deque

from ..errors import ProtocolViolation
from .classify_c cimport mysql_plain_query

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

cdef enum:
    MAX_PHYSICAL = 0xFFFFFF  # a physical packet this long is continued by the next one
    EV_RESPONSE_DONE = 1
    EV_LOCAL_INFILE = 2
    EV_PREPARE_OK = 3
    STATUS_MORE_RESULTS = 0x0008
    STATUS_CURSOR_EXISTS = 0x0040
    # A session with one of these status flags keeps its backend: a transaction, more results, an open cursor.
    HOLDING_STATUS = 0x0001 | STATUS_MORE_RESULTS | STATUS_CURSOR_EXISTS
    CMD_STATISTICS = 0x09
    CMD_FIELD_LIST = 0x04
    CMD_STMT_PREPARE = 0x16
    CMD_STMT_EXECUTE = 0x17
    CMD_STMT_FETCH = 0x1C
    CMD_QUERY = 0x03
    # Statements longer than this pin the session (RDS Proxy's rule): take_command leaves them to the full path.
    INSPECT_LIMIT = 16 * 1024
    # Packed answers of MyResponseScanner.feed_done: the low 16 bits hold the final status flags.
    DONE_BIT = 1 << 16  # one response completed (keeps the answer non-zero whatever the status)
    AFFECTED_SHIFT = 17  # affected rows + 1 above it (0: none, i.e. -1, after a result set)

# Larger affected row counts (never seen in practice) go the event-list way.
cdef unsigned long long MAX_PACKED_AFFECTED = 1ULL << 40

# Where a response stands, by the kind of packet expected next.
cdef enum:
    G_IDLE = 0  # no response pending
    G_RESULT  # the first packet of a result: OK / ERR / LOCAL INFILE request / column count
    G_COLUMNS  # column definitions of a result set
    G_COLUMNS_EOF  # the EOF after the column definitions (without CLIENT_DEPRECATE_EOF)
    G_ROWS  # text or binary rows until the terminator
    G_PREPARE  # COM_STMT_PREPARE_OK or ERR
    G_PREPARE_DEFINITIONS  # parameter then column definitions of a prepared statement
    G_PREPARE_EOF  # the EOF after one block of prepared-statement definitions
    G_FIELDS  # COM_FIELD_LIST: column definitions until EOF
    G_SINGLE  # COM_STATISTICS: one packet of any content

MAX_PHYSICAL_PAYLOAD = MAX_PHYSICAL
DEFAULT_MAX_PACKET_SIZE = 64 * 1024 * 1024
MAX_INSPECTED_STATEMENT = INSPECT_LIMIT

RESPONSE_DONE = EV_RESPONSE_DONE
LOCAL_INFILE = EV_LOCAL_INFILE
PREPARE_OK = EV_PREPARE_OK

COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = CMD_QUERY
COM_FIELD_LIST = CMD_FIELD_LIST
COM_STATISTICS = CMD_STATISTICS
COM_PROCESS_KILL = 0x0C
COM_DEBUG = 0x0D
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = CMD_STMT_PREPARE
COM_STMT_EXECUTE = CMD_STMT_EXECUTE
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = CMD_STMT_FETCH
COM_RESET_CONNECTION = 0x1F

SERVER_STATUS_IN_TRANS = 0x0001
SERVER_STATUS_AUTOCOMMIT = 0x0002
SERVER_MORE_RESULTS_EXISTS = STATUS_MORE_RESULTS
SERVER_STATUS_CURSOR_EXISTS = STATUS_CURSOR_EXISTS
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


cdef inline Py_ssize_t read_length(const unsigned char* p) noexcept nogil:
    return <Py_ssize_t>p[0] | (<Py_ssize_t>p[1] << 8) | (<Py_ssize_t>p[2] << 16)


cdef class MyClientFramer:
    """Cuts the client->proxy stream into complete logical packets (commands), keeping raw bytes for forwarding."""

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self._max_packet_size = max_packet_size
        self._held = bytearray()
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
        return PyByteArray_GET_SIZE(self._held)

    def feed(self, data) -> tuple:
        """(buf, packets): the complete logical packets cut by this call; each is (seq, start, end, payload_len)
        where buf[start:end] is its raw bytes, headers included."""
        if self._broken:
            raise ProtocolViolation("client framer used after a protocol violation")
        if type(data) is not bytes:
            data = bytes(data)
        cdef bytes chunk = <bytes>data
        cdef bytearray held = self._held
        cdef const unsigned char* src
        cdef Py_ssize_t total
        cdef bint from_held = PyByteArray_GET_SIZE(held) > 0
        if from_held:
            held += chunk
            total = PyByteArray_GET_SIZE(held)
            if total < self._need:
                return b"", []
            src = <const unsigned char*>PyByteArray_AS_STRING(held)
        else:
            total = PyBytes_GET_SIZE(chunk)
            src = <const unsigned char*>PyBytes_AS_STRING(chunk)
        cdef list packets = []
        cdef Py_ssize_t cut
        try:
            cut = self._scan(src, total, packets)
        except ProtocolViolation:
            self._broken = True
            raise
        if not from_held and cut == total:
            return chunk, packets
        cdef bytes buf = b""
        if cut or not from_held:
            buf = PyBytes_FromStringAndSize(<const char*>src, cut) if cut else b""
            self._held = PyByteArray_FromStringAndSize(<const char*>src + cut, total - cut)
        self._need = self._held_need()
        return buf, packets

    cdef Py_ssize_t _scan(self, const unsigned char* src, Py_ssize_t total, list packets) except -1:
        """Appends the complete logical packets of src to `packets`; returns the offset where the incomplete tail
        starts."""
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t header, length
        cdef long long size
        cdef long long limit = self._max_packet_size
        cdef int seq, first_seq, previous_seq
        while True:
            header = pos
            size = 0
            first_seq = -1
            previous_seq = -1
            while True:
                if total - header < 4:
                    return pos
                length = read_length(src + header)
                seq = src[header + 3]
                if first_seq < 0:
                    first_seq = seq
                elif seq != ((previous_seq + 1) & 0xFF):
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
                if length < MAX_PHYSICAL:
                    break
            packets.append((first_seq, pos, header, size))
            pos = header

    cdef Py_ssize_t _held_need(self):
        cdef Py_ssize_t available = PyByteArray_GET_SIZE(self._held)
        cdef const unsigned char* held = <const unsigned char*>PyByteArray_AS_STRING(self._held)
        cdef Py_ssize_t header = 0
        while available - header >= 4:
            header += 4 + read_length(held + header)
            if header > available:
                return header
        return header + 4

    def take_command(self, data) -> int:
        """The forwarding hot path: whether `data` is exactly one plain command that may be forwarded as it is.

        Taken: `data` is one whole single-packet command with sequence id 0 (nothing held back) that is a
        COM_QUERY whose SQL classify_mysql gives no flag at all (and that does not mention CONNECTION_ID), or a
        COM_STMT_EXECUTE; returns its command byte, with 0x100 added for a COM_STMT_EXECUTE that opens a cursor.
        Otherwise -1, with nothing consumed or changed: feed() and the session's full path handle it.
        """
        return self._take_command(data)

    cdef int _take_command(self, data) except -2:
        if type(data) is not bytes or self._broken or PyByteArray_GET_SIZE(self._held):
            return -1
        cdef bytes chunk = <bytes>data
        cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t total = PyBytes_GET_SIZE(chunk)
        if total < 5:
            return -1
        cdef Py_ssize_t length = read_length(src)
        if length + 4 != total or length >= MAX_PHYSICAL or length > self._max_packet_size or src[3]:
            return -1
        cdef unsigned char command = src[4]
        if command == CMD_QUERY:
            if length - 1 > INSPECT_LIMIT or not mysql_plain_query(src + 5, length - 1):
                return -1
            return CMD_QUERY
        if command == CMD_STMT_EXECUTE:
            return CMD_STMT_EXECUTE | 0x100 if length > 5 and src[9] else CMD_STMT_EXECUTE
        return -1


def packet_payload(buf, Py_ssize_t start, Py_ssize_t end) -> bytes:
    """The reassembled payload of the logical packet buf[start:end] (its 4-byte headers stripped)."""
    cdef bytes data = buf if type(buf) is bytes else bytes(buf)
    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t length
    cdef Py_ssize_t payload_size = 0
    if start < 0 or end > PyBytes_GET_SIZE(data):
        raise ValueError(f"buf[{start}:{end}] is not a whole logical packet")
    while True:
        if end - pos < 4:
            raise ValueError(f"buf[{start}:{end}] is not a whole logical packet")
        length = read_length(src + pos)
        payload_size += length
        pos += 4 + length
        if length < MAX_PHYSICAL:
            break
    if pos != end:
        raise ValueError(f"buf[{start}:{end}] is not a whole logical packet")
    if payload_size == end - start - 4:
        return PyBytes_FromStringAndSize(<const char*>src + start + 4, payload_size)
    cdef bytes payload = PyBytes_FromStringAndSize(NULL, payload_size)
    cdef char* out = PyBytes_AS_STRING(payload)
    pos = start
    while pos < end:
        length = read_length(src + pos)
        memcpy(out, src + pos + 4, length)
        out += length
        pos += 4 + length
    return payload


cdef inline Py_ssize_t lenenc_size(unsigned char first) noexcept nogil:
    if first < 0xFB:
        return 1
    if first == 0xFC:
        return 3
    if first == 0xFD:
        return 4
    return 9 if first == 0xFE else 1


cdef inline unsigned long long read_lenenc(const unsigned char* p, Py_ssize_t size) noexcept nogil:
    cdef unsigned long long value = 0
    cdef Py_ssize_t k
    if size == 1:
        return p[0] if p[0] < 0xFB else 0
    for k in range(size - 1, 0, -1):
        value = (value << 8) | p[k]
    return value


cdef class MyResponseScanner:
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
        return self._header_len == 0 and self._remaining == 0

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
        return self._last_affected_rows if self._last_affected_known else -1

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
        self._queue = deque()
        self._state = G_IDLE
        self._cursor = False
        self._count = 0
        self._prepare_columns = 0
        self._last_status = -1
        self._no_counters()
        self._last_affected_known = False
        self._last_affected_rows = 0
        self._last_insert_id = 0
        self._header_len = 0
        self._remaining = 0
        self._physical_length = 0
        self._continued = False
        self._head_len = 0
        self._head_missing = 0
        self._first_length = 0
        self._broken = False
        self._events = None

    def expect(self, command: int, *, cursor: bool = False) -> None:
        """A command was sent to the server: queue its response grammar (FIFO; pipelined commands allowed)."""
        if not 0 <= command <= 0xFF:
            raise ValueError(f"command byte {command} is out of range")
        self._expect(command, cursor)

    cdef int _expect(self, int command, bint cursor) except -1:
        # the dict is asked only for its few commands: the data path expects a COM_QUERY or COM_STMT_EXECUTE
        if command <= 0x01 or 0x11 <= command <= 0x12 or 0x18 <= command <= 0x19 or command >= 0x1E:
            reason = _UNSCANNABLE_COMMANDS.get(command)
            if reason is not None:
                raise ValueError(f"cannot expect a response to command 0x{command:02x}: {reason}")
        if cursor and command != CMD_STMT_EXECUTE:
            raise ValueError("only COM_STMT_EXECUTE opens a cursor")
        cdef int state
        if command == CMD_STMT_PREPARE:
            state = G_PREPARE
        elif command == CMD_STMT_FETCH:
            state = G_ROWS
        elif command == CMD_FIELD_LIST:
            state = G_FIELDS
        elif command == CMD_STATISTICS:
            state = G_SINGLE
        else:
            state = G_RESULT
        if self._state == G_IDLE:
            self._state = state
            self._cursor = cursor
        else:
            self._queue.append((state, cursor))
        return 0

    def feed(self, data) -> list:
        """Scans one chunk; returns events (kind, status_flags, end offset in this chunk, extra)."""
        return self._feed(data)

    cdef list _feed(self, data):
        cdef list events = []
        self._scan_chunk(data, events)
        return events

    cdef int _scan_chunk(self, data, list events) except -1:
        """feed() and feed_done(): scan one chunk (events None: feed_done's way, see _emit); a violation breaks the
        scanner for good."""
        if self._broken:
            raise ProtocolViolation("server response scanner used after a protocol violation")
        if type(data) is not bytes:
            data = bytes(data)
        cdef bytes chunk = <bytes>data
        try:
            self._scan(<const unsigned char*>PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk), events)
        except ProtocolViolation:
            self._broken = True
            raise
        return 0

    def feed_done(self, data) -> int:
        """Scans one chunk for the forwarding hot path: its news packed in an int instead of an event list.

        Returns 0 when the chunk completed nothing; `(affected rows + 1) << 17 | 1 << 16 | status` when it
        completed exactly one response, without error, whose final OK/EOF left status flags `status` and no last
        insert id (affected rows -1, i.e. 0 above bit 17, when it ended with a result set); otherwise -1, and
        take_events() returns the events feed() would have.
        """
        return self._feed_done(data)

    cdef long long _feed_done(self, data) except? -2:
        # the scan is feed()'s, with events=None: _emit keeps the common news (one response ended without error)
        # in C fields, so that a plain chunk costs no list and no tuple
        cdef long status
        cdef unsigned long long affected
        self._pending = None
        self._done = False
        self._scan_chunk(data, None)
        if self._pending is None:
            if not self._done:
                return 0
            status = self._done_status
            if 0 <= status <= 0xFFFF and self._last_insert_id == 0 \
                    and (not self._last_affected_known or self._last_affected_rows < MAX_PACKED_AFFECTED):
                affected = self._last_affected_rows + 1 if self._last_affected_known else 0
                return <long long>((affected << AFFECTED_SHIFT) | DONE_BIT | status)
            self._pending = [(EV_RESPONSE_DONE, status, self._done_end, 0)]
        self._events = self._pending
        self._pending = None
        return -1

    def take_events(self) -> list:
        """The events of the last feed_done() that returned -1."""
        events = self._events
        self._events = None
        return events if events is not None else []

    cdef int _scan(self, const unsigned char* src, Py_ssize_t total, list events) except -1:
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take, copied, available, length, wanted
        cdef unsigned char first
        while pos < total:
            if self._remaining:  # inside a physical payload begun in an earlier chunk
                take = self._remaining if self._remaining < total - pos else total - pos
                if self._head_missing:
                    copied = take if take < self._head_missing else self._head_missing
                    memcpy(self._head + self._head_len, src + pos, copied)
                    self._head_len += copied
                    self._head_missing -= copied
                pos += take
                self._remaining -= take
                if self._remaining:
                    break
                if self._physical_length == MAX_PHYSICAL:
                    self._continued = True
                else:
                    self._continued = False
                    self._packet(self._head, self._first_length, pos, events)
                continue
            if self._header_len or total - pos < 4:
                take = 4 - self._header_len
                if take > total - pos:
                    take = total - pos
                memcpy(self._header + self._header_len, src + pos, take)
                self._header_len += <int>take
                pos += take
                if self._header_len < 4:
                    break
                length = read_length(self._header)
                self._header_len = 0
            else:
                if self._state == G_ROWS and not self._continued:
                    # The hot loop: skip whole rows until a packet that may end the result set.
                    while total - pos >= 5:
                        length = read_length(src + pos)
                        if length == 0 or length >= MAX_PHYSICAL or length > total - pos - 4:
                            break
                        first = src[pos + 4]
                        if first == 0xFE or first == 0xFF:
                            break
                        pos += 4 + length
                    if total - pos < 4:
                        continue
                length = read_length(src + pos)
                pos += 4
            available = total - pos
            if self._continued:  # a continuation of the current logical packet, whose head is already kept
                self._physical_length = length
                if length > available:
                    self._remaining = length - available
                    self._head_missing = 0
                    break
                pos += length
                if length < MAX_PHYSICAL:
                    self._continued = False
                    self._packet(self._head, self._first_length, pos, events)
                continue
            if self._state == G_IDLE:
                raise ProtocolViolation("unexpected data from the server")
            if length == 0:
                raise ProtocolViolation("empty packet from the server")
            if length <= available and length < MAX_PHYSICAL:
                first = src[pos]
                pos += length
                if self._state != G_ROWS or first == 0xFE or first == 0xFF:
                    self._packet(src + pos - length, length, pos, events)
                continue
            # The packet ends in a later chunk or continues in more physical packets: keep its head for later.
            self._first_length = length
            self._physical_length = length
            wanted = length if length < HEAD_SIZE else HEAD_SIZE
            copied = wanted if wanted < available else available
            memcpy(self._head, src + pos, copied)
            self._head_len = copied
            self._head_missing = wanted - copied
            if length > available:
                self._remaining = length - available
                break
            pos += length
            self._continued = True
        return 0

    cdef int _packet(self, const unsigned char* p, Py_ssize_t length, Py_ssize_t end, list events) except -1:
        """Advances the grammar over one complete logical packet whose payload starts at p (at least its first
        HEAD_SIZE bytes are there); `length` is its first physical packet's payload length."""
        cdef int state = self._state
        cdef unsigned char first = p[0]
        cdef long status
        cdef unsigned long statement_id
        if first == 0xFF:
            if length >= 3 and p[1] == 0xFF and p[2] == 0xFF:
                return 0  # MariaDB progress report (error code 0xFFFF): the command goes on
            self._no_counters()
            self._finish(-1, 1, end, events)
            return 0
        if state == G_ROWS:
            if first == 0xFE and self._is_terminator(length):
                status = self._read_status(p, length)
                self._no_counters()  # ROW_COUNT() after a result set
                self._result_end(status, end, events)
            return 0
        if state == G_RESULT:
            if first == 0x00 or first == 0xFE:
                self._result_end(self._read_status(p, length), end, events)
            elif first == 0xFB:
                self._emit(events, EV_LOCAL_INFILE, self._last_status, end, 0)
            else:
                self._start_result_set(p, length)
            return 0
        if state == G_COLUMNS:
            self._count -= 1
            if self._count == 0:
                self._state = G_ROWS if self._deprecate_eof else G_COLUMNS_EOF
            return 0
        if state == G_COLUMNS_EOF:
            self._expect_eof(first, "column definitions")
            status = self._read_status(p, length)
            if self._cursor and status & STATUS_CURSOR_EXISTS:
                self._no_counters()
                self._finish(status, 0, end, events)
            else:
                self._state = G_ROWS
            return 0
        if state == G_PREPARE:
            if first != 0x00 or length < 9:
                raise ProtocolViolation(f"malformed COM_STMT_PREPARE response (header 0x{first:02x})")
            statement_id = (<unsigned long>p[1] | (<unsigned long>p[2] << 8) | (<unsigned long>p[3] << 16)
                            | (<unsigned long>p[4] << 24))
            self._prepare_columns = p[5] | (p[6] << 8)
            self._count = p[7] | (p[8] << 8)
            self._emit(events, EV_PREPARE_OK, self._last_status, end, statement_id)
            self._next_prepare_block(end, events)
            return 0
        if state == G_PREPARE_DEFINITIONS:
            self._count -= 1
            if self._count == 0:
                if self._deprecate_eof:
                    self._next_prepare_block(end, events)
                else:
                    self._state = G_PREPARE_EOF
            return 0
        if state == G_PREPARE_EOF:
            self._expect_eof(first, "prepared statement definitions")
            self._read_status(p, length)
            self._next_prepare_block(end, events)
            return 0
        if state == G_FIELDS:
            if first == 0xFE and length < MAX_PHYSICAL:
                self._finish(self._read_status(p, length), 0, end, events)
            return 0
        self._zero_counters()  # G_SINGLE
        self._finish(self._last_status, 0, end, events)
        return 0

    cdef bint _is_terminator(self, Py_ssize_t length) noexcept:
        # A text row may start with 0xFE (an 8-byte lenenc length), but then it is at least 9 bytes long, and
        # under CLIENT_DEPRECATE_EOF at least 0xFFFFFF.
        return length < MAX_PHYSICAL if self._deprecate_eof else length < 9

    cdef int _expect_eof(self, unsigned char first, str after) except -1:
        if first != 0xFE:
            raise ProtocolViolation(f"expected an EOF packet after the {after}, got a packet starting 0x{first:02x}")
        return 0

    cdef long _read_status(self, const unsigned char* p, Py_ssize_t length) except -1:
        """Status flags of an OK or EOF packet (remembered as the last status, with the OK's counters)."""
        cdef Py_ssize_t pos, size
        cdef Py_ssize_t limit = length if length < HEAD_SIZE else HEAD_SIZE
        cdef unsigned long long affected_rows
        if length >= 7:  # OK packet: header, affected rows, last insert id, status
            pos = 1
            size = lenenc_size(p[pos])
            if pos + size >= limit:
                raise ProtocolViolation("truncated OK or EOF packet from the server")
            affected_rows = read_lenenc(p + pos, size)
            pos += size
            size = lenenc_size(p[pos])
            if pos + size + 2 > limit:
                raise ProtocolViolation("truncated OK or EOF packet from the server")
            self._insert_id = read_lenenc(p + pos, size)
            self._affected_rows = affected_rows
            self._affected_known = True
            pos += size
        elif length >= 5 and p[0] == 0xFE:  # EOF packet: header, warnings, status
            self._no_counters()
            pos = 3
        else:
            raise ProtocolViolation("truncated OK or EOF packet from the server")
        self._last_status = p[pos] | (p[pos + 1] << 8)
        return self._last_status

    cdef int _start_result_set(self, const unsigned char* p, Py_ssize_t length) except -1:
        """The column count packet: column definitions follow (unless a cached-metadata flag says they don't)."""
        cdef unsigned char first = p[0]
        cdef Py_ssize_t size = lenenc_size(first) if first < 0xFE else 0
        cdef bint metadata_follows = True
        cdef Py_ssize_t count_length = length
        cdef long long count
        if self._cache_metadata and size + 1 == length:
            metadata_follows = p[size] != 0
            count_length -= 1
        count = <long long>read_lenenc(p, size) if size == count_length else 0
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
        return 0

    cdef int _result_end(self, long status, Py_ssize_t end, list events) except -1:
        """An OK or a result set terminator: the response ends unless more results follow."""
        if status & STATUS_MORE_RESULTS:
            self._state = G_RESULT
        else:
            self._finish(status, 0, end, events)
        return 0

    cdef int _next_prepare_block(self, Py_ssize_t end, list events) except -1:
        if self._count:
            self._state = G_PREPARE_DEFINITIONS
        elif self._prepare_columns:
            self._count = self._prepare_columns
            self._prepare_columns = 0
            self._state = G_PREPARE_DEFINITIONS
        else:
            self._zero_counters()
            self._finish(self._last_status, 0, end, events)
        return 0

    cdef void _no_counters(self) noexcept:
        self._affected_known = False
        self._affected_rows = 0
        self._insert_id = 0

    cdef void _zero_counters(self) noexcept:
        self._affected_known = True
        self._affected_rows = 0
        self._insert_id = 0

    cdef int _emit(self, list events, int kind, long status, Py_ssize_t end, unsigned long long extra) except -1:
        """One event: appended to `events`; under feed_done (events None), a first plain response end is only
        noted, and anything more turns the notes into the event list feed() would have returned."""
        if events is not None:
            events.append((kind, status, end, extra))
            return 0
        if self._pending is None:
            if not self._done and kind == EV_RESPONSE_DONE and extra == 0:
                self._done = True
                self._done_status = status
                self._done_end = end
                return 0
            self._pending = []
            if self._done:
                self._pending.append((EV_RESPONSE_DONE, self._done_status, self._done_end, 0))
        self._pending.append((kind, status, end, extra))
        return 0

    cdef int _finish(self, long status, int failed, Py_ssize_t end, list events) except -1:
        self._emit(events, EV_RESPONSE_DONE, status, end, failed)
        self._last_affected_known = self._affected_known
        self._last_affected_rows = self._affected_rows
        self._last_insert_id = self._insert_id
        if self._queue:
            state, cursor = self._queue.popleft()
            self._state = state
            self._cursor = cursor
        else:
            self._state = G_IDLE
            self._cursor = False
        return 0


cdef class MyRequestState:
    """The request accounting of one MySQL client session: the fields the compiled data path (lane_c) reads and
    writes on every command and response, as C fields rather than attribute lookups. MySession adds the rest."""

    def __init__(self) -> None:
        self.outstanding = 0
        self.status = SERVER_STATUS_AUTOCOMMIT
        self.infile = False
        self.pinned = False
        self.refresh_needed = False
        self.refresh_last_insert_id = False
        self.reads_last_insert_id = False
        self.row_count = -1
        self.failing = None
        self.wanted = {}

    @property
    def in_transaction(self) -> bool:
        return bool(self.status & SERVER_STATUS_IN_TRANS)

    @property
    def quiet(self) -> bool:
        """Nothing in flight, no transaction, no open result or cursor: the backend could be handed back."""
        return self.outstanding == 0 and not self.infile and not self.status & HOLDING_STATUS

    @property
    def releasable(self) -> bool:
        return self._releasable()

    cdef bint _releasable(self) noexcept:
        return (
            self.outstanding == 0
            and not self.infile
            and not self.status & HOLDING_STATUS
            and not self.pinned
            and not self.refresh_needed
        )
