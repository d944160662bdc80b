"""Tests of the MySQL/MariaDB packet builders and parsers, with bytes alone (vectors captured from real software)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdsproxy.errors import ProtocolViolation
from rdsproxy.protocol.mysql import packets as p

# --------------------------------------------------------------------------- vectors captured from real software

# Initial handshake of MariaDB 10.11.19 (Debian 12), connection id 8.
MARIADB_HANDSHAKE = (
    b"\n5.5.5-10.11.19-MariaDB-0+deb12u1-log\x00\x08\x00\x00\x001`r<tU*p\x00\xfe\xf7\x08\x02\x00\xff\x81\x15"
    b'\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00y0"WoI_%6}8=\x00mysql_native_password\x00'
)

# HandshakeResponse41 payloads sent to a handshake_v10 offering mysql_native_password, with the scramble used.
PYMYSQL_SCRAMBLE = bytes.fromhex("587e17587869474146606444112f4e105e0b6428")
PYMYSQL_RESPONSE = bytes.fromhex(
    "0da23a00ffffff002d0000000000000000000000000000000000000000000000616c6963650014ff06fea7663536ea60a02cff"
    "77d9f563c6e2f351646231006d7973716c5f6e61746976655f70617373776f726400350c5f636c69656e745f6e616d650770"
    "796d7973716c0f5f636c69656e745f76657273696f6e05312e322e34045f7069640439353837"
)
LIBMARIADB_SCRAMBLE = bytes.fromhex("297c5a4649076e0b253f133a3945135a1f6c305c")
LIBMARIADB_RESPONSE = bytes.fromhex(  # the mariadb 10.11 command-line client (Connector/C 3.3.20)
    "85a2bf0000001000210000000000000000000000000000000000000000000000616c6963650014e84adb96373f97240746d989"
    "26d42ee22c711c596d7973716c5f6e61746976655f70617373776f7264007e035f6f73054c696e75780c5f636c69656e745f"
    "6e616d650a6c69626d617269616462045f70696404393539380f5f636c69656e745f76657273696f6e06332e332e3230095f"
    "706c6174666f726d067838365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132"
    "372e302e302e31"
)
NODE_MARIADB_RESPONSE = bytes.fromhex(  # MariaDB Connector/Node.js 3.5.4
    "0aa33e0100000040e00000000000000000000000000000000000000000000000616c6963650014e7da722bccb8899e7d7c9505"
    "99e369c1329ad457646231006d7973716c5f6e61746976655f70617373776f726400fc6a000c5f636c69656e745f6e616d65"
    "164d61726961444220636f6e6e6563746f722f4e6f64650f5f636c69656e745f76657273696f6e05332e352e34035f6f7305"
    "6c696e75780c5f636c69656e745f686f737402766d0d5f6e6f64655f76657273696f6e0732302e32302e32"
)
# SSLRequests sent to a handshake offering CLIENT_SSL by `mariadb --ssl` and by PyMySQL with an SSL context.
LIBMARIADB_SSL_REQUEST = bytes.fromhex("85aabf0000001000210000000000000000000000000000000000000000000000")
PYMYSQL_SSL_REQUEST = bytes.fromhex("05aa3a00ffffff002d0000000000000000000000000000000000000000000000")

# MariaDB 10.11 answering "SELECT 1 AS n, 'x' AS s, NULL AS z" (payloads after the column count).
MARIADB_COLUMN_N = b"\x03def\x00\x00\x00\x01n\x00\x0c?\x00\x01\x00\x00\x00\x03\x81\x00\x00\x00\x00"
MARIADB_COLUMN_S = b"\x03def\x00\x00\x00\x01s\x00\x0c-\x00\x04\x00\x00\x00\xfd\x01\x00'\x00\x00"
MARIADB_COLUMN_Z = b"\x03def\x00\x00\x00\x01z\x00\x0c?\x00\x00\x00\x00\x00\x06\x80\x00\x00\x00\x00"
MARIADB_ROW = b"\x011\x01x\xfb"
# MariaDB OK packets on a session with CLIENT_SESSION_TRACK.
MARIADB_OK_SET_VARIABLES = b"\x00\x00\x00\x00@\x00\x00\x00$\x00\x0f\nautocommit\x03OFF\x00\x11\ttime_zone\x06+01:00"
MARIADB_OK_USE = b"\x00\x00\x00\x02@\x00\x00\x00\t\x01\x07\x06testdb"
MARIADB_ERR = b"\xffz\x04#42S02Table 'testdb.nosuchtable' doesn't exist"


def unframe(data: bytes) -> list[tuple[int, bytes]]:
    """Split framed bytes into (sequence id, payload) of each physical packet, checking lengths."""
    packets = []
    pos = 0
    while pos < len(data):
        (header,) = struct.unpack_from("<I", data, pos)
        length, seq = header & 0xFFFFFF, header >> 24
        assert pos + 4 + length <= len(data)
        packets.append((seq, data[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return packets


# --------------------------------------------------------------------------- framing


def test_packet_header_is_little_endian_length_and_sequence() -> None:
    assert p.packet(3, b"\x0e") == b"\x01\x00\x00\x03\x0e"
    assert p.packet(0, b"") == b"\x00\x00\x00\x00"
    assert p.packet(255, b"ab" * 200) == b"\x90\x01\x00\xff" + b"ab" * 200


@pytest.mark.parametrize(
    ("size", "chunks"),
    [
        (p.MAX_PACKET_CHUNK - 1, [p.MAX_PACKET_CHUNK - 1]),
        (p.MAX_PACKET_CHUNK, [p.MAX_PACKET_CHUNK, 0]),
        (p.MAX_PACKET_CHUNK + 1, [p.MAX_PACKET_CHUNK, 1]),
        (2 * p.MAX_PACKET_CHUNK, [p.MAX_PACKET_CHUNK, p.MAX_PACKET_CHUNK, 0]),
    ],
)
def test_large_payloads_split_at_0xffffff(size: int, chunks: list[int]) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    framed = p.packet(254, payload)
    physical = unframe(framed)
    assert [len(chunk) for _, chunk in physical] == chunks
    assert [seq for seq, _ in physical] == [(254 + index) & 0xFF for index in range(len(chunks))]
    assert b"".join(chunk for _, chunk in physical) == payload
    last_seq, joined, end = p.read_packet(framed)
    assert (last_seq, end) == (physical[-1][0], len(framed))
    assert joined == payload


def test_frame_packets_numbers_consecutively_and_wraps() -> None:
    framed, next_seq = p.frame_packets(254, [b"a", b"bc", b""])
    assert unframe(framed) == [(254, b"a"), (255, b"bc"), (0, b"")]
    assert next_seq == 1
    assert p.frame_packets(7, []) == (b"", 7)


@pytest.mark.parametrize("seq", [-1, 256])
def test_sequence_ids_out_of_range_are_refused(seq: int) -> None:
    with pytest.raises(ValueError):
        p.packet(seq, b"")
    with pytest.raises(ValueError):
        p.frame_packets(seq, [b""])


def test_read_packet_waits_for_complete_packets() -> None:
    data = p.packet(1, b"hello") + p.packet(2, b"world")
    assert p.read_packet(data) == (1, b"hello", 9)
    assert p.read_packet(data, 9) == (2, b"world", 18)
    for cut in range(len(data[:9])):
        assert p.read_packet(data[:cut]) is None
    assert p.read_packet(data, 18) is None


def test_read_packet_waits_for_every_continuation() -> None:
    framed = p.packet(0, bytes(p.MAX_PACKET_CHUNK))
    assert p.read_packet(framed[:-4]) is None  # the empty closing packet is missing
    assert p.read_packet(framed[:100]) is None


def test_read_packet_refuses_out_of_order_continuations() -> None:
    first = struct.pack("<I", p.MAX_PACKET_CHUNK | 5 << 24) + bytes(p.MAX_PACKET_CHUNK)
    with pytest.raises(ProtocolViolation, match="sequence id 7 out of order: expected 6"):
        p.read_packet(first + p.packet(7, b""))


def test_read_packet_enforces_max_payload_before_the_bytes_arrive() -> None:
    header_only = struct.pack("<I", 5000)
    with pytest.raises(ProtocolViolation, match="exceeds 4096 bytes"):
        p.read_packet(header_only, max_payload=4096)
    assert p.read_packet(p.packet(0, bytes(4096)), max_payload=4096) == (0, bytes(4096), 4100)


# --------------------------------------------------------------------------- length-encoded values


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (250, b"\xfa"),
        (251, b"\xfc\xfb\x00"),
        (0xFFFF, b"\xfc\xff\xff"),
        (0x10000, b"\xfd\x00\x00\x01"),
        (0xFFFFFF, b"\xfd\xff\xff\xff"),
        (0x1000000, b"\xfe\x00\x00\x00\x01\x00\x00\x00\x00"),
        (2**64 - 1, b"\xfe" + b"\xff" * 8),
    ],
)
def test_lenenc_int_boundaries(value: int, encoded: bytes) -> None:
    assert p.lenenc_int(value) == encoded
    assert p.read_lenenc_int(b"x" + encoded + b"y", 1) == (value, 1 + len(encoded))


@pytest.mark.parametrize("value", [-1, 2**64])
def test_lenenc_int_refuses_values_outside_64_bits(value: int) -> None:
    with pytest.raises(ValueError):
        p.lenenc_int(value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "missing"),
        (b"\xfb", "NULL marker"),
        (b"\xff", "invalid prefix"),
        (b"\xfc\x01", "truncated"),
        (b"\xfd\x01\x02", "truncated"),
        (b"\xfe" + bytes(7), "truncated"),
    ],
)
def test_read_lenenc_int_rejects_malformed_input(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        p.read_lenenc_int(data, 0)


@settings(max_examples=200, deadline=None)
@given(value=st.integers(min_value=0, max_value=2**64 - 1), prefix=st.binary(max_size=3))
def test_lenenc_int_round_trips(value: int, prefix: bytes) -> None:
    encoded = p.lenenc_int(value)
    assert p.read_lenenc_int(prefix + encoded, len(prefix)) == (value, len(prefix) + len(encoded))


def test_lenenc_and_nul_strings() -> None:
    data = p.lenenc_str(b"") + p.lenenc_str(b"x" * 300) + b"abc\x00"
    value, pos = p.read_lenenc_str(data, 0)
    assert (value, pos) == (b"", 1)
    value, pos = p.read_lenenc_str(data, pos)
    assert (value, pos) == (b"x" * 300, 304)
    assert p.read_nul_str(data, pos) == (b"abc", len(data))
    with pytest.raises(ProtocolViolation, match="declares 5 bytes but the packet holds 2"):
        p.read_lenenc_str(b"\x05ab", 0)
    with pytest.raises(ProtocolViolation, match="not NUL-terminated"):
        p.read_nul_str(b"abc", 0)
    with pytest.raises(ProtocolViolation, match="ends early"):
        p.read_nul_str(b"abc", 4)


# --------------------------------------------------------------------------- server handshake


def test_parse_real_mariadb_handshake() -> None:
    handshake = p.parse_handshake_v10(MARIADB_HANDSHAKE)
    assert handshake == p.ServerHandshake(
        protocol_version=10,
        server_version="5.5.5-10.11.19-MariaDB-0+deb12u1-log",
        connection_id=8,
        scramble=b'1`r<tU*py0"WoI_%6}8=',
        capabilities=0x81FFF7FE,
        charset=8,
        status=p.SERVER_STATUS_AUTOCOMMIT,
        auth_plugin="mysql_native_password",
        mariadb_capabilities=p.MARIADB_CLIENT_PROGRESS
        | p.MARIADB_CLIENT_STMT_BULK_OPERATIONS
        | p.MARIADB_CLIENT_EXTENDED_METADATA
        | p.MARIADB_CLIENT_CACHE_METADATA,
    )
    assert not handshake.capabilities & p.CLIENT_MYSQL
    assert handshake.capabilities & p.CLIENT_DEPRECATE_EOF
    assert "scramble" not in repr(handshake)


PROXY_CAPABILITIES = (
    p.CLIENT_LONG_PASSWORD
    | p.CLIENT_CONNECT_WITH_DB
    | p.CLIENT_PROTOCOL_41
    | p.CLIENT_TRANSACTIONS
    | p.CLIENT_SECURE_CONNECTION
    | p.CLIENT_MULTI_RESULTS
    | p.CLIENT_PLUGIN_AUTH
    | p.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | p.CLIENT_CONNECT_ATTRS
    | p.CLIENT_DEPRECATE_EOF
)
WITHOUT_DB = PROXY_CAPABILITIES & ~p.CLIENT_CONNECT_WITH_DB
SCRAMBLE = bytes(range(1, 21))


def test_handshake_v10_layout() -> None:
    payload = p.handshake_v10(
        server_version="8.0.36-rdsproxy",
        connection_id=0x01020304,
        scramble=SCRAMBLE,
        capabilities=PROXY_CAPABILITIES,
        charset=p.CHARSET_UTF8MB4_GENERAL_CI,
        status=p.SERVER_STATUS_AUTOCOMMIT,
        auth_plugin="caching_sha2_password",
    )
    assert payload == (
        b"\x0a8.0.36-rdsproxy\x00\x04\x03\x02\x01"
        + SCRAMBLE[:8]
        + b"\x00"
        + struct.pack("<H", PROXY_CAPABILITIES & 0xFFFF)
        + b"\x2d\x02\x00"
        + struct.pack("<H", PROXY_CAPABILITIES >> 16)
        + b"\x15"
        + bytes(10)
        + SCRAMBLE[8:]
        + b"\x00caching_sha2_password\x00"
    )


@pytest.mark.parametrize("version", ["5.5.5-10.11.6-MariaDB-rdsproxy", "8.0.36", "ünïcode"])
@pytest.mark.parametrize("plugin", ["mysql_native_password", "caching_sha2_password"])
def test_handshake_v10_round_trip(version: str, plugin: str) -> None:
    payload = p.handshake_v10(
        server_version=version,
        connection_id=2**32 - 1,
        scramble=SCRAMBLE,
        capabilities=PROXY_CAPABILITIES,
        charset=p.CHARSET_UTF8_GENERAL_CI,
        status=p.SERVER_STATUS_AUTOCOMMIT | p.SERVER_STATUS_IN_TRANS,
        auth_plugin=plugin,
    )
    assert p.parse_handshake_v10(payload) == p.ServerHandshake(
        protocol_version=10,
        server_version=version,
        connection_id=2**32 - 1,
        scramble=SCRAMBLE,
        capabilities=PROXY_CAPABILITIES,
        charset=p.CHARSET_UTF8_GENERAL_CI,
        status=p.SERVER_STATUS_AUTOCOMMIT | p.SERVER_STATUS_IN_TRANS,
        auth_plugin=plugin,
        mariadb_capabilities=0,
    )


def test_handshake_without_plugin_auth_has_no_plugin_name() -> None:
    capabilities = PROXY_CAPABILITIES & ~p.CLIENT_PLUGIN_AUTH
    payload = p.handshake_v10(server_version="5.1", connection_id=1, scramble=SCRAMBLE, capabilities=capabilities)
    assert payload.endswith(SCRAMBLE[8:] + b"\x00")
    parsed = p.parse_handshake_v10(payload)
    assert (parsed.auth_plugin, parsed.scramble) == ("", SCRAMBLE)


def test_handshake_plugin_name_without_nul_is_tolerated() -> None:
    # MySQL bug #59453: servers before 5.5.10 left out the NUL after the plugin name.
    payload = p.handshake_v10(
        server_version="5.5.9", connection_id=1, scramble=SCRAMBLE, capabilities=PROXY_CAPABILITIES
    )
    assert p.parse_handshake_v10(payload[:-1]).auth_plugin == "mysql_native_password"


@pytest.mark.parametrize(
    "call",
    [
        lambda: p.handshake_v10(server_version="x", connection_id=1, scramble=b"short", capabilities=0),
        lambda: p.handshake_v10(server_version="x\x00y", connection_id=1, scramble=SCRAMBLE, capabilities=0),
        lambda: p.handshake_v10(server_version="x", connection_id=2**32, scramble=SCRAMBLE, capabilities=0),
        lambda: p.handshake_v10(server_version="x", connection_id=1, scramble=SCRAMBLE, capabilities=0, charset=256),
        lambda: p.handshake_v10(server_version="x", connection_id=1, scramble=SCRAMBLE, capabilities=2**32),
    ],
)
def test_handshake_v10_rejects_bad_arguments(call) -> None:
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (
            p.err_packet(1040, "08004", "Too many connections"),
            "error 1040 instead of a handshake: Too many connections",
        ),
        (b"\xffj\x04Host '10.0.0.9' is blocked", "error 1130"),
        (b"\x09" + MARIADB_HANDSHAKE[1:], "protocol 9"),
        (MARIADB_HANDSHAKE[:20], "not NUL-terminated|truncated"),
        (MARIADB_HANDSHAKE[:50], "truncated"),
        (MARIADB_HANDSHAKE[:60], "truncated"),
        (MARIADB_HANDSHAKE.replace(b"\xfe\xf7\x08", b"\xfe\xf5\x08", 1), "does not speak protocol 4.1"),
    ],
)
def test_malformed_server_handshakes(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        p.parse_handshake_v10(payload)


# --------------------------------------------------------------------------- handshake response


def test_parse_real_pymysql_handshake_response() -> None:
    response = p.parse_handshake_response41(PYMYSQL_RESPONSE)
    assert response == p.HandshakeResponse(
        capabilities=0x003AA20D,
        max_packet=16777215,
        charset=45,
        username="alice",
        auth_response=bytes.fromhex("ff06fea7663536ea60a02cff77d9f563c6e2f351"),
        database="db1",
        auth_plugin="mysql_native_password",
        connect_attrs={"_client_name": "pymysql", "_client_version": "1.2.4", "_pid": "9587"},
        mariadb_capabilities=0,
    )
    assert response.capabilities & p.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    assert "auth_response" not in repr(response)


def test_parse_real_mariadb_client_handshake_response() -> None:
    response = p.parse_handshake_response41(LIBMARIADB_RESPONSE)
    assert response.username == "alice"
    assert response.database is None
    assert response.charset == p.CHARSET_UTF8_GENERAL_CI
    assert response.auth_plugin == "mysql_native_password"
    assert len(response.auth_response) == 20
    assert response.connect_attrs["_client_name"] == "libmariadb"
    assert response.connect_attrs["program_name"] == "mysql"
    assert not response.capabilities & p.CLIENT_DEPRECATE_EOF


def test_parse_real_node_connector_handshake_response() -> None:
    response = p.parse_handshake_response41(NODE_MARIADB_RESPONSE)
    assert (response.username, response.database, response.charset) == ("alice", "db1", 224)
    assert response.capabilities & p.CLIENT_DEPRECATE_EOF
    assert response.capabilities & p.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    assert response.connect_attrs["_client_name"] == "MariaDB connector/Node"
    assert response.max_packet == 1 << 30


@pytest.mark.parametrize("ssl_request", [LIBMARIADB_SSL_REQUEST, PYMYSQL_SSL_REQUEST])
def test_real_ssl_requests_are_refused_because_tls_is_not_offered(ssl_request: bytes) -> None:
    assert p.is_ssl_request(ssl_request)
    with pytest.raises(ProtocolViolation, match="TLS is not offered"):
        p.parse_handshake_response41(ssl_request)


def test_full_response_after_tls_still_carries_client_ssl_and_parses() -> None:
    payload = p.handshake_response41(
        capabilities=PROXY_CAPABILITIES | p.CLIENT_SSL, username="u", auth_response=b"\x01" * 20
    )
    assert not p.is_ssl_request(payload)
    assert p.parse_handshake_response41(payload).capabilities & p.CLIENT_SSL
    assert not p.is_ssl_request(PYMYSQL_RESPONSE)
    assert not p.is_ssl_request(LIBMARIADB_SSL_REQUEST[:31])


def test_pre_41_clients_are_refused_by_name() -> None:
    # HandshakeResponse320: 2-byte capabilities without CLIENT_PROTOCOL_41, 3-byte max packet, user, scramble.
    old = struct.pack("<H", p.CLIENT_LONG_PASSWORD | p.CLIENT_TRANSACTIONS) + b"\x00\x00\x01alice\x00abcdefgh"
    with pytest.raises(ProtocolViolation, match="pre-4.1 MySQL protocol"):
        p.parse_handshake_response41(old)


@pytest.mark.parametrize(
    "capabilities",
    [
        PROXY_CAPABILITIES,
        PROXY_CAPABILITIES & ~p.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
        PROXY_CAPABILITIES & ~(p.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | p.CLIENT_PLUGIN_AUTH),
        p.CLIENT_PROTOCOL_41,
    ],
)
@pytest.mark.parametrize("database", [None, "shop"])
@pytest.mark.parametrize("attrs", [None, {}, {"_client_name": "rdsproxy", "program_name": "ünï"}])
def test_handshake_response41_round_trip(capabilities: int, database: str | None, attrs: dict | None) -> None:
    answer = bytes(range(1, 21))  # no NUL, so even the NUL-terminated layout carries it
    payload = p.handshake_response41(
        capabilities=capabilities,
        username="app_üser",
        auth_response=answer,
        database=database,
        auth_plugin="caching_sha2_password",
        charset=p.CHARSET_UTF8_GENERAL_CI,
        max_packet=1 << 24,
        connect_attrs=attrs,
    )
    parsed = p.parse_handshake_response41(payload)
    sent = capabilities | p.CLIENT_PROTOCOL_41
    sent &= ~(p.CLIENT_CONNECT_WITH_DB | p.CLIENT_CONNECT_ATTRS)
    sent |= (p.CLIENT_CONNECT_WITH_DB if database else 0) | (p.CLIENT_CONNECT_ATTRS if attrs is not None else 0)
    assert parsed == p.HandshakeResponse(
        capabilities=sent,
        max_packet=1 << 24,
        charset=p.CHARSET_UTF8_GENERAL_CI,
        username="app_üser",
        auth_response=answer,
        database=database,
        auth_plugin="caching_sha2_password" if capabilities & p.CLIENT_PLUGIN_AUTH else None,
        connect_attrs=attrs or {},
        mariadb_capabilities=0,
    )


def response_head(capabilities: int) -> bytes:
    return struct.pack("<IIB", capabilities, 1 << 24, 45) + bytes(23)


def test_response_auth_field_layouts() -> None:
    secure = p.CLIENT_PROTOCOL_41 | p.CLIENT_SECURE_CONNECTION
    lenenc = secure | p.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    long_answer = bytes(range(256)) * 2
    assert p.parse_handshake_response41(response_head(lenenc) + b"u\x00\xfc\x00\x02" + long_answer).auth_response == (
        long_answer
    )
    assert p.parse_handshake_response41(response_head(secure) + b"u\x00\x03abc").auth_response == b"abc"
    old = p.parse_handshake_response41(response_head(p.CLIENT_PROTOCOL_41) + b"u\x00abc\x00")
    assert old.auth_response == b"abc"
    with pytest.raises(ValueError, match="longer than 255"):
        p.handshake_response41(capabilities=secure, username="u", auth_response=long_answer, auth_plugin=None)
    with pytest.raises(ValueError, match="must not contain NUL"):
        p.handshake_response41(capabilities=p.CLIENT_PROTOCOL_41, username="u", auth_response=b"a\x00b")


def test_response_with_mariadb_extended_capabilities() -> None:
    capabilities = (p.CLIENT_PROTOCOL_41 | p.CLIENT_SECURE_CONNECTION) & ~p.CLIENT_MYSQL
    head = struct.pack("<IIB", capabilities, 1 << 24, 45) + bytes(19) + struct.pack("<I", p.MARIADB_CLIENT_PROGRESS)
    parsed = p.parse_handshake_response41(head + b"u\x00\x00")
    assert parsed.mariadb_capabilities == p.MARIADB_CLIENT_PROGRESS
    mysql_head = struct.pack("<IIB", capabilities | p.CLIENT_MYSQL, 1 << 24, 45) + bytes(19) + b"\x01\x00\x00\x00"
    assert p.parse_handshake_response41(mysql_head + b"u\x00\x00").mariadb_capabilities == 0


def test_response_optional_fields_may_be_missing_at_the_end() -> None:
    everything = PROXY_CAPABILITIES | p.CLIENT_CONNECT_WITH_DB | p.CLIENT_CONNECT_ATTRS
    parsed = p.parse_handshake_response41(response_head(everything) + b"u\x00\x00")
    assert (parsed.database, parsed.auth_plugin, parsed.connect_attrs) == (None, None, {})
    with_db = p.parse_handshake_response41(response_head(everything) + b"u\x00\x00db\x00")
    assert (with_db.database, with_db.auth_plugin) == ("db", None)
    empty_db = p.parse_handshake_response41(response_head(everything) + b"u\x00\x00\x00plugin\x00")
    assert (empty_db.database, empty_db.auth_plugin) == (None, "plugin")


def test_response_trailing_bytes_after_attributes_are_ignored() -> None:
    # MySQL 8 clients append a zstd compression level after the attributes.
    payload = p.handshake_response41(
        capabilities=PROXY_CAPABILITIES | p.CLIENT_ZSTD_COMPRESSION_ALGORITHM,
        username="u",
        auth_response=b"",
        connect_attrs={"a": "b"},
    )
    assert p.parse_handshake_response41(payload + b"\x03").connect_attrs == {"a": "b"}


def test_response_names_in_another_charset_survive_byte_for_byte() -> None:
    latin1_user = "zoë".encode("latin-1")
    payload = response_head(p.CLIENT_PROTOCOL_41 | p.CLIENT_SECURE_CONNECTION | p.CLIENT_CONNECT_WITH_DB)
    parsed = p.parse_handshake_response41(payload + latin1_user + b"\x00\x00caf\xe9\x00")
    rebuilt = p.handshake_response41(
        capabilities=p.CLIENT_SECURE_CONNECTION, username=parsed.username, auth_response=b"", database=parsed.database
    )
    assert latin1_user + b"\x00" in rebuilt and b"caf\xe9\x00" in rebuilt


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "too short"),
        (b"\x00", "too short"),
        (response_head(p.CLIENT_PROTOCOL_41)[:20], "too short"),
        (response_head(p.CLIENT_PROTOCOL_41), "user name is not NUL-terminated"),
        (response_head(p.CLIENT_PROTOCOL_41) + b"user", "user name is not NUL-terminated"),
        (response_head(p.CLIENT_PROTOCOL_41) + b"u\x00abc", "authentication response is not NUL-terminated"),
        (response_head(p.CLIENT_PROTOCOL_41 | p.CLIENT_SECURE_CONNECTION) + b"u\x00\x14abc", "truncated"),
        (response_head(p.CLIENT_PROTOCOL_41 | p.CLIENT_SECURE_CONNECTION) + b"u\x00", "truncated"),
        (response_head(PROXY_CAPABILITIES) + b"u\x00\xfe\x01", "truncated"),
        (response_head(PROXY_CAPABILITIES) + b"u\x00\x05ab", "declares 5 bytes"),
        (response_head(PROXY_CAPABILITIES | p.CLIENT_CONNECT_WITH_DB) + b"u\x00\x00db", "database name"),
        (response_head(WITHOUT_DB) + b"u\x00\x00plugin", "plugin name"),
        (response_head(WITHOUT_DB) + b"u\x00\x00p\x00\x05\x01a", "connection attributes"),
        (response_head(WITHOUT_DB) + b"u\x00\x00p\x00\x02\x01a", "connection attribute value"),
    ],
)
def test_malformed_handshake_responses(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        p.parse_handshake_response41(payload)


# --------------------------------------------------------------------------- OK, ERR, EOF


@pytest.mark.parametrize("eof_header", [False, True])
@pytest.mark.parametrize("info", [b"", b"Rows matched: 1  Changed: 1  Warnings: 0"])
def test_ok_packet_round_trip(eof_header: bool, info: bytes) -> None:
    payload = p.ok_packet(
        affected_rows=300,
        last_insert_id=2**40,
        status=p.SERVER_STATUS_IN_TRANS,
        warnings=2,
        info=info,
        eof_header=eof_header,
    )
    assert payload[0] == (0xFE if eof_header else 0x00)
    assert p.parse_ok(payload) == p.OkPacket(300, 2**40, p.SERVER_STATUS_IN_TRANS, 2, info, b"")


def test_ok_packet_defaults_are_the_minimal_autocommit_ok() -> None:
    assert p.ok_packet() == b"\x00\x00\x00\x02\x00\x00\x00"
    assert p.ok_packet(eof_header=True) == b"\xfe\x00\x00\x02\x00\x00\x00"


def test_ok_packet_info_with_session_track_is_length_encoded() -> None:
    payload = p.ok_packet(info=b"hello", session_track=True)
    assert payload == b"\x00\x00\x00\x02\x00\x00\x00\x05hello"
    assert p.parse_ok(payload, session_track=True).info == b"hello"
    assert p.parse_ok(payload).info == b"\x05hello"


def test_parse_real_mariadb_session_tracking_ok_packets() -> None:
    # Without session_track the trailer is tolerated as opaque info.
    assert p.parse_ok(MARIADB_OK_SET_VARIABLES).status == p.SERVER_SESSION_STATE_CHANGED
    tracked = p.parse_ok(MARIADB_OK_SET_VARIABLES, session_track=True)
    assert (tracked.affected_rows, tracked.last_insert_id, tracked.warnings, tracked.info) == (0, 0, 0, b"")
    assert tracked.session_state_changes == b"\x00\x0f\nautocommit\x03OFF\x00\x11\ttime_zone\x06+01:00"
    use = p.parse_ok(MARIADB_OK_USE, session_track=True)
    assert use.status == p.SERVER_SESSION_STATE_CHANGED | p.SERVER_STATUS_AUTOCOMMIT
    assert use.session_state_changes == b"\x01\x07\x06testdb"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"\x01\x00\x00\x02\x00\x00\x00", "must start with 0x00 or 0xfe"),
        (b"\x00", "affected rows"),
        (b"\x00\x00\xfc\x01", "last insert id"),
        (b"\x00\x00\x00\x02", "status flags"),
        (b"\x00\x00\x00\x02\x00\x00", "warning count"),
    ],
)
def test_malformed_ok_packets(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        p.parse_ok(payload)


def test_malformed_session_tracking_ok_packets() -> None:
    with pytest.raises(ProtocolViolation, match="OK info"):
        p.parse_ok(b"\x00\x00\x00\x02\x00\x00\x00\x09abc", session_track=True)
    with pytest.raises(ProtocolViolation, match="session state changes"):
        p.parse_ok(b"\x00\x00\x00\x00\x40\x00\x00\x00\x09\x01", session_track=True)


def test_err_packet_layout_and_round_trip() -> None:
    payload = p.err_packet(1040, "08004", "rdsproxy: no database connection within 120 s")
    assert payload == b"\xff\x10\x04#08004rdsproxy: no database connection within 120 s"
    assert p.parse_err(payload) == p.ErrPacket(1040, "08004", "rdsproxy: no database connection within 120 s")
    assert p.parse_err(p.err_packet(1045, "28000", "Zugriff verweigert für ü")).message == "Zugriff verweigert für ü"


def test_parse_real_mariadb_err_packet() -> None:
    assert p.parse_err(MARIADB_ERR) == p.ErrPacket(1146, "42S02", "Table 'testdb.nosuchtable' doesn't exist")


def test_err_packet_without_sqlstate_marker_reads_as_hy000() -> None:
    # Sent before the handshake, when the server does not know yet that the client speaks 4.1.
    assert p.parse_err(b"\xff\x10\x04Too many connections") == p.ErrPacket(1040, "HY000", "Too many connections")
    assert p.parse_err(b"\xff\x10\x04") == p.ErrPacket(1040, "HY000", "")
    assert p.parse_err(b"\xff\x10\x04#08S01caf\xe9").message == "caf\ufffd"


@pytest.mark.parametrize(
    ("payload", "message"),
    [(b"", "empty"), (b"\x00\x10\x04", "0xff"), (b"\xff\x10", "error code"), (b"\xff\x10\x04#08", "SQLSTATE")],
)
def test_malformed_err_packets(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        p.parse_err(payload)


@pytest.mark.parametrize(
    "call",
    [
        lambda: p.err_packet(1045, "2800", "short"),
        lambda: p.err_packet(1045, "28 00", "space"),
        lambda: p.err_packet(1045, "2800é", "non-ascii"),
        lambda: p.err_packet(65536, "28000", "code too big"),
        lambda: p.ok_packet(status=1 << 16),
        lambda: p.eof_packet(status=0, warnings=-1),
        lambda: p.auth_switch_request("", b""),
        lambda: p.auth_switch_request("a\x00b", b""),
    ],
)
def test_builders_reject_unencodable_arguments(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_eof_packet_layout_and_round_trip() -> None:
    payload = p.eof_packet(status=p.SERVER_STATUS_AUTOCOMMIT | p.SERVER_MORE_RESULTS_EXISTS, warnings=3)
    assert payload == b"\xfe\x03\x00\x0a\x00"
    assert p.parse_eof(payload) == p.EofPacket(warnings=3, status=0x0A)


@pytest.mark.parametrize("payload", [b"", b"\xfe", b"\xfe\x00\x00\x02\x00\x00\x00", b"\x00\x00\x00\x02\x00"])
def test_malformed_eof_packets(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        p.parse_eof(payload)


# --------------------------------------------------------------------------- authentication packets


def test_auth_switch_request_round_trip() -> None:
    payload = p.auth_switch_request("mysql_native_password", SCRAMBLE + b"\x00")
    assert payload == b"\xfemysql_native_password\x00" + SCRAMBLE + b"\x00"
    assert p.parse_auth_switch(payload) == ("mysql_native_password", SCRAMBLE + b"\x00")
    assert p.parse_auth_switch(p.auth_switch_request("mysql_clear_password", b"")) == ("mysql_clear_password", b"")


def test_parse_real_mariadb_ed25519_switch() -> None:
    payload = b"\xfeclient_ed25519\x00\xf7-\xd2\xdf[\xebJw\xf55\x91\xa1Y\x1f\xf5\xc2\xe6p0\x00\x8a0{Q\x91x\xe1g\x9fA0;"
    plugin, data = p.parse_auth_switch(payload)
    assert plugin == "client_ed25519"
    assert len(data) == 32


def test_old_style_switch_request_means_mysql_old_password() -> None:
    assert p.parse_auth_switch(b"\xfe") == ("mysql_old_password", b"")


@pytest.mark.parametrize("payload", [b"", b"\x01abc", b"\xfe\x00data", b"\xfeplugin-without-nul"])
def test_malformed_auth_switch_requests(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        p.parse_auth_switch(payload)


def test_auth_more_data_round_trip() -> None:
    assert p.auth_more_data(b"\x03") == b"\x01\x03"
    assert p.parse_auth_more_data(b"\x01\x04") == b"\x04"
    with pytest.raises(ProtocolViolation):
        p.parse_auth_more_data(b"\x00\x03")


# --------------------------------------------------------------------------- result sets


def test_parse_real_mariadb_column_definitions_and_row() -> None:
    n = p.parse_column_definition41(MARIADB_COLUMN_N)
    assert n == p.ColumnDefinition(
        catalog=b"def",
        schema=b"",
        table=b"",
        org_table=b"",
        name=b"n",
        org_name=b"",
        charset=p.CHARSET_BINARY,
        column_length=1,
        column_type=p.TYPE_LONG,
        flags=p.NOT_NULL_FLAG | p.BINARY_FLAG,
        decimals=0,
    )
    s = p.parse_column_definition41(MARIADB_COLUMN_S)
    assert (s.name, s.charset, s.column_length, s.column_type, s.flags) == (b"s", 45, 4, p.TYPE_VAR_STRING, 1)
    assert p.parse_column_definition41(MARIADB_COLUMN_Z).column_type == p.TYPE_NULL
    assert p.parse_text_row(MARIADB_ROW, 3) == [b"1", b"x", None]


def test_column_definition41_round_trip() -> None:
    payload = p.column_definition41(
        "total",
        column_type=p.TYPE_LONGLONG,
        charset=p.CHARSET_BINARY,
        column_length=21,
        flags=p.NOT_NULL_FLAG | p.BINARY_FLAG,
        decimals=0,
        schema="shop",
        table="o",
        org_table="orders",
        org_name="amount",
    )
    assert payload.startswith(b"\x03def\x04shop\x01o\x06orders\x05total\x06amount\x0c")
    assert payload.endswith(b"\x00\x00") and len(payload) == 31 + 1 + 12
    assert p.parse_column_definition41(payload) == p.ColumnDefinition(
        b"def", b"shop", b"o", b"orders", b"total", b"amount", 63, 21, p.TYPE_LONGLONG, 0x81, 0
    )
    # COM_FIELD_LIST appends a default value after the fixed fields.
    assert p.parse_column_definition41(payload + b"\x02ab").name == b"total"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x03def",
        MARIADB_COLUMN_N[:-3],
        MARIADB_COLUMN_N.replace(b"\x0c?", b"\x05?"),
    ],
)
def test_malformed_column_definitions(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        p.parse_column_definition41(payload)


def test_column_count_and_text_rows() -> None:
    assert p.parse_column_count(b"\x03") == 3
    assert p.parse_column_count(b"\xfc\x00\x01") == 256
    for bad in (b"", b"\x00", b"\x03\x00", b"\xfb"):
        with pytest.raises(ProtocolViolation):
            p.parse_column_count(bad)
    assert p.text_row([b"", None, b"x" * 300]) == b"\x00\xfb\xfc\x2c\x01" + b"x" * 300
    assert p.parse_text_row(p.text_row([b"", None, b"x" * 300]), 3) == [b"", None, b"x" * 300]
    for bad, count in ((b"\x011", 2), (b"\x011\x01", 1), (b"\x05ab", 1)):
        with pytest.raises(ProtocolViolation):
            p.parse_text_row(bad, count)


def read_result_set(data: bytes, deprecate_eof: bool) -> tuple[list[p.ColumnDefinition], list, object, list[int]]:
    """Parse a framed text result set the way a client does; returns columns, rows, terminator, seq ids."""
    physical = unframe(data)
    seqs = [seq for seq, _ in physical]
    payloads = [payload for _, payload in physical]
    count = p.parse_column_count(payloads[0])
    columns = [p.parse_column_definition41(payload) for payload in payloads[1 : 1 + count]]
    rest = payloads[1 + count :]
    if not deprecate_eof:
        assert p.parse_eof(rest[0]) == p.EofPacket(warnings=0, status=rest[-1][3] | rest[-1][4] << 8)
        rest = rest[1:]
    rows = [p.parse_text_row(payload, count) for payload in rest[:-1]]
    terminator = p.parse_ok(rest[-1]) if deprecate_eof else p.parse_eof(rest[-1])
    if deprecate_eof:
        assert rest[-1][0] == 0xFE
    return columns, rows, terminator, seqs


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_text_resultset_round_trip(deprecate_eof: bool) -> None:
    data = p.text_resultset(
        ["name", "count", "note"],
        [["alpha", "1", None], ["ünï", 42, "x"], ["gamma", "-9223372036854775808", None]],
        deprecate_eof=deprecate_eof,
        status=p.SERVER_STATUS_AUTOCOMMIT | p.SERVER_STATUS_IN_TRANS,
    )
    columns, rows, terminator, seqs = read_result_set(data, deprecate_eof)
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) == 1 + 3 + (0 if deprecate_eof else 1) + 3 + 1
    assert [column.name for column in columns] == [b"name", b"count", b"note"]
    assert all(column.catalog == b"def" for column in columns)
    name, count, note = columns
    assert (name.column_type, name.charset, name.flags, name.column_length) == (p.TYPE_VAR_STRING, 33, 1, 5)
    assert (count.column_type, count.charset, count.flags, count.column_length) == (p.TYPE_LONGLONG, 63, 0x81, 20)
    assert (note.column_type, note.charset, note.flags) == (p.TYPE_VAR_STRING, 33, 0)
    assert rows == [
        [b"alpha", b"1", None],
        ["ünï".encode(), b"42", b"x"],
        [b"gamma", b"-9223372036854775808", None],
    ]
    assert terminator.status == p.SERVER_STATUS_AUTOCOMMIT | p.SERVER_STATUS_IN_TRANS
    assert terminator.warnings == 0


def test_text_resultset_exact_bytes_without_deprecate_eof() -> None:
    data = p.text_resultset(["a"], [["1"]], deprecate_eof=False, status=2, start_seq=1)
    column = b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x01\x00\x00\x00\x08\x81\x00\x00\x00\x00"
    assert data == (
        b"\x01\x00\x00\x01\x01"
        + struct.pack("<I", len(column) | 2 << 24)
        + column
        + b"\x05\x00\x00\x03\xfe\x00\x00\x02\x00"
        + b"\x02\x00\x00\x04\x011"
        + b"\x05\x00\x00\x05\xfe\x00\x00\x02\x00"
    )


def test_text_resultset_with_no_rows_and_a_late_sequence_start() -> None:
    data = p.text_resultset(["empty"], [], deprecate_eof=True, status=0, start_seq=254)
    columns, rows, terminator, seqs = read_result_set(data, deprecate_eof=True)
    assert seqs == [254, 255, 0]
    assert rows == []
    assert columns[0].column_type == p.TYPE_VAR_STRING
    assert terminator == p.OkPacket(0, 0, 0, 0)


@pytest.mark.parametrize(
    ("values", "column_type"),
    [
        (["1", "22", "-3"], p.TYPE_LONGLONG),
        ([0, None, 9223372036854775807], p.TYPE_LONGLONG),
        (["007"], p.TYPE_VAR_STRING),  # a client would print 7
        (["1e3"], p.TYPE_VAR_STRING),
        (["+1"], p.TYPE_VAR_STRING),
        (["-0"], p.TYPE_VAR_STRING),
        ([" 1"], p.TYPE_VAR_STRING),
        (["٣"], p.TYPE_VAR_STRING),  # a Unicode digit is no SQL integer
        ([str(2**63)], p.TYPE_VAR_STRING),
        ([str(-(2**63) - 1)], p.TYPE_VAR_STRING),
        (["1", "x"], p.TYPE_VAR_STRING),
        ([None, None], p.TYPE_VAR_STRING),
    ],
)
def test_text_resultset_types_a_column_longlong_only_when_every_value_is_an_integer(values, column_type: int) -> None:
    data = p.text_resultset(["v"], [[value] for value in values], deprecate_eof=True, status=2)
    columns, rows, _, _ = read_result_set(data, deprecate_eof=True)
    assert columns[0].column_type == column_type
    assert rows == [[None if value is None else str(value).encode()] for value in values]


@pytest.mark.parametrize(
    ("columns", "rows", "error"),
    [
        ([], [], ValueError),
        (["a", "b"], [["1"]], ValueError),
        (["a"], [[True]], TypeError),
        (["a"], [[1.5]], TypeError),
    ],
)
def test_text_resultset_rejects_bad_input(columns, rows, error) -> None:
    with pytest.raises(error):
        p.text_resultset(columns, rows, deprecate_eof=True, status=2)


# --------------------------------------------------------------------------- commands


def test_simple_commands() -> None:
    assert p.com_query(b"SELECT 1") == b"\x03SELECT 1"
    assert p.com_quit() == b"\x01"
    assert p.com_ping() == b"\x0e"
    assert p.com_reset_connection() == b"\x1f"
    assert p.com_init_db("shop") == b"\x02shop"


@pytest.mark.parametrize("name", ["shop", "ünïcode", "", "caf\udce9"])
def test_com_init_db_round_trip(name: str) -> None:
    assert p.parse_com_init_db(p.com_init_db(name)) == name


def test_com_init_db_in_another_charset_replays_byte_for_byte() -> None:
    payload = b"\x02caf\xe9"
    assert p.com_init_db(p.parse_com_init_db(payload)) == payload


@pytest.mark.parametrize("payload", [b"", b"\x03shop"])
def test_malformed_com_init_db(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        p.parse_com_init_db(payload)


CHANGE_USER_CAPABILITIES = [
    PROXY_CAPABILITIES,
    PROXY_CAPABILITIES & ~(p.CLIENT_PLUGIN_AUTH | p.CLIENT_CONNECT_ATTRS),
    p.CLIENT_PROTOCOL_41,
]


@pytest.mark.parametrize("capabilities", CHANGE_USER_CAPABILITIES)
@pytest.mark.parametrize("database", [None, "other_db"])
def test_com_change_user_round_trip(capabilities: int, database: str | None) -> None:
    answer = bytes(range(1, 21))
    payload = p.com_change_user(
        capabilities=capabilities,
        username="bob",
        auth_response=answer,
        database=database,
        charset=p.CHARSET_UTF8_GENERAL_CI,
        auth_plugin="mysql_native_password",
        connect_attrs={"_client_name": "x"},
    )
    assert payload[0] == p.COM_CHANGE_USER
    assert p.parse_com_change_user(payload, capabilities) == p.ChangeUser(
        username="bob",
        auth_response=answer,
        database=database,
        charset=p.CHARSET_UTF8_GENERAL_CI,
        auth_plugin="mysql_native_password" if capabilities & p.CLIENT_PLUGIN_AUTH else None,
        connect_attrs={"_client_name": "x"} if capabilities & p.CLIENT_CONNECT_ATTRS else {},
    )


def test_com_change_user_hand_built_layout() -> None:
    # 0x11, user NUL, 1-byte-length response (never length-encoded here), db NUL, charset, plugin NUL, attrs.
    payload = b"\x11bob\x00\x03abc" + b"db\x00" + b"\x21\x00" + b"mysql_native_password\x00" + b"\x04\x01k\x01v"
    assert p.parse_com_change_user(payload, PROXY_CAPABILITIES) == p.ChangeUser(
        "bob", b"abc", "db", 33, "mysql_native_password", {"k": "v"}
    )
    # An old client stops after the database name.
    assert p.parse_com_change_user(b"\x11bob\x00\x00\x00", PROXY_CAPABILITIES) == p.ChangeUser("bob", b"")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x03bob\x00",
        b"\x11bob",
        b"\x11bob\x00",
        b"\x11bob\x00\x05ab",
        b"\x11bob\x00\x00",
        b"\x11bob\x00\x00db\x00\x21",
        b"\x11bob\x00\x00db\x00\x21\x00plugin",
        b"\x11bob\x00\x00db\x00\x21\x00p\x00\x09",
    ],
)
def test_malformed_com_change_user(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        p.parse_com_change_user(payload, PROXY_CAPABILITIES)


def test_com_change_user_builder_refuses_long_answers() -> None:
    with pytest.raises(ValueError):
        p.com_change_user(capabilities=PROXY_CAPABILITIES, username="u", auth_response=bytes(256))


# --------------------------------------------------------------------------- arbitrary input

PAYLOAD_PARSERS = [
    p.parse_handshake_v10,
    p.parse_handshake_response41,
    p.parse_ok,
    lambda payload: p.parse_ok(payload, session_track=True),
    p.parse_err,
    p.parse_eof,
    p.parse_auth_switch,
    p.parse_auth_more_data,
    p.parse_column_definition41,
    p.parse_column_count,
    lambda payload: p.parse_text_row(payload, 3),
    p.parse_com_init_db,
    lambda payload: p.parse_com_change_user(payload, PROXY_CAPABILITIES),
    lambda payload: p.parse_com_change_user(payload, p.CLIENT_PROTOCOL_41),
    lambda payload: p.read_lenenc_int(payload, 1),
    lambda payload: p.read_lenenc_str(payload, 0),
    lambda payload: p.read_nul_str(payload, 2),
    lambda payload: p.read_packet(payload, max_payload=100),
]

# Pieces that steer random input into the parsers' deeper branches: headers, terminators, length prefixes.
_PIECES = st.sampled_from(
    [
        b"\x00",
        b"\x01",
        b"\x0a",
        b"\x11",
        b"#",
        b"\xfb",
        b"\xfc",
        b"\xfd",
        b"\xfe",
        b"\xff",
        b"\x0c",
        b"abc",
        b"\xe9",
        b"\xff\xff\xff\x00",
    ]
)
_HEADS = st.sampled_from(
    [
        b"",
        MARIADB_HANDSHAKE[:40],
        response_head(PROXY_CAPABILITIES | p.CLIENT_CONNECT_WITH_DB) + b"u\x00",
        response_head(p.CLIENT_PROTOCOL_41) + b"u\x00",
        b"\x03def\x00\x00\x00\x01a\x00",
        b"\x11bob\x00",
    ]
)
arbitrary_payloads = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda head, parts: head + b"".join(parts), _HEADS, st.lists(_PIECES, max_size=30)),
)


@pytest.mark.parametrize("parser", PAYLOAD_PARSERS, ids=lambda parser: getattr(parser, "__name__", "lambda"))
@settings(max_examples=150, deadline=None)
@given(payload=arbitrary_payloads)
def test_parsers_raise_only_protocol_violation(parser, payload: bytes) -> None:
    try:
        parser(payload)
    except ProtocolViolation:
        pass


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=300), seq=st.integers(0, 255))
def test_framing_round_trips(payload: bytes, seq: int) -> None:
    assert p.read_packet(p.packet(seq, payload)) == (seq, payload, len(payload) + 4)
