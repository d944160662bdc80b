"""PostgreSQL authentication machines: SCRAM-SHA-256 and MD5 towards clients, and towards backends."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass, field

# The server side of SCRAM is a codec (compiled when built): auth.ScramServer is the active twin's. The SCRAM text
# helpers live in its pure twin, shared with the client side below.
from rdsproxy._codec import ScramSecret as ScramSecret
from rdsproxy._codec import ScramServer as ScramServer
from rdsproxy._codec.scram_py import (
    b64decode,
    b64encode,
    decode_scram_text,
    is_printable_nonce,
    new_nonce,
    scram_attributes,
)
from rdsproxy.errors import AuthenticationFailed, ProtocolViolation
from rdsproxy.protocol.pg.messages import (
    AUTH_CLEARTEXT_PASSWORD,
    AUTH_GSS,
    AUTH_GSS_CONTINUE,
    AUTH_KERBEROS_V5,
    AUTH_MD5_PASSWORD,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    AUTH_SCM_CREDENTIAL,
    AUTH_SSPI,
    authentication_md5_password,
    cleartext_password_message,
    md5_password_message,
    md5_password_response,
    parse_authentication,
    parse_password,
    parse_sasl_mechanisms,
    sasl_initial_response,
    sasl_response,
)

SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"
DEFAULT_SCRAM_ITERATIONS = 4096

# Same size as PostgreSQL (SCRAM_DEFAULT_SALT_LEN).
_SALT_BYTES = 16
_KEY_BYTES = 32
_MAX_ITERATIONS = 2**31 - 1

# "n,,": no channel binding, no authorization identity.
_CLIENT_GS2_HEADER = "n,,"

_UNSUPPORTED_METHODS = {
    AUTH_KERBEROS_V5: "Kerberos V5",
    AUTH_SCM_CREDENTIAL: "SCM credential",
    AUTH_GSS: "GSSAPI",
    AUTH_GSS_CONTINUE: "GSSAPI",
    AUTH_SSPI: "SSPI",
}


# --------------------------------------------------------------------------- SCRAM primitives


def saslprep_password(password: str) -> bytes:
    """Password bytes as PostgreSQL's pg_saslprep prepares them for SCRAM.

    ASCII passwords are used as they are. Otherwise the RFC 4013 mapping and NFKC normalization
    apply; when the password is prohibited by SASLprep (or is not valid Unicode), PostgreSQL falls
    back to the raw UTF-8 bytes, and so do we, so hashes match the server's. Like PostgreSQL, the
    prohibition and bidi checks look at the mapped, not yet normalized, characters.
    """
    if password.isascii():
        return password.encode("ascii")
    raw = password.encode("utf-8", "surrogateescape")
    if any(0xD800 <= ord(char) <= 0xDFFF for char in password):
        return raw
    mapped: list[str] = []
    for char in password:
        if stringprep.in_table_c12(char):
            mapped.append(" ")
        elif not stringprep.in_table_b1(char):
            mapped.append(char)
    if not mapped:
        return raw
    for char in mapped:
        if _is_prohibited_output(char) or stringprep.in_table_a1(char):
            return raw
    if any(stringprep.in_table_d1(char) for char in mapped):
        if any(stringprep.in_table_d2(char) for char in mapped):
            return raw
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return raw
    return unicodedata.normalize("NFKC", "".join(mapped)).encode("utf-8")


def _is_prohibited_output(char: str) -> bool:
    return (
        stringprep.in_table_c12(char)
        or stringprep.in_table_c21_c22(char)
        or stringprep.in_table_c3(char)
        or stringprep.in_table_c4(char)
        or stringprep.in_table_c5(char)
        or stringprep.in_table_c6(char)
        or stringprep.in_table_c7(char)
        or stringprep.in_table_c8(char)
        or stringprep.in_table_c9(char)
    )


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")  # one-shot in C: no HMAC object per call


def _derive_keys(prepared_password: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) from a SASLprep'ed password, per RFC 5802."""
    salted_password = hashlib.pbkdf2_hmac("sha256", prepared_password, salt, iterations, _KEY_BYTES)
    return _hmac_sha256(salted_password, b"Client Key"), _hmac_sha256(salted_password, b"Server Key")


# A backend role's salt and iteration count are fixed until its password changes, so every new
# backend connection for the same user would repeat the same PBKDF2; cache its result.
_cached_derive_keys = functools.lru_cache(maxsize=256)(_derive_keys)


def _xor(left: bytes, right: bytes) -> bytes:
    if len(left) != len(right):  # a malformed proof: zip's truncation makes it fail verification, not raise
        return bytes(a ^ b for a, b in zip(left, right))
    # as integers: one operation instead of a Python step per byte (this runs for every backend login)
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).to_bytes(len(left), "big")


def _escape_saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


# --------------------------------------------------------------------------- server side (clients)


@dataclass(frozen=True)
class ScramVerifier:
    """A user's SCRAM-SHA-256 secret; compute once per (user, password) and reuse for every login."""

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    @classmethod
    def from_password(
        cls, password: str, *, iterations: int = DEFAULT_SCRAM_ITERATIONS, salt: bytes | None = None
    ) -> ScramVerifier:
        if not 1 <= iterations <= _MAX_ITERATIONS:
            raise ValueError(f"SCRAM iteration count must be between 1 and {_MAX_ITERATIONS}")
        if salt is None:
            salt = secrets.token_bytes(_SALT_BYTES)
        client_key, server_key = _derive_keys(saslprep_password(password), salt, iterations)
        return cls(
            salt=salt,
            iterations=iterations,
            stored_key=hashlib.sha256(client_key).digest(),
            server_key=server_key,
        )


class Md5Server:
    """Verifies a client's MD5 password answer (send start(), then check() the 'p' body)."""

    def __init__(self, username: str, password: str, *, _salt: bytes | None = None) -> None:
        self._username = username
        self._salt = _salt if _salt is not None else secrets.token_bytes(4)
        self._expected = md5_password_response(username, password, self._salt)

    def start(self) -> bytes:
        return authentication_md5_password(self._salt)

    def check(self, body: bytes) -> None:
        answer = parse_password(body)
        if not hmac.compare_digest(answer, self._expected):
            raise AuthenticationFailed(f'password authentication failed for user "{self._username}"')


# --------------------------------------------------------------------------- client side (backends)


class BackendAuthenticator:
    """Answers a backend's Authentication* requests with a user's credentials.

    Feed each 'R' message body to handle() and send back what it returns (if anything);
    ``ok`` turns True at AuthenticationOk. SCRAM runs without channel binding and verifies the
    server's signature; a backend that skips that proof is refused.
    """

    def __init__(self, username: str, password: str | None, *, _client_nonce: str | None = None) -> None:
        self._username = username
        self._password = password
        self._client_nonce = _client_nonce if _client_nonce is not None else new_nonce()
        self._scram_step = "not-started"
        self._client_first_bare = ""
        self._expected_server_signature = b""
        self.ok = False

    def handle(self, body: bytes) -> bytes | None:
        code, rest = parse_authentication(body)
        if self.ok:
            raise ProtocolViolation("backend sent an authentication request after AuthenticationOk")
        if code == AUTH_OK:
            return self._handle_ok(rest)
        if code == AUTH_CLEARTEXT_PASSWORD:
            password = self._require_password("cleartext password")
            if "\x00" in password:
                raise AuthenticationFailed("the configured password contains a NUL byte and cannot be sent")
            return cleartext_password_message(password)
        if code == AUTH_MD5_PASSWORD:
            if len(rest) != 4:
                raise ProtocolViolation("AuthenticationMD5Password must carry a 4-byte salt")
            return md5_password_message(self._username, self._require_password("MD5"), rest)
        if code == AUTH_SASL:
            return self._start_scram(parse_sasl_mechanisms(rest))
        if code == AUTH_SASL_CONTINUE:
            return self._answer_server_first(rest)
        if code == AUTH_SASL_FINAL:
            self._verify_server_final(rest)
            return None
        method = _UNSUPPORTED_METHODS.get(code, f"unknown (code {code})")
        raise AuthenticationFailed(f"backend requested {method} authentication, which rdsproxy does not support")

    def _handle_ok(self, rest: bytes) -> None:
        if rest:
            raise ProtocolViolation("AuthenticationOk has unexpected trailing bytes")
        if self._scram_step not in ("not-started", "verified"):
            raise AuthenticationFailed("backend ended SCRAM authentication without proving it knows the password")
        self.ok = True
        return None

    def _require_password(self, method: str) -> str:
        if self._password is None:
            raise AuthenticationFailed(
                f'backend requested {method} authentication but no password is configured for user "{self._username}"'
            )
        return self._password

    def _start_scram(self, mechanisms: list[str]) -> bytes:
        if self._scram_step != "not-started":
            raise ProtocolViolation("backend restarted SASL authentication")
        if SCRAM_SHA_256 not in mechanisms:
            if SCRAM_SHA_256_PLUS in mechanisms:
                raise AuthenticationFailed(
                    "backend offers only SCRAM-SHA-256-PLUS, but SCRAM channel binding is not supported"
                )
            raise AuthenticationFailed(
                f"backend offers no supported SASL mechanism (offered: {', '.join(mechanisms) or 'none'})"
            )
        self._require_password(SCRAM_SHA_256)
        self._client_first_bare = f"n={_escape_saslname(self._username)},r={self._client_nonce}"
        self._scram_step = "sent-client-first"
        return sasl_initial_response(SCRAM_SHA_256, f"{_CLIENT_GS2_HEADER}{self._client_first_bare}".encode())

    def _answer_server_first(self, data: bytes) -> bytes:
        if self._scram_step != "sent-client-first":
            raise ProtocolViolation("unexpected AuthenticationSASLContinue")
        self._scram_step = "failed"
        server_first = decode_scram_text(data, "server-first-message")
        attributes = scram_attributes(server_first, "server-first-message")
        if attributes[0][0] == "m":
            raise AuthenticationFailed("backend requires an unsupported SCRAM extension")
        if len(attributes) < 3 or [name for name, _ in attributes[:3]] != ["r", "s", "i"]:
            raise ProtocolViolation("malformed SCRAM server-first-message: expected r=, s= and i=")
        nonce, salt_text, iterations_text = (value for _, value in attributes[:3])
        if (
            not is_printable_nonce(nonce)
            or not nonce.startswith(self._client_nonce)
            or len(nonce) <= len(self._client_nonce)
        ):
            raise ProtocolViolation("invalid SCRAM response from backend: nonce mismatch")
        salt = b64decode(salt_text, "salt")
        if not salt:
            raise ProtocolViolation("malformed SCRAM server-first-message: empty salt")
        # PostgreSQL keeps the count in a C int; the length check also keeps int() from refusing huge strings.
        if (
            not (iterations_text.isascii() and iterations_text.isdigit())
            or len(iterations_text) > 10
            or not 1 <= int(iterations_text) <= _MAX_ITERATIONS
        ):
            raise ProtocolViolation("malformed SCRAM server-first-message: invalid iteration count")

        assert self._password is not None  # checked when the exchange started
        client_key, server_key = _cached_derive_keys(saslprep_password(self._password), salt, int(iterations_text))
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c={b64encode(_CLIENT_GS2_HEADER.encode('ascii'))},r={nonce}"
        auth_message = f"{self._client_first_bare},{server_first},{without_proof}".encode()
        proof = _xor(client_key, _hmac_sha256(stored_key, auth_message))
        self._expected_server_signature = _hmac_sha256(server_key, auth_message)
        self._scram_step = "sent-client-final"
        return sasl_response(f"{without_proof},p={b64encode(proof)}".encode("ascii"))

    def _verify_server_final(self, data: bytes) -> None:
        if self._scram_step != "sent-client-final":
            raise ProtocolViolation("unexpected AuthenticationSASLFinal")
        self._scram_step = "failed"
        server_final = decode_scram_text(data, "server-final-message")
        attributes = scram_attributes(server_final, "server-final-message")
        if attributes[0][0] == "e":
            raise AuthenticationFailed(f"backend rejected SCRAM authentication: {attributes[0][1]}")
        if attributes[0][0] != "v":
            raise ProtocolViolation("malformed SCRAM server-final-message: expected v=")
        server_signature = b64decode(attributes[0][1], "server signature")
        if not hmac.compare_digest(server_signature, self._expected_server_signature):
            raise AuthenticationFailed("SCRAM server signature mismatch")
        self._scram_step = "verified"
