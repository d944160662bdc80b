"""Tests of the PostgreSQL authentication machines (SCRAM-SHA-256, MD5, cleartext), with bytes alone."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest
from codec_impls import (
    RFC_CLIENT_FINAL,
    RFC_CLIENT_FIRST,
    RFC_CLIENT_NONCE,
    RFC_SALT,
    RFC_SERVER_FINAL,
    RFC_SERVER_FIRST,
    RFC_SERVER_NONCE,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from rdsproxy.errors import AuthenticationFailed, ProtocolViolation
from rdsproxy.protocol.pg import messages as m
from rdsproxy.protocol.pg.auth import (
    BackendAuthenticator,
    Md5Server,
    ScramServer,
    ScramVerifier,
    saslprep_password,
)


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(type byte, body) of one typed message, checking its length field."""
    (length,) = struct.unpack_from("!i", message, 1)
    assert length == len(message) - 1
    return message[:1], message[5:]


def authentication_body(message: bytes) -> bytes:
    type_byte, body = split_message(message)
    assert type_byte == b"R"
    return body


def password_body(message: bytes) -> bytes:
    type_byte, body = split_message(message)
    assert type_byte == b"p"
    return body


def run_scram(server: ScramServer, client: BackendAuthenticator) -> None:
    """Drive a full exchange between the two machines, as a proxy would relay it."""
    client_first = client.handle(authentication_body(server.start()))
    server_first = server.handle(password_body(client_first))
    client_final = client.handle(authentication_body(server_first))
    server_final = server.handle(password_body(client_final))
    assert server.done
    assert client.handle(authentication_body(server_final)) is None
    assert client.handle(authentication_body(m.authentication_ok())) is None


def rfc_server() -> ScramServer:
    verifier = ScramVerifier.from_password("pencil", salt=RFC_SALT, iterations=4096)
    return ScramServer(verifier, _server_nonce=RFC_SERVER_NONCE)


def reference_client_proof(password: bytes, salt: bytes, iterations: int, auth_message: bytes) -> bytes:
    """RFC 5802 ClientProof, written out independently of the module under test."""
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(client_key, signature))


# --------------------------------------------------------------------------- SCRAM end to end


@pytest.mark.parametrize("password", ["s3cret", "pässwörd with spaces", "x" * 200])
def test_scram_server_and_backend_authenticator_agree(password: str) -> None:
    server = ScramServer(ScramVerifier.from_password(password))
    client = BackendAuthenticator("alice", password)
    run_scram(server, client)
    assert client.ok


def test_scram_wrong_password_fails_at_the_server_without_revealing_it() -> None:
    server = ScramServer(ScramVerifier.from_password("right-password"))
    client = BackendAuthenticator("alice", "wrong-password")
    server_first = server.handle(password_body(client.handle(authentication_body(server.start()))))
    client_final = client.handle(authentication_body(server_first))
    with pytest.raises(AuthenticationFailed) as failure:
        server.handle(password_body(client_final))
    assert "right-password" not in str(failure.value)
    assert not server.done
    with pytest.raises(ProtocolViolation):
        server.handle(password_body(client_final))


def test_one_verifier_serves_many_logins_with_fresh_nonces() -> None:
    verifier = ScramVerifier.from_password("shared")
    server_firsts = set()
    for _ in range(3):
        server = ScramServer(verifier)
        client = BackendAuthenticator("bob", "shared")
        client_first = client.handle(authentication_body(server.start()))
        server_first = server.handle(password_body(client_first))
        server_firsts.add(server_first)
        server_final = server.handle(password_body(client.handle(authentication_body(server_first))))
        client.handle(authentication_body(server_final))
    assert len(server_firsts) == 3


def test_saslprep_equivalent_passwords_authenticate() -> None:
    # Soft hyphen maps to nothing and ROMAN NUMERAL NINE normalizes (NFKC) to "IX".
    server = ScramServer(ScramVerifier.from_password("I\u00adX\u2168"))
    client = BackendAuthenticator("carol", "IXIX")
    run_scram(server, client)
    assert client.ok


# --------------------------------------------------------------------------- RFC 7677 vector


def test_backend_authenticator_matches_rfc7677_vector() -> None:
    client = BackendAuthenticator("user", "pencil", _client_nonce=RFC_CLIENT_NONCE)
    first = client.handle(authentication_body(m.authentication_sasl(["SCRAM-SHA-256"])))
    assert (
        first
        == b"p"
        + struct.pack("!i", 4 + 14 + 4 + len(RFC_CLIENT_FIRST))
        + b"SCRAM-SHA-256\x00"
        + struct.pack("!i", len(RFC_CLIENT_FIRST))
        + RFC_CLIENT_FIRST
    )
    final = client.handle(authentication_body(m.authentication_sasl_continue(RFC_SERVER_FIRST)))
    assert password_body(final) == RFC_CLIENT_FINAL
    assert client.handle(authentication_body(m.authentication_sasl_final(RFC_SERVER_FINAL))) is None
    assert not client.ok
    assert client.handle(authentication_body(m.authentication_ok())) is None
    assert client.ok


def test_scram_server_matches_rfc7677_vector() -> None:
    server = rfc_server()
    assert authentication_body(server.start()) == struct.pack("!i", 10) + b"SCRAM-SHA-256\x00\x00"
    server_first = server.handle(password_body(m.sasl_initial_response("SCRAM-SHA-256", RFC_CLIENT_FIRST)))
    assert authentication_body(server_first) == struct.pack("!i", 11) + RFC_SERVER_FIRST
    server_final = server.handle(RFC_CLIENT_FINAL)
    assert authentication_body(server_final) == struct.pack("!i", 12) + RFC_SERVER_FINAL
    assert server.done


def test_scram_server_accepts_y_flag_because_it_offers_no_plus() -> None:
    server = rfc_server()
    server.handle(password_body(m.sasl_initial_response("SCRAM-SHA-256", b"y,,n=user,r=" + b"rOprNGfwEbeRWgbNEkqO")))
    nonce = RFC_CLIENT_NONCE + RFC_SERVER_NONCE
    without_proof = f"c=eSws,r={nonce}"
    auth_message = f"n=user,r={RFC_CLIENT_NONCE},{RFC_SERVER_FIRST.decode()},{without_proof}".encode()
    proof = reference_client_proof(b"pencil", RFC_SALT, 4096, auth_message)
    server.handle(f"{without_proof},p={base64.b64encode(proof).decode()}".encode())
    assert server.done


# --------------------------------------------------------------------------- SCRAM server: bad clients


def server_after_rfc_first() -> ScramServer:
    server = rfc_server()
    server.handle(password_body(m.sasl_initial_response("SCRAM-SHA-256", RFC_CLIENT_FIRST)))
    return server


@pytest.mark.parametrize(
    ("mechanism", "data"),
    [
        ("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"),
        ("SCRAM-SHA-1", RFC_CLIENT_FIRST),
        ("SCRAM-SHA-256", None),
        ("SCRAM-SHA-256", b""),
        ("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc"),
        ("SCRAM-SHA-256", b"x,,n=,r=abc"),
        ("SCRAM-SHA-256", b"n,a=admin,n=,r=abc"),
        ("SCRAM-SHA-256", b"n,,m=ext,n=,r=abc"),
        ("SCRAM-SHA-256", b"n,,n=,r="),
        ("SCRAM-SHA-256", b"n,,n=,r=a\x01b"),
        ("SCRAM-SHA-256", b"n,,r=abc"),
        ("SCRAM-SHA-256", b"n,,n=,r=abc\x00"),
        ("SCRAM-SHA-256", b"n,,n=\xff,r=abc"),
        ("SCRAM-SHA-256", b"n,"),
    ],
)
def test_scram_server_rejects_malformed_client_first(mechanism: str, data: bytes | None) -> None:
    with pytest.raises(ProtocolViolation):
        rfc_server().handle(password_body(m.sasl_initial_response(mechanism, data)))


@pytest.mark.parametrize(
    "client_final",
    [
        RFC_CLIENT_FINAL.replace(b"c=biws", b"c=eSws"),
        RFC_CLIENT_FINAL.replace(b"c=biws", b"c=!!!"),
        RFC_CLIENT_FINAL.replace(b"hNlF$k0", b"hNlF$k1"),
        RFC_CLIENT_FINAL.split(b",p=")[0],
        RFC_CLIENT_FINAL.split(b",p=")[0] + b",p=c2hvcnQ=",
        RFC_CLIENT_FINAL + b",x=extra",
        b"r=x,c=biws,p=" + RFC_CLIENT_FINAL.split(b",p=")[1],
        b"",
    ],
)
def test_scram_server_rejects_malformed_client_final(client_final: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        server_after_rfc_first().handle(client_final)


def test_scram_server_rejects_a_wrong_proof_as_authentication_failure() -> None:
    proof = bytearray(base64.b64decode(RFC_CLIENT_FINAL.split(b",p=")[1]))
    proof[0] ^= 1
    tampered = RFC_CLIENT_FINAL.split(b",p=")[0] + b",p=" + base64.b64encode(bytes(proof))
    server = server_after_rfc_first()
    with pytest.raises(AuthenticationFailed):
        server.handle(tampered)
    assert not server.done


def test_scram_server_refuses_messages_after_the_exchange() -> None:
    server = server_after_rfc_first()
    server.handle(RFC_CLIENT_FINAL)
    with pytest.raises(ProtocolViolation):
        server.handle(RFC_CLIENT_FINAL)


@settings(max_examples=200, deadline=None)
@given(first=st.binary(max_size=120), second=st.binary(max_size=120))
def test_scram_server_raises_only_auth_errors_on_arbitrary_bytes(first: bytes, second: bytes) -> None:
    for body_sequence in (
        [first, second],
        [b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first, second],
    ):
        server = rfc_server()
        try:
            for body in body_sequence:
                server.handle(body)
        except (ProtocolViolation, AuthenticationFailed):
            pass


# ------------------------------------------------------------------------ backend authenticator: bad servers


def client_after_rfc_first() -> BackendAuthenticator:
    client = BackendAuthenticator("user", "pencil", _client_nonce=RFC_CLIENT_NONCE)
    client.handle(authentication_body(m.authentication_sasl(["SCRAM-SHA-256"])))
    return client


def test_tampered_server_signature_is_refused() -> None:
    client = client_after_rfc_first()
    client.handle(authentication_body(m.authentication_sasl_continue(RFC_SERVER_FIRST)))
    signature = bytearray(base64.b64decode(RFC_SERVER_FINAL[2:]))
    signature[-1] ^= 0x80
    with pytest.raises(AuthenticationFailed, match="server signature mismatch"):
        client.handle(authentication_body(m.authentication_sasl_final(b"v=" + base64.b64encode(bytes(signature)))))
    with pytest.raises(AuthenticationFailed):
        client.handle(authentication_body(m.authentication_ok()))
    assert not client.ok


def test_server_that_skips_its_signature_is_refused() -> None:
    client = client_after_rfc_first()
    client.handle(authentication_body(m.authentication_sasl_continue(RFC_SERVER_FIRST)))
    with pytest.raises(AuthenticationFailed):
        client.handle(authentication_body(m.authentication_ok()))
    assert not client.ok


def test_server_error_attribute_becomes_authentication_failure() -> None:
    client = client_after_rfc_first()
    client.handle(authentication_body(m.authentication_sasl_continue(RFC_SERVER_FIRST)))
    with pytest.raises(AuthenticationFailed, match="invalid-proof"):
        client.handle(authentication_body(m.authentication_sasl_final(b"e=invalid-proof")))


@pytest.mark.parametrize(
    "server_first",
    [
        RFC_SERVER_FIRST.replace(b"r=rOprNG", b"r=XOprNG"),
        b"r=" + RFC_CLIENT_NONCE.encode() + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        RFC_SERVER_FIRST.replace(b"i=4096", b"i=0"),
        RFC_SERVER_FIRST.replace(b"i=4096", b"i=-5"),
        RFC_SERVER_FIRST.replace(b"i=4096", b"i=4k"),
        RFC_SERVER_FIRST.replace(b"i=4096", b"i=2147483648"),
        RFC_SERVER_FIRST.replace(b"i=4096", b"i=" + b"9" * 5000),
        RFC_SERVER_FIRST.replace(b"s=W22ZaJ0SNY7soEsUEjb6gQ==", b"s=not*base64"),
        RFC_SERVER_FIRST.replace(b"s=W22ZaJ0SNY7soEsUEjb6gQ==", b"s="),
        RFC_SERVER_FIRST.split(b",i=")[0],
        b"garbage",
        b"",
    ],
)
def test_malformed_server_first_is_a_protocol_violation(server_first: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        client_after_rfc_first().handle(authentication_body(m.authentication_sasl_continue(server_first)))


def test_out_of_order_sasl_messages_are_protocol_violations() -> None:
    with pytest.raises(ProtocolViolation):
        BackendAuthenticator("u", "p").handle(authentication_body(m.authentication_sasl_continue(RFC_SERVER_FIRST)))
    with pytest.raises(ProtocolViolation):
        client_after_rfc_first().handle(authentication_body(m.authentication_sasl_final(RFC_SERVER_FINAL)))
    with pytest.raises(ProtocolViolation):
        client_after_rfc_first().handle(authentication_body(m.authentication_sasl(["SCRAM-SHA-256"])))


def test_only_channel_binding_offered_is_refused() -> None:
    client = BackendAuthenticator("u", "p")
    with pytest.raises(AuthenticationFailed, match="channel binding is not supported"):
        client.handle(authentication_body(m.authentication_sasl(["SCRAM-SHA-256-PLUS"])))


def test_plus_and_plain_offered_chooses_plain_without_binding() -> None:
    client = BackendAuthenticator("u", "p")
    reply = client.handle(authentication_body(m.authentication_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])))
    mechanism, data = m.parse_sasl_initial_response(password_body(reply))
    assert mechanism == "SCRAM-SHA-256"
    assert data is not None and data.startswith(b"n,,n=u,r=")


def test_client_first_escapes_the_user_name() -> None:
    reply = BackendAuthenticator("we,ird=name", "p").handle(
        authentication_body(m.authentication_sasl(["SCRAM-SHA-256"]))
    )
    _, data = m.parse_sasl_initial_response(password_body(reply))
    assert data is not None and data.startswith(b"n,,n=we=2Cird=3Dname,r=")


def test_unknown_sasl_mechanisms_are_refused() -> None:
    with pytest.raises(AuthenticationFailed, match="OAUTHBEARER"):
        BackendAuthenticator("u", "p").handle(authentication_body(m.authentication_sasl(["OAUTHBEARER"])))


@settings(max_examples=200, deadline=None)
@given(code=st.sampled_from([0, 3, 5, 10, 11, 12, 7, 1000]), rest=st.binary(max_size=120))
def test_backend_authenticator_raises_only_auth_errors_on_arbitrary_bytes(code: int, rest: bytes) -> None:
    for client in (BackendAuthenticator("u", "p"), client_after_rfc_first()):
        try:
            reply = client.handle(struct.pack("!i", code) + rest)
        except (ProtocolViolation, AuthenticationFailed):
            continue
        assert reply is None or reply[:1] == b"p"


# --------------------------------------------------------------------------- MD5 and cleartext


def test_md5_both_directions() -> None:
    server = Md5Server("alice", "s3cret")
    client = BackendAuthenticator("alice", "s3cret")
    reply = client.handle(authentication_body(server.start()))
    server.check(password_body(reply))


def test_md5_answer_follows_the_documented_formula() -> None:
    salt = b"\x01\x02\x03\x04"
    server = Md5Server("alice", "s3cret", _salt=salt)
    assert authentication_body(server.start()) == struct.pack("!i", 5) + salt
    reply = BackendAuthenticator("alice", "s3cret").handle(authentication_body(server.start()))
    inner = hashlib.md5(b"s3cretalice").hexdigest().encode()
    assert password_body(reply) == b"md5" + hashlib.md5(inner + salt).hexdigest().encode() + b"\x00"


def test_md5_salts_are_random() -> None:
    salts = {authentication_body(Md5Server("a", "b").start()) for _ in range(4)}
    assert len(salts) > 1


@pytest.mark.parametrize(("username", "password"), [("alice", "wrong"), ("mallory", "s3cret")])
def test_md5_mismatch_is_an_authentication_failure(username: str, password: str) -> None:
    server = Md5Server("alice", "s3cret")
    reply = BackendAuthenticator(username, password).handle(authentication_body(server.start()))
    with pytest.raises(AuthenticationFailed) as failure:
        server.check(password_body(reply))
    assert "s3cret" not in str(failure.value)


@pytest.mark.parametrize("body", [b"md5abc", b"", b"md5\x00extra\x00"])
def test_md5_malformed_answer_is_a_protocol_violation(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        Md5Server("alice", "s3cret").check(body)


def test_md5_request_with_a_bad_salt_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        BackendAuthenticator("u", "p").handle(struct.pack("!i", 5) + b"abc")


def test_cleartext_password_request() -> None:
    client = BackendAuthenticator("u", "pässword")
    reply = client.handle(authentication_body(m.authentication_cleartext_password()))
    assert reply == b"p\x00\x00\x00\x0e" + "pässword".encode() + b"\x00"
    assert client.handle(authentication_body(m.authentication_ok())) is None
    assert client.ok


def test_trust_needs_no_password() -> None:
    client = BackendAuthenticator("u", None)
    assert client.handle(authentication_body(m.authentication_ok())) is None
    assert client.ok
    with pytest.raises(ProtocolViolation):
        client.handle(authentication_body(m.authentication_ok()))


@pytest.mark.parametrize(
    "request_message",
    [
        m.authentication_cleartext_password(),
        m.authentication_md5_password(b"salt"),
        m.authentication_sasl(["SCRAM-SHA-256"]),
    ],
)
def test_missing_password_is_an_authentication_failure(request_message: bytes) -> None:
    with pytest.raises(AuthenticationFailed, match="no password is configured"):
        BackendAuthenticator("u", None).handle(authentication_body(request_message))


@pytest.mark.parametrize(
    ("code", "method"),
    [(2, "Kerberos V5"), (6, "SCM credential"), (7, "GSSAPI"), (8, "GSSAPI"), (9, "SSPI"), (99, "code 99")],
)
def test_unsupported_methods_are_named(code: int, method: str) -> None:
    with pytest.raises(AuthenticationFailed, match=method):
        BackendAuthenticator("u", "p").handle(struct.pack("!i", code))


# --------------------------------------------------------------------------- verifier and SASLprep


def test_verifier_from_password_uses_a_random_salt_and_hides_keys() -> None:
    first = ScramVerifier.from_password("pw")
    second = ScramVerifier.from_password("pw")
    assert len(first.salt) == 16 and first.iterations == 4096
    assert first.salt != second.salt and first.stored_key != second.stored_key
    assert "stored_key" not in repr(first) and "server_key" not in repr(first)


def test_verifier_is_deterministic_for_a_given_salt() -> None:
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    verifier = ScramVerifier.from_password("pencil", salt=RFC_SALT, iterations=4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert verifier.stored_key == hashlib.sha256(client_key).digest()
    assert verifier.server_key == hmac.new(salted, b"Server Key", hashlib.sha256).digest()


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        ("pencil", b"pencil"),
        ("tab\tand\x07bell", b"tab\tand\x07bell"),  # ASCII is never touched
        ("I\u00adX", b"IX"),  # soft hyphen maps to nothing
        ("a\u00a0b", b"a b"),  # non-ASCII space maps to space
        ("\u2168", b"IX"),  # NFKC
        ("\u00e9", "\u00e9".encode()),
        ("e\u0301", "\u00e9".encode()),  # NFKC composes
        # Prohibited results fall back to the raw UTF-8 bytes; each case holds U+2168 or U+00B9, which
        # NFKC would change, so a fallback is distinguishable from a normalization.
        ("\u2168\x07", "\u2168\x07".encode()),  # ASCII control character
        ("\u0221\u2168", "\u0221\u2168".encode()),  # unassigned in Unicode 3.2
        ("\U000e0001\u2168", "\U000e0001\u2168".encode()),  # tagging character
        ("\ue000\u2168", "\ue000\u2168".encode()),  # private use
        ("\u0627\u2168\u0628", "\u0627\u2168\u0628".encode()),  # RandALCat mixed with LCat
        ("\u0627\u00b9", "\u0627\u00b9".encode()),  # RandALCat string not ending in RandALCat
        ("\u0627\u00b9\u0628", "\u06271\u0628".encode()),  # RandALCat at both ends: normalized
        ("\u00ad", "\u00ad".encode()),  # empty after mapping
    ],
)
def test_saslprep_password(password: str, prepared: bytes) -> None:
    assert saslprep_password(password) == prepared
