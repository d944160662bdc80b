"""MySQL/MariaDB authentication: scramble formulas and the machines that log clients in and log in to backends.

Passwords are hashed as UTF-8. The proxy knows every user's plaintext password, so it can check the
caching_sha2_password fast-path answer itself and never needs the RSA or cleartext "full authentication".
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Callable

from rdsproxy.errors import AuthenticationFailed, ProtocolViolation
from rdsproxy.protocol.mysql.packets import (
    AUTH_MORE_DATA_HEADER,
    AUTH_SWITCH_HEADER,
    CLIENT_PLUGIN_AUTH,
    ERR_HEADER,
    MYSQL_NATIVE_PASSWORD,
    OK_HEADER,
    HandshakeResponse,
    ServerHandshake,
    auth_more_data,
    auth_switch_request,
    parse_auth_more_data,
    parse_auth_switch,
    parse_err,
    parse_ok,
)

CACHING_SHA2_PASSWORD = "caching_sha2_password"
MYSQL_CLEAR_PASSWORD = "mysql_clear_password"
CLIENT_METHODS = (MYSQL_NATIVE_PASSWORD, CACHING_SHA2_PASSWORD)

SCRAMBLE_LENGTH = 20
SHA2_DIGEST_LENGTH = 32

# caching_sha2_password AuthMoreData codes (MySQL sql/auth/sha2_password.cc).
SHA2_REQUEST_PUBLIC_KEY = b"\x02"
SHA2_FAST_AUTH_SUCCESS = b"\x03"
SHA2_PERFORM_FULL_AUTHENTICATION = b"\x04"

# Servers draw scramble bytes from 1..127 without '$' (MySQL generate_user_salt): no NUL, so the
# NUL-terminated form of the scramble in old packets stays intact.
_SCRAMBLE_ALPHABET = bytes(value for value in range(1, 128) if value != ord("$"))
_UNKNOWN_USER_PASSWORD = "rdsproxy-unknown-user"
_FULL_AUTH_NEEDS_TLS = (
    "full caching_sha2_password authentication needs TLS, which this connection does not use; "
    "the client must answer the fast-path scramble"
)


def scramble() -> bytes:
    """20 random bytes for a server handshake, from 1..127 without '$', as MySQL and MariaDB do."""
    return bytes(secrets.choice(_SCRAMBLE_ALPHABET) for _ in range(SCRAMBLE_LENGTH))


def _check_scramble(nonce: bytes) -> None:
    if len(nonce) != SCRAMBLE_LENGTH:
        raise ValueError(f"the scramble must be {SCRAMBLE_LENGTH} bytes, got {len(nonce)}")


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right))


def native_password_response(password: str, scramble: bytes) -> bytes:
    """mysql_native_password answer: SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw))); empty for no password."""
    _check_scramble(scramble)
    if not password:
        return b""
    stage1 = hashlib.sha1(password.encode("utf-8")).digest()
    stage2 = hashlib.sha1(stage1).digest()
    return _xor(stage1, hashlib.sha1(bytes(scramble) + stage2).digest())


def native_password_check(password: str, scramble: bytes, response: bytes) -> bool:
    """Whether a client's mysql_native_password answer proves ``password`` (constant-time comparison)."""
    return hmac.compare_digest(bytes(response), native_password_response(password, scramble))


def caching_sha2_fast_response(password: str, scramble: bytes) -> bytes:
    """caching_sha2_password fast-path answer: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + scramble),
    the order of MySQL's Generate_scramble (sql/auth/sha2_password_common.cc); empty for no password."""
    _check_scramble(scramble)
    if not password:
        return b""
    stage1 = hashlib.sha256(password.encode("utf-8")).digest()
    stage2 = hashlib.sha256(stage1).digest()
    return _xor(stage1, hashlib.sha256(stage2 + bytes(scramble)).digest())


def caching_sha2_check(password: str, scramble: bytes, response: bytes) -> bool:
    """Whether a fast-path answer proves ``password``; an empty password is answered by b"" or one NUL."""
    expected = caching_sha2_fast_response(password, scramble)
    if not expected and bytes(response) == b"\x00":
        return True
    return hmac.compare_digest(bytes(response), expected)


# --------------------------------------------------------------------------- server side (clients)


class ClientAuthenticator:
    """Authenticates a client that sent a HandshakeResponse41, with the method configured for its user.

    Usage: ``start(response)`` then ``handle(payload)`` for each further client packet; send every payload
    they return (framed with the next sequence ids). Once ``done`` is True, send OK. A wrong password, or an
    unknown user (``password=None``), raises AuthenticationFailed with the same message after the same
    exchange, so a client cannot tell them apart; the caller answers ERR 1045 (28000). A client whose
    plugin differs from ``method`` is sent an AuthSwitchRequest with the same scramble. A malformed
    exchange raises ProtocolViolation.
    """

    def __init__(self, *, password: str | None, method: str, scramble: bytes, tls: bool = False) -> None:
        if method not in CLIENT_METHODS:
            raise ValueError(f"client authentication method must be one of {CLIENT_METHODS}, got {method!r}")
        _check_scramble(scramble)
        self._password = password
        self._method = method
        self._scramble = bytes(scramble)
        self._tls = tls
        self._username = ""
        self._expecting = "handshake-response"
        self.done = False

    def start(self, response: HandshakeResponse) -> list[bytes]:
        if self._expecting != "handshake-response":
            raise ProtocolViolation("authentication already started")
        self._expecting = "nothing"  # any exception ends the exchange
        self._username = response.username
        # A client without plugin support (or naming none) answered with mysql_native_password.
        client_plugin = response.auth_plugin or MYSQL_NATIVE_PASSWORD
        if client_plugin == self._method:
            return self._check(response.auth_response)
        if not response.capabilities & CLIENT_PLUGIN_AUTH:
            raise AuthenticationFailed(
                "Client does not support authentication protocol requested by server; consider upgrading MySQL client"
            )
        self._expecting = "switch-response"
        return [auth_switch_request(self._method, self._scramble + b"\x00")]

    def handle(self, payload: bytes) -> list[bytes]:
        expecting, self._expecting = self._expecting, "nothing"
        if expecting != "switch-response":
            raise ProtocolViolation("unexpected packet: the authentication exchange is not waiting for one")
        return self._check(bytes(payload))

    def _check(self, answer: bytes) -> list[bytes]:
        if self._method == MYSQL_NATIVE_PASSWORD:
            if answer and len(answer) != SCRAMBLE_LENGTH:
                raise ProtocolViolation(f"mysql_native_password answer must be 20 bytes, got {len(answer)}")
            self._verify(answer, native_password_check)
            return []
        if answer == SHA2_REQUEST_PUBLIC_KEY or (answer and len(answer) != SHA2_DIGEST_LENGTH and answer != b"\x00"):
            # The client asked for the RSA key or sent its password in the clear: full authentication.
            return self._full_authentication(answer)
        self._verify(answer, caching_sha2_check)
        # MySQL sends OK straight away for an empty password; a fast-path success is announced first.
        return [auth_more_data(SHA2_FAST_AUTH_SUCCESS)] if len(answer) == SHA2_DIGEST_LENGTH else []

    def _full_authentication(self, answer: bytes) -> list[bytes]:
        if not self._tls or answer == SHA2_REQUEST_PUBLIC_KEY or not answer.endswith(b"\x00"):
            raise AuthenticationFailed(_FULL_AUTH_NEEDS_TLS)
        # Over TLS a client may send its password in the clear, NUL-terminated, as to a MySQL server.
        cleartext = answer[:-1]
        expected = (self._password or "").encode("utf-8")
        if self._password is None or not hmac.compare_digest(cleartext, expected):
            raise self._denied(using_password=True)
        self.done = True
        return []

    def _verify(self, answer: bytes, check: Callable[[str, bytes, bytes], bool]) -> None:
        if self._password is None:
            # Unknown user: do the same hashing as a real check, then fail exactly like a wrong password.
            check(_UNKNOWN_USER_PASSWORD, self._scramble, answer)
            raise self._denied(using_password=answer not in (b"", b"\x00"))
        if not check(self._password, self._scramble, answer):
            raise self._denied(using_password=answer not in (b"", b"\x00"))
        self.done = True

    def _denied(self, *, using_password: bool) -> AuthenticationFailed:
        return AuthenticationFailed(
            f"Access denied for user '{self._username}' (using password: {'YES' if using_password else 'NO'})"
        )


# --------------------------------------------------------------------------- client side (backends)


class BackendAuthenticator:
    """Logs in to a backend with a user's credentials.

    ``first_response(handshake)`` gives the plugin and answer for the HandshakeResponse41; then feed each
    server packet to ``handle()`` and send back what it returns (if anything). ``ok`` turns True at the OK
    packet. Speaks mysql_native_password, caching_sha2_password (fast path) and mysql_clear_password
    (which sends the password unencrypted: MariaDB allows it without TLS, so it is honoured when asked).
    ``password=None`` logs in with an empty password.
    """

    def __init__(self, username: str, password: str | None) -> None:
        self._username = username
        self._password = password or ""
        self._plugin = ""
        self._scramble = b""
        self._switched = False
        self._awaiting_sha2_result = False
        self.ok = False

    def first_response(self, handshake: ServerHandshake) -> tuple[str, bytes]:
        if self._plugin:
            raise ProtocolViolation("first_response() was already called")
        self._scramble = self._nonce(handshake.scramble, "server handshake")
        plugin = handshake.auth_plugin or MYSQL_NATIVE_PASSWORD
        if plugin not in (MYSQL_NATIVE_PASSWORD, CACHING_SHA2_PASSWORD):
            # Like other clients, answer with our default and let the server switch to the user's plugin.
            plugin = MYSQL_NATIVE_PASSWORD
        self._plugin = plugin
        return plugin, self._answer(plugin)

    def handle(self, payload: bytes) -> bytes | None:
        if self.ok:
            raise ProtocolViolation("server sent an authentication packet after OK")
        if not self._plugin:
            raise ProtocolViolation("handle() called before first_response()")
        if not payload:
            raise ProtocolViolation("empty packet during authentication")
        header = payload[0]
        if header == OK_HEADER:
            parse_ok(payload)
            self.ok = True
            return None
        if header == ERR_HEADER:
            error = parse_err(payload)
            raise AuthenticationFailed(
                f"the database refused the login: {error.code} ({error.sqlstate}) {error.message}"
            )
        if header == AUTH_SWITCH_HEADER:
            return self._switch(*parse_auth_switch(payload))
        if header == AUTH_MORE_DATA_HEADER:
            return self._more_data(parse_auth_more_data(payload))
        raise ProtocolViolation(f"unexpected packet 0x{header:02x} during authentication")

    def _switch(self, plugin: str, data: bytes) -> bytes:
        if self._switched:
            raise ProtocolViolation("server sent a second AuthSwitchRequest")
        self._switched = True
        self._awaiting_sha2_result = False
        if plugin == MYSQL_CLEAR_PASSWORD:
            self._plugin = plugin
            if "\x00" in self._password:
                raise AuthenticationFailed("the configured password contains a NUL byte and cannot be sent")
            return self._password.encode("utf-8") + b"\x00"
        if plugin not in (MYSQL_NATIVE_PASSWORD, CACHING_SHA2_PASSWORD):
            raise AuthenticationFailed(
                f"the database asked for authentication plugin '{plugin}', which rdsproxy does not speak"
            )
        # Servers send the scramble followed by a NUL.
        self._scramble = self._nonce(data[:-1] if data.endswith(b"\x00") else data, "AuthSwitchRequest")
        self._plugin = plugin
        return self._answer(plugin)

    def _more_data(self, data: bytes) -> None:
        if not self._awaiting_sha2_result:
            raise ProtocolViolation(f"unexpected AuthMoreData during {self._plugin} authentication")
        self._awaiting_sha2_result = False
        if data == SHA2_FAST_AUTH_SUCCESS:
            return None
        if data == SHA2_PERFORM_FULL_AUTHENTICATION:
            raise AuthenticationFailed(
                "the database needs full caching_sha2_password authentication, which needs TLS or RSA key "
                "exchange; rdsproxy speaks neither to backends yet (log in once directly to fill the server's cache)"
            )
        raise ProtocolViolation("unexpected caching_sha2_password AuthMoreData")

    def _answer(self, plugin: str) -> bytes:
        if plugin == MYSQL_NATIVE_PASSWORD:
            return native_password_response(self._password, self._scramble)
        answer = caching_sha2_fast_response(self._password, self._scramble)
        # MySQL answers a non-empty fast-path response with AuthMoreData; an empty password gets OK directly.
        self._awaiting_sha2_result = bool(answer)
        return answer

    @staticmethod
    def _nonce(data: bytes, where: str) -> bytes:
        if len(data) != SCRAMBLE_LENGTH:
            raise ProtocolViolation(f"{where} carries a {len(data)}-byte scramble, expected {SCRAMBLE_LENGTH}")
        return bytes(data)
