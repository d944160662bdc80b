"""Build and parse MySQL/MariaDB client/server protocol packets (sans-IO: bytes in, bytes and values out).

Builders return packet *payloads* unless they say otherwise; ``packet()`` and ``frame_packets()`` add the
4-byte header (3-byte little-endian length, 1-byte sequence id). Parsers take payloads and raise
ProtocolViolation on malformed input, never IndexError, struct.error or UnicodeDecodeError.

Text fields (user names, database names, connection attributes) are decoded as UTF-8 with
``surrogateescape``: a client using another character set gets its bytes back unchanged when the proxy
re-encodes the name (every builder encodes with ``surrogateescape`` too).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Union

from rdsproxy.errors import ProtocolViolation

# --------------------------------------------------------------------------- constants

MAX_PACKET_CHUNK = 0xFFFFFF  # a payload of this length or more continues in the next packet
PROTOCOL_VERSION_10 = 10

# Capability flags (32 bits, shared by MySQL and MariaDB).
CLIENT_LONG_PASSWORD = 1
CLIENT_MYSQL = CLIENT_LONG_PASSWORD  # MariaDB's name: a MariaDB peer leaves it clear to use extended capabilities
CLIENT_FOUND_ROWS = 2
CLIENT_LONG_FLAG = 4
CLIENT_CONNECT_WITH_DB = 8
CLIENT_NO_SCHEMA = 0x10
CLIENT_COMPRESS = 0x20
CLIENT_ODBC = 0x40
CLIENT_LOCAL_FILES = 0x80
CLIENT_IGNORE_SPACE = 0x100
CLIENT_PROTOCOL_41 = 0x200
CLIENT_INTERACTIVE = 0x400
CLIENT_SSL = 0x800
CLIENT_IGNORE_SIGPIPE = 0x1000
CLIENT_TRANSACTIONS = 0x2000
CLIENT_RESERVED = 0x4000
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PS_MULTI_RESULTS = 1 << 18
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
CLIENT_SESSION_TRACK = 1 << 23
CLIENT_DEPRECATE_EOF = 1 << 24
CLIENT_OPTIONAL_RESULTSET_METADATA = 1 << 25
CLIENT_ZSTD_COMPRESSION_ALGORITHM = 1 << 26
CLIENT_QUERY_ATTRIBUTES = 1 << 27
CLIENT_MULTI_FACTOR_AUTHENTICATION = 1 << 28
CLIENT_CAPABILITY_EXTENSION = 1 << 29
CLIENT_SSL_VERIFY_SERVER_CERT = 1 << 30
CLIENT_REMEMBER_OPTIONS = 1 << 31

# MariaDB extended capabilities: the 32 bits MariaDB puts in reserved bytes when CLIENT_MYSQL is clear
# (MariaDB's sources number them from bit 32 of a 64-bit word; here they are bits of their own 32-bit word).
MARIADB_CLIENT_PROGRESS = 1 << 0
MARIADB_CLIENT_COM_MULTI = 1 << 1
MARIADB_CLIENT_STMT_BULK_OPERATIONS = 1 << 2
MARIADB_CLIENT_EXTENDED_METADATA = 1 << 3
MARIADB_CLIENT_CACHE_METADATA = 1 << 4

# Server status flags (OK, EOF and handshake packets).
SERVER_STATUS_IN_TRANS = 0x0001
SERVER_STATUS_AUTOCOMMIT = 0x0002
SERVER_MORE_RESULTS_EXISTS = 0x0008
SERVER_STATUS_NO_GOOD_INDEX_USED = 0x0010
SERVER_STATUS_NO_INDEX_USED = 0x0020
SERVER_STATUS_CURSOR_EXISTS = 0x0040
SERVER_STATUS_LAST_ROW_SENT = 0x0080
SERVER_STATUS_DB_DROPPED = 0x0100
SERVER_STATUS_NO_BACKSLASH_ESCAPES = 0x0200
SERVER_STATUS_METADATA_CHANGED = 0x0400
SERVER_QUERY_WAS_SLOW = 0x0800
SERVER_PS_OUT_PARAMS = 0x1000
SERVER_STATUS_IN_TRANS_READONLY = 0x2000
SERVER_SESSION_STATE_CHANGED = 0x4000

# Command bytes (first byte of a client command payload).
COM_SLEEP = 0x00
COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_CREATE_DB = 0x05
COM_DROP_DB = 0x06
COM_REFRESH = 0x07
COM_SHUTDOWN = 0x08
COM_STATISTICS = 0x09
COM_PROCESS_INFO = 0x0A
COM_CONNECT = 0x0B
COM_PROCESS_KILL = 0x0C
COM_DEBUG = 0x0D
COM_PING = 0x0E
COM_TIME = 0x0F
COM_DELAYED_INSERT = 0x10
COM_CHANGE_USER = 0x11
COM_BINLOG_DUMP = 0x12
COM_TABLE_DUMP = 0x13
COM_CONNECT_OUT = 0x14
COM_REGISTER_SLAVE = 0x15
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = 0x1C
COM_DAEMON = 0x1D
COM_BINLOG_DUMP_GTID = 0x1E
COM_RESET_CONNECTION = 0x1F
COM_STMT_BULK_EXECUTE = 0xFA  # MariaDB

# Packet header bytes of server responses.
OK_HEADER = 0x00
AUTH_MORE_DATA_HEADER = 0x01
LOCAL_INFILE_HEADER = 0xFB
EOF_HEADER = 0xFE
AUTH_SWITCH_HEADER = 0xFE
ERR_HEADER = 0xFF
NULL_VALUE = 0xFB  # a NULL column value in a text result row

# Collations (character set ids) used by the proxy.
CHARSET_UTF8_GENERAL_CI = 33
CHARSET_UTF8MB4_GENERAL_CI = 45
CHARSET_BINARY = 63

# Column types (the subset the proxy produces or inspects).
TYPE_DECIMAL = 0x00
TYPE_TINY = 0x01
TYPE_SHORT = 0x02
TYPE_LONG = 0x03
TYPE_FLOAT = 0x04
TYPE_DOUBLE = 0x05
TYPE_NULL = 0x06
TYPE_TIMESTAMP = 0x07
TYPE_LONGLONG = 0x08
TYPE_INT24 = 0x09
TYPE_DATE = 0x0A
TYPE_TIME = 0x0B
TYPE_DATETIME = 0x0C
TYPE_YEAR = 0x0D
TYPE_VARCHAR = 0x0F
TYPE_BIT = 0x10
TYPE_JSON = 0xF5
TYPE_NEWDECIMAL = 0xF6
TYPE_BLOB = 0xFC
TYPE_VAR_STRING = 0xFD
TYPE_STRING = 0xFE

# Column definition flags.
NOT_NULL_FLAG = 0x0001
UNSIGNED_FLAG = 0x0020
BINARY_FLAG = 0x0080
NUM_FLAG = 0x8000

# Error codes and SQLSTATEs the proxy sends itself.
ER_CON_COUNT_ERROR = 1040  # 08004: too many connections (borrow timeout)
ER_HANDSHAKE_ERROR = 1043  # 08S01: bad handshake
ER_ACCESS_DENIED_ERROR = 1045  # 28000: authentication failed
ER_UNKNOWN_COM_ERROR = 1047  # 08S01: protocol violation
ER_SERVER_SHUTDOWN = 1053  # 08S01: failover in the middle of a transaction
ER_NOT_SUPPORTED_AUTH_MODE = 1251  # 08004: client cannot do the authentication plugin asked for

DEFAULT_MAX_PACKET = 16777216
MYSQL_NATIVE_PASSWORD = "mysql_native_password"

_HEADER = struct.Struct("<I")  # 24-bit length | sequence id << 24
_UINT16 = struct.Struct("<H")
_UINT32 = struct.Struct("<I")
_UINT64 = struct.Struct("<Q")
_TWO_UINT16 = struct.Struct("<HH")
_NUL = b"\x00"
_SSL_REQUEST_LENGTH = 32
_HANDSHAKE_RESPONSE_FILLER = 23
_SQLSTATE_MARKER = 0x23  # '#'
_LONGLONG_MIN = -(1 << 63)
_LONGLONG_MAX = (1 << 63) - 1
_CANONICAL_INT = re.compile(r"(?:0|-?[1-9][0-9]*)\Z")


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class ServerHandshake:
    """Initial handshake (protocol 10) a server sends first.

    ``capabilities`` holds the lower and upper 16 bits; a MariaDB server (CLIENT_MYSQL clear) puts its
    extended capabilities in otherwise reserved bytes, exposed as ``mariadb_capabilities`` (0 otherwise).
    ``scramble`` joins both parts without the trailing NUL; ``auth_plugin`` is "" when the server does
    not advertise CLIENT_PLUGIN_AUTH.
    """

    protocol_version: int
    server_version: str
    connection_id: int
    scramble: bytes = field(repr=False)
    capabilities: int
    charset: int
    status: int
    auth_plugin: str
    mariadb_capabilities: int = 0


@dataclass(frozen=True)
class HandshakeResponse:
    """A client's HandshakeResponse41. ``database`` and ``auth_plugin`` are None when not sent."""

    capabilities: int
    max_packet: int
    charset: int
    username: str
    auth_response: bytes = field(repr=False)
    database: str | None = None
    auth_plugin: str | None = None
    connect_attrs: dict[str, str] = field(default_factory=dict)
    mariadb_capabilities: int = 0


@dataclass(frozen=True)
class ChangeUser:
    """A COM_CHANGE_USER command. ``charset``, ``auth_plugin`` are None when the client left them out."""

    username: str
    auth_response: bytes = field(repr=False)
    database: str | None = None
    charset: int | None = None
    auth_plugin: str | None = None
    connect_attrs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OkPacket:
    """An OK packet (header 0x00, or 0xFE when it ends a result set under CLIENT_DEPRECATE_EOF)."""

    affected_rows: int
    last_insert_id: int
    status: int
    warnings: int
    info: bytes = b""
    session_state_changes: bytes = b""


@dataclass(frozen=True)
class ErrPacket:
    code: int
    sqlstate: str
    message: str


@dataclass(frozen=True)
class EofPacket:
    warnings: int
    status: int


@dataclass(frozen=True)
class ColumnDefinition:
    """A Protocol::ColumnDefinition41 packet."""

    catalog: bytes
    schema: bytes
    table: bytes
    org_table: bytes
    name: bytes
    org_name: bytes
    charset: int
    column_length: int
    column_type: int
    flags: int
    decimals: int


# --------------------------------------------------------------------------- framing


def _check_seq(seq: int) -> None:
    if not 0 <= seq <= 0xFF:
        raise ValueError(f"sequence id must be 0..255, got {seq}")


def _frame_into(out: list[bytes], seq: int, payload: bytes) -> int:
    """Append the framed packets of one payload to ``out``; return the next sequence id."""
    length = len(payload)
    if length < MAX_PACKET_CHUNK:
        out.append(_HEADER.pack(length | seq << 24))
        out.append(payload)
        return (seq + 1) & 0xFF
    start = 0
    while True:
        chunk = payload[start : start + MAX_PACKET_CHUNK]
        out.append(_HEADER.pack(len(chunk) | seq << 24))
        out.append(chunk)
        seq = (seq + 1) & 0xFF
        start += MAX_PACKET_CHUNK
        # An exact multiple of the chunk size ends with an empty packet, so the peer knows it is over.
        if len(chunk) < MAX_PACKET_CHUNK:
            return seq


def packet(seq: int, payload: bytes) -> bytes:
    """Frame one payload. Payloads of 0xFFFFFF bytes or more are split into 0xFFFFFF-byte packets with
    consecutive sequence ids (wrapping at 256), ending with a shorter, possibly empty, packet."""
    _check_seq(seq)
    out: list[bytes] = []
    _frame_into(out, seq, bytes(payload))
    return b"".join(out)


def frame_packets(start_seq: int, payloads: Iterable[bytes]) -> tuple[bytes, int]:
    """Frame several payloads with consecutive sequence ids: (bytes to send, next sequence id)."""
    _check_seq(start_seq)
    out: list[bytes] = []
    seq = start_seq
    for payload in payloads:
        seq = _frame_into(out, seq, bytes(payload))
    return b"".join(out), seq


def read_packet(buf: bytes, pos: int = 0, *, max_payload: int | None = None) -> tuple[int, bytes, int] | None:
    """Read one logical packet (joining 0xFFFFFF-byte continuations) at ``pos`` of ``buf``.

    Returns (sequence id of its last packet, payload, position after it), or None while ``buf`` does not
    yet hold all of it. Sequence ids of continuation packets must be consecutive. ``max_payload`` bounds
    the payload: a larger declared length raises ProtocolViolation before the bytes arrive.
    """
    parts: list[bytes] = []
    total = 0
    expected_seq: int | None = None
    end = len(buf)
    while True:
        if end - pos < 4:
            return None
        (header,) = _HEADER.unpack_from(buf, pos)
        length, seq = header & 0xFFFFFF, header >> 24
        if expected_seq is not None and seq != expected_seq:
            raise ProtocolViolation(f"packet sequence id {seq} out of order: expected {expected_seq}")
        total += length
        if max_payload is not None and total > max_payload:
            raise ProtocolViolation(f"packet payload exceeds {max_payload} bytes")
        if end - pos - 4 < length:
            return None
        parts.append(bytes(buf[pos + 4 : pos + 4 + length]))
        pos += 4 + length
        if length < MAX_PACKET_CHUNK:
            return seq, b"".join(parts), pos
        expected_seq = (seq + 1) & 0xFF


# --------------------------------------------------------------------------- length-encoded values


def lenenc_int(n: int) -> bytes:
    """Length-encoded integer: 1, 3, 4 or 9 bytes."""
    if n < 0:
        raise ValueError(f"length-encoded integers are unsigned, got {n}")
    if n < 0xFB:
        return bytes((n,))
    if n < 1 << 16:
        return b"\xfc" + _UINT16.pack(n)
    if n < 1 << 24:
        return b"\xfd" + _UINT32.pack(n)[:3]
    if n < 1 << 64:
        return b"\xfe" + _UINT64.pack(n)
    raise ValueError(f"length-encoded integers fit in 64 bits, got {n}")


def lenenc_str(data: bytes) -> bytes:
    return lenenc_int(len(data)) + bytes(data)


def read_lenenc_int(buf: bytes, pos: int, what: str = "length-encoded integer") -> tuple[int, int]:
    """(value, position after it). The NULL marker 0xFB and the invalid prefix 0xFF raise."""
    if pos >= len(buf):
        raise ProtocolViolation(f"{what} is missing: packet ends early")
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFC:
        size = 2
    elif first == 0xFD:
        size = 3
    elif first == 0xFE:
        size = 8
    else:
        marker = "NULL marker 0xFB" if first == 0xFB else "invalid prefix 0xFF"
        raise ProtocolViolation(f"{what} starts with the {marker}")
    if len(buf) - pos - 1 < size:
        raise ProtocolViolation(f"{what} is truncated")
    return int.from_bytes(buf[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


def read_lenenc_str(buf: bytes, pos: int, what: str = "length-encoded string") -> tuple[bytes, int]:
    """(bytes, position after them) of a length-encoded string."""
    length, pos = read_lenenc_int(buf, pos, f"length of {what}")
    if len(buf) - pos < length:
        raise ProtocolViolation(f"{what} declares {length} bytes but the packet holds {len(buf) - pos}")
    return bytes(buf[pos : pos + length]), pos + length


def read_nul_str(buf: bytes, pos: int, what: str = "string") -> tuple[bytes, int]:
    """(bytes, position after the NUL) of a NUL-terminated string."""
    if pos > len(buf):
        raise ProtocolViolation(f"{what} is missing: packet ends early")
    end = buf.find(_NUL, pos)
    if end < 0:
        raise ProtocolViolation(f"{what} is not NUL-terminated")
    return bytes(buf[pos:end]), end + 1


def _read_fixed(buf: bytes, pos: int, size: int, what: str) -> tuple[bytes, int]:
    if len(buf) - pos < size:
        raise ProtocolViolation(f"{what} is truncated: packet ends early")
    return bytes(buf[pos : pos + size]), pos + size


def _read_uint(buf: bytes, pos: int, size: int, what: str) -> tuple[int, int]:
    raw, pos = _read_fixed(buf, pos, size, what)
    return int.from_bytes(raw, "little"), pos


# --------------------------------------------------------------------------- text helpers


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _label(raw: bytes) -> str:
    # Plugin names and versions are only shown and compared, so replacement keeps them printable.
    return raw.decode("utf-8", "replace")


def _encode(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError(f"{what} cannot be encoded as UTF-8") from None


def _nul_str(text: str, what: str) -> bytes:
    raw = _encode(text, what)
    if _NUL in raw:
        raise ValueError(f"{what} must not contain a NUL byte")
    return raw + _NUL


def _check_uint(value: int, bits: int, what: str) -> None:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{what} must fit in an unsigned {bits}-bit integer, got {value}")


def _expect_header(payload: bytes, header: int, what: str) -> None:
    if not payload:
        raise ProtocolViolation(f"{what} is empty")
    if payload[0] != header:
        raise ProtocolViolation(f"{what} must start with 0x{header:02x}, got 0x{payload[0]:02x}")


def _connect_attrs(attrs: dict[str, str] | None) -> bytes:
    body = b"".join(
        lenenc_str(_encode(key, "connection attribute name")) + lenenc_str(_encode(value, "connection attribute"))
        for key, value in (attrs or {}).items()
    )
    return lenenc_str(body)


def _read_connect_attrs(buf: bytes, pos: int) -> tuple[dict[str, str], int]:
    block, pos = read_lenenc_str(buf, pos, "connection attributes")
    attrs: dict[str, str] = {}
    inner = 0
    while inner < len(block):
        key, inner = read_lenenc_str(block, inner, "connection attribute name")
        value, inner = read_lenenc_str(block, inner, "connection attribute value")
        attrs[_text(key)] = _text(value)
    return attrs, pos


# --------------------------------------------------------------------------- connection phase


def handshake_v10(
    *,
    server_version: str,
    connection_id: int,
    scramble: bytes,
    capabilities: int,
    charset: int = CHARSET_UTF8MB4_GENERAL_CI,
    status: int = SERVER_STATUS_AUTOCOMMIT,
    auth_plugin: str = MYSQL_NATIVE_PASSWORD,
) -> bytes:
    """Initial handshake payload (the caller frames it with sequence id 0).

    The version string is sent as given (MariaDB prefixes "5.5.5-" for old clients). The scramble goes
    out as 8 + 12 bytes plus a NUL; the plugin name only when ``capabilities`` has CLIENT_PLUGIN_AUTH.
    """
    if len(scramble) != 20:
        raise ValueError(f"the scramble must be 20 bytes, got {len(scramble)}")
    _check_uint(connection_id, 32, "connection id")
    _check_uint(capabilities, 32, "capabilities")
    _check_uint(charset, 8, "charset")
    _check_uint(status, 16, "status flags")
    plugin_auth = bool(capabilities & CLIENT_PLUGIN_AUTH)
    parts = [
        bytes((PROTOCOL_VERSION_10,)),
        _nul_str(server_version, "server version"),
        _UINT32.pack(connection_id),
        bytes(scramble[:8]),
        _NUL,
        _UINT16.pack(capabilities & 0xFFFF),
        bytes((charset,)),
        _UINT16.pack(status),
        _UINT16.pack(capabilities >> 16),
        bytes((len(scramble) + 1 if plugin_auth else 0,)),
        bytes(10),
    ]
    if capabilities & CLIENT_SECURE_CONNECTION:
        parts.append(bytes(scramble[8:]) + _NUL)
    if plugin_auth:
        parts.append(_nul_str(auth_plugin, "authentication plugin name"))
    return b"".join(parts)


def parse_handshake_v10(payload: bytes) -> ServerHandshake:
    """Parse a server's initial handshake. Callers check for an ERR packet (first byte 0xFF) first:
    a server refusing the connection (too many connections, host blocked) sends one instead."""
    if not payload:
        raise ProtocolViolation("server handshake is empty")
    if payload[0] == ERR_HEADER:
        error = parse_err(payload)
        raise ProtocolViolation(f"server sent error {error.code} instead of a handshake: {error.message}")
    if payload[0] != PROTOCOL_VERSION_10:
        raise ProtocolViolation(f"server speaks handshake protocol {payload[0]}; only protocol 10 is supported")
    raw_version, pos = read_nul_str(payload, 1, "server version")
    connection_id, pos = _read_uint(payload, pos, 4, "connection id")
    scramble, pos = _read_fixed(payload, pos, 8, "scramble")
    pos += 1  # filler
    capabilities, pos = _read_uint(payload, pos, 2, "capability flags")
    if not capabilities & CLIENT_PROTOCOL_41:
        raise ProtocolViolation("server does not speak protocol 4.1 (no CLIENT_PROTOCOL_41)")
    charset, pos = _read_uint(payload, pos, 1, "character set")
    status, pos = _read_uint(payload, pos, 2, "status flags")
    upper, pos = _read_uint(payload, pos, 2, "upper capability flags")
    capabilities |= upper << 16
    auth_data_length, pos = _read_uint(payload, pos, 1, "authentication data length")
    reserved, pos = _read_fixed(payload, pos, 10, "reserved bytes")
    mariadb_capabilities = 0 if capabilities & CLIENT_MYSQL else _UINT32.unpack_from(reserved, 6)[0]
    if capabilities & CLIENT_SECURE_CONNECTION:
        part2, pos = _read_fixed(payload, pos, max(13, auth_data_length - 8), "scramble part 2")
        scramble += part2[:-1] if part2.endswith(_NUL) else part2
    auth_plugin = ""
    if capabilities & CLIENT_PLUGIN_AUTH:
        end = payload.find(_NUL, pos)
        # Servers before 5.5.10 / 5.6.2 forgot the final NUL (MySQL bug #59453).
        auth_plugin = _label(bytes(payload[pos : end if end >= 0 else len(payload)]))
    return ServerHandshake(
        protocol_version=PROTOCOL_VERSION_10,
        server_version=_label(raw_version),
        connection_id=connection_id,
        scramble=scramble,
        capabilities=capabilities,
        charset=charset,
        status=status,
        auth_plugin=auth_plugin,
        mariadb_capabilities=mariadb_capabilities,
    )


def is_ssl_request(payload: bytes) -> bool:
    """True for an SSLRequest: the 32-byte head of a HandshakeResponse41 with CLIENT_SSL and nothing after."""
    if len(payload) != _SSL_REQUEST_LENGTH:
        return False
    (capabilities,) = _UINT32.unpack_from(payload)
    return capabilities & (CLIENT_SSL | CLIENT_PROTOCOL_41) == CLIENT_SSL | CLIENT_PROTOCOL_41


def parse_handshake_response41(payload: bytes) -> HandshakeResponse:
    """Parse a client's HandshakeResponse41.

    An SSLRequest raises ProtocolViolation("... TLS is not offered"): the proxy does not advertise
    CLIENT_SSL, so a client asking for TLS breaks the protocol. A proxy that does offer TLS calls
    is_ssl_request() first, upgrades, and then parses the full response that follows.
    Pre-4.1 clients (no CLIENT_PROTOCOL_41) are refused. Optional fields missing at the end of the packet
    read as absent; bytes after the connection attributes (MySQL 8's zstd level) are ignored, as servers do.
    An empty database name reads as None.
    """
    if len(payload) < 2:
        raise ProtocolViolation(f"handshake response too short: {len(payload)} bytes")
    if not _UINT16.unpack_from(payload)[0] & CLIENT_PROTOCOL_41:
        raise ProtocolViolation(
            "client uses the pre-4.1 MySQL protocol (no CLIENT_PROTOCOL_41), which rdsproxy does not support"
        )
    if is_ssl_request(payload):
        raise ProtocolViolation("client sent an SSLRequest, but TLS is not offered")
    if len(payload) < _SSL_REQUEST_LENGTH:
        raise ProtocolViolation(f"handshake response too short: {len(payload)} bytes")
    capabilities, max_packet = struct.unpack_from("<II", payload)
    charset = payload[8]
    mariadb_capabilities = 0 if capabilities & CLIENT_MYSQL else _UINT32.unpack_from(payload, 28)[0]
    username, pos = read_nul_str(payload, _SSL_REQUEST_LENGTH, "user name")
    auth_response, pos = _read_auth_response(payload, pos, capabilities)
    database = auth_plugin = None
    if capabilities & CLIENT_CONNECT_WITH_DB and pos < len(payload):
        raw_database, pos = read_nul_str(payload, pos, "database name")
        database = _text(raw_database) or None
    if capabilities & CLIENT_PLUGIN_AUTH and pos < len(payload):
        raw_plugin, pos = read_nul_str(payload, pos, "authentication plugin name")
        auth_plugin = _label(raw_plugin)
    attrs: dict[str, str] = {}
    if capabilities & CLIENT_CONNECT_ATTRS and pos < len(payload):
        attrs, pos = _read_connect_attrs(payload, pos)
    return HandshakeResponse(
        capabilities=capabilities,
        max_packet=max_packet,
        charset=charset,
        username=_text(username),
        auth_response=auth_response,
        database=database,
        auth_plugin=auth_plugin,
        connect_attrs=attrs,
        mariadb_capabilities=mariadb_capabilities,
    )


def _read_auth_response(payload: bytes, pos: int, capabilities: int) -> tuple[bytes, int]:
    if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        return read_lenenc_str(payload, pos, "authentication response")
    if capabilities & CLIENT_SECURE_CONNECTION:
        length, pos = _read_uint(payload, pos, 1, "authentication response length")
        return _read_fixed(payload, pos, length, "authentication response")
    return read_nul_str(payload, pos, "authentication response")


def _auth_response_field(auth_response: bytes, capabilities: int) -> bytes:
    if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        return lenenc_str(auth_response)
    if capabilities & CLIENT_SECURE_CONNECTION:
        if len(auth_response) > 255:
            raise ValueError("an authentication response longer than 255 bytes needs a length-encoded field")
        return bytes((len(auth_response),)) + bytes(auth_response)
    if _NUL in auth_response:
        raise ValueError("without CLIENT_SECURE_CONNECTION the authentication response must not contain NUL")
    return bytes(auth_response) + _NUL


def handshake_response41(
    *,
    capabilities: int,
    username: str,
    auth_response: bytes,
    database: str | None = None,
    auth_plugin: str | None = MYSQL_NATIVE_PASSWORD,
    charset: int = CHARSET_UTF8MB4_GENERAL_CI,
    max_packet: int = DEFAULT_MAX_PACKET,
    connect_attrs: dict[str, str] | None = None,
) -> bytes:
    """HandshakeResponse41 payload (proxy -> backend).

    CLIENT_PROTOCOL_41 is always set. CLIENT_CONNECT_WITH_DB and CLIENT_CONNECT_ATTRS are set exactly
    when ``database`` / ``connect_attrs`` are given, as MySQL's client library does; the caller must only
    give them when the server advertises the flag. The plugin name is sent when ``capabilities`` has
    CLIENT_PLUGIN_AUTH; the response is length-encoded, 1-byte-length or NUL-terminated per the flags.
    """
    _check_uint(capabilities, 32, "capabilities")
    _check_uint(charset, 8, "charset")
    _check_uint(max_packet, 32, "max packet size")
    capabilities |= CLIENT_PROTOCOL_41
    capabilities &= ~(CLIENT_CONNECT_WITH_DB | CLIENT_CONNECT_ATTRS)
    if database:
        capabilities |= CLIENT_CONNECT_WITH_DB
    if connect_attrs is not None:
        capabilities |= CLIENT_CONNECT_ATTRS
    parts = [
        struct.pack("<IIB", capabilities, max_packet, charset),
        bytes(_HANDSHAKE_RESPONSE_FILLER),
        _nul_str(username, "user name"),
        _auth_response_field(auth_response, capabilities),
    ]
    if database:
        parts.append(_nul_str(database, "database name"))
    if capabilities & CLIENT_PLUGIN_AUTH:
        parts.append(_nul_str(auth_plugin or "", "authentication plugin name"))
    if connect_attrs is not None:
        parts.append(_connect_attrs(connect_attrs))
    return b"".join(parts)


def auth_switch_request(plugin: str, data: bytes) -> bytes:
    """AuthSwitchRequest (0xFE). For mysql_native_password and caching_sha2_password servers send the
    20-byte scramble followed by a NUL as ``data``."""
    if not plugin:
        raise ValueError("an AuthSwitchRequest needs a plugin name")
    return bytes((AUTH_SWITCH_HEADER,)) + _nul_str(plugin, "authentication plugin name") + bytes(data)


def parse_auth_switch(payload: bytes) -> tuple[str, bytes]:
    """(plugin, data) of an AuthSwitchRequest; data is returned as sent (often scramble + NUL).
    The 1-byte old-style switch request means mysql_old_password with no data."""
    _expect_header(payload, AUTH_SWITCH_HEADER, "AuthSwitchRequest")
    if len(payload) == 1:
        return "mysql_old_password", b""
    raw_plugin, pos = read_nul_str(payload, 1, "AuthSwitchRequest plugin name")
    if not raw_plugin:
        raise ProtocolViolation("AuthSwitchRequest names no plugin")
    return _label(raw_plugin), bytes(payload[pos:])


def auth_more_data(data: bytes) -> bytes:
    """AuthMoreData (0x01): plugin-specific data during authentication."""
    return bytes((AUTH_MORE_DATA_HEADER,)) + bytes(data)


def parse_auth_more_data(payload: bytes) -> bytes:
    _expect_header(payload, AUTH_MORE_DATA_HEADER, "AuthMoreData")
    return bytes(payload[1:])


# --------------------------------------------------------------------------- generic responses


def ok_packet(
    *,
    affected_rows: int = 0,
    last_insert_id: int = 0,
    status: int = SERVER_STATUS_AUTOCOMMIT,
    warnings: int = 0,
    info: bytes = b"",
    eof_header: bool = False,
    session_track: bool = False,
) -> bytes:
    """OK packet payload; ``eof_header`` gives the 0xFE header that ends a result set under
    CLIENT_DEPRECATE_EOF. With ``session_track`` (the client negotiated CLIENT_SESSION_TRACK) a non-empty
    ``info`` is length-encoded; otherwise it is the rest of the packet."""
    _check_uint(status, 16, "status flags")
    _check_uint(warnings, 16, "warning count")
    body = (
        bytes((EOF_HEADER if eof_header else OK_HEADER,))
        + lenenc_int(affected_rows)
        + lenenc_int(last_insert_id)
        + _TWO_UINT16.pack(status, warnings)
    )
    if info:
        body += lenenc_str(info) if session_track else bytes(info)
    return body


def parse_ok(payload: bytes, *, session_track: bool = False) -> OkPacket:
    """Parse an OK packet (header 0x00 or 0xFE). Without ``session_track`` the rest of the packet is
    ``info``, whatever it holds (so a session-tracking trailer is tolerated); with it, the length-encoded
    info and, when SERVER_SESSION_STATE_CHANGED is set, the raw session-state block are split out."""
    if not payload:
        raise ProtocolViolation("OK packet is empty")
    if payload[0] not in (OK_HEADER, EOF_HEADER):
        raise ProtocolViolation(f"OK packet must start with 0x00 or 0xfe, got 0x{payload[0]:02x}")
    affected_rows, pos = read_lenenc_int(payload, 1, "OK affected rows")
    last_insert_id, pos = read_lenenc_int(payload, pos, "OK last insert id")
    status, pos = _read_uint(payload, pos, 2, "OK status flags")
    warnings, pos = _read_uint(payload, pos, 2, "OK warning count")
    info = state = b""
    if not session_track:
        info = bytes(payload[pos:])
    elif pos < len(payload):
        info, pos = read_lenenc_str(payload, pos, "OK info")
        if status & SERVER_SESSION_STATE_CHANGED and pos < len(payload):
            state, pos = read_lenenc_str(payload, pos, "OK session state changes")
    return OkPacket(affected_rows, last_insert_id, status, warnings, info, state)


def err_packet(code: int, sqlstate: str, message: str) -> bytes:
    """ERR packet payload: 0xFF, error code, '#', 5-character SQLSTATE, message (UTF-8)."""
    _check_uint(code, 16, "error code")
    if len(sqlstate) != 5 or not sqlstate.isascii() or not sqlstate.isalnum():
        raise ValueError(f"SQLSTATE must be 5 ASCII letters or digits, got {sqlstate!r}")
    return (
        bytes((ERR_HEADER,)) + _UINT16.pack(code) + b"#" + sqlstate.encode("ascii") + message.encode("utf-8", "replace")
    )


def parse_err(payload: bytes) -> ErrPacket:
    """Parse an ERR packet. Errors sent before the handshake completes may lack the '#' SQLSTATE
    marker; they read as SQLSTATE HY000. Text that is not UTF-8 is decoded with replacement."""
    _expect_header(payload, ERR_HEADER, "ERR packet")
    code, pos = _read_uint(payload, 1, 2, "error code")
    sqlstate = "HY000"
    if pos < len(payload) and payload[pos] == _SQLSTATE_MARKER:
        raw_state, pos = _read_fixed(payload, pos + 1, 5, "SQLSTATE")
        sqlstate = raw_state.decode("ascii", "replace")
    return ErrPacket(code, sqlstate, bytes(payload[pos:]).decode("utf-8", "replace"))


def eof_packet(*, status: int, warnings: int = 0) -> bytes:
    _check_uint(status, 16, "status flags")
    _check_uint(warnings, 16, "warning count")
    return bytes((EOF_HEADER,)) + _TWO_UINT16.pack(warnings, status)


def parse_eof(payload: bytes) -> EofPacket:
    _expect_header(payload, EOF_HEADER, "EOF packet")
    if len(payload) != 5:
        raise ProtocolViolation(f"EOF packet must be 5 bytes, got {len(payload)}")
    warnings, status = _TWO_UINT16.unpack_from(payload, 1)
    return EofPacket(warnings=warnings, status=status)


# --------------------------------------------------------------------------- text result sets


def column_definition41(
    name: str,
    *,
    column_type: int = TYPE_VAR_STRING,
    charset: int = CHARSET_UTF8_GENERAL_CI,
    column_length: int = 0,
    flags: int = 0,
    decimals: int = 0,
    schema: str = "",
    table: str = "",
    org_table: str = "",
    org_name: str = "",
) -> bytes:
    """ColumnDefinition41 payload; catalog is always "def". Defaults describe a computed column."""
    _check_uint(column_type, 8, "column type")
    _check_uint(charset, 16, "charset")
    _check_uint(column_length, 32, "column length")
    _check_uint(flags, 16, "column flags")
    _check_uint(decimals, 8, "decimals")
    texts = (("def", "catalog"), (schema, "schema"), (table, "table"), (org_table, "org_table"))
    texts += ((name, "column name"), (org_name, "org_name"))
    return (
        b"".join(lenenc_str(_encode(text, what)) for text, what in texts)
        + b"\x0c"
        + struct.pack("<HIBHB", charset, column_length, column_type, flags, decimals)
        + b"\x00\x00"
    )


def parse_column_definition41(payload: bytes) -> ColumnDefinition:
    """Parse a ColumnDefinition41; bytes after the fixed fields (COM_FIELD_LIST defaults) are ignored."""
    names = []
    pos = 0
    for what in ("catalog", "schema", "table", "org_table", "name", "org_name"):
        value, pos = read_lenenc_str(payload, pos, f"column {what}")
        names.append(value)
    fixed_length, pos = read_lenenc_int(payload, pos, "length of column fixed fields")
    if fixed_length < 10:
        raise ProtocolViolation(f"column definition fixed fields are {fixed_length} bytes, expected at least 10")
    fixed, pos = _read_fixed(payload, pos, fixed_length, "column fixed fields")
    charset, column_length, column_type, flags, decimals = struct.unpack_from("<HIBHB", fixed)
    return ColumnDefinition(*names, charset, column_length, column_type, flags, decimals)


def parse_column_count(payload: bytes) -> int:
    """Column count that starts a result set (a length-encoded integer filling the packet)."""
    count, pos = read_lenenc_int(payload, 0, "column count")
    if pos != len(payload):
        raise ProtocolViolation("column count packet has trailing bytes")
    if count == 0:
        raise ProtocolViolation("result set declares no columns")
    return count


def text_row(values: Sequence[bytes | None]) -> bytes:
    """Text protocol row payload: each value length-encoded, NULL as 0xFB."""
    return b"".join(b"\xfb" if value is None else lenenc_str(value) for value in values)


def parse_text_row(payload: bytes, column_count: int) -> list[bytes | None]:
    values: list[bytes | None] = []
    pos = 0
    for _ in range(column_count):
        if pos < len(payload) and payload[pos] == NULL_VALUE:
            values.append(None)
            pos += 1
        else:
            value, pos = read_lenenc_str(payload, pos, "column value")
            values.append(value)
    if pos != len(payload):
        raise ProtocolViolation(f"text row has {len(payload) - pos} bytes after its {column_count} values")
    return values


ResultValue = Union[str, int, None]


def _as_text(value: ResultValue) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"result set values must be str, int or None, got {type(value).__name__}")


def _is_longlong(text: str) -> bool:
    return bool(_CANONICAL_INT.match(text)) and _LONGLONG_MIN <= int(text) <= _LONGLONG_MAX


def text_resultset(
    columns: Sequence[str],
    rows: Sequence[Sequence[ResultValue]],
    *,
    deprecate_eof: bool,
    status: int,
    start_seq: int = 1,
) -> bytes:
    """A complete, framed text result set the proxy answers itself.

    Packets: column count, one ColumnDefinition41 per column, EOF (unless ``deprecate_eof``), the rows,
    then EOF or an OK packet with the 0xFE header. A column whose values are all canonical integers in
    the signed 64-bit range (ints, or strings such as "42") is LONGLONG with the binary charset; any other
    column is VAR_STRING in utf8 (33). None is SQL NULL. Column length is the longest value in bytes.
    """
    if not columns:
        raise ValueError("a result set needs at least one column")
    texts = [[_as_text(value) for value in row] for row in rows]
    for row in texts:
        if len(row) != len(columns):
            raise ValueError(f"row has {len(row)} values for {len(columns)} columns")
    payloads = [lenenc_int(len(columns))]
    for index, name in enumerate(columns):
        column = [row[index] for row in texts]
        present = [value for value in column if value is not None]
        not_null = NOT_NULL_FLAG if len(present) == len(column) else 0
        length = max((len(_encode(value, "value")) for value in present), default=0)
        if present and all(_is_longlong(value) for value in present):
            definition = column_definition41(
                name,
                column_type=TYPE_LONGLONG,
                charset=CHARSET_BINARY,
                column_length=length,
                flags=not_null | BINARY_FLAG,
            )
        else:
            definition = column_definition41(name, column_length=length, flags=not_null)
        payloads.append(definition)
    if not deprecate_eof:
        payloads.append(eof_packet(status=status))
    payloads.extend(text_row([None if value is None else _encode(value, "value") for value in row]) for row in texts)
    payloads.append(ok_packet(status=status, eof_header=True) if deprecate_eof else eof_packet(status=status))
    framed, _ = frame_packets(start_seq, payloads)
    return framed


# --------------------------------------------------------------------------- commands


def com_query(sql: bytes) -> bytes:
    return bytes((COM_QUERY,)) + bytes(sql)


def com_quit() -> bytes:
    return bytes((COM_QUIT,))


def com_ping() -> bytes:
    return bytes((COM_PING,))


def com_reset_connection() -> bytes:
    return bytes((COM_RESET_CONNECTION,))


def com_init_db(name: str) -> bytes:
    return bytes((COM_INIT_DB,)) + _encode(name, "database name")


def parse_com_init_db(payload: bytes) -> str:
    """Database name of a COM_INIT_DB (the rest of the packet; may be empty, which servers refuse)."""
    _expect_header(payload, COM_INIT_DB, "COM_INIT_DB")
    return _text(bytes(payload[1:]))


def com_change_user(
    *,
    capabilities: int,
    username: str,
    auth_response: bytes,
    database: str | None = None,
    charset: int = CHARSET_UTF8MB4_GENERAL_CI,
    auth_plugin: str = MYSQL_NATIVE_PASSWORD,
    connect_attrs: dict[str, str] | None = None,
) -> bytes:
    """COM_CHANGE_USER payload laid out for the session's negotiated ``capabilities``."""
    _check_uint(charset, 16, "charset")
    if capabilities & CLIENT_SECURE_CONNECTION:
        if len(auth_response) > 255:
            raise ValueError("COM_CHANGE_USER carries at most 255 bytes of authentication response")
        response = bytes((len(auth_response),)) + bytes(auth_response)
    else:
        response = _auth_response_field(auth_response, 0)
    body = (
        bytes((COM_CHANGE_USER,))
        + _nul_str(username, "user name")
        + response
        + _nul_str(database or "", "database name")
        + _UINT16.pack(charset)
    )
    if capabilities & CLIENT_PLUGIN_AUTH:
        body += _nul_str(auth_plugin, "authentication plugin name")
    if capabilities & CLIENT_CONNECT_ATTRS:
        body += _connect_attrs(connect_attrs)
    return body


def parse_com_change_user(payload: bytes, capabilities: int) -> ChangeUser:
    """Parse a COM_CHANGE_USER sent on a session with the negotiated ``capabilities``.

    The authentication response has a 1-byte length under CLIENT_SECURE_CONNECTION (never length-encoded
    here) and is NUL-terminated otherwise. Charset, plugin and attributes are optional at the end.
    """
    _expect_header(payload, COM_CHANGE_USER, "COM_CHANGE_USER")
    username, pos = read_nul_str(payload, 1, "COM_CHANGE_USER user name")
    if capabilities & CLIENT_SECURE_CONNECTION:
        length, pos = _read_uint(payload, pos, 1, "COM_CHANGE_USER authentication response length")
        auth_response, pos = _read_fixed(payload, pos, length, "COM_CHANGE_USER authentication response")
    else:
        auth_response, pos = read_nul_str(payload, pos, "COM_CHANGE_USER authentication response")
    raw_database, pos = read_nul_str(payload, pos, "COM_CHANGE_USER database name")
    charset = auth_plugin = None
    attrs: dict[str, str] = {}
    if pos < len(payload):
        charset, pos = _read_uint(payload, pos, 2, "COM_CHANGE_USER character set")
        if capabilities & CLIENT_PLUGIN_AUTH and pos < len(payload):
            raw_plugin, pos = read_nul_str(payload, pos, "COM_CHANGE_USER plugin name")
            auth_plugin = _label(raw_plugin)
        if capabilities & CLIENT_CONNECT_ATTRS and pos < len(payload):
            attrs, pos = _read_connect_attrs(payload, pos)
    return ChangeUser(
        username=_text(username),
        auth_response=auth_response,
        database=_text(raw_database) or None,
        charset=charset,
        auth_plugin=auth_plugin,
        connect_attrs=attrs,
    )
