"""Build and parse PostgreSQL v3 wire messages (sans-IO: bytes in, bytes and values out)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Union

from rdsproxy._codec import parse_startup
from rdsproxy._codec.scram_py import parse_sasl_initial_response as parse_sasl_initial_response
from rdsproxy.errors import ProtocolViolation

PROTOCOL_3_0 = 196608  # (3 << 16) | 0
SSL_REQUEST_CODE = 80877103  # (1234 << 16) | 5679
GSSENC_REQUEST_CODE = 80877104  # (1234 << 16) | 5680
CANCEL_REQUEST_CODE = 80877102  # (1234 << 16) | 5678

# PostgreSQL refuses longer startup packets (MAX_STARTUP_PACKET_LENGTH); so do we.
MAX_STARTUP_PACKET_LENGTH = 10000

# Authentication request codes (first Int32 of an 'R' message body).
AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_SCM_CREDENTIAL = 6
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

TRANSACTION_STATUSES = (b"I", b"T", b"E")

# Protocol 3.0 uses a 4-byte cancel secret; 3.2 allows up to 256 bytes.
_MIN_CANCEL_SECRET = 4
_MAX_CANCEL_SECRET = 256

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_TWO_UINT32 = struct.Struct("!II")
_CSTRING_TERMINATOR = b"\x00"


@dataclass(frozen=True)
class StartupMessage:
    """A StartupMessage: protocol version (major << 16 | minor) and parameters, keys as sent."""

    version: int
    params: dict[str, str]

    @property
    def minor_version(self) -> int:
        return self.version & 0xFFFF


@dataclass(frozen=True)
class SSLRequest:
    """The client asks to switch to TLS before the startup message."""


@dataclass(frozen=True)
class GSSENCRequest:
    """The client asks to switch to GSSAPI encryption before the startup message."""


@dataclass(frozen=True)
class CancelRequest:
    """A request to cancel the query running on the session identified by the key."""

    process_id: int
    secret: bytes


StartupPacket = Union[StartupMessage, SSLRequest, GSSENCRequest, CancelRequest]


# --------------------------------------------------------------------------- startup packets


def parse_startup_packet(payload: bytes) -> StartupPacket:
    """Parse an untyped startup-phase packet given WITHOUT its 4-byte length prefix."""
    code, body = parse_startup(payload)
    if code == SSL_REQUEST_CODE:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        process_id, secret = body  # type: ignore[misc]
        return CancelRequest(process_id=process_id, secret=secret)
    return StartupMessage(version=code, params=body)  # type: ignore[arg-type]


def parse_options(options: str) -> dict[str, str]:
    """Parse the libpq ``options`` startup parameter into run-time settings.

    Accepts ``-c name=value``, ``-cname=value`` and ``--name=value``. Words split on unescaped
    whitespace and a backslash takes the next character literally, as PostgreSQL's pg_split_opts
    does; dashes in names become underscores, as in PostgreSQL's ParseLongOption. A later setting
    of the same name wins. Any other server switch raises ProtocolViolation.
    """
    words = _split_options(options)
    settings: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "-c":
            if index >= len(words):
                raise ProtocolViolation("option -c in the options parameter requires a value")
            assignment = words[index]
            index += 1
            flag = "-c"
        elif word.startswith("-c"):
            assignment = word[2:]
            flag = "-c"
        elif word.startswith("--") and len(word) > 2:
            assignment = word[2:]
            flag = "--"
        else:
            raise ProtocolViolation(
                f"unsupported option {word!r} in the options parameter: only -c name=value and "
                "--name=value are supported"
            )
        name, equals, value = assignment.partition("=")
        if not equals:
            raise ProtocolViolation(f"option {flag}{assignment} in the options parameter requires a value")
        if not name:
            raise ProtocolViolation(f"option {flag}{assignment} in the options parameter has no name")
        settings[name.replace("-", "_")] = value
    return settings


_OPTION_SPACES = frozenset(" \t\n\r\v\f")  # C isspace() in the C locale


def _split_options(options: str) -> list[str]:
    words: list[str] = []
    current: list[str] = []
    in_word = False
    escaped = False
    for char in options:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
            in_word = True
        elif char in _OPTION_SPACES:
            if in_word:
                words.append("".join(current))
                current = []
                in_word = False
        else:
            current.append(char)
            in_word = True
    if in_word:
        # A trailing lone backslash is dropped, as in pg_split_opts.
        words.append("".join(current))
    return words


# --------------------------------------------------------------------------- builders


def _message(type_byte: bytes, body: bytes) -> bytes:
    return type_byte + _INT32.pack(len(body) + 4) + body


def _cstring(text: str | bytes, what: str, errors: str = "strict") -> bytes:
    raw = text.encode("utf-8", errors) if isinstance(text, str) else bytes(text)
    if _CSTRING_TERMINATOR in raw:
        raise ValueError(f"{what} must not contain a NUL byte")
    return raw + _CSTRING_TERMINATOR


def _check_uint32(value: int, what: str) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{what} must fit in an unsigned 32-bit integer, got {value}")


def _authentication(code: int, rest: bytes = b"") -> bytes:
    return _message(b"R", _INT32.pack(code) + rest)


def authentication_ok() -> bytes:
    return _authentication(AUTH_OK)


def authentication_cleartext_password() -> bytes:
    return _authentication(AUTH_CLEARTEXT_PASSWORD)


def authentication_md5_password(salt: bytes) -> bytes:
    if len(salt) != 4:
        raise ValueError("an MD5 salt is exactly 4 bytes")
    return _authentication(AUTH_MD5_PASSWORD, bytes(salt))


def authentication_sasl(mechanisms: list[str]) -> bytes:
    if not mechanisms:
        raise ValueError("AuthenticationSASL needs at least one mechanism")
    names = b"".join(_cstring(name, "SASL mechanism name") for name in mechanisms)
    return _authentication(AUTH_SASL, names + _CSTRING_TERMINATOR)


def authentication_sasl_continue(data: bytes) -> bytes:
    return _authentication(AUTH_SASL_CONTINUE, bytes(data))


def authentication_sasl_final(data: bytes) -> bytes:
    return _authentication(AUTH_SASL_FINAL, bytes(data))


def parameter_status(name: str, value: str) -> bytes:
    # surrogateescape: values parsed from a backend in another client_encoding replay byte for byte.
    return _message(
        b"S",
        _cstring(name, "parameter name", "surrogateescape") + _cstring(value, "parameter value", "surrogateescape"),
    )


def backend_key_data(process_id: int, secret: int) -> bytes:
    """BackendKeyData with a 4-byte (protocol 3.0) secret; both values are unsigned 32-bit."""
    _check_uint32(process_id, "process id")
    _check_uint32(secret, "cancel secret")
    return _message(b"K", _TWO_UINT32.pack(process_id, secret))


def ready_for_query(status: bytes) -> bytes:
    if status not in TRANSACTION_STATUSES:
        raise ValueError(f"transaction status must be one of {TRANSACTION_STATUSES}, got {status!r}")
    return _message(b"Z", bytes(status))


def _notice_or_error(
    type_byte: bytes, severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None
) -> bytes:
    if len(sqlstate) != 5 or not sqlstate.isascii() or not sqlstate.isalnum():
        raise ValueError(f"SQLSTATE must be 5 ASCII letters or digits, got {sqlstate!r}")
    fields = [(b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", message)]
    if detail is not None:
        fields.append((b"D", detail))
    if hint is not None:
        fields.append((b"H", hint))
    body = b"".join(code + _cstring(text, f"field {code.decode()}") for code, text in fields)
    return _message(type_byte, body + _CSTRING_TERMINATOR)


def error_response(
    severity: str, sqlstate: str, message: str, *, detail: str | None = None, hint: str | None = None
) -> bytes:
    """ErrorResponse with fields S and V (both ``severity``), C, M and optionally D and H."""
    return _notice_or_error(b"E", severity, sqlstate, message, detail, hint)


def notice_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "NOTICE",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """NoticeResponse with the same fields as error_response."""
    return _notice_or_error(b"N", severity, sqlstate, message, detail, hint)


def negotiate_protocol_version(newest_minor: int, unsupported: list[str]) -> bytes:
    """NegotiateProtocolVersion: newest supported minor version and the unrecognised ``_pq_.`` options."""
    body = _INT32.pack(newest_minor) + _INT32.pack(len(unsupported))
    body += b"".join(_cstring(name, "protocol option name") for name in unsupported)
    return _message(b"v", body)


def query(sql: str | bytes) -> bytes:
    return _message(b"Q", _cstring(sql, "query text"))


def sync() -> bytes:
    return b"S\x00\x00\x00\x04"


def flush() -> bytes:
    return b"H\x00\x00\x00\x04"


def terminate() -> bytes:
    return b"X\x00\x00\x00\x04"


def startup_message(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    """Untyped StartupMessage as a frontend sends it."""
    body = _UINT32.pack(version)
    for name, value in params.items():
        if not name:
            raise ValueError("startup parameter names must not be empty")
        body += _cstring(name, "startup parameter name") + _cstring(value, "startup parameter value")
    body += _CSTRING_TERMINATOR
    return _INT32.pack(len(body) + 4) + body


def cancel_request(process_id: int, secret: bytes) -> bytes:
    """Untyped CancelRequest; ``secret`` is the key's bytes (4 for protocol 3.0)."""
    if not _MIN_CANCEL_SECRET <= len(secret) <= _MAX_CANCEL_SECRET:
        raise ValueError(f"cancel secret must be {_MIN_CANCEL_SECRET} to {_MAX_CANCEL_SECRET} bytes")
    _check_uint32(process_id, "process id")
    body = _UINT32.pack(CANCEL_REQUEST_CODE) + _UINT32.pack(process_id) + bytes(secret)
    return _INT32.pack(len(body) + 4) + body


def password_message(data: bytes) -> bytes:
    """A 'p' message with ``data`` as its whole body (no NUL added)."""
    return _message(b"p", bytes(data))


def cleartext_password_message(password: str) -> bytes:
    return password_message(_cstring(password, "password"))


def md5_password_response(username: str, password: str, salt: bytes) -> bytes:
    """The MD5 answer: b"md5" + md5hex(md5hex(password + username) + salt), without the NUL."""
    inner = hashlib.md5(password.encode("utf-8") + username.encode("utf-8")).hexdigest()
    return b"md5" + hashlib.md5(inner.encode("ascii") + bytes(salt)).hexdigest().encode("ascii")


def md5_password_message(username: str, password: str, salt: bytes) -> bytes:
    return password_message(md5_password_response(username, password, salt) + _CSTRING_TERMINATOR)


def sasl_initial_response(mechanism: str, data: bytes | None) -> bytes:
    """SASLInitialResponse: mechanism NUL, Int32 data length (-1 when ``data`` is None), data."""
    body = _cstring(mechanism, "SASL mechanism name")
    body += _INT32.pack(-1) if data is None else _INT32.pack(len(data)) + bytes(data)
    return password_message(body)


def sasl_response(data: bytes) -> bytes:
    return password_message(data)


# --------------------------------------------------------------------------- body parsers


def _read_cstring(body: bytes, pos: int, what: str) -> tuple[bytes, int]:
    end = body.find(_CSTRING_TERMINATOR, pos)
    if end < 0:
        raise ProtocolViolation(f"{what} is not NUL-terminated")
    return bytes(body[pos:end]), end + 1


def _expect_end(body: bytes, pos: int, what: str) -> None:
    if pos != len(body):
        raise ProtocolViolation(f"{what} has {len(body) - pos} unexpected trailing bytes")


def parse_error_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse or NoticeResponse body, keyed by field-type letter.

    Text is in the session's client_encoding, which need not be UTF-8, so undecodable bytes
    are replaced rather than treated as a protocol error.
    """
    fields: dict[str, str] = {}
    pos = 0
    while True:
        if pos >= len(body):
            raise ProtocolViolation("error/notice fields are missing their final NUL")
        field_type = body[pos]
        pos += 1
        if field_type == 0:
            break
        value, pos = _read_cstring(body, pos, "error/notice field")
        fields[chr(field_type)] = value.decode("utf-8", "replace")
    _expect_end(body, pos, "ErrorResponse/NoticeResponse")
    return fields


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    """(name, value) of a ParameterStatus body.

    Decoded with surrogateescape because the backend sends values in the session's
    client_encoding; parameter_status() re-encodes them to the identical bytes.
    """
    name, pos = _read_cstring(body, 0, "ParameterStatus name")
    value, pos = _read_cstring(body, pos, "ParameterStatus value")
    _expect_end(body, pos, "ParameterStatus")
    return name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")


def parse_backend_key_data(body: bytes) -> tuple[int, int]:
    """(process_id, secret) of a protocol 3.0 BackendKeyData body, both unsigned 32-bit."""
    if len(body) != 8:
        raise ProtocolViolation(f"BackendKeyData body must be 8 bytes, got {len(body)}")
    process_id, secret = _TWO_UINT32.unpack(body)
    return process_id, secret


def parse_query(body: bytes) -> bytes:
    """SQL text of a Query body, without its NUL."""
    sql, pos = _read_cstring(body, 0, "Query text")
    _expect_end(body, pos, "Query")
    return sql


def parse_parse(body: bytes) -> tuple[bytes, bytes]:
    """(statement name, query text) of a Parse body; the parameter type list is validated too."""
    name, pos = _read_cstring(body, 0, "Parse statement name")
    sql, pos = _read_cstring(body, pos, "Parse query text")
    if len(body) - pos < 2:
        raise ProtocolViolation("Parse message is missing its parameter type count")
    (count,) = _INT16.unpack_from(body, pos)
    if count < 0 or len(body) - pos - 2 != 4 * count:
        raise ProtocolViolation(f"Parse message declares {count} parameter types but the body disagrees")
    return name, sql


def parse_bind_names(body: bytes) -> tuple[bytes, bytes]:
    """(portal name, statement name) at the head of a Bind body; the rest is not inspected."""
    portal, pos = _read_cstring(body, 0, "Bind portal name")
    statement, _ = _read_cstring(body, pos, "Bind statement name")
    return portal, statement


def parse_describe_or_close(body: bytes) -> tuple[bytes, bytes]:
    """(kind b"S" or b"P", name) of a Describe or Close body."""
    if not body:
        raise ProtocolViolation("Describe/Close message is empty")
    kind = bytes(body[:1])
    if kind not in (b"S", b"P"):
        raise ProtocolViolation(f"Describe/Close target must be 'S' or 'P', got {kind!r}")
    name, pos = _read_cstring(body, 1, "Describe/Close name")
    _expect_end(body, pos, "Describe/Close")
    return kind, name


def parse_authentication(body: bytes) -> tuple[int, bytes]:
    """(request code, rest of body) of an Authentication* ('R') body."""
    if len(body) < 4:
        raise ProtocolViolation(f"Authentication message body too short: {len(body)} bytes")
    (code,) = _INT32.unpack_from(body)
    return code, bytes(body[4:])


def parse_sasl_mechanisms(rest: bytes) -> list[str]:
    """Mechanism names following the code of an AuthenticationSASL body."""
    mechanisms: list[str] = []
    pos = 0
    while True:
        if pos >= len(rest):
            raise ProtocolViolation("AuthenticationSASL mechanism list is missing its final NUL")
        if rest[pos] == 0:
            pos += 1
            break
        name, pos = _read_cstring(rest, pos, "SASL mechanism name")
        mechanisms.append(name.decode("utf-8", "replace"))
    _expect_end(rest, pos, "AuthenticationSASL")
    return mechanisms


def parse_password(body: bytes) -> bytes:
    """Password (or MD5 answer) of a PasswordMessage body, without its NUL."""
    password, pos = _read_cstring(body, 0, "PasswordMessage")
    _expect_end(body, pos, "PasswordMessage")
    return password


def parse_negotiate_protocol_version(body: bytes) -> tuple[int, list[str]]:
    """(newest minor version, unrecognised option names) of a NegotiateProtocolVersion body."""
    if len(body) < 8:
        raise ProtocolViolation("NegotiateProtocolVersion body too short")
    (newest_minor,) = _INT32.unpack_from(body, 0)
    (count,) = _INT32.unpack_from(body, 4)
    if count < 0:
        raise ProtocolViolation("NegotiateProtocolVersion has a negative option count")
    names: list[str] = []
    pos = 8
    for _ in range(count):
        name, pos = _read_cstring(body, pos, "NegotiateProtocolVersion option name")
        names.append(name.decode("utf-8", "replace"))
    _expect_end(body, pos, "NegotiateProtocolVersion")
    return newest_minor, names
