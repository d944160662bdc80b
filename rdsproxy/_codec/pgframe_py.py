"""PostgreSQL message framing in pure Python: the twin of pgframe_c with the same API and behaviour."""

from __future__ import annotations

import struct

from ..errors import ProtocolViolation
from .classify_py import classify_pg

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

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
# Protocol 3.0 uses a 4-byte cancel secret; 3.2 allows up to 256 bytes.
MIN_CANCEL_SECRET = 4
MAX_CANCEL_SECRET = 256
MIN_STARTUP_LENGTH = 8
MAX_STARTUP_LENGTH = 10000
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
DEFAULT_INTERESTING = b"ZESGHWK"

_unpack_int32 = struct.Struct("!i").unpack_from
_unpack_uint32 = struct.Struct("!I").unpack_from

_READY_FOR_QUERY = ord("Z")
_READY_IDLE = ord("I")
_Q, _P, _B, _D, _C, _E, _H, _S = b"QPBDCEHS"


def _type_name(msg_type: int) -> str:
    return repr(chr(msg_type)) if 32 < msg_type < 127 else f"0x{msg_type:02x}"


def parse_startup(payload: bytes) -> tuple[int, object]:
    """Parse an untyped startup-phase packet given WITHOUT its 4-byte length prefix.

    Returns (code, None) for an SSLRequest or GSSENCRequest, (CANCEL_REQUEST_CODE, (process_id, secret)) for a
    CancelRequest, and (protocol version, {name: value}) for a StartupMessage; raises ProtocolViolation.
    """
    size = len(payload)
    if size < 4:
        raise ProtocolViolation(f"startup packet too short: {size + 4} bytes")
    if size + 4 > MAX_STARTUP_LENGTH:
        raise ProtocolViolation(f"startup packet too long: {size + 4} bytes (limit {MAX_STARTUP_LENGTH})")
    (code,) = _unpack_uint32(payload)
    if code == SSL_REQUEST_CODE or code == GSSENC_REQUEST_CODE:
        if size != 4:
            kind = "SSLRequest" if code == SSL_REQUEST_CODE else "GSSENCRequest"
            raise ProtocolViolation(f"{kind} must be 8 bytes long, got {size + 4}")
        return code, None
    if code == CANCEL_REQUEST_CODE:
        secret = payload[8:]
        if size < 8 or not MIN_CANCEL_SECRET <= len(secret) <= MAX_CANCEL_SECRET:
            raise ProtocolViolation(
                f"CancelRequest has a bad length ({size + 4} bytes): "
                f"the secret key must be {MIN_CANCEL_SECRET} to {MAX_CANCEL_SECRET} bytes"
            )
        return code, (_unpack_uint32(payload, 4)[0], bytes(secret))
    major, minor = code >> 16, code & 0xFFFF
    if major == 1234:
        raise ProtocolViolation(f"unknown startup request code {major}.{minor}")
    if major != 3:
        raise ProtocolViolation(f"unsupported frontend protocol {major}.{minor}: the proxy supports 3.0")
    return code, _startup_params(payload, 4)


def _startup_params(payload: bytes, pos: int) -> dict[str, str]:
    params: dict[str, str] = {}
    end = len(payload)
    while True:
        if pos >= end:
            raise ProtocolViolation("startup packet is missing the final NUL that ends the parameter list")
        if payload[pos] == 0:
            pos += 1
            break
        key_end = payload.find(b"\x00", pos)
        if key_end < 0:
            raise ProtocolViolation("startup parameter name is not NUL-terminated")
        key = _startup_text(payload[pos:key_end], "parameter name")
        pos = key_end + 1
        if pos >= end:
            raise ProtocolViolation(f"startup parameter {key!r} has no value (odd key/value list)")
        value_end = payload.find(b"\x00", pos)
        if value_end < 0:
            raise ProtocolViolation(f"value of startup parameter {key!r} is not NUL-terminated")
        value = _startup_text(payload[pos:value_end], f"value of parameter {key!r}")
        pos = value_end + 1
        if key in params:
            raise ProtocolViolation(f"startup parameter {key!r} appears more than once")
        params[key] = value
    if pos != end:
        raise ProtocolViolation("startup packet has bytes after the NUL that ends the parameter list")
    if not params.get("user"):
        raise ProtocolViolation("no PostgreSQL user name specified in startup packet")
    return params


def _startup_text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(f"startup packet {what} is not valid UTF-8") from None


class ClientFramer:
    """Cuts the client->proxy byte stream into complete PostgreSQL messages."""

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._max_message_size = max_message_size
        self._in_startup = True
        self._held = bytearray()
        # Total size of the held incomplete message once its header is known: lets a large message
        # arriving in many chunks be accumulated without rescanning (0 = unknown).
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
        return len(self._held)

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
        """Returns (buf, messages): the complete messages cut by this call and their payload offsets in buf."""
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
        messages: list[tuple[int, int, int]] = []
        try:
            cut = self._scan(src, messages)
        except ProtocolViolation:
            self._broken = True
            raise
        total = len(src)
        if src is data:
            if cut == total:
                return data, messages
            self._held = bytearray(memoryview(data)[cut:])
            buf = data[:cut]
        else:
            with memoryview(src) as view:
                buf = bytes(view[:cut])
                self._held = bytearray(view[cut:])
        self._need = self._held_message_size()
        return buf, messages

    def _scan(self, src: bytes | bytearray, messages: list[tuple[int, int, int]]) -> int:
        """Appends the complete messages of src to `messages`; returns the offset where the incomplete tail starts."""
        total = len(src)
        pos = 0
        limit = self._max_message_size
        while True:
            if self._in_startup:
                if total - pos < 4:
                    return pos
                (length,) = _unpack_int32(src, pos)
                if length > limit:
                    raise ProtocolViolation(f"message of {length} bytes exceeds the limit of {limit} bytes")
                if length < MIN_STARTUP_LENGTH or length > MAX_STARTUP_LENGTH:
                    raise ProtocolViolation(
                        f"startup packet length {length} is outside the allowed range "
                        f"{MIN_STARTUP_LENGTH}..{MAX_STARTUP_LENGTH}"
                    )
                end = pos + length
                if end > total:
                    return pos
                messages.append((0, pos + 4, end))
                (code,) = _unpack_int32(src, pos + 4)
                if code != SSL_REQUEST_CODE and code != GSSENC_REQUEST_CODE:
                    self._in_startup = False
                pos = end
            else:
                if total - pos < 5:
                    return pos
                msg_type = src[pos]
                (length,) = _unpack_int32(src, pos + 1)
                if length < 4:
                    raise ProtocolViolation(
                        f"message type {_type_name(msg_type)} has invalid length {length} (must be at least 4)"
                    )
                if length > limit:
                    raise ProtocolViolation(
                        f"message of {length} bytes exceeds the limit of {limit} bytes (type {_type_name(msg_type)})"
                    )
                end = pos + 1 + length
                if end > total:
                    return pos
                messages.append((msg_type, pos + 5, end))
                pos = end

    def _held_message_size(self) -> int:
        held = self._held
        if self._in_startup:
            return _unpack_int32(held, 0)[0] if len(held) >= 4 else 0
        return 1 + _unpack_int32(held, 1)[0] if len(held) >= 5 else 0


class ServerScanner:
    """Finds message boundaries in a backend->proxy stream and extracts only the messages that change state."""

    def __init__(self, interesting: bytes = DEFAULT_INTERESTING) -> None:
        self.interesting = interesting
        self._events: list[tuple[int, bytes, int]] | None = None
        self.reset()

    @property
    def interesting(self) -> bytes:
        return self._interesting

    @interesting.setter
    def interesting(self, value: bytes) -> None:
        self._interesting = bytes(value)
        self._wanted = frozenset(self._interesting)

    @property
    def at_boundary(self) -> bool:
        return not self._header and self._remaining == 0

    def reset(self) -> None:
        """Forgets any partial message (the backend is being discarded or reset)."""
        self._header = bytearray()  # the first bytes of a header split across chunks
        self._remaining = 0  # body bytes of the current message still to come
        self._collecting = False
        self._body = bytearray()
        self._body_type = 0
        self._broken = False

    def feed_ready(self, data: bytes) -> int:
        """Scans one chunk for the forwarding hot path: how many ReadyForQuery it completed, without a list.

        Returns `count << 8 | last transaction status byte` (0: nothing interesting) when the chunk's interesting
        messages are all ReadyForQuery; otherwise -1, and take_events() returns them all, as feed() would have.
        """
        events = self.feed(data)
        status = 0
        for msg_type, payload, _end in events:
            if msg_type != _READY_FOR_QUERY or len(payload) != 1:
                self._events = events
                return -1
            status = payload[0]
        return (len(events) << 8) | status if events else 0

    def take_events(self) -> list[tuple[int, bytes, int]]:
        """The events of the last feed_ready() that returned -1."""
        events, self._events = self._events, None
        return events if events is not None else []

    def feed(self, data: bytes) -> list[tuple[int, bytes, int]]:
        """Scans one chunk; returns (type, payload, end offset in this chunk) of each interesting message completed."""
        if self._broken:
            raise ProtocolViolation("server scanner used after a protocol violation")
        if type(data) is not bytes:
            data = bytes(data)
        events: list[tuple[int, bytes, int]] = []
        total = len(data)
        pos = 0
        wanted = self._wanted
        while pos < total:
            if self._remaining:
                take = min(self._remaining, total - pos)
                if self._collecting:
                    self._body += data[pos : pos + take]
                pos += take
                self._remaining -= take
                if self._remaining == 0 and self._collecting:
                    events.append((self._body_type, bytes(self._body), pos))
                    self._body = bytearray()
                    self._collecting = False
                continue
            if not self._header and total - pos >= 5:
                msg_type = data[pos]
                (length,) = _unpack_int32(data, pos + 1)
                pos += 5
            else:
                take = min(5 - len(self._header), total - pos)
                self._header += data[pos : pos + take]
                pos += take
                if len(self._header) < 5:
                    break
                msg_type = self._header[0]
                (length,) = _unpack_int32(self._header, 1)
                self._header = bytearray()
            if length < 4:
                self._broken = True
                raise ProtocolViolation(
                    f"backend message type {_type_name(msg_type)} has invalid length {length} (must be at least 4)"
                )
            body_size = length - 4
            available = total - pos
            if msg_type in wanted:
                if available >= body_size:
                    events.append((msg_type, data[pos : pos + body_size], pos + body_size))
                    pos += body_size
                else:
                    self._collecting = True
                    self._body_type = msg_type
                    self._body = bytearray(data[pos:])
                    self._remaining = body_size - available
                    pos = total
            elif available >= body_size:
                pos += body_size
            else:
                self._remaining = body_size - available
                pos = total
        return events


class PgRequestState:
    """The request accounting of one PostgreSQL client session, and its compiled fast path.

    `take_plain` accounts a chunk of ordinary requests (the whole chunk complete messages: simple queries and
    unnamed extended batches whose SQL does not pin) without building a message list; anything else is left to
    the full path (PgSession.client_messages) by returning -1 with nothing consumed or changed.
    """

    __slots__ = (
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
    )

    def __init__(self) -> None:
        self.outstanding = 0  # requests sent whose ReadyForQuery has not come back yet
        self.batch_open = False  # extended-protocol messages sent since the last Sync
        self.copy_in = False  # backend is in COPY FROM STDIN: the client's Syncs are ignored by it
        self.syncs_since_execute = 0
        self.status = _READY_IDLE  # last ReadyForQuery transaction status
        self.pinned = False
        self.failing: tuple[str, str] | None = None  # (sqlstate, message) owed for the next request
        self.flush_pending = False  # the open batch holds a Flush: its sender may be waiting for replies now
        self.discarding = False  # this batch's error was sent: drop messages up to Sync, answer it with Z
        self.pin_mask = 0  # classify flags that pin (the full path records which and why)
        self.inspect_limit = 16 * 1024  # longer statements pin

    @property
    def quiet(self) -> bool:
        """Between transactions with nothing in flight: a backend can be handed back (after a reset if pinned)."""
        return self.outstanding == 0 and not self.batch_open and self.status == _READY_IDLE

    @property
    def in_transaction(self) -> bool:
        return self.status != _READY_IDLE

    @property
    def releasable(self) -> bool:
        return self.outstanding == 0 and not self.batch_open and self.status == _READY_IDLE and not self.pinned

    def take_plain(self, framer: ClientFramer, data: bytes) -> int:
        """Accounts `data` if it is plain requests only; returns the Query/Execute count, or -1 (not taken)."""
        if type(data) is not bytes:
            return -1
        if framer._broken or framer._in_startup or framer._held:
            return -1
        if self.failing is not None or self.discarding or self.copy_in:
            return -1
        total = len(data)
        limit = framer._max_message_size
        pos = 0
        outstanding = self.outstanding
        syncs = self.syncs_since_execute
        batch_open = self.batch_open
        flush_pending = self.flush_pending
        requests = 0
        while pos < total:
            if total - pos < 5:
                return -1
            msg_type = data[pos]
            (length,) = _unpack_int32(data, pos + 1)
            if length < 4 or length > limit or length > total - pos - 1:
                return -1
            body = pos + 5
            end = pos + 1 + length
            if msg_type == _Q:
                if body == end or not self._plain_sql(data, body, end - 1):
                    return -1
                outstanding += 1
                syncs = 0
                requests += 1
            elif msg_type == _P:  # only the unnamed statement (a named one pins)
                if body == end or data[body] != 0:
                    return -1
                zero = data.find(b"\x00", body + 1, end)
                if zero < 0 or not self._plain_sql(data, body + 1, zero):
                    return -1
                batch_open = True
            elif msg_type == _B or msg_type == _D or msg_type == _C:
                batch_open = True
            elif msg_type == _E:
                batch_open = True
                requests += 1
                syncs = 0
            elif msg_type == _H:
                batch_open = True
                flush_pending = True
            elif msg_type == _S:
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

    def _plain_sql(self, data: bytes, start: int, end: int) -> bool:
        if end - start > self.inspect_limit:
            return False
        return not classify_pg(data[start:end]) & self.pin_mask
