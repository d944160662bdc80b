"""SCRAM-SHA-256 server in pure Python: the twin of scram_c with the same API and behaviour.

The SCRAM text helpers (base64, attribute splitting, nonce rule) live here once: rdsproxy.protocol.pg.auth imports
them for its client side (BackendAuthenticator), so both directions parse SCRAM the same way.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import secrets
import struct
from operator import index
from typing import Any, Optional

from ..errors import AuthenticationFailed, ProtocolViolation

__all__ = ["ScramSecret", "ScramServer", "hmac_sha256", "sha256"]

SCRAM_SHA_256 = "SCRAM-SHA-256"

# Same sizes as PostgreSQL (SCRAM_RAW_NONCE_LEN, SCRAM_KEY_LEN).
_RAW_NONCE_BYTES = 18
_KEY_BYTES = 32
_MAX_ITERATIONS = 2**31 - 1

# Authentication request codes of the 'R' messages (messages.AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL).
_AUTH_SASL = 10
_AUTH_SASL_CONTINUE = 11
_AUTH_SASL_FINAL = 12
_INT32 = struct.Struct("!i")
_TWO_INT32 = struct.Struct("!ii")


def _authentication(code: int, rest: bytes) -> bytes:
    """An Authentication* ('R') message, as messages.authentication_sasl* build it."""
    return b"R" + _TWO_INT32.pack(len(rest) + 8, code) + rest


# AuthenticationSASL offering SCRAM-SHA-256 only: the same bytes for every login.
_AUTHENTICATION_SASL = _authentication(_AUTH_SASL, SCRAM_SHA_256.encode("ascii") + b"\x00\x00")


# --------------------------------------------------------------------------- hashing


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")  # one-shot in C: no HMAC object per call


# --------------------------------------------------------------------------- SCRAM text (shared with auth.py)


def b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


# Strict base64: whole quads, the last one possibly padded ("xx==" or "xxx="). That is what
# base64.b64decode(validate=True) accepts on Python 3.13+; older versions let some excess padding through
# ("biws=", and on 3.11 and 3.12 "biws===="), so the rule is spelled out: every Python, and scram_c, agree.
_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def b64decode(text: str, what: str) -> bytes:
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        data = b"*"  # not base64 either
    if _BASE64.fullmatch(data) is None:
        raise ProtocolViolation(f"malformed SCRAM message: {what} is not valid base64")
    return binascii.a2b_base64(data)


def new_nonce() -> str:
    return b64encode(secrets.token_bytes(_RAW_NONCE_BYTES))


# RFC 5802 "printable": %x21-2B / %x2D-7E (visible ASCII except the comma).
_PRINTABLE_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")


def is_printable_nonce(nonce: str) -> bool:
    return _PRINTABLE_NONCE.fullmatch(nonce) is not None


def decode_scram_text(data: bytes, what: str) -> str:
    if b"\x00" in data:
        raise ProtocolViolation(f"malformed SCRAM {what}: contains a NUL byte")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(f"malformed SCRAM {what}: not valid UTF-8") from None


def scram_attributes(text: str, what: str) -> list[tuple[str, str]]:
    """Split "a=value,b=value" into pairs; SCRAM values never contain a comma."""
    attributes = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not ("a" <= part[0].lower() <= "z"):
            raise ProtocolViolation(f"malformed SCRAM {what}: expected attribute=value")
        attributes.append((part[0], part[2:]))
    return attributes


def parse_sasl_initial_response(body: bytes) -> tuple[str, Optional[bytes]]:
    """(mechanism, data or None for length -1) of a SASLInitialResponse ('p') body (messages' parser too)."""
    end = body.find(b"\x00")
    if end < 0:
        raise ProtocolViolation("SASL mechanism name is not NUL-terminated")
    try:
        mechanism = bytes(body[:end]).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolViolation("SASL mechanism name is not ASCII") from None
    pos = end + 1
    if len(body) - pos < 4:
        raise ProtocolViolation("SASLInitialResponse is missing its data length")
    (length,) = _INT32.unpack_from(body, pos)
    pos += 4
    if length == -1:
        if pos != len(body):
            raise ProtocolViolation(f"SASLInitialResponse has {len(body) - pos} unexpected trailing bytes")
        return mechanism, None
    if length < 0 or len(body) - pos != length:
        raise ProtocolViolation(f"SASLInitialResponse declares {length} data bytes but carries {len(body) - pos}")
    return mechanism, bytes(body[pos:])


# --------------------------------------------------------------------------- server side


def _as_bytes(value: Any) -> bytes:
    return value if type(value) is bytes else bytes(memoryview(value))


def _key(value: Any, what: str) -> bytes:
    key = _as_bytes(value)
    if len(key) != _KEY_BYTES:
        raise ValueError(f"SCRAM {what} must be {_KEY_BYTES} bytes, got {len(key)}")
    return key


class ScramSecret:
    """A user's SCRAM-SHA-256 secret, with what every login can reuse prepared once (the salt text).

    Build one per (user, password), from the four values or from_verifier(auth.ScramVerifier), and hand it to
    each ScramServer: the compiled twin also keeps the HMAC key states here, so a login hashes only its messages.
    """

    __slots__ = ("_salt", "_iterations", "_stored_key", "_server_key", "_salt_and_iterations")

    def __init__(self, salt: bytes, iterations: int, stored_key: bytes, server_key: bytes) -> None:
        salt = _as_bytes(salt)
        iterations = index(iterations)
        if not 1 <= iterations <= _MAX_ITERATIONS:
            raise ValueError(f"SCRAM iteration count must be between 1 and {_MAX_ITERATIONS}")
        self._salt = salt
        self._iterations = iterations
        self._stored_key = _key(stored_key, "stored_key")
        self._server_key = _key(server_key, "server_key")
        self._salt_and_iterations = f"s={b64encode(salt)},i={iterations}"

    @classmethod
    def from_verifier(cls, verifier: Any) -> ScramSecret:
        """The secret of anything with salt, iterations, stored_key and server_key (e.g. auth.ScramVerifier)."""
        if isinstance(verifier, cls):
            return verifier
        return cls(verifier.salt, verifier.iterations, verifier.stored_key, verifier.server_key)

    @property
    def salt(self) -> bytes:
        return self._salt

    @property
    def iterations(self) -> int:
        return self._iterations

    @property
    def stored_key(self) -> bytes:
        return self._stored_key

    @property
    def server_key(self) -> bytes:
        return self._server_key

    def __repr__(self) -> str:  # the keys stay out of logs, as in ScramVerifier
        return f"ScramSecret(salt={self._salt!r}, iterations={self._iterations})"

    def __reduce__(self) -> tuple:
        return (type(self), (self._salt, self._iterations, self._stored_key, self._server_key))


class ScramServer:
    """Verifies a client's SCRAM-SHA-256 login (no channel binding) against a ScramSecret.

    Usage: send start(); feed each 'p' message body from the client to handle() and send what it
    returns; once ``done`` is True, follow with AuthenticationOk. A wrong password raises
    AuthenticationFailed, a malformed exchange raises ProtocolViolation. `secret` may also be anything
    ScramSecret.from_verifier takes (an auth.ScramVerifier).
    """

    __slots__ = (
        "_secret",
        "_server_nonce",
        "_expecting",
        "_gs2_header",
        "_client_first_bare",
        "_server_first",
        "_combined_nonce",
        "done",
    )

    def __init__(self, secret: Any, *, _server_nonce: Optional[str] = None) -> None:
        self._secret = secret if isinstance(secret, ScramSecret) else ScramSecret.from_verifier(secret)
        # A fixed nonce (tests only) must be ASCII; a random one is drawn when the client-first message arrives.
        self._server_nonce = None if _server_nonce is None else _server_nonce.encode("ascii").decode("ascii")
        self._expecting = "client-first"
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._combined_nonce = ""
        self.done = False

    def start(self) -> bytes:
        return _AUTHENTICATION_SASL

    def handle(self, body: bytes) -> bytes:
        expecting, self._expecting = self._expecting, "nothing"  # any exception ends the exchange
        if expecting == "client-first":
            reply = self._handle_client_first(body)
            self._expecting = "client-final"
            return reply
        if expecting == "client-final":
            reply = self._handle_client_final(body)
            self.done = True
            return reply
        raise ProtocolViolation("unexpected SASL message: the SCRAM exchange is over")

    def _handle_client_first(self, body: bytes) -> bytes:
        mechanism, data = parse_sasl_initial_response(body)
        if mechanism != SCRAM_SHA_256:
            raise ProtocolViolation(f"client selected an invalid SASL authentication mechanism {mechanism!r}")
        if not data:
            raise ProtocolViolation("malformed SCRAM client-first-message: empty")
        text = decode_scram_text(data, "client-first-message")
        if text.startswith("p="):
            raise ProtocolViolation("client requested SCRAM channel binding, but the proxy offers only SCRAM-SHA-256")
        # 'y' means the client could bind but believes we cannot: true, since we offer no -PLUS.
        if not (text.startswith("n,") or text.startswith("y,")):
            raise ProtocolViolation("malformed SCRAM client-first-message: bad channel-binding flag")
        if text[2:].startswith("a="):
            raise ProtocolViolation("client uses a SCRAM authorization identity, which is not supported")
        if text[2:3] != ",":
            raise ProtocolViolation("malformed SCRAM client-first-message: bad GS2 header")
        self._gs2_header = text[:3]
        self._client_first_bare = text[3:]
        attributes = scram_attributes(self._client_first_bare, "client-first-message")
        if attributes[0][0] == "m":
            raise ProtocolViolation("client requires an unsupported SCRAM extension")
        # The user name ("n=") is ignored, as in PostgreSQL: the startup packet names the user.
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
            raise ProtocolViolation("malformed SCRAM client-first-message: expected n= and r=")
        client_nonce = attributes[1][1]
        if not is_printable_nonce(client_nonce):
            raise ProtocolViolation("malformed SCRAM client-first-message: bad nonce")
        server_nonce = self._server_nonce if self._server_nonce is not None else new_nonce()
        self._combined_nonce = client_nonce + server_nonce
        self._server_first = f"r={self._combined_nonce},{self._secret._salt_and_iterations}"
        return _authentication(_AUTH_SASL_CONTINUE, self._server_first.encode("ascii"))

    def _handle_client_final(self, body: bytes) -> bytes:
        text = decode_scram_text(body, "client-final-message")
        proof_start = text.rfind(",p=")
        if proof_start < 0:
            raise ProtocolViolation("malformed SCRAM client-final-message: no proof")
        without_proof = text[:proof_start]
        attributes = scram_attributes(without_proof, "client-final-message")
        if len(attributes) < 2 or attributes[0][0] != "c" or attributes[1][0] != "r":
            raise ProtocolViolation("malformed SCRAM client-final-message: expected c= and r=")
        channel_binding = b64decode(attributes[0][1], "channel-binding attribute")
        if channel_binding != self._gs2_header.encode("ascii"):
            raise ProtocolViolation("unexpected SCRAM channel-binding attribute in client-final-message")
        if attributes[1][1] != self._combined_nonce:
            raise ProtocolViolation("invalid SCRAM response: nonce does not match")
        proof = b64decode(text[proof_start + 3 :], "client proof")
        if len(proof) != _KEY_BYTES:
            raise ProtocolViolation("malformed SCRAM client-final-message: proof has the wrong length")

        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        secret = self._secret
        signature = hmac_sha256(secret.stored_key, auth_message)
        # as integers: one operation instead of a Python step per byte (this runs for every client login)
        client_key = (int.from_bytes(proof, "big") ^ int.from_bytes(signature, "big")).to_bytes(_KEY_BYTES, "big")
        if not hmac.compare_digest(sha256(client_key), secret.stored_key):
            raise AuthenticationFailed("SCRAM authentication failed: wrong password")
        server_signature = hmac_sha256(secret.server_key, auth_message)
        return _authentication(_AUTH_SASL_FINAL, f"v={b64encode(server_signature)}".encode("ascii"))
