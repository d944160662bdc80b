"""Tests of the MySQL/MariaDB authentication formulas and machines, with bytes alone."""

from __future__ import annotations

import hashlib

import pymysql._auth
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdsproxy.errors import AuthenticationFailed, ProtocolViolation
from rdsproxy.protocol.mysql import packets as p
from rdsproxy.protocol.mysql.auth import (
    CACHING_SHA2_PASSWORD,
    MYSQL_NATIVE_PASSWORD,
    BackendAuthenticator,
    ClientAuthenticator,
    caching_sha2_check,
    caching_sha2_fast_response,
    native_password_check,
    native_password_response,
    scramble,
)

FIXED_SCRAMBLE = bytes(range(1, 21))
# Computed once with PyMySQL 1.2.4: scramble_native_password(b"secret", FIXED_SCRAMBLE) and
# scramble_caching_sha2(b"secret", FIXED_SCRAMBLE).
NATIVE_SECRET_VECTOR = bytes.fromhex("b32bb3a583e1340c0a1108d58b1be49781ad8c2f")
SHA2_SECRET_VECTOR = bytes.fromhex("746ebe205d56a0707acb3e796e834e0dd7b1d61743b26bd5202c7a623230c7c9")

# Logins of real clients with password "s3cret" to a server built from handshake_v10 and ClientAuthenticator:
# (scramble sent, HandshakeResponse41 payload received).
PYMYSQL_NATIVE = (
    "587e17587869474146606444112f4e105e0b6428",
    "0da23a00ffffff002d0000000000000000000000000000000000000000000000616c6963650014ff06fea7663536ea60a02cff"
    "77d9f563c6e2f351646231006d7973716c5f6e61746976655f70617373776f726400350c5f636c69656e745f6e616d650770"
    "796d7973716c0f5f636c69656e745f76657273696f6e05312e322e34045f7069640439353837",
)
MARIADB_CLI_NATIVE = (
    "297c5a4649076e0b253f133a3945135a1f6c305c",
    "85a2bf0000001000210000000000000000000000000000000000000000000000616c6963650014e84adb96373f97240746d989"
    "26d42ee22c711c596d7973716c5f6e61746976655f70617373776f7264007e035f6f73054c696e75780c5f636c69656e745f"
    "6e616d650a6c69626d617269616462045f70696404393539380f5f636c69656e745f76657273696f6e06332e332e3230095f"
    "706c6174666f726d067838365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132"
    "372e302e302e31",
)
PYMYSQL_SHA2 = (
    "40307f6a6c0d7e0164525c690a210f6031361701",
    "0da23a00ffffff002d0000000000000000000000000000000000000000000000616c69636500208f50694a09a48d39e5b16350"
    "41bdbb2ec92fede4af63fb30588c7bec835de35b6462310063616368696e675f736861325f70617373776f726400350c5f63"
    "6c69656e745f6e616d650770796d7973716c0f5f636c69656e745f76657273696f6e05312e322e34045f7069640439363738",
)
MARIADB_CLI_SHA2 = (
    "08564f7b401b356b1520653a2b462b1e68261233",
    "85a2bf0000001000210000000000000000000000000000000000000000000000616c6963650020a8b04c735dc3ec3745fb325b"
    "d162e703964345522fe2889063180cae6590f78063616368696e675f736861325f70617373776f7264007e035f6f73054c69"
    "6e75780c5f636c69656e745f6e616d650a6c69626d617269616462045f70696404393638390f5f636c69656e745f76657273"
    "696f6e06332e332e3230095f706c6174666f726d067838365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365"
    "727665725f686f7374093132372e302e302e31",
)
# MariaDB Connector/Node.js answered with mysql_native_password, was switched to caching_sha2_password, and
# sent the switch answer below.
NODE_SWITCHED_TO_SHA2 = (
    "686a617204026a2a436b29537238436f05622d6b",
    "0aa33e0100000040e00000000000000000000000000000000000000000000000616c696365001409ecfa020c34113810f821ee"
    "54eaba8efd8b24a5646231006d7973716c5f6e61746976655f70617373776f726400fc6a000c5f636c69656e745f6e616d65"
    "164d61726961444220636f6e6e6563746f722f4e6f64650f5f636c69656e745f76657273696f6e05332e352e34035f6f7305"
    "6c696e75780c5f636c69656e745f686f737402766d0d5f6e6f64655f76657273696f6e0732302e32302e32",
)
NODE_SWITCH_ANSWER = bytes.fromhex("85b5ad98e8d5ee6e9b96739a512c48f880a35815cf26b9cacd9f34156ffbd221")

# MariaDB 10.11 packets seen by BackendAuthenticator.
MARIADB_ED25519_SWITCH = (
    b"\xfeclient_ed25519\x00\xf7-\xd2\xdf[\xebJw\xf55\x91\xa1Y\x1f\xf5\xc2\xe6p0\x00\x8a0{Q\x91x\xe1g\x9fA0;"
)
MARIADB_NATIVE_SWITCH = b"\xfemysql_native_password\x00i&~jw8Oe0]d^+XZ=bVg#\x00"
MARIADB_ACCESS_DENIED = p.err_packet(
    1045, "28000", "Access denied for user 'testuser'@'127.0.0.1' (using password: YES)"
)

SERVER_CAPABILITIES = (
    p.CLIENT_LONG_PASSWORD
    | p.CLIENT_PROTOCOL_41
    | p.CLIENT_TRANSACTIONS
    | p.CLIENT_SECURE_CONNECTION
    | p.CLIENT_PLUGIN_AUTH
    | p.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | p.CLIENT_CONNECT_WITH_DB
    | p.CLIENT_CONNECT_ATTRS
)
METHODS = [MYSQL_NATIVE_PASSWORD, CACHING_SHA2_PASSWORD]


def real_login(vector: tuple[str, str]) -> tuple[bytes, p.HandshakeResponse]:
    nonce, response = vector
    return bytes.fromhex(nonce), p.parse_handshake_response41(bytes.fromhex(response))


def handshake(plugin: str, nonce: bytes = FIXED_SCRAMBLE) -> p.ServerHandshake:
    payload = p.handshake_v10(
        server_version="8.0.36-proxy",
        connection_id=7,
        scramble=nonce,
        capabilities=SERVER_CAPABILITIES,
        auth_plugin=plugin,
    )
    return p.parse_handshake_v10(payload)


def login(
    *,
    server_password: str | None,
    method: str,
    client_password: str | None,
    advertised_plugin: str | None = None,
    username: str = "app",
) -> tuple[ClientAuthenticator, BackendAuthenticator, list[bytes]]:
    """Drive ClientAuthenticator (the proxy facing a client) against BackendAuthenticator (playing the client),
    through real payload builders and parsers. Returns both machines and every server payload exchanged."""
    nonce = scramble()
    server = ClientAuthenticator(password=server_password, method=method, scramble=nonce)
    client = BackendAuthenticator(username, client_password)
    plugin, answer = client.first_response(handshake(advertised_plugin or method, nonce))
    response = p.parse_handshake_response41(
        p.handshake_response41(
            capabilities=SERVER_CAPABILITIES, username=username, auth_response=answer, auth_plugin=plugin
        )
    )
    sent = server.start(response)
    exchanged = list(sent)
    while not server.done:
        assert len(sent) == 1, "the server waits for the client only after a single packet"
        reply = client.handle(sent[0])
        assert reply is not None
        sent = server.handle(reply)
        exchanged += sent
    for payload in sent:
        assert client.handle(payload) is None
    assert client.handle(p.ok_packet()) is None
    return server, client, exchanged


# --------------------------------------------------------------------------- scramble and formulas


def test_scramble_is_20_bytes_without_nul_or_dollar() -> None:
    values = [scramble() for _ in range(200)]
    assert all(len(value) == 20 for value in values)
    seen = set(b"".join(values))
    assert seen <= set(range(1, 128)) - {ord("$")}
    assert len(seen) > 100  # drawn from the whole alphabet
    assert len(set(values)) == len(values)


def test_native_password_matches_fixed_pymysql_vector() -> None:
    assert native_password_response("secret", FIXED_SCRAMBLE) == NATIVE_SECRET_VECTOR


def test_caching_sha2_matches_fixed_pymysql_vector() -> None:
    assert caching_sha2_fast_response("secret", FIXED_SCRAMBLE) == SHA2_SECRET_VECTOR


def test_formulas_written_out_independently() -> None:
    sha1, sha256 = (lambda data: hashlib.sha1(data).digest()), (lambda data: hashlib.sha256(data).digest())
    stage1 = sha1(b"secret")
    native = bytes(a ^ b for a, b in zip(stage1, sha1(FIXED_SCRAMBLE + sha1(stage1))))
    assert native == NATIVE_SECRET_VECTOR
    digest = sha256(b"secret")
    # MySQL's Generate_scramble: SHA256(SHA256(SHA256(pw)) followed by the nonce), XORed with SHA256(pw).
    sha2 = bytes(a ^ b for a, b in zip(digest, sha256(sha256(digest) + FIXED_SCRAMBLE)))
    assert sha2 == SHA2_SECRET_VECTOR


@settings(max_examples=100, deadline=None)
@given(password=st.text(max_size=40), nonce=st.binary(min_size=20, max_size=20))
def test_formulas_agree_with_pymysql(password: str, nonce: bytes) -> None:
    raw = password.encode("utf-8")
    assert native_password_response(password, nonce) == pymysql._auth.scramble_native_password(raw, nonce)
    assert caching_sha2_fast_response(password, nonce) == pymysql._auth.scramble_caching_sha2(raw, nonce)
    assert native_password_check(password, nonce, pymysql._auth.scramble_native_password(raw, nonce))
    assert caching_sha2_check(password, nonce, pymysql._auth.scramble_caching_sha2(raw, nonce))


def test_empty_password_answers_are_empty() -> None:
    assert native_password_response("", FIXED_SCRAMBLE) == b""
    assert caching_sha2_fast_response("", FIXED_SCRAMBLE) == b""
    assert native_password_check("", FIXED_SCRAMBLE, b"")
    assert caching_sha2_check("", FIXED_SCRAMBLE, b"")
    assert caching_sha2_check("", FIXED_SCRAMBLE, b"\x00")  # as MySQL's plugin accepts


@pytest.mark.parametrize(
    ("check", "answer"),
    [
        (native_password_check, NATIVE_SECRET_VECTOR[:-1] + b"\x00"),
        (native_password_check, NATIVE_SECRET_VECTOR[:19]),
        (native_password_check, b""),
        (native_password_check, SHA2_SECRET_VECTOR),
        (caching_sha2_check, SHA2_SECRET_VECTOR[:-1] + b"\x00"),
        (caching_sha2_check, NATIVE_SECRET_VECTOR),
        (caching_sha2_check, b""),
        (caching_sha2_check, b"\x00"),
    ],
)
def test_checks_refuse_wrong_answers(check, answer: bytes) -> None:
    assert not check("secret", FIXED_SCRAMBLE, answer)


def test_empty_password_does_not_accept_a_real_answer() -> None:
    assert not native_password_check("", FIXED_SCRAMBLE, NATIVE_SECRET_VECTOR)
    assert not caching_sha2_check("", FIXED_SCRAMBLE, SHA2_SECRET_VECTOR)


@pytest.mark.parametrize("function", [native_password_response, caching_sha2_fast_response])
def test_formulas_need_a_20_byte_scramble(function) -> None:
    with pytest.raises(ValueError):
        function("secret", FIXED_SCRAMBLE + b"\x00")


# --------------------------------------------------------------------------- ClientAuthenticator: real clients


@pytest.mark.parametrize("vector", [PYMYSQL_NATIVE, MARIADB_CLI_NATIVE], ids=["pymysql", "mariadb-cli"])
def test_real_clients_native_answers_are_accepted(vector) -> None:
    nonce, response = real_login(vector)
    server = ClientAuthenticator(password="s3cret", method=MYSQL_NATIVE_PASSWORD, scramble=nonce)
    assert server.start(response) == []
    assert server.done


@pytest.mark.parametrize("vector", [PYMYSQL_SHA2, MARIADB_CLI_SHA2], ids=["pymysql", "mariadb-cli"])
def test_real_clients_caching_sha2_fast_path_is_accepted(vector) -> None:
    nonce, response = real_login(vector)
    server = ClientAuthenticator(password="s3cret", method=CACHING_SHA2_PASSWORD, scramble=nonce)
    assert server.start(response) == [b"\x01\x03"]  # AuthMoreData(fast_auth_success), then the caller sends OK
    assert server.done


def test_real_node_client_is_switched_to_caching_sha2() -> None:
    nonce, response = real_login(NODE_SWITCHED_TO_SHA2)
    server = ClientAuthenticator(password="s3cret", method=CACHING_SHA2_PASSWORD, scramble=nonce)
    assert server.start(response) == [b"\xfecaching_sha2_password\x00" + nonce + b"\x00"]
    assert not server.done
    assert server.handle(NODE_SWITCH_ANSWER) == [b"\x01\x03"]
    assert server.done


@pytest.mark.parametrize("vector", [PYMYSQL_NATIVE, MARIADB_CLI_NATIVE, PYMYSQL_SHA2, MARIADB_CLI_SHA2])
def test_real_clients_with_another_password_are_refused(vector) -> None:
    nonce, response = real_login(vector)
    method = response.auth_plugin
    with pytest.raises(AuthenticationFailed, match=r"Access denied for user 'alice' \(using password: YES\)"):
        ClientAuthenticator(password="s3cret!", method=method, scramble=nonce).start(response)


# ------------------------------------------------------------------ ClientAuthenticator vs BackendAuthenticator


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("password", ["s3cret", "pässwörd with spaces", "x" * 300])
def test_end_to_end_login_with_each_method(method: str, password: str) -> None:
    server, client, exchanged = login(server_password=password, method=method, client_password=password)
    assert server.done and client.ok
    assert exchanged == ([] if method == MYSQL_NATIVE_PASSWORD else [b"\x01\x03"])


@pytest.mark.parametrize(("method", "advertised"), [(m, other) for m in METHODS for other in METHODS if m != other])
def test_end_to_end_login_through_an_auth_switch(method: str, advertised: str) -> None:
    server, client, exchanged = login(
        server_password="s3cret", method=method, client_password="s3cret", advertised_plugin=advertised
    )
    assert server.done and client.ok
    plugin, data = p.parse_auth_switch(exchanged[0])
    assert plugin == method and len(data) == 21 and data.endswith(b"\x00")


def test_client_answering_with_an_unknown_plugin_is_switched() -> None:
    nonce = scramble()
    response = p.parse_handshake_response41(
        p.handshake_response41(
            capabilities=SERVER_CAPABILITIES, username="u", auth_response=b"x" * 64, auth_plugin="client_ed25519"
        )
    )
    server = ClientAuthenticator(password="pw", method=MYSQL_NATIVE_PASSWORD, scramble=nonce)
    assert server.start(response) == [p.auth_switch_request(MYSQL_NATIVE_PASSWORD, nonce + b"\x00")]
    assert server.handle(native_password_response("pw", nonce)) == []
    assert server.done


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("advertised", METHODS)
def test_end_to_end_empty_password(method: str, advertised: str) -> None:
    server, client, exchanged = login(
        server_password="", method=method, client_password=None, advertised_plugin=advertised
    )
    assert server.done and client.ok
    assert b"\x01\x03" not in exchanged  # MySQL answers an empty password with OK straight away


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("advertised", METHODS)
def test_wrong_password_and_unknown_user_fail_alike(method: str, advertised: str) -> None:
    failures = []
    for server_password in ("right-password", None):
        with pytest.raises(AuthenticationFailed) as failure:
            login(server_password=server_password, method=method, client_password="guess", advertised_plugin=advertised)
        failures.append(str(failure.value))
    assert failures[0] == failures[1] == "Access denied for user 'app' (using password: YES)"
    assert "right-password" not in failures[0] and "guess" not in failures[0]


def test_unknown_user_is_still_switched_before_failing() -> None:
    # Revealing nothing: an unknown user gets the same AuthSwitchRequest a known one would.
    nonce = scramble()
    response = p.parse_handshake_response41(
        p.handshake_response41(
            capabilities=SERVER_CAPABILITIES,
            username="ghost",
            auth_response=bytes(20),
            auth_plugin=MYSQL_NATIVE_PASSWORD,
        )
    )
    server = ClientAuthenticator(password=None, method=CACHING_SHA2_PASSWORD, scramble=nonce)
    assert p.parse_auth_switch(server.start(response)[0])[0] == CACHING_SHA2_PASSWORD
    with pytest.raises(AuthenticationFailed, match="using password: YES"):
        server.handle(caching_sha2_fast_response("anything", nonce))
    assert not server.done


@pytest.mark.parametrize("method", METHODS)
def test_missing_password_says_using_password_no(method: str) -> None:
    with pytest.raises(AuthenticationFailed, match=r"Access denied for user 'app' \(using password: NO\)"):
        login(server_password="s3cret", method=method, client_password="")


def test_a_lone_nul_caching_sha2_answer_counts_as_no_password() -> None:
    with pytest.raises(AuthenticationFailed, match=r"using password: NO"):
        server_after_switch_to_sha2().handle(b"\x00")


# --------------------------------------------------------------------------- ClientAuthenticator: full authentication


def server_after_switch_to_sha2(*, tls: bool = False, password: str | None = "s3cret") -> ClientAuthenticator:
    response = p.parse_handshake_response41(
        p.handshake_response41(
            capabilities=SERVER_CAPABILITIES, username="app", auth_response=bytes(20), auth_plugin=MYSQL_NATIVE_PASSWORD
        )
    )
    server = ClientAuthenticator(password=password, method=CACHING_SHA2_PASSWORD, scramble=FIXED_SCRAMBLE, tls=tls)
    server.start(response)
    return server


@pytest.mark.parametrize("answer", [b"\x02", b"s3cret\x00", b"s3cret"])
@pytest.mark.parametrize("password", ["s3cret", None])
def test_full_caching_sha2_authentication_needs_tls(answer: bytes, password: str | None) -> None:
    server = server_after_switch_to_sha2(password=password)
    with pytest.raises(AuthenticationFailed, match="full caching_sha2_password authentication needs TLS"):
        server.handle(answer)
    assert not server.done


def test_public_key_request_is_refused_even_over_tls() -> None:
    with pytest.raises(AuthenticationFailed, match="needs TLS"):
        server_after_switch_to_sha2(tls=True).handle(b"\x02")


def test_cleartext_password_over_tls_is_checked() -> None:
    server = server_after_switch_to_sha2(tls=True)
    assert server.handle(b"s3cret\x00") == []
    assert server.done
    with pytest.raises(AuthenticationFailed, match="Access denied"):
        server_after_switch_to_sha2(tls=True).handle(b"wrong\x00")
    with pytest.raises(AuthenticationFailed, match="Access denied"):
        server_after_switch_to_sha2(tls=True, password=None).handle(b"s3cret\x00")


# --------------------------------------------------------------------------- ClientAuthenticator: bad clients


def client_response(**overrides) -> p.HandshakeResponse:
    fields = {
        "capabilities": SERVER_CAPABILITIES,
        "max_packet": 1 << 24,
        "charset": 45,
        "username": "app",
        "auth_response": native_password_response("s3cret", FIXED_SCRAMBLE),
        "auth_plugin": MYSQL_NATIVE_PASSWORD,
    }
    fields.update(overrides)
    return p.HandshakeResponse(**fields)


def test_client_without_plugin_support_answers_native_password() -> None:
    server = ClientAuthenticator(password="s3cret", method=MYSQL_NATIVE_PASSWORD, scramble=FIXED_SCRAMBLE)
    old_client = client_response(capabilities=SERVER_CAPABILITIES & ~p.CLIENT_PLUGIN_AUTH, auth_plugin=None)
    assert server.start(old_client) == []
    assert server.done


def test_client_without_plugin_support_cannot_be_switched() -> None:
    server = ClientAuthenticator(password="s3cret", method=CACHING_SHA2_PASSWORD, scramble=FIXED_SCRAMBLE)
    old_client = client_response(capabilities=SERVER_CAPABILITIES & ~p.CLIENT_PLUGIN_AUTH, auth_plugin=None)
    with pytest.raises(AuthenticationFailed, match="Client does not support authentication protocol"):
        server.start(old_client)


def test_empty_plugin_name_means_native_password() -> None:
    server = ClientAuthenticator(password="s3cret", method=MYSQL_NATIVE_PASSWORD, scramble=FIXED_SCRAMBLE)
    assert server.start(client_response(auth_plugin="")) == []
    assert server.done


def test_malformed_native_answer_is_a_protocol_violation() -> None:
    server = ClientAuthenticator(password="s3cret", method=MYSQL_NATIVE_PASSWORD, scramble=FIXED_SCRAMBLE)
    with pytest.raises(ProtocolViolation, match="must be 20 bytes"):
        server.start(client_response(auth_response=b"short"))


def test_out_of_order_use_is_a_protocol_violation() -> None:
    server = ClientAuthenticator(password="s3cret", method=MYSQL_NATIVE_PASSWORD, scramble=FIXED_SCRAMBLE)
    with pytest.raises(ProtocolViolation):
        server.handle(b"anything")
    server = ClientAuthenticator(password="s3cret", method=MYSQL_NATIVE_PASSWORD, scramble=FIXED_SCRAMBLE)
    server.start(client_response())
    with pytest.raises(ProtocolViolation):
        server.handle(NATIVE_SECRET_VECTOR)
    with pytest.raises(ProtocolViolation):
        server.start(client_response())


def test_a_failed_exchange_accepts_nothing_more() -> None:
    server = server_after_switch_to_sha2()
    with pytest.raises(AuthenticationFailed):
        server.handle(bytes(32))
    with pytest.raises(ProtocolViolation):
        server.handle(caching_sha2_fast_response("s3cret", FIXED_SCRAMBLE))
    assert not server.done


@pytest.mark.parametrize(
    "kwargs",
    [
        {"password": "x", "method": "client_ed25519", "scramble": FIXED_SCRAMBLE},
        {"password": "x", "method": MYSQL_NATIVE_PASSWORD, "scramble": FIXED_SCRAMBLE[:8]},
    ],
)
def test_client_authenticator_rejects_bad_configuration(kwargs) -> None:
    with pytest.raises(ValueError):
        ClientAuthenticator(**kwargs)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("password", ["s3cret", None])
@settings(max_examples=100, deadline=None)
@given(answer=st.binary(max_size=70))
def test_client_authenticator_raises_only_auth_errors_on_arbitrary_answers(method, password, answer: bytes) -> None:
    server = ClientAuthenticator(password=password, method=method, scramble=FIXED_SCRAMBLE)
    server.start(client_response(auth_plugin="other_plugin"))
    try:
        server.handle(answer)
    except (ProtocolViolation, AuthenticationFailed):
        assert not server.done
    else:
        assert server.done and password is not None


# --------------------------------------------------------------------------- BackendAuthenticator: real MariaDB packets


def test_backend_follows_a_real_mariadb_switch_to_native_password() -> None:
    client = BackendAuthenticator("testuser", "testpw")
    plugin, answer = client.first_response(handshake(CACHING_SHA2_PASSWORD))
    assert (plugin, answer) == (CACHING_SHA2_PASSWORD, caching_sha2_fast_response("testpw", FIXED_SCRAMBLE))
    reply = client.handle(MARIADB_NATIVE_SWITCH)
    assert reply == native_password_response("testpw", b"i&~jw8Oe0]d^+XZ=bVg#")
    assert client.handle(b"\x00\x00\x00\x02\x00\x00\x00") is None
    assert client.ok


def test_backend_refuses_mariadb_ed25519_by_name() -> None:
    client = BackendAuthenticator("eduser", "edpw")
    client.first_response(handshake(MYSQL_NATIVE_PASSWORD))
    with pytest.raises(
        AuthenticationFailed,
        match="the database asked for authentication plugin 'client_ed25519', which rdsproxy does not speak",
    ):
        client.handle(MARIADB_ED25519_SWITCH)


def test_backend_error_becomes_authentication_failure_with_the_server_message() -> None:
    client = BackendAuthenticator("testuser", "wrong")
    client.first_response(handshake(MYSQL_NATIVE_PASSWORD))
    with pytest.raises(AuthenticationFailed, match=r"1045 \(28000\) Access denied for user 'testuser'") as failure:
        client.handle(MARIADB_ACCESS_DENIED)
    assert "wrong" not in str(failure.value)
    assert not client.ok


# ---------------------------------------------------------------- BackendAuthenticator: plugins and bad servers


def test_backend_answers_the_advertised_plugin() -> None:
    client = BackendAuthenticator("u", "pw")
    assert client.first_response(handshake(MYSQL_NATIVE_PASSWORD)) == (
        MYSQL_NATIVE_PASSWORD,
        native_password_response("pw", FIXED_SCRAMBLE),
    )


@pytest.mark.parametrize("advertised", ["client_ed25519", "auth_gssapi_client", "mysql_clear_password"])
def test_backend_answers_native_password_when_the_default_plugin_is_not_its_own(advertised: str) -> None:
    client = BackendAuthenticator("u", "pw")
    assert client.first_response(handshake(advertised)) == (
        MYSQL_NATIVE_PASSWORD,
        native_password_response("pw", FIXED_SCRAMBLE),
    )


def test_backend_treats_a_server_without_plugin_auth_as_native_password() -> None:
    payload = p.handshake_v10(
        server_version="5.1",
        connection_id=1,
        scramble=FIXED_SCRAMBLE,
        capabilities=SERVER_CAPABILITIES & ~p.CLIENT_PLUGIN_AUTH,
    )
    plugin, _ = BackendAuthenticator("u", "pw").first_response(p.parse_handshake_v10(payload))
    assert plugin == MYSQL_NATIVE_PASSWORD


def test_backend_caching_sha2_fast_path_then_ok() -> None:
    client = BackendAuthenticator("u", "pw")
    client.first_response(handshake(CACHING_SHA2_PASSWORD))
    assert client.handle(p.auth_more_data(b"\x03")) is None
    assert not client.ok
    assert client.handle(p.ok_packet()) is None
    assert client.ok
    with pytest.raises(ProtocolViolation, match="after OK"):
        client.handle(p.ok_packet())


def test_backend_caching_sha2_full_authentication_is_refused() -> None:
    client = BackendAuthenticator("u", "pw")
    client.first_response(handshake(CACHING_SHA2_PASSWORD))
    with pytest.raises(AuthenticationFailed, match="needs TLS or RSA"):
        client.handle(p.auth_more_data(b"\x04"))


def test_backend_caching_sha2_after_a_switch() -> None:
    client = BackendAuthenticator("u", "pw")
    client.first_response(handshake(MYSQL_NATIVE_PASSWORD))
    reply = client.handle(p.auth_switch_request(CACHING_SHA2_PASSWORD, bytes(range(30, 50)) + b"\x00"))
    assert reply == caching_sha2_fast_response("pw", bytes(range(30, 50)))
    assert client.handle(p.auth_more_data(b"\x03")) is None
    assert client.handle(p.ok_packet()) is None and client.ok


def test_backend_sends_the_clear_password_when_asked() -> None:
    client = BackendAuthenticator("u", "pässword")
    client.first_response(handshake(MYSQL_NATIVE_PASSWORD))
    assert client.handle(p.auth_switch_request("mysql_clear_password", b"")) == "pässword".encode() + b"\x00"
    assert client.handle(p.ok_packet()) is None and client.ok


def test_backend_refuses_to_send_a_clear_password_containing_nul() -> None:
    client = BackendAuthenticator("u", "sekr\x00et")
    client.first_response(handshake(MYSQL_NATIVE_PASSWORD))
    with pytest.raises(AuthenticationFailed, match="NUL") as failure:
        client.handle(p.auth_switch_request("mysql_clear_password", b""))
    assert "sekr" not in str(failure.value)


@pytest.mark.parametrize(
    "switch",
    [
        p.auth_switch_request("auth_gssapi_client", b"service\x00domain\x00"),
        p.auth_switch_request("dialog", b"\x04Password: "),
        p.auth_switch_request("sha256_password", FIXED_SCRAMBLE + b"\x00"),
        b"\xfe",  # old-style switch to mysql_old_password
    ],
)
def test_backend_names_every_plugin_it_does_not_speak(switch: bytes) -> None:
    plugin = p.parse_auth_switch(switch)[0]
    client = BackendAuthenticator("u", "pw")
    client.first_response(handshake(MYSQL_NATIVE_PASSWORD))
    with pytest.raises(AuthenticationFailed, match=f"plugin '{plugin}', which rdsproxy does not speak"):
        client.handle(switch)


def test_backend_without_password_logs_in_with_an_empty_one() -> None:
    client = BackendAuthenticator("u", None)
    assert client.first_response(handshake(CACHING_SHA2_PASSWORD)) == (CACHING_SHA2_PASSWORD, b"")
    assert client.handle(p.ok_packet()) is None and client.ok


@pytest.mark.parametrize(
    ("setup", "packet", "message"),
    [
        (True, p.auth_more_data(b"\x03"), "unexpected AuthMoreData"),  # native password has no AuthMoreData
        (True, b"\x02abc", "unexpected packet 0x02"),
        (True, b"", "empty packet"),
        (True, p.auth_switch_request(MYSQL_NATIVE_PASSWORD, b"short\x00"), "5-byte scramble"),
        (True, b"\x00\x00", "OK last insert id"),
        (False, p.ok_packet(), "before first_response"),
    ],
)
def test_backend_rejects_malformed_server_packets(setup: bool, packet: bytes, message: str) -> None:
    client = BackendAuthenticator("u", "pw")
    if setup:
        client.first_response(handshake(MYSQL_NATIVE_PASSWORD))
    with pytest.raises(ProtocolViolation, match=message):
        client.handle(packet)


def test_backend_refuses_a_second_switch_and_unexpected_sha2_codes() -> None:
    client = BackendAuthenticator("u", "pw")
    client.first_response(handshake(MYSQL_NATIVE_PASSWORD))
    client.handle(MARIADB_NATIVE_SWITCH)
    with pytest.raises(ProtocolViolation, match="second AuthSwitchRequest"):
        client.handle(MARIADB_NATIVE_SWITCH)
    sha2 = BackendAuthenticator("u", "pw")
    sha2.first_response(handshake(CACHING_SHA2_PASSWORD))
    with pytest.raises(ProtocolViolation, match="unexpected caching_sha2_password AuthMoreData"):
        sha2.handle(p.auth_more_data(b"\x07"))
    with pytest.raises(ProtocolViolation):
        sha2.first_response(handshake(CACHING_SHA2_PASSWORD))


def test_backend_refuses_a_handshake_with_a_short_scramble() -> None:
    short = p.parse_handshake_v10(
        p.handshake_v10(
            server_version="x",
            connection_id=1,
            scramble=FIXED_SCRAMBLE,
            capabilities=SERVER_CAPABILITIES & ~p.CLIENT_SECURE_CONNECTION,
        )
    )
    assert len(short.scramble) == 8
    with pytest.raises(ProtocolViolation, match="8-byte scramble"):
        BackendAuthenticator("u", "pw").first_response(short)


@settings(max_examples=200, deadline=None)
@given(
    header=st.sampled_from([0x00, 0x01, 0xFE, 0xFF, 0x02]),
    rest=st.binary(max_size=60),
    plugin=st.sampled_from(METHODS),
)
def test_backend_authenticator_raises_only_auth_errors_on_arbitrary_bytes(
    header: int, rest: bytes, plugin: str
) -> None:
    client = BackendAuthenticator("u", "pw")
    client.first_response(handshake(plugin))
    try:
        reply = client.handle(bytes((header,)) + rest)
    except (ProtocolViolation, AuthenticationFailed):
        return
    assert reply is None or isinstance(reply, bytes)
