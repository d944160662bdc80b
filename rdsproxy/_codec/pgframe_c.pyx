# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""PostgreSQL message framing compiled with Cython: the fast twin of pgframe_py with the same API and behaviour."""

from cpython.bytearray cimport (
    PyByteArray_AS_STRING,
    PyByteArray_FromStringAndSize,
    PyByteArray_GET_SIZE,
    PyByteArray_Resize,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, uint32_t
from libc.string cimport memchr, memcmp, memcpy, memset

from ..errors import ProtocolViolation
from .classify_c cimport classify_pg_span

__all__ = [
    "CANCEL_REQUEST_CODE",
    "DEFAULT_INTERESTING",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "GSSENC_REQUEST_CODE",
    "MAX_CANCEL_SECRET",
    "MAX_STARTUP_LENGTH",
    "MIN_CANCEL_SECRET",
    "MIN_STARTUP_LENGTH",
    "SSL_REQUEST_CODE",
    "ClientFramer",
    "PgRequestState",
    "ServerScanner",
    "parse_startup",
]

cdef enum:
    SSL_REQUEST = 80877103
    GSSENC_REQUEST = 80877104
    CANCEL_REQUEST = 80877102
    CANCEL_SECRET_MIN = 4
    CANCEL_SECRET_MAX = 256
    STARTUP_MIN = 8
    STARTUP_MAX = 10000

SSL_REQUEST_CODE = SSL_REQUEST
GSSENC_REQUEST_CODE = GSSENC_REQUEST
CANCEL_REQUEST_CODE = CANCEL_REQUEST
MIN_CANCEL_SECRET = CANCEL_SECRET_MIN
MAX_CANCEL_SECRET = CANCEL_SECRET_MAX
MIN_STARTUP_LENGTH = STARTUP_MIN
MAX_STARTUP_LENGTH = STARTUP_MAX
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
DEFAULT_INTERESTING = b"ZESGHWK"


cdef inline long long read_int32(const unsigned char* p) noexcept nogil:
    # PostgreSQL lengths are signed Int32: a set high bit must read as negative so it fails the minimum check
    cdef uint32_t raw = (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]
    return <long long>(<int32_t>raw)


cdef str type_name(int msg_type):
    return repr(chr(msg_type)) if 32 < msg_type < 127 else f"0x{msg_type:02x}"


cdef inline uint32_t read_uint32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


def parse_startup(bytes payload not None):
    """Parse an untyped startup-phase packet given WITHOUT its 4-byte length prefix.

    Returns (code, None) for an SSLRequest or GSSENCRequest, (CANCEL_REQUEST_CODE, (process_id, secret)) for a
    CancelRequest, and (protocol version, {name: value}) for a StartupMessage; raises ProtocolViolation.
    """
    cdef Py_ssize_t size = PyBytes_GET_SIZE(payload)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(payload)
    cdef uint32_t code
    cdef unsigned int major, minor
    if size < 4:
        raise ProtocolViolation(f"startup packet too short: {size + 4} bytes")
    if size + 4 > STARTUP_MAX:
        raise ProtocolViolation(f"startup packet too long: {size + 4} bytes (limit {STARTUP_MAX})")
    code = read_uint32(p)
    if code == SSL_REQUEST or code == GSSENC_REQUEST:
        if size != 4:
            kind = "SSLRequest" if code == SSL_REQUEST else "GSSENCRequest"
            raise ProtocolViolation(f"{kind} must be 8 bytes long, got {size + 4}")
        return code, None
    if code == CANCEL_REQUEST:
        if size < 8 or not CANCEL_SECRET_MIN <= size - 8 <= CANCEL_SECRET_MAX:
            raise ProtocolViolation(
                f"CancelRequest has a bad length ({size + 4} bytes): "
                f"the secret key must be {CANCEL_SECRET_MIN} to {CANCEL_SECRET_MAX} bytes"
            )
        return code, (read_uint32(p + 4), payload[8:])
    major = code >> 16
    minor = code & 0xFFFF
    if major == 1234:
        raise ProtocolViolation(f"unknown startup request code {major}.{minor}")
    if major != 3:
        raise ProtocolViolation(f"unsupported frontend protocol {major}.{minor}: the proxy supports 3.0")
    return code, _startup_params(p, 4, size)


cdef dict _startup_params(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end):
    cdef dict params = {}
    cdef const unsigned char* nul
    cdef str key, value
    while True:
        if pos >= end:
            raise ProtocolViolation("startup packet is missing the final NUL that ends the parameter list")
        if p[pos] == 0:
            pos += 1
            break
        nul = <const unsigned char*>memchr(p + pos, 0, end - pos)
        if nul == NULL:
            raise ProtocolViolation("startup parameter name is not NUL-terminated")
        key = _startup_text(p + pos, nul - (p + pos), "parameter name")
        pos = nul - p + 1
        if pos >= end:
            raise ProtocolViolation(f"startup parameter {key!r} has no value (odd key/value list)")
        nul = <const unsigned char*>memchr(p + pos, 0, end - pos)
        if nul == NULL:
            raise ProtocolViolation(f"value of startup parameter {key!r} is not NUL-terminated")
        value = _startup_text(p + pos, nul - (p + pos), None, key)
        pos = nul - p + 1
        if key in params:
            raise ProtocolViolation(f"startup parameter {key!r} appears more than once")
        params[key] = value
    if pos != end:
        raise ProtocolViolation("startup packet has bytes after the NUL that ends the parameter list")
    if not params.get("user"):
        raise ProtocolViolation("no PostgreSQL user name specified in startup packet")
    return params


cdef str _startup_text(const unsigned char* start, Py_ssize_t length, str what, str key=None):
    try:
        return PyUnicode_DecodeUTF8(<const char*>start, length, NULL)
    except UnicodeDecodeError:
        if what is None:
            what = f"value of parameter {key!r}"
        raise ProtocolViolation(f"startup packet {what} is not valid UTF-8") from None


cdef class ClientFramer:
    """Cuts the client->proxy byte stream into complete PostgreSQL messages."""

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._max_message_size = max_message_size
        self._in_startup = True
        self._held = bytearray()
        self._need = 0
        self._broken = False

    @property
    def max_message_size(self) -> int:
        return self._max_message_size

    @max_message_size.setter
    def max_message_size(self, value: int) -> None:
        # applies to message headers read from now on (the proxy raises it once a client is authenticated)
        self._max_message_size = value

    @property
    def in_startup(self) -> bool:
        return self._in_startup

    @in_startup.setter
    def in_startup(self, value: bool) -> None:
        self._in_startup = bool(value)
        self._need = 0  # the held header must be re-read under the new framing

    @property
    def pending(self) -> int:
        return PyByteArray_GET_SIZE(self._held)

    def feed(self, data) -> tuple:
        """Returns (buf, messages): the complete messages cut by this call and their payload offsets in buf."""
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
        cdef list messages = []
        cdef Py_ssize_t cut
        try:
            cut = self._scan(src, total, messages)
        except ProtocolViolation:
            self._broken = True
            raise
        if not from_held and cut == total:
            return chunk, messages
        cdef bytes buf = PyBytes_FromStringAndSize(<const char*>src, cut) if cut else b""
        self._held = PyByteArray_FromStringAndSize(<const char*>src + cut, total - cut)
        self._need = self._held_message_size()
        return buf, messages

    cdef Py_ssize_t _scan(self, const unsigned char* src, Py_ssize_t total, list messages) except -1:
        """Appends the complete messages of src to `messages`; returns the offset where the incomplete tail starts."""
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t end
        cdef long long length
        cdef long long code
        cdef int msg_type
        cdef long long limit = self._max_message_size
        while True:
            if self._in_startup:
                if total - pos < 4:
                    return pos
                length = read_int32(src + pos)
                if length > limit:
                    raise ProtocolViolation(f"message of {length} bytes exceeds the limit of {limit} bytes")
                if length < STARTUP_MIN or length > STARTUP_MAX:
                    raise ProtocolViolation(
                        f"startup packet length {length} is outside the allowed range "
                        f"{STARTUP_MIN}..{STARTUP_MAX}"
                    )
                end = pos + <Py_ssize_t>length
                if end > total:
                    return pos
                messages.append((0, pos + 4, end))
                code = read_int32(src + pos + 4)
                if code != SSL_REQUEST and code != GSSENC_REQUEST:
                    self._in_startup = False
                pos = end
            else:
                if total - pos < 5:
                    return pos
                msg_type = src[pos]
                length = read_int32(src + pos + 1)
                if length < 4:
                    raise ProtocolViolation(
                        f"message type {type_name(msg_type)} has invalid length {length} (must be at least 4)"
                    )
                if length > limit:
                    raise ProtocolViolation(
                        f"message of {length} bytes exceeds the limit of {limit} bytes "
                        f"(type {type_name(msg_type)})"
                    )
                end = pos + 1 + <Py_ssize_t>length
                if end > total:
                    return pos
                messages.append((msg_type, pos + 5, end))
                pos = end

    cdef Py_ssize_t _held_message_size(self):
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(self._held)
        cdef const unsigned char* p = <const unsigned char*>PyByteArray_AS_STRING(self._held)
        if self._in_startup:
            return <Py_ssize_t>read_int32(p) if size >= 4 else 0
        return 1 + <Py_ssize_t>read_int32(p + 1) if size >= 5 else 0


cdef class ServerScanner:
    """Finds message boundaries in a backend->proxy stream and extracts only the messages that change state."""

    def __init__(self, interesting: bytes = DEFAULT_INTERESTING) -> None:
        self.interesting = interesting
        self.reset()

    @property
    def interesting(self) -> bytes:
        return self._interesting

    @interesting.setter
    def interesting(self, value: bytes) -> None:
        cdef bytes wanted = bytes(value)
        cdef unsigned char c
        memset(self._wanted, 0, sizeof(self._wanted))
        for c in wanted:
            self._wanted[c] = 1
        self._interesting = wanted

    @property
    def at_boundary(self) -> bool:
        return self._header_len == 0 and self._remaining == 0

    def reset(self) -> None:
        """Forgets any partial message (the backend is being discarded or reset)."""
        self._header_len = 0
        self._remaining = 0
        self._collecting = False
        self._body = None
        self._body_type = 0
        self._broken = False

    def feed(self, data) -> list:
        """Scans one chunk; returns (type, payload, end offset in this chunk) of each interesting message completed."""
        return self._feed(data)

    def feed_ready(self, data) -> int:
        """Scans one chunk for the forwarding hot path: how many ReadyForQuery it completed, without a list.

        Returns `count << 8 | last transaction status byte` (0: nothing interesting) when the chunk's interesting
        messages are all ReadyForQuery; otherwise -1, and take_events() returns them all, as feed() would have.
        """
        return self._feed_ready(data)

    cdef long long _feed_ready(self, data) except? -2:
        # The common chunk (between messages, whole messages, ReadyForQuery the only interesting one) is walked
        # here without building the event list; anything else is rescanned from its start by the general path,
        # which is safe because nothing is changed before that decision.
        if self._broken or self._header_len or self._remaining or type(data) is not bytes:
            return self._feed_ready_events(data)
        cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(<bytes>data)
        cdef Py_ssize_t total = PyBytes_GET_SIZE(<bytes>data)
        cdef Py_ssize_t pos = 0, end
        cdef long long length, count = 0
        cdef int msg_type, status = 0
        while total - pos >= 5:
            msg_type = src[pos]
            length = read_int32(src + pos + 1)
            if length < 4:
                return self._feed_ready_events(data)  # raises the protocol violation
            end = pos + 1 + <Py_ssize_t>length
            if self._wanted[msg_type]:
                if msg_type != 90 or length != 5 or end > total:  # not a whole ReadyForQuery
                    return self._feed_ready_events(data)
                status = src[pos + 5]
                count += 1
            elif end > total:  # the rest of an uninteresting message comes in later chunks
                self._remaining = end - total
                return (count << 8) | status if count else 0
            pos = end
        if pos < total:  # a header split across chunks
            memcpy(self._header, src + pos, total - pos)
            self._header_len = <int>(total - pos)
        return (count << 8) | status if count else 0

    cdef long long _feed_ready_events(self, data) except? -2:
        cdef list events = self._feed(data)
        cdef Py_ssize_t count = len(events)
        cdef int status = 0
        cdef tuple event
        cdef bytes payload
        for event in events:
            payload = <bytes>event[1]
            if <int>event[0] != 90 or PyBytes_GET_SIZE(payload) != 1:  # 'Z' with its one status byte
                self._events = events
                return -1
            status = <unsigned char>PyBytes_AS_STRING(payload)[0]
        return (count << 8) | status if count else 0

    def take_events(self) -> list:
        """The events of the last feed_ready() that returned -1."""
        events = self._events
        self._events = None
        return events if events is not None else []

    cdef list _feed(self, data):
        if self._broken:
            raise ProtocolViolation("server scanner used after a protocol violation")
        if type(data) is not bytes:
            data = bytes(data)
        cdef bytes chunk = <bytes>data
        cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t total = PyBytes_GET_SIZE(chunk)
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take, available, body_size, old_size
        cdef long long length
        cdef int msg_type
        cdef list events = []
        while pos < total:
            if self._remaining:
                take = self._remaining if self._remaining < total - pos else total - pos
                if self._collecting:
                    old_size = PyByteArray_GET_SIZE(self._body)
                    PyByteArray_Resize(self._body, old_size + take)
                    memcpy(PyByteArray_AS_STRING(self._body) + old_size, src + pos, take)
                pos += take
                self._remaining -= take
                if self._remaining == 0 and self._collecting:
                    events.append((
                        self._body_type,
                        PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self._body), PyByteArray_GET_SIZE(self._body)),
                        pos,
                    ))
                    self._body = None
                    self._collecting = False
                continue
            if self._header_len == 0 and total - pos >= 5:
                msg_type = src[pos]
                length = read_int32(src + pos + 1)
                pos += 5
            else:
                take = 5 - self._header_len
                if take > total - pos:
                    take = total - pos
                memcpy(self._header + self._header_len, src + pos, take)
                self._header_len += <int>take
                pos += take
                if self._header_len < 5:
                    break
                msg_type = self._header[0]
                length = read_int32(self._header + 1)
                self._header_len = 0
            if length < 4:
                self._broken = True
                raise ProtocolViolation(
                    f"backend message type {type_name(msg_type)} has invalid length {length} "
                    "(must be at least 4)"
                )
            body_size = <Py_ssize_t>(length - 4)
            available = total - pos
            if self._wanted[msg_type]:
                if available >= body_size:
                    events.append((msg_type, PyBytes_FromStringAndSize(<const char*>src + pos, body_size),
                                   pos + body_size))
                    pos += body_size
                else:
                    self._collecting = True
                    self._body_type = msg_type
                    self._body = PyByteArray_FromStringAndSize(<const char*>src + pos, available)
                    self._remaining = body_size - available
                    pos = total
            elif available >= body_size:
                pos += body_size
            else:
                self._remaining = body_size - available
                pos = total
        return events


cdef class PgRequestState:
    """The request accounting of one PostgreSQL client session, and its compiled fast path.

    `take_plain` accounts a chunk of ordinary requests (the whole chunk complete messages: simple queries and
    unnamed extended batches whose SQL does not pin) without building a message list; anything else is left to
    the full path (PgSession.client_messages) by returning -1 with nothing consumed or changed.
    """

    def __init__(self) -> None:
        self.outstanding = 0
        self.batch_open = False
        self.copy_in = False
        self.syncs_since_execute = 0
        self.status = 73  # 'I'
        self.pinned = False
        self.failing = None
        self.flush_pending = False
        self.discarding = False
        self.pin_mask = 0
        self.inspect_limit = 16 * 1024
        self._last_parse = None
        self._last_parse_flags = 0

    @property
    def quiet(self) -> bool:
        """Between transactions with nothing in flight: a backend can be handed back (after a reset if pinned)."""
        return self.outstanding == 0 and not self.batch_open and self.status == 73

    @property
    def in_transaction(self) -> bool:
        return self.status != 73

    @property
    def releasable(self) -> bool:
        return self.outstanding == 0 and not self.batch_open and self.status == 73 and not self.pinned

    def take_plain(self, ClientFramer framer not None, data) -> int:
        """Accounts `data` if it is plain requests only; returns the Query/Execute count, or -1 (not taken)."""
        return self._take_plain(framer, data)

    cdef long long _take_plain(self, ClientFramer framer, data) except? -2:
        if type(data) is not bytes:
            return -1
        if framer._broken or framer._in_startup or PyByteArray_GET_SIZE(framer._held):
            return -1
        if self.failing is not None or self.discarding or self.copy_in:
            return -1
        cdef bytes chunk = <bytes>data
        cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t total = PyBytes_GET_SIZE(chunk)
        cdef long long limit = framer._max_message_size
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t body, end, query_start
        cdef const unsigned char* zero
        cdef long long length
        cdef int msg_type
        cdef long long outstanding = self.outstanding
        cdef long long syncs = self.syncs_since_execute
        cdef bint batch_open = self.batch_open
        cdef bint flush_pending = self.flush_pending
        cdef long long requests = 0
        while pos < total:
            if total - pos < 5:
                return -1
            msg_type = src[pos]
            length = read_int32(src + pos + 1)
            if length < 4 or length > limit or length > total - pos - 1:
                return -1
            body = pos + 5
            end = pos + 1 + <Py_ssize_t>length
            if msg_type == 81:  # 'Q'
                if body == end or not self._plain_sql(chunk, body, end - 1, False):
                    return -1
                outstanding += 1
                syncs = 0
                requests += 1
            elif msg_type == 80:  # 'P': only the unnamed statement (a named one pins)
                if body == end or src[body] != 0:
                    return -1
                query_start = body + 1
                zero = <const unsigned char*>memchr(src + query_start, 0, end - query_start)
                if zero == NULL or not self._plain_sql(chunk, query_start, zero - src, True):
                    return -1
                batch_open = True
            elif msg_type == 66 or msg_type == 68 or msg_type == 67:  # 'B', 'D', 'C'
                batch_open = True
            elif msg_type == 69:  # 'E'
                batch_open = True
                requests += 1
                syncs = 0
            elif msg_type == 72:  # 'H'
                batch_open = True
                flush_pending = True
            elif msg_type == 83:  # 'S'
                batch_open = False
                flush_pending = False
                outstanding += 1
                syncs += 1
            else:
                return -1
            pos = end
        self.outstanding = outstanding
        self.syncs_since_execute = syncs
        self.batch_open = batch_open
        self.flush_pending = flush_pending
        return requests

    cdef bint _plain_sql(self, bytes chunk, Py_ssize_t start, Py_ssize_t end, bint remember) except -1:
        # An extended-protocol client parses the same few statements over and over: the last Parse's text and
        # flags are kept, and the same text again is compared rather than lexed. Simple queries are not kept:
        # their literals make each text new.
        cdef Py_ssize_t size = end - start
        cdef const char* sql = PyBytes_AS_STRING(chunk) + start
        cdef bytes last = self._last_parse
        cdef int flags
        if size > self.inspect_limit:
            return False
        if last is not None and PyBytes_GET_SIZE(last) == size and memcmp(PyBytes_AS_STRING(last), sql, size) == 0:
            flags = self._last_parse_flags
        else:
            flags = classify_pg_span(<const unsigned char*>sql, size)
            if remember:
                self._last_parse = PyBytes_FromStringAndSize(sql, size)
                self._last_parse_flags = flags
        return (<long long>flags & self.pin_mask) == 0
