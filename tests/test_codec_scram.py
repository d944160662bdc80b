"""SCRAM-SHA-256 server codec: hashing, the RFC 7677 vector, every malformed-message error and twin parity."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import pickle
import struct
import sys
from types import SimpleNamespace

import pytest
from codec_impls import (
    IMPLEMENTATION_NAMES,
    RFC_CLIENT_FINAL,
    RFC_CLIENT_FIRST,
    RFC_CLIENT_NONCE,
    RFC_SALT,
    RFC_SERVER_FINAL,
    RFC_SERVER_FIRST,
    RFC_SERVER_NONCE,
    load_implementation,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rdsproxy._codec as codec
from rdsproxy.errors import AuthenticationFailed, ProtocolViolation
from rdsproxy.protocol.pg import auth
from rdsproxy.protocol.pg import messages as m

RFC_NONCE = (RFC_CLIENT_NONCE + RFC_SERVER_NONCE).encode()
RFC_PROOF = RFC_CLIENT_FINAL.split(b",p=")[1]
RFC_VERIFIER = auth.ScramVerifier.from_password("pencil", salt=RFC_SALT, iterations=4096)

EXCHANGE_OVER = "unexpected SASL message: the SCRAM exchange is over"
HASH_LENGTHS = sorted({*range(201), 247, 248, 255, 256, 1000, 4099})
KEY_LENGTHS = [0, 1, 31, 32, 33, 55, 56, 63, 64, 65, 100, 200]


@pytest.fixture(scope="module", params=IMPLEMENTATION_NAMES)
def impl(request):
    return load_implementation(request.param)


@pytest.fixture(scope="module")
def twins():
    return load_implementation("compiled"), load_implementation("pure")


def initial_response(data: bytes | None, mechanism: str = "SCRAM-SHA-256") -> bytes:
    """A SASLInitialResponse body (what ScramServer.handle gets first)."""
    if data is None:
        return mechanism.encode() + b"\x00" + struct.pack("!i", -1)
    return mechanism.encode() + b"\x00" + struct.pack("!i", len(data)) + data


def body(message: bytes) -> bytes:
    """The body of one typed message, checking its length field."""
    (length,) = struct.unpack_from("!i", message, 1)
    assert length == len(message) - 1
    return message[5:]


def rfc_server(impl, secret=RFC_VERIFIER):
    return impl.scram.ScramServer(secret, _server_nonce=RFC_SERVER_NONCE)


def rfc_server_after_first(impl):
    server = rfc_server(impl)
    server.handle(initial_response(RFC_CLIENT_FIRST))
    return server


def raises_violation(call, message: str) -> None:
    with pytest.raises(ProtocolViolation) as failure:
        call()
    assert str(failure.value) == message


# --------------------------------------------------------------------------- API


def test_public_api_is_the_same(twins):
    compiled, pure = twins
    assert compiled.scram.__all__ == pure.scram.__all__ == ["ScramSecret", "ScramServer", "hmac_sha256", "sha256"]


def test_the_selector_and_auth_export_the_active_twin():
    assert codec.ScramServer is codec.ACTIVE.scram.ScramServer
    assert codec.ScramSecret is codec.ACTIVE.scram.ScramSecret
    assert auth.ScramServer is codec.ScramServer
    assert codec.ACTIVE.scram.__name__.endswith("scram_c" if codec.COMPILED else "scram_py")


# --------------------------------------------------------------------------- SHA-256 and HMAC


@pytest.mark.parametrize("length", HASH_LENGTHS)
def test_sha256_matches_hashlib(impl, length):
    data = bytes((n * 7 + length) & 0xFF for n in range(length))
    assert impl.scram.sha256(data) == hashlib.sha256(data).digest()


@pytest.mark.parametrize("key_length", KEY_LENGTHS)
@pytest.mark.parametrize("length", [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 200])
def test_hmac_sha256_matches_hmac(impl, key_length, length):
    key = bytes((n * 13 + 1) & 0xFF for n in range(key_length))
    message = bytes((n * 5 + key_length) & 0xFF for n in range(length))
    assert impl.scram.hmac_sha256(key, message) == hmac.digest(key, message, "sha256")


def test_hashing_takes_any_bytes_like(impl):
    data = b"abc" * 30
    for form in (bytearray(data), memoryview(data)):
        assert impl.scram.sha256(form) == hashlib.sha256(data).digest()
        assert impl.scram.hmac_sha256(form, form) == hmac.digest(data, data, "sha256")
    with pytest.raises(TypeError):
        impl.scram.sha256("text")
    with pytest.raises(TypeError):
        impl.scram.hmac_sha256(b"key", 5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.binary(max_size=150), message=st.binary(max_size=400))
def test_hashing_matches_hashlib_on_arbitrary_bytes(impl, key, message):
    assert impl.scram.sha256(message) == hashlib.sha256(message).digest()
    assert impl.scram.hmac_sha256(key, message) == hmac.digest(key, message, "sha256")


# --------------------------------------------------------------------------- ScramSecret


def test_secret_holds_the_verifier_values_read_only(impl):
    secret = impl.scram.ScramSecret.from_verifier(RFC_VERIFIER)
    assert isinstance(secret, impl.scram.ScramSecret)
    assert (secret.salt, secret.iterations) == (RFC_SALT, 4096)
    assert (secret.stored_key, secret.server_key) == (RFC_VERIFIER.stored_key, RFC_VERIFIER.server_key)
    assert impl.scram.ScramSecret.from_verifier(secret) is secret
    for name in ("salt", "iterations", "stored_key", "server_key"):
        with pytest.raises(AttributeError):
            setattr(secret, name, getattr(secret, name))
    assert repr(secret) == f"ScramSecret(salt={RFC_SALT!r}, iterations=4096)"  # no keys
    copy = pickle.loads(pickle.dumps(secret))
    assert (copy.salt, copy.iterations, copy.stored_key, copy.server_key) == (
        secret.salt,
        secret.iterations,
        secret.stored_key,
        secret.server_key,
    )


def test_secret_takes_bytes_like_values(impl):
    key = bytes(range(32))
    secret = impl.scram.ScramSecret(bytearray(b"salt"), True, memoryview(key), bytearray(key))
    assert (secret.salt, secret.iterations, secret.stored_key, secret.server_key) == (b"salt", 1, key, key)
    assert type(secret.salt) is bytes and type(secret.stored_key) is bytes


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((b"s", 0, bytes(32), bytes(32)), ValueError, "SCRAM iteration count must be between 1 and 2147483647"),
        ((b"s", -1, bytes(32), bytes(32)), ValueError, "SCRAM iteration count must be between 1 and 2147483647"),
        ((b"s", 2**31, bytes(32), bytes(32)), ValueError, "SCRAM iteration count must be between 1 and 2147483647"),
        ((b"s", 2**80, bytes(32), bytes(32)), ValueError, "SCRAM iteration count must be between 1 and 2147483647"),
        ((b"s", 4096, bytes(31), bytes(32)), ValueError, "SCRAM stored_key must be 32 bytes, got 31"),
        ((b"s", 4096, bytes(32), bytes(33)), ValueError, "SCRAM server_key must be 32 bytes, got 33"),
        ((b"s", 4096, b"", b""), ValueError, "SCRAM stored_key must be 32 bytes, got 0"),
        ((b"s", 4096.0, bytes(32), bytes(32)), TypeError, None),
        ((b"s", "4096", bytes(32), bytes(32)), TypeError, None),
        (("salt", 4096, bytes(32), bytes(32)), TypeError, None),
        ((b"s", 4096, 32, bytes(32)), TypeError, None),
    ],
)
def test_secret_validates_its_values(impl, args, error, message):
    with pytest.raises(error) as failure:
        impl.scram.ScramSecret(*args)
    if message is not None:
        assert str(failure.value) == message


def test_compiled_objects_cannot_exist_half_made():
    # The C code reads their fields without checks: __new__ alone must not make one.
    compiled = load_implementation("compiled")
    with pytest.raises(TypeError):
        compiled.scram.ScramSecret.__new__(compiled.scram.ScramSecret)
    with pytest.raises(TypeError):
        compiled.scram.ScramServer.__new__(compiled.scram.ScramServer)


def test_extreme_iteration_counts_reach_the_wire(impl):
    for iterations in (1, 2**31 - 1):
        secret = impl.scram.ScramSecret(b"\x00", iterations, bytes(32), bytes(32))
        server = impl.scram.ScramServer(secret, _server_nonce="S")
        reply = server.handle(initial_response(b"n,,n=,r=C"))
        assert body(reply) == struct.pack("!i", 11) + b"r=CS,s=AA==,i=%d" % iterations


def test_empty_and_long_salts(impl):
    for salt in (b"", bytes(range(256)) * 3):
        server = impl.scram.ScramServer(impl.scram.ScramSecret(salt, 7, bytes(32), bytes(32)), _server_nonce="S")
        reply = server.handle(initial_response(b"n,,n=,r=C"))
        assert body(reply) == struct.pack("!i", 11) + b"r=CS,s=" + base64.b64encode(salt) + b",i=7"


# --------------------------------------------------------------------------- exchanges


def test_start_is_authentication_sasl(impl):
    server = impl.scram.ScramServer(RFC_VERIFIER)
    assert server.start() == m.authentication_sasl(["SCRAM-SHA-256"])
    assert server.start() is server.start()  # built once
    assert not server.done


@pytest.mark.parametrize("form", ["secret", "verifier", "namespace", "values"])
def test_rfc7677_vector(impl, form):
    secret = {
        "secret": impl.scram.ScramSecret.from_verifier(RFC_VERIFIER),
        "verifier": RFC_VERIFIER,
        "namespace": SimpleNamespace(**vars(RFC_VERIFIER)),
        "values": impl.scram.ScramSecret(RFC_SALT, 4096, RFC_VERIFIER.stored_key, RFC_VERIFIER.server_key),
    }[form]
    server = rfc_server(impl, secret)
    assert server.handle(initial_response(RFC_CLIENT_FIRST)) == m.authentication_sasl_continue(RFC_SERVER_FIRST)
    assert not server.done
    assert server.handle(RFC_CLIENT_FINAL) == m.authentication_sasl_final(RFC_SERVER_FINAL)
    assert server.done
    raises_violation(lambda: server.handle(RFC_CLIENT_FINAL), EXCHANGE_OVER)
    assert server.done


def test_messages_may_be_any_bytes_like(impl):
    server = rfc_server(impl)
    assert server.handle(bytearray(initial_response(RFC_CLIENT_FIRST))) == m.authentication_sasl_continue(
        RFC_SERVER_FIRST
    )
    assert server.handle(bytearray(RFC_CLIENT_FINAL)) == m.authentication_sasl_final(RFC_SERVER_FINAL)


def test_a_message_that_is_not_bytes_ends_the_exchange(impl):
    server = rfc_server(impl)
    with pytest.raises(TypeError):
        server.handle("n,,n=,r=abc")
    raises_violation(lambda: server.handle(initial_response(RFC_CLIENT_FIRST)), EXCHANGE_OVER)
    raises_violation(lambda: server.handle("not even bytes"), EXCHANGE_OVER)


def test_y_flag_is_accepted_because_no_plus_is_offered(impl):
    server = rfc_server(impl)
    server.handle(initial_response(b"y,,n=user,r=" + RFC_CLIENT_NONCE.encode()))
    without_proof = b"c=eSws,r=" + RFC_NONCE
    auth_message = b"n=user,r=" + RFC_CLIENT_NONCE.encode() + b"," + RFC_SERVER_FIRST + b"," + without_proof
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    reply = server.handle(without_proof + b",p=" + base64.b64encode(proof))
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    expected = b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha256"))
    assert reply == m.authentication_sasl_final(expected)
    assert server.done


def login(server, client) -> bytes:
    """Relays a whole exchange between a ScramServer and an auth.BackendAuthenticator; the server's last reply."""
    client_first = client.handle(body(server.start()))
    server_first = server.handle(body(client_first))
    client_final = client.handle(body(server_first))
    return server.handle(body(client_final))


@pytest.mark.parametrize("password", ["s3cret", "pässwörd with spaces", "x" * 200, "I\u00adX\u2168"])
def test_login_with_the_right_password(impl, password):
    secret = impl.scram.ScramSecret.from_verifier(auth.ScramVerifier.from_password(password))
    server = impl.scram.ScramServer(secret)
    client = auth.BackendAuthenticator("alice", password)
    server_final = login(server, client)
    assert server.done
    assert client.handle(body(server_final)) is None
    assert client.handle(body(m.authentication_ok())) is None
    assert client.ok


def test_login_with_a_wrong_password(impl):
    server = impl.scram.ScramServer(auth.ScramVerifier.from_password("right-password"))
    client = auth.BackendAuthenticator("alice", "wrong-password")
    server_first = server.handle(body(client.handle(body(server.start()))))
    client_final = body(client.handle(body(server_first)))
    with pytest.raises(AuthenticationFailed) as failure:
        server.handle(client_final)
    assert str(failure.value) == "SCRAM authentication failed: wrong password"
    assert not server.done
    raises_violation(lambda: server.handle(client_final), EXCHANGE_OVER)
    assert not server.done


@pytest.mark.parametrize("flip", [0, 31])
def test_a_proof_off_by_one_bit_fails(impl, flip):
    proof = bytearray(base64.b64decode(RFC_PROOF))
    proof[flip] ^= 1
    server = rfc_server_after_first(impl)
    with pytest.raises(AuthenticationFailed):
        server.handle(RFC_CLIENT_FINAL.split(b",p=")[0] + b",p=" + base64.b64encode(bytes(proof)))
    assert not server.done


def test_extensions_after_the_nonces_are_allowed_and_hashed(impl):
    # Attributes after r= are extensions: accepted, and part of the AuthMessage like everything before p=.
    server = rfc_server(impl)
    server.handle(initial_response(RFC_CLIENT_FIRST + b",x=first"))
    without_proof = b"c=biws,r=" + RFC_NONCE + b",y=final"
    auth_message = b"n=user,r=" + RFC_CLIENT_NONCE.encode() + b",x=first," + RFC_SERVER_FIRST + b"," + without_proof
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    server.handle(without_proof + b",p=" + base64.b64encode(proof))
    assert server.done


def server_nonce_of(reply: bytes, client_nonce: bytes) -> bytes:
    server_first = body(reply)[4:]
    nonce = server_first.split(b",")[0][2:]
    assert nonce.startswith(client_nonce)
    return nonce[len(client_nonce) :]


def test_server_nonces_are_fresh_for_every_login(impl):
    secret = impl.scram.ScramSecret.from_verifier(RFC_VERIFIER)
    nonces = set()
    for _ in range(600):  # several refills of the compiled twin's random pool
        server = impl.scram.ScramServer(secret)
        nonce = server_nonce_of(server.handle(initial_response(b"n,,n=,r=abc")), b"abc")
        assert len(nonce) == 24 and len(base64.b64decode(nonce, validate=True)) == 18
        nonces.add(nonce)
    assert len(nonces) == 600


def test_the_nonce_is_drawn_at_the_client_first_message(impl, monkeypatch):
    draws = []
    if impl.name == "compiled":  # the pool is refilled from os.urandom, in blocks

        def urandom(size):
            draws.append(size)
            return bytes(range(256)) * (size // 256)

        monkeypatch.setattr(impl.scram, "_urandom", urandom)
        impl.scram._forget_pool()
        expected = [4096]
    else:

        def new_nonce():
            draws.append(18)
            return base64.b64encode(bytes(range(18))).decode()

        monkeypatch.setattr(impl.scram, "new_nonce", new_nonce)
        expected = [18]
    try:
        server = impl.scram.ScramServer(RFC_VERIFIER)
        assert draws == []
        reply = server.handle(initial_response(b"n,,n=,r=abc"))
        assert draws == expected
        assert server_nonce_of(reply, b"abc") == base64.b64encode(bytes(range(18)))
    finally:
        if impl.name == "compiled":
            impl.scram._forget_pool()  # later logins must not hand out the rest of this predictable block


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_other_nonces_than_its_parent(impl):
    secret = impl.scram.ScramSecret.from_verifier(RFC_VERIFIER)
    first = initial_response(b"n,,n=,r=abc")
    impl.scram.ScramServer(secret).handle(first)  # the pool is filled before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write_end, server_nonce_of(impl.scram.ScramServer(secret).handle(first), b"abc"))
        finally:
            os._exit(0)
    os.close(write_end)
    parent_nonce = server_nonce_of(impl.scram.ScramServer(secret).handle(first), b"abc")
    child_nonce = os.read(read_end, 100)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child_nonce) == 24
    assert child_nonce != parent_nonce


def test_a_fixed_server_nonce_must_be_ascii(impl):
    with pytest.raises(UnicodeEncodeError):
        impl.scram.ScramServer(RFC_VERIFIER, _server_nonce="é")


# --------------------------------------------------------------------------- malformed client-first


@pytest.mark.parametrize(
    ("first", "message"),
    [
        (b"SCRAM-SHA-256", "SASL mechanism name is not NUL-terminated"),
        (b"", "SASL mechanism name is not NUL-terminated"),
        (b"SCRAM-SH\xc3\xa9\x00" + struct.pack("!i", 3) + b"n,,", "SASL mechanism name is not ASCII"),
        (b"SCRAM-SHA-256\x00\x00\x00\x00", "SASLInitialResponse is missing its data length"),
        (b"SCRAM-SHA-256\x00", "SASLInitialResponse is missing its data length"),
        (initial_response(None) + b"xy", "SASLInitialResponse has 2 unexpected trailing bytes"),
        (initial_response(b"n,,n=,r=abc")[:-1], "SASLInitialResponse declares 11 data bytes but carries 10"),
        (initial_response(b"n,,n=,r=abc") + b"!", "SASLInitialResponse declares 11 data bytes but carries 12"),
        (b"SCRAM-SHA-256\x00" + struct.pack("!i", -2), "SASLInitialResponse declares -2 data bytes but carries 0"),
        (
            b"SCRAM-SHA-256\x00" + struct.pack("!i", -(2**31)) + b"ab",
            "SASLInitialResponse declares -2147483648 data bytes but carries 2",
        ),
        (
            initial_response(RFC_CLIENT_FIRST, "SCRAM-SHA-1"),
            "client selected an invalid SASL authentication mechanism 'SCRAM-SHA-1'",
        ),
        (
            initial_response(RFC_CLIENT_FIRST, "SCRAM-SHA-256-PLUS"),
            "client selected an invalid SASL authentication mechanism 'SCRAM-SHA-256-PLUS'",
        ),
        (initial_response(RFC_CLIENT_FIRST, ""), "client selected an invalid SASL authentication mechanism ''"),
        (
            initial_response(RFC_CLIENT_FIRST, "it's\\\x01\t"),
            'client selected an invalid SASL authentication mechanism "it\'s\\\\\\x01\\t"',
        ),
        (initial_response(None), "malformed SCRAM client-first-message: empty"),
        (initial_response(b""), "malformed SCRAM client-first-message: empty"),
        (initial_response(b"n,,n=,r=abc\x00"), "malformed SCRAM client-first-message: contains a NUL byte"),
        (initial_response(b"\xff\x00"), "malformed SCRAM client-first-message: contains a NUL byte"),
        (initial_response(b"n,,n=\xff,r=abc"), "malformed SCRAM client-first-message: not valid UTF-8"),
        (initial_response(b"n,,n=\xc0\xae,r=abc"), "malformed SCRAM client-first-message: not valid UTF-8"),
        (initial_response(b"n,,n=\xe0\x80\xae,r=abc"), "malformed SCRAM client-first-message: not valid UTF-8"),
        (initial_response(b"n,,n=\xed\xa0\x80,r=abc"), "malformed SCRAM client-first-message: not valid UTF-8"),
        (initial_response(b"n,,n=\xf0\x80\x80\xae,r=abc"), "malformed SCRAM client-first-message: not valid UTF-8"),
        (initial_response(b"n,,n=\xf4\x90\x80\x80,r=abc"), "malformed SCRAM client-first-message: not valid UTF-8"),
        (initial_response(b"n,,n=\xf5\x80\x80\x80,r=abc"), "malformed SCRAM client-first-message: not valid UTF-8"),
        (initial_response(b"n,,n=,r=abc\xe2\x82"), "malformed SCRAM client-first-message: not valid UTF-8"),
        (initial_response(b"n,,n=,r=abc\x80"), "malformed SCRAM client-first-message: not valid UTF-8"),
        (
            initial_response(b"p=tls-server-end-point,,n=,r=abc"),
            "client requested SCRAM channel binding, but the proxy offers only SCRAM-SHA-256",
        ),
        (initial_response(b"x,,n=,r=abc"), "malformed SCRAM client-first-message: bad channel-binding flag"),
        (initial_response(b"n"), "malformed SCRAM client-first-message: bad channel-binding flag"),
        (initial_response(b"p"), "malformed SCRAM client-first-message: bad channel-binding flag"),
        (initial_response(b"n;,n=,r=abc"), "malformed SCRAM client-first-message: bad channel-binding flag"),
        (initial_response("é,,n=,r=abc".encode()), "malformed SCRAM client-first-message: bad channel-binding flag"),
        (
            initial_response(b"n,a=admin,n=,r=abc"),
            "client uses a SCRAM authorization identity, which is not supported",
        ),
        (initial_response(b"y,a=,n=,r=abc"), "client uses a SCRAM authorization identity, which is not supported"),
        (initial_response(b"n,"), "malformed SCRAM client-first-message: bad GS2 header"),
        (initial_response(b"n,a"), "malformed SCRAM client-first-message: bad GS2 header"),
        (initial_response(b"n,x,n=,r=abc"), "malformed SCRAM client-first-message: bad GS2 header"),
        (initial_response(b"n,,"), "malformed SCRAM client-first-message: expected attribute=value"),
        (initial_response(b"n,,n"), "malformed SCRAM client-first-message: expected attribute=value"),
        (initial_response(b"n,,n=,r=abc,"), "malformed SCRAM client-first-message: expected attribute=value"),
        (initial_response(b"n,,n=,,r=abc"), "malformed SCRAM client-first-message: expected attribute=value"),
        (initial_response(b"n,,1=x,r=abc"), "malformed SCRAM client-first-message: expected attribute=value"),
        (initial_response(b"n,,n=,r=abc,[=x"), "malformed SCRAM client-first-message: expected attribute=value"),
        (initial_response(b"n,,nn=,r=abc"), "malformed SCRAM client-first-message: expected attribute=value"),
        (
            initial_response("n,,é=x,r=abc".encode()),
            "malformed SCRAM client-first-message: expected attribute=value",
        ),
        (initial_response("n,,\u212a".encode()), "malformed SCRAM client-first-message: expected attribute=value"),
        (initial_response(b"n,,m=ext,n=,r=abc"), "client requires an unsupported SCRAM extension"),
        (initial_response(b"n,,m=ext"), "client requires an unsupported SCRAM extension"),
        (initial_response(b"n,,r=abc"), "malformed SCRAM client-first-message: expected n= and r="),
        (initial_response(b"n,,n=user"), "malformed SCRAM client-first-message: expected n= and r="),
        (initial_response(b"n,,N=user,r=abc"), "malformed SCRAM client-first-message: expected n= and r="),
        (initial_response(b"n,,n=user,R=abc"), "malformed SCRAM client-first-message: expected n= and r="),
        (initial_response(b"n,,n=,x=abc,r=abc"), "malformed SCRAM client-first-message: expected n= and r="),
        # str.lower() turns these two non-ASCII letters into ASCII ones: valid attribute names, but not n or r.
        (
            initial_response("n,,\u212a=x,r=abc".encode()),
            "malformed SCRAM client-first-message: expected n= and r=",
        ),
        (
            initial_response("n,,n=,\u0130=abc".encode()),
            "malformed SCRAM client-first-message: expected n= and r=",
        ),
        (initial_response(b"n,,n=,r="), "malformed SCRAM client-first-message: bad nonce"),
        (initial_response(b"n,,n=,r=a b"), "malformed SCRAM client-first-message: bad nonce"),
        (initial_response(b"n,,n=,r=a\x01b"), "malformed SCRAM client-first-message: bad nonce"),
        (initial_response(b"n,,n=,r=a\x7fb"), "malformed SCRAM client-first-message: bad nonce"),
        (initial_response("n,,n=,r=aéb".encode()), "malformed SCRAM client-first-message: bad nonce"),
    ],
)
def test_malformed_client_first(impl, first, message):
    server = rfc_server(impl)
    raises_violation(lambda: server.handle(first), message)
    assert not server.done
    raises_violation(lambda: server.handle(initial_response(RFC_CLIENT_FIRST)), EXCHANGE_OVER)


@pytest.mark.parametrize(
    "data",
    [
        b"n,,n=user,r=" + bytes(range(0x21, 0x2C)) + bytes(range(0x2D, 0x7F)),  # every printable character
        "n,,n=\u212a\u0130é,r=x,\u212a=ext,z=".encode(),  # the user name is not checked; extensions are allowed
        b"n,,n=,r=x,m=later-is-fine",
    ],
)
def test_acceptable_client_first(impl, data):
    server = impl.scram.ScramServer(RFC_VERIFIER, _server_nonce="S")
    nonce = data.split(b",r=")[1].split(b",")[0]
    reply = server.handle(initial_response(data))
    assert reply == m.authentication_sasl_continue(b"r=" + nonce + b"S,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")


# --------------------------------------------------------------------------- malformed client-final

WITHOUT_PROOF = RFC_CLIENT_FINAL.split(b",p=")[0]


@pytest.mark.parametrize(
    ("final", "message"),
    [
        (RFC_CLIENT_FINAL + b"\x00", "malformed SCRAM client-final-message: contains a NUL byte"),
        (b"\x00\xff", "malformed SCRAM client-final-message: contains a NUL byte"),
        (RFC_CLIENT_FINAL.replace(b"$", b"\xff"), "malformed SCRAM client-final-message: not valid UTF-8"),
        (b"c=biws,r=\xed\xbf\xbf,p=", "malformed SCRAM client-final-message: not valid UTF-8"),
        (WITHOUT_PROOF, "malformed SCRAM client-final-message: no proof"),
        (b"", "malformed SCRAM client-final-message: no proof"),
        (b",p", "malformed SCRAM client-final-message: no proof"),
        (WITHOUT_PROOF + b",P=" + RFC_PROOF, "malformed SCRAM client-final-message: no proof"),
        (b",p=" + RFC_PROOF, "malformed SCRAM client-final-message: expected attribute=value"),
        (b"c=biws,,r=x,p=", "malformed SCRAM client-final-message: expected attribute=value"),
        (b"c=biws,r,p=", "malformed SCRAM client-final-message: expected attribute=value"),
        (b"c=biws,r=x,9=y,p=", "malformed SCRAM client-final-message: expected attribute=value"),
        (b"r=x,c=biws,p=" + RFC_PROOF, "malformed SCRAM client-final-message: expected c= and r="),
        (b"c=biws,p=" + RFC_PROOF, "malformed SCRAM client-final-message: expected c= and r="),
        (b"c=biws,s=x,r=y,p=", "malformed SCRAM client-final-message: expected c= and r="),
        ("\u212a=biws,r=x,p=".encode(), "malformed SCRAM client-final-message: expected c= and r="),
        (b"c=!!!!,r=x,p=", "malformed SCRAM message: channel-binding attribute is not valid base64"),
        (b"c=biw,r=x,p=", "malformed SCRAM message: channel-binding attribute is not valid base64"),
        (b"c=biws=,r=x,p=", "malformed SCRAM message: channel-binding attribute is not valid base64"),
        (b"c=b===,r=x,p=", "malformed SCRAM message: channel-binding attribute is not valid base64"),
        (b"c==biw,r=x,p=", "malformed SCRAM message: channel-binding attribute is not valid base64"),
        (b"c=bi=s,r=x,p=", "malformed SCRAM message: channel-binding attribute is not valid base64"),
        (b"c=biws\n,r=x,p=", "malformed SCRAM message: channel-binding attribute is not valid base64"),
        ("c=biwsé,r=x,p=".encode(), "malformed SCRAM message: channel-binding attribute is not valid base64"),
        (
            WITHOUT_PROOF.replace(b"biws", b"eSws") + b",p=",
            "unexpected SCRAM channel-binding attribute in client-final-message",
        ),
        (
            WITHOUT_PROOF.replace(b"biws", b"") + b",p=",
            "unexpected SCRAM channel-binding attribute in client-final-message",
        ),
        (
            WITHOUT_PROOF.replace(b"biws", b"bg==") + b",p=",
            "unexpected SCRAM channel-binding attribute in client-final-message",
        ),
        (
            WITHOUT_PROOF.replace(b"biws", b"biwsbg==") + b",p=",
            "unexpected SCRAM channel-binding attribute in client-final-message",
        ),
        (
            WITHOUT_PROOF.replace(b"biws", b"biw=") + b",p=",
            "unexpected SCRAM channel-binding attribute in client-final-message",
        ),
        (WITHOUT_PROOF.replace(b"k0", b"k1") + b",p=", "invalid SCRAM response: nonce does not match"),
        (b"c=biws,r=" + RFC_CLIENT_NONCE.encode() + b",p=", "invalid SCRAM response: nonce does not match"),
        (b"c=biws,r=" + RFC_NONCE + b"x,p=", "invalid SCRAM response: nonce does not match"),
        (b"c=biws,r=,p=", "invalid SCRAM response: nonce does not match"),
        (WITHOUT_PROOF + b",p=" + RFC_PROOF + b",x=extra", "malformed SCRAM message: client proof is not valid base64"),
        (WITHOUT_PROOF + b",p=" + RFC_PROOF[:-1], "malformed SCRAM message: client proof is not valid base64"),
        (WITHOUT_PROOF + b",p=" + RFC_PROOF + b"=", "malformed SCRAM message: client proof is not valid base64"),
        (
            WITHOUT_PROOF + b",p=" + RFC_PROOF.replace(b"+", b"-"),
            "malformed SCRAM message: client proof is not valid base64",
        ),
        (WITHOUT_PROOF + b",p=c2hvcnQ=", "malformed SCRAM client-final-message: proof has the wrong length"),
        (WITHOUT_PROOF + b",p=", "malformed SCRAM client-final-message: proof has the wrong length"),
        (WITHOUT_PROOF + b",p=" + RFC_PROOF[:-4], "malformed SCRAM client-final-message: proof has the wrong length"),
        (
            WITHOUT_PROOF + b",p=" + base64.b64encode(bytes(33)),
            "malformed SCRAM client-final-message: proof has the wrong length",
        ),
    ],
)
def test_malformed_client_final(impl, final, message):
    server = rfc_server_after_first(impl)
    raises_violation(lambda: server.handle(final), message)
    assert not server.done
    raises_violation(lambda: server.handle(RFC_CLIENT_FINAL), EXCHANGE_OVER)


BINDING_INVALID = "malformed SCRAM message: channel-binding attribute is not valid base64"
BINDING_UNEXPECTED = "unexpected SCRAM channel-binding attribute in client-final-message"


@pytest.mark.parametrize(
    ("binding", "expected"),
    [
        (b"biws", None),
        (b"", BINDING_UNEXPECTED),
        (b"biwt", BINDING_UNEXPECTED),  # "n,-"
        (b"bg==", BINDING_UNEXPECTED),
        (b"bh==", BINDING_UNEXPECTED),  # "n": the unused bits are ignored
        (b"biw=", BINDING_UNEXPECTED),
        (b"biwsbg==", BINDING_UNEXPECTED),
        (b"biwsbmk=", BINDING_UNEXPECTED),
        (b"+/+/", BINDING_UNEXPECTED),
        # Excess padding after a whole quad: base64.b64decode(validate=True) lets it through before Python 3.13.
        (b"biws=", BINDING_INVALID),
        (b"biws==", BINDING_INVALID),
        (b"biws====", BINDING_INVALID),
        (b"bi===", BINDING_INVALID),
        (b"biw==", BINDING_INVALID),
        (b"b===", BINDING_INVALID),
        (b"====", BINDING_INVALID),
        (b"=biw", BINDING_INVALID),
        (b"bi=s", BINDING_INVALID),
        (b"biws=a", BINDING_INVALID),
        (b"biwsbg", BINDING_INVALID),
        (b"biwsb", BINDING_INVALID),
        (b"biwsbg=", BINDING_INVALID),
        (b"biws biws", BINDING_INVALID),
        (b"biws\n", BINDING_INVALID),
        (b"A", BINDING_INVALID),
        (b"AB", BINDING_INVALID),
        (b"ABC", BINDING_INVALID),
        (b"bi-_", BINDING_INVALID),  # the URL-safe alphabet is not base64 here
    ],
)
def test_channel_binding_base64_is_strict(impl, binding, expected):
    server = rfc_server_after_first(impl)
    final = b"c=" + binding + b",r=" + RFC_NONCE + b",p=" + RFC_PROOF
    if expected is None:
        assert server.handle(final) == m.authentication_sasl_final(RFC_SERVER_FINAL)
    else:
        raises_violation(lambda: server.handle(final), expected)
    if sys.version_info >= (3, 13):  # the same rule as Python's own strict decoder
        try:
            python_says = BINDING_UNEXPECTED if base64.b64decode(binding, validate=True) != b"n,," else None
        except binascii.Error:
            python_says = BINDING_INVALID
        assert python_says == expected


def test_a_non_canonical_but_valid_proof_encoding_is_accepted(impl):
    # Like base64.b64decode, unused low bits before the padding are ignored: the proof decodes to the same bytes.
    assert RFC_PROOF.endswith(b"VQ=")
    server = rfc_server_after_first(impl)
    assert server.handle(WITHOUT_PROOF + b",p=" + RFC_PROOF[:-2] + b"R=") == m.authentication_sasl_final(
        RFC_SERVER_FINAL
    )


# --------------------------------------------------------------------------- twin parity

PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != ",")
names = st.sampled_from(["n", "r", "m", "c", "p", "a", "x", "N", "\u212a", "\u0130", "é", "1", "", "nn"])
values = st.one_of(
    st.text(alphabet=PRINTABLE, max_size=8),
    st.text(alphabet="abc=, é\x00\x01\u212a", max_size=6),
    st.sampled_from(["user", RFC_CLIENT_NONCE, "biws", "eSws"]),
)
attribute_lists = st.lists(st.tuples(names, st.sampled_from(["=", "", "=="]), values), max_size=4).map(
    lambda parts: ",".join(name + eq + value for name, eq, value in parts)
)
text_bytes = st.one_of(
    attribute_lists.map(lambda text: text.encode("utf-8")),
    attribute_lists.map(lambda text: text.encode("utf-8")[:-1]),  # possibly cut inside a character
    st.binary(max_size=40),
)
gs2_headers = st.sampled_from([b"n,,", b"y,,", b"p=x,,", b"n,a=b,", b"n,", b"n", b"x,,", b"", b"n,,n=user,r=abc,"])
client_first_data = st.one_of(st.none(), st.builds(lambda header, rest: header + rest, gs2_headers, text_bytes))
mechanisms = st.sampled_from(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "scram-sha-256", "", "x'\\"])
client_first_bodies = st.one_of(
    st.builds(initial_response, client_first_data, mechanisms),
    st.builds(lambda data: initial_response(data)[:-1], client_first_data),  # a data length that lies
    st.binary(max_size=60),
    st.just(initial_response(RFC_CLIENT_FIRST)),
)
base64ish = st.one_of(
    st.text(alphabet="biwseSAB+/=é ", max_size=9).map(lambda text: text.encode()),
    st.sampled_from([b"biws", b"eSws", b"bg==", RFC_PROOF, RFC_PROOF[:-2] + b"R=", b"c2hvcnQ="]),
    st.binary(max_size=12).map(base64.b64encode),
)
nonces = st.one_of(st.sampled_from([RFC_NONCE, RFC_NONCE[:-1], RFC_NONCE + b"x", b""]), values.map(str.encode))
# Mostly the shape of a real client-final-message, with each part sometimes wrong, to reach the deep checks.
well_formed_finals = st.builds(
    lambda binding, nonce, extra, proof_key, proof: b"c=" + binding + b",r=" + nonce + extra + proof_key + proof,
    st.one_of(st.just(b"biws"), base64ish),
    st.one_of(st.just(RFC_NONCE), nonces),
    st.sampled_from([b"", b"", b"", b"", b",x=1", b",m=", b",\xff", b",,"]),
    st.sampled_from([b",p=", b",p=", b",p=", b",p=", b",p", b",P=", b"p=", b",p=,p="]),
    # the right proof, wrong ones (AuthenticationFailed) and malformed ones
    st.one_of(st.just(RFC_PROOF), st.binary(min_size=32, max_size=32).map(base64.b64encode), base64ish),
)
client_final_bodies = st.one_of(
    well_formed_finals,
    well_formed_finals,
    well_formed_finals,
    attribute_lists.map(lambda text: text.encode("utf-8")),
    st.binary(max_size=60),
)


def outcome(call):
    """What a call returned, or the error it raised, in a comparable form."""
    try:
        return ("ok", call())
    except Exception as exc:  # any exception must match between the twins
        return ("error", type(exc), str(exc))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=client_first_bodies, final=client_final_bodies)
def test_twins_agree_on_arbitrary_exchanges(twins, first, final):
    servers = [rfc_server(twin) for twin in twins]
    for message in (first, final, final):
        results = [outcome(lambda server=server, message=message: server.handle(message)) for server in servers]
        assert results[0] == results[1]
        assert servers[0].done == servers[1].done
        if results[0][0] == "error":
            assert results[0][1] in (ProtocolViolation, AuthenticationFailed)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(final=client_final_bodies)
def test_twins_agree_on_arbitrary_client_finals(twins, final):
    servers = [rfc_server_after_first(twin) for twin in twins]
    results = [outcome(lambda server=server: server.handle(final)) for server in servers]
    assert results[0] == results[1]
    assert servers[0].done == servers[1].done
