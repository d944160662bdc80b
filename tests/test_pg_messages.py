"""Tests of the PostgreSQL message builders and parsers, with bytes alone."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdsproxy.errors import ProtocolViolation
from rdsproxy.protocol.pg import messages as m


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(type byte, body) of a typed message, checking its length field."""
    (length,) = struct.unpack_from("!i", message, 1)
    assert length == len(message) - 1
    return message[:1], message[5:]


def startup_payload(packet: bytes) -> bytes:
    """Payload of an untyped packet (what parse_startup_packet takes), checking its length field."""
    (length,) = struct.unpack_from("!i", packet)
    assert length == len(packet)
    return packet[4:]


# --------------------------------------------------------------------------- builders through parsers


@pytest.mark.parametrize(
    ("message", "code", "rest"),
    [
        (m.authentication_ok(), m.AUTH_OK, b""),
        (m.authentication_cleartext_password(), m.AUTH_CLEARTEXT_PASSWORD, b""),
        (m.authentication_md5_password(b"\x01\x02\xfe\xff"), m.AUTH_MD5_PASSWORD, b"\x01\x02\xfe\xff"),
        (
            m.authentication_sasl_continue(b"r=abc,s=c2FsdA==,i=4096"),
            m.AUTH_SASL_CONTINUE,
            b"r=abc,s=c2FsdA==,i=4096",
        ),
        (m.authentication_sasl_final(b"v=c2lnbmF0dXJl"), m.AUTH_SASL_FINAL, b"v=c2lnbmF0dXJl"),
    ],
)
def test_authentication_builders_round_trip(message: bytes, code: int, rest: bytes) -> None:
    type_byte, body = split_message(message)
    assert type_byte == b"R"
    assert m.parse_authentication(body) == (code, rest)


def test_authentication_sasl_lists_mechanisms() -> None:
    message = m.authentication_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
    assert message == b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"
    code, rest = m.parse_authentication(split_message(message)[1])
    assert code == m.AUTH_SASL
    assert m.parse_sasl_mechanisms(rest) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]


def test_parameter_status_round_trip() -> None:
    type_byte, body = split_message(m.parameter_status("DateStyle", "ISO, MDY"))
    assert type_byte == b"S"
    assert body == b"DateStyle\x00ISO, MDY\x00"
    assert m.parse_parameter_status(body) == ("DateStyle", "ISO, MDY")


def test_parameter_status_in_another_encoding_replays_byte_for_byte() -> None:
    latin1_body = b"application_name\x00caf\xe9\x00"
    name, value = m.parse_parameter_status(latin1_body)
    assert split_message(m.parameter_status(name, value))[1] == latin1_body


@pytest.mark.parametrize(("process_id", "secret"), [(12345, 987654321), (0, 0), (0xFFFFFFFF, 0x80000000)])
def test_backend_key_data_round_trip(process_id: int, secret: int) -> None:
    type_byte, body = split_message(m.backend_key_data(process_id, secret))
    assert type_byte == b"K"
    assert m.parse_backend_key_data(body) == (process_id, secret)


@pytest.mark.parametrize("status", [b"I", b"T", b"E"])
def test_ready_for_query(status: bytes) -> None:
    assert m.ready_for_query(status) == b"Z\x00\x00\x00\x05" + status


def test_error_response_round_trip() -> None:
    message = m.error_response(
        "FATAL", "53300", "rdsproxy: no connection within 120 s", detail="pool full", hint="retry later"
    )
    type_byte, body = split_message(message)
    assert type_byte == b"E"
    assert m.parse_error_fields(body) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "53300",
        "M": "rdsproxy: no connection within 120 s",
        "D": "pool full",
        "H": "retry later",
    }


def test_error_response_without_optional_fields() -> None:
    body = split_message(m.error_response("ERROR", "08P01", "bad message"))[1]
    assert body == b"SERROR\x00VERROR\x00C08P01\x00Mbad message\x00\x00"


def test_notice_response_round_trip() -> None:
    type_byte, body = split_message(m.notice_response("01000", "pinned", hint="avoid SET"))
    assert type_byte == b"N"
    assert m.parse_error_fields(body) == {
        "S": "NOTICE",
        "V": "NOTICE",
        "C": "01000",
        "M": "pinned",
        "H": "avoid SET",
    }


def test_error_fields_in_another_encoding_are_decoded_leniently() -> None:
    assert m.parse_error_fields(b"Mcaf\xe9\x00\x00") == {"M": "caf\ufffd"}


def test_negotiate_protocol_version_round_trip() -> None:
    type_byte, body = split_message(m.negotiate_protocol_version(0, ["_pq_.compression", "_pq_.other"]))
    assert type_byte == b"v"
    assert m.parse_negotiate_protocol_version(body) == (0, ["_pq_.compression", "_pq_.other"])


@pytest.mark.parametrize("sql", ["SELECT 'é' AS x;", b"SELECT 1"])
def test_query_round_trip(sql: str | bytes) -> None:
    type_byte, body = split_message(m.query(sql))
    assert type_byte == b"Q"
    assert m.parse_query(body) == (sql.encode() if isinstance(sql, str) else sql)


def test_fixed_frontend_messages() -> None:
    assert m.sync() == b"S\x00\x00\x00\x04"
    assert m.flush() == b"H\x00\x00\x00\x04"
    assert m.terminate() == b"X\x00\x00\x00\x04"


def test_startup_message_round_trip() -> None:
    params = {"user": "app", "database": "shop", "DateStyle": "ISO", "options": ""}
    parsed = m.parse_startup_packet(startup_payload(m.startup_message(params)))
    assert parsed == m.StartupMessage(version=m.PROTOCOL_3_0, params=params)


def test_startup_message_with_newer_minor_version_round_trips() -> None:
    version = (3 << 16) | 2
    packet = m.startup_message({"user": "u", "_pq_.feature": "on"}, version=version)
    parsed = m.parse_startup_packet(startup_payload(packet))
    assert isinstance(parsed, m.StartupMessage)
    assert parsed.version == version
    assert parsed.minor_version == 2
    assert parsed.params == {"user": "u", "_pq_.feature": "on"}


def test_cancel_request_round_trip() -> None:
    packet = m.cancel_request(4242, b"\x01\x02\x03\x04")
    assert len(packet) == 16
    assert m.parse_startup_packet(startup_payload(packet)) == m.CancelRequest(
        process_id=4242, secret=b"\x01\x02\x03\x04"
    )


def test_cancel_request_with_protocol_3_2_long_secret() -> None:
    secret = bytes(range(32))
    parsed = m.parse_startup_packet(startup_payload(m.cancel_request(7, secret)))
    assert parsed == m.CancelRequest(process_id=7, secret=secret)


def test_password_messages_round_trip() -> None:
    type_byte, body = split_message(m.cleartext_password_message("pässword"))
    assert type_byte == b"p"
    assert m.parse_password(body) == "pässword".encode()
    assert m.password_message(b"raw\x00") == b"p\x00\x00\x00\x08raw\x00"


def test_md5_password_message_follows_the_documented_formula() -> None:
    salt = b"\x93\x11\x0a\xfe"
    inner = hashlib.md5(b"secret" + b"alice").hexdigest().encode()
    expected = b"md5" + hashlib.md5(inner + salt).hexdigest().encode()
    body = split_message(m.md5_password_message("alice", "secret", salt))[1]
    assert body == expected + b"\x00"
    assert m.parse_password(body) == expected
    assert len(expected) == 35


def test_sasl_initial_response_layout_and_round_trip() -> None:
    message = m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")
    type_byte, body = split_message(message)
    assert type_byte == b"p"
    assert body == b"SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc"
    assert m.parse_sasl_initial_response(body) == ("SCRAM-SHA-256", b"n,,n=,r=abc")


def test_sasl_initial_response_without_data_uses_minus_one() -> None:
    body = split_message(m.sasl_initial_response("SCRAM-SHA-256", None))[1]
    assert body == b"SCRAM-SHA-256\x00\xff\xff\xff\xff"
    assert m.parse_sasl_initial_response(body) == ("SCRAM-SHA-256", None)


def test_sasl_response_is_the_raw_data() -> None:
    assert split_message(m.sasl_response(b"c=biws,r=x,p=y")) == (b"p", b"c=biws,r=x,p=y")


@pytest.mark.parametrize(
    "call",
    [
        lambda: m.query("SELECT '\x00'"),
        lambda: m.error_response("ERROR", "123", "short sqlstate"),
        lambda: m.error_response("ERROR", "XX000", "nul \x00 inside"),
        lambda: m.authentication_md5_password(b"abc"),
        lambda: m.authentication_sasl([]),
        lambda: m.ready_for_query(b"X"),
        lambda: m.backend_key_data(-1, 0),
        lambda: m.backend_key_data(1, 1 << 32),
        lambda: m.cancel_request(1, b"abc"),
        lambda: m.startup_message({"": "x"}),
        lambda: m.cleartext_password_message("a\x00b"),
    ],
)
def test_builders_reject_unencodable_arguments(call) -> None:
    with pytest.raises(ValueError):
        call()


# --------------------------------------------------------------------------- extended-protocol parsers


def test_parse_parse_returns_name_and_text() -> None:
    body = b"stmt_1\x00SELECT $1, $2\x00\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19"
    assert m.parse_parse(body) == (b"stmt_1", b"SELECT $1, $2")
    assert m.parse_parse(b"\x00SELECT 1\x00\x00\x00") == (b"", b"SELECT 1")


def test_parse_bind_names() -> None:
    body = b"portal\x00stmt_1\x00\x00\x01\x00\x01\x00\x01\x00\x00\x00\x04\x00\x00\x00\x2a\x00\x00"
    assert m.parse_bind_names(body) == (b"portal", b"stmt_1")


@pytest.mark.parametrize(("body", "expected"), [(b"Sstmt_1\x00", (b"S", b"stmt_1")), (b"P\x00", (b"P", b""))])
def test_parse_describe_or_close(body: bytes, expected: tuple[bytes, bytes]) -> None:
    assert m.parse_describe_or_close(body) == expected


@pytest.mark.parametrize(
    ("parser", "body"),
    [
        (m.parse_query, b"SELECT 1"),
        (m.parse_query, b"SELECT 1\x00; DROP\x00"),
        (m.parse_parse, b"s\x00SELECT 1\x00"),
        (m.parse_parse, b"s\x00SELECT 1\x00\x00\x01"),
        (m.parse_parse, b"s\x00SELECT 1\x00\xff\xff"),
        (m.parse_parse, b"s\x00SELECT 1"),
        (m.parse_bind_names, b"portal\x00stmt"),
        (m.parse_describe_or_close, b""),
        (m.parse_describe_or_close, b"Xname\x00"),
        (m.parse_describe_or_close, b"Sname"),
        (m.parse_describe_or_close, b"Sname\x00extra"),
        (m.parse_parameter_status, b"name\x00value"),
        (m.parse_parameter_status, b"name\x00value\x00more\x00"),
        (m.parse_backend_key_data, b"\x00\x00\x00\x01\x00\x00\x00"),
        (m.parse_error_fields, b"SERROR\x00"),
        (m.parse_error_fields, b"SERROR"),
        (m.parse_error_fields, b"SERROR\x00\x00junk"),
        (m.parse_authentication, b"\x00\x00\x00"),
        (m.parse_sasl_mechanisms, b"SCRAM-SHA-256\x00"),
        (m.parse_sasl_initial_response, b"SCRAM-SHA-256\x00\x00\x00\x00\x05abc"),
        (m.parse_sasl_initial_response, b"SCRAM-SHA-256\x00\x00\x00"),
        (m.parse_sasl_initial_response, b"SCRAM-SHA-256\x00\xff\xff\xff\xfeabc"),
        (m.parse_password, b"secret"),
        (m.parse_negotiate_protocol_version, b"\x00\x00\x00\x00\x00\x00\x00\x01"),
    ],
)
def test_malformed_bodies_raise_protocol_violation(parser, body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parser(body)


# --------------------------------------------------------------------------- startup packets

# Captured from psql 15: PGOPTIONS='-c search_path=my\ schema -cstatement_timeout=5s' psql
# "host=... user=app dbname=shop sslmode=disable gssencmode=disable application_name=report"
PSQL_STARTUP = (
    b"\x00\x00\x00q\x00\x03\x00\x00user\x00app\x00database\x00shop\x00options\x00"
    b"-c search_path=my\\ schema -cstatement_timeout=5s\x00application_name\x00report\x00\x00"
)


def test_parse_psql_startup_packet_and_its_options() -> None:
    parsed = m.parse_startup_packet(startup_payload(PSQL_STARTUP))
    assert parsed == m.StartupMessage(
        version=m.PROTOCOL_3_0,
        params={
            "user": "app",
            "database": "shop",
            "options": "-c search_path=my\\ schema -cstatement_timeout=5s",
            "application_name": "report",
        },
    )
    assert m.parse_options(parsed.params["options"]) == {
        "search_path": "my schema",
        "statement_timeout": "5s",
    }


def test_parse_asyncpg_like_startup_packet_keeps_keys_as_sent() -> None:
    params = {
        "client_encoding": "'utf-8'",
        "user": "app",
        "database": "shop",
        "application_name": "worker",
        "DateStyle": "ISO",
        "search_path": "x y",
    }
    packet = m.startup_message(params)
    parsed = m.parse_startup_packet(startup_payload(packet))
    assert isinstance(parsed, m.StartupMessage)
    assert list(parsed.params.items()) == list(params.items())


def test_parse_ssl_and_gssenc_requests() -> None:
    assert m.parse_startup_packet(startup_payload(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")) == m.SSLRequest()
    assert m.parse_startup_packet(startup_payload(b"\x00\x00\x00\x08\x04\xd2\x16\x30")) == m.GSSENCRequest()


def test_parse_real_cancel_request_bytes() -> None:
    packet = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef"
    assert m.parse_startup_packet(startup_payload(packet)) == m.CancelRequest(
        process_id=12345, secret=b"\xde\xad\xbe\xef"
    )


VERSION_3 = b"\x00\x03\x00\x00"


@pytest.mark.parametrize(
    ("payload", "message_part"),
    [
        (b"\x00\x03", "too short"),
        (b"\x04\xd2\x16\x31", "unknown startup request code 1234.5681"),
        (b"\x00\x02\x00\x00user\x00u\x00\x00", "unsupported frontend protocol 2.0: the proxy supports 3.0"),
        (b"\x00\x04\x00\x00user\x00u\x00\x00", "unsupported frontend protocol 4.0"),
        (b"\x04\xd2\x16\x2f\x00", "SSLRequest must be 8 bytes"),
        (b"\x04\xd2\x16\x30\x00\x00", "GSSENCRequest must be 8 bytes"),
        (b"\x04\xd2\x16\x2e\x00\x00\x00\x01\x00\x00\x00", "CancelRequest has a bad length"),
        (b"\x04\xd2\x16\x2e\x00\x00\x00\x01" + bytes(257), "CancelRequest has a bad length"),
        (b"\x04\xd2\x16\x2e\x00\x00", "CancelRequest has a bad length"),
        (VERSION_3 + b"user", "name is not NUL-terminated"),
        (VERSION_3 + b"user\x00bob", "value of startup parameter 'user' is not NUL-terminated"),
        (VERSION_3 + b"user\x00bob\x00database\x00", "'database' has no value"),
        (VERSION_3 + b"user\x00bob\x00", "missing the final NUL"),
        (VERSION_3, "missing the final NUL"),
        (VERSION_3 + b"database\x00db\x00\x00", "no PostgreSQL user name"),
        (VERSION_3 + b"user\x00\x00\x00", "no PostgreSQL user name"),
        (VERSION_3 + b"user\x00bob\x00\x00extra", "bytes after the NUL"),
        (VERSION_3 + b"us\xffer\x00bob\x00\x00", "parameter name is not valid UTF-8"),
        (VERSION_3 + b"user\x00b\xe9b\x00\x00", "value of parameter 'user' is not valid UTF-8"),
        (VERSION_3 + b"user\x00a\x00user\x00b\x00\x00", "'user' appears more than once"),
        (VERSION_3 + b"user\x00" + b"x" * 10000 + b"\x00\x00", "startup packet too long"),
    ],
)
def test_malformed_startup_packets_raise_protocol_violation(payload: bytes, message_part: str) -> None:
    with pytest.raises(ProtocolViolation, match=message_part.replace(".", r"\.")):
        m.parse_startup_packet(payload)


# --------------------------------------------------------------------------- options parameter


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("", {}),
        ("   ", {}),
        ("-c geqo=off", {"geqo": "off"}),
        ("-cgeqo=off", {"geqo": "off"}),
        ("--geqo=off", {"geqo": "off"}),
        ("--statement-timeout=5s", {"statement_timeout": "5s"}),
        ("-c search_path=a\\ b", {"search_path": "a b"}),
        ("-c application_name=back\\\\slash", {"application_name": "back\\slash"}),
        ("-c x.y=a=b", {"x.y": "a=b"}),
        ("-c work_mem=", {"work_mem": ""}),
        ("\t-c a=1 \n -ca=2\t--b=3  ", {"a": "2", "b": "3"}),
        ("-c DateStyle=ISO,\\ MDY -c TimeZone=UTC", {"DateStyle": "ISO, MDY", "TimeZone": "UTC"}),
    ],
)
def test_parse_options(options: str, expected: dict[str, str]) -> None:
    assert m.parse_options(options) == expected


@pytest.mark.parametrize(
    ("options", "message_part"),
    [
        ("-d 5", "unsupported option '-d'"),
        ("-c geqo=off -B 100", "unsupported option '-B'"),
        ("geqo=off", "unsupported option 'geqo=off'"),
        ("--", "unsupported option '--'"),
        ("-c", "-c in the options parameter requires a value"),
        ("-c geqo", "-cgeqo in the options parameter requires a value"),
        ("--geqo", "--geqo in the options parameter requires a value"),
        ("-c =off", "has no name"),
    ],
)
def test_parse_options_rejects_unsupported_switches(options: str, message_part: str) -> None:
    with pytest.raises(ProtocolViolation, match=message_part):
        m.parse_options(options)


# --------------------------------------------------------------------------- arbitrary input

BODY_PARSERS = [
    m.parse_error_fields,
    m.parse_parameter_status,
    m.parse_backend_key_data,
    m.parse_query,
    m.parse_parse,
    m.parse_bind_names,
    m.parse_describe_or_close,
    m.parse_authentication,
    m.parse_sasl_mechanisms,
    m.parse_sasl_initial_response,
    m.parse_password,
    m.parse_negotiate_protocol_version,
    m.parse_startup_packet,
]

# Pieces that steer random input into the parsers' deeper branches (terminators, kinds, counts, codes).
_PIECES = st.sampled_from(
    [
        b"\x00",
        b"a",
        b"\xff",
        b"\xe9",
        b"S",
        b"P",
        b"user",
        b"\x00\x01",
        b"\xff\xff\xff\xff",
        b"\x00\x00\x00\x04",
    ]
)
_STARTUP_PREFIXES = st.sampled_from([b"", b"\x00\x03\x00\x00", b"\x00\x03\x00\x02", b"\x04\xd2\x16\x2e"])
arbitrary_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda prefix, parts: prefix + b"".join(parts), _STARTUP_PREFIXES, st.lists(_PIECES, max_size=30)),
)


@pytest.mark.parametrize("parser", BODY_PARSERS, ids=lambda parser: parser.__name__)
@settings(max_examples=150, deadline=None)
@given(body=arbitrary_bodies)
def test_parsers_raise_only_protocol_violation(parser, body: bytes) -> None:
    try:
        parser(body)
    except ProtocolViolation:
        pass


@settings(max_examples=200, deadline=None)
@given(options=st.text(alphabet=st.sampled_from(list("-c=ab \\\t\x00é")), max_size=40))
def test_parse_options_raises_only_protocol_violation(options: str) -> None:
    try:
        settings_ = m.parse_options(options)
    except ProtocolViolation:
        return
    assert all(name and "-" not in name for name in settings_)
