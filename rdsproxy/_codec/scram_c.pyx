# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""SCRAM-SHA-256 server compiled with Cython: the fast twin of scram_py with the same API and behaviour.

A login runs here without Python glue: the client messages are parsed as bytes, SHA-256 (FIPS 180-4) is
computed in C from HMAC key states that ScramSecret prepares once per user, each reply is built into one
bytes object, and server nonces come from a pool of os.urandom output, so a login makes no getrandom call.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy, memset

import os
from operator import index

from ..errors import AuthenticationFailed, ProtocolViolation

__all__ = ["ScramSecret", "ScramServer", "hmac_sha256", "sha256"]

cdef enum:
    # Same sizes as PostgreSQL (SCRAM_RAW_NONCE_LEN, SCRAM_KEY_LEN).
    RAW_NONCE_BYTES = 18
    NONCE_CHARS = 24  # base64 of RAW_NONCE_BYTES, no padding
    KEY_BYTES = 32
    POOL_BYTES = 4096
    # Authentication request codes of the 'R' messages (messages.AUTH_SASL_CONTINUE, AUTH_SASL_FINAL).
    AUTH_SASL_CONTINUE = 11
    AUTH_SASL_FINAL = 12
    # Exchange steps.
    EXPECT_FIRST = 0
    EXPECT_FINAL = 1
    EXPECT_NOTHING = 2

cdef long long _MAX_ITERATIONS = 2**31 - 1

# AuthenticationSASL offering SCRAM-SHA-256 only: 'R', length 23, code 10 (AUTH_SASL), the name, the list's end.
cdef bytes _AUTHENTICATION_SASL = b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"


# --------------------------------------------------------------------------- SHA-256 (FIPS 180-4)

# Section 4.2.2: the first 32 bits of the fractional parts of the cube roots of the first 64 primes.
cdef uint32_t _K[64]
_K[:] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]

# Section 5.3.3: the first 32 bits of the fractional parts of the square roots of the first 8 primes.
cdef uint32_t _H0[8]
_H0[:] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]


cdef struct Sha256:
    uint32_t h[8]
    uint64_t total  # bytes fed so far, the key block of an HMAC state included
    Py_ssize_t used  # bytes waiting in block
    unsigned char block[64]


cdef inline uint32_t _rotr(uint32_t x, int n) noexcept nogil:
    return (x >> n) | (x << (32 - n))


cdef inline uint32_t _load_be32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline void _store_be32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>(v >> 24)
    p[1] = <unsigned char>(v >> 16)
    p[2] = <unsigned char>(v >> 8)
    p[3] = <unsigned char>v


cdef void _compress(uint32_t* h, const unsigned char* block) noexcept nogil:
    """Section 6.2.2: one 512-bit block into the hash value h."""
    cdef uint32_t w[64]
    cdef uint32_t a, b, c, d, e, f, g, hh, t1, t2
    cdef int t
    for t in range(16):
        w[t] = _load_be32(block + 4 * t)
    for t in range(16, 64):
        w[t] = (
            (_rotr(w[t - 2], 17) ^ _rotr(w[t - 2], 19) ^ (w[t - 2] >> 10))
            + w[t - 7]
            + (_rotr(w[t - 15], 7) ^ _rotr(w[t - 15], 18) ^ (w[t - 15] >> 3))
            + w[t - 16]
        )
    a = h[0]
    b = h[1]
    c = h[2]
    d = h[3]
    e = h[4]
    f = h[5]
    g = h[6]
    hh = h[7]
    for t in range(64):
        t1 = hh + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g)) + _K[t] + w[t]
        t2 = (_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))
        hh = g
        g = f
        f = e
        e = d + t1
        d = c
        c = b
        b = a
        a = t1 + t2
    h[0] += a
    h[1] += b
    h[2] += c
    h[3] += d
    h[4] += e
    h[5] += f
    h[6] += g
    h[7] += hh


cdef inline void _sha_init(Sha256* ctx) noexcept nogil:
    memcpy(ctx.h, _H0, sizeof(ctx.h))
    ctx.total = 0
    ctx.used = 0


cdef inline void _sha_resume(Sha256* ctx, const uint32_t* state) noexcept nogil:
    """A state that has hashed one 64-byte block (an HMAC key block) and nothing else."""
    memcpy(ctx.h, state, sizeof(ctx.h))
    ctx.total = 64
    ctx.used = 0


cdef void _sha_update(Sha256* ctx, const unsigned char* data, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t take
    ctx.total += <uint64_t>n
    if ctx.used:
        take = 64 - ctx.used
        if take > n:
            take = n
        memcpy(ctx.block + ctx.used, data, take)
        ctx.used += take
        data += take
        n -= take
        if ctx.used < 64:
            return
        _compress(ctx.h, ctx.block)
        ctx.used = 0
    while n >= 64:
        _compress(ctx.h, data)
        data += 64
        n -= 64
    if n:
        memcpy(ctx.block, data, n)
        ctx.used = n


cdef void _sha_final(Sha256* ctx, unsigned char* out) noexcept nogil:
    """Section 5.1.1 padding: 0x80, zeros, the message length in bits as 64-bit big-endian; then the digest."""
    cdef uint64_t bits = ctx.total << 3
    cdef int i
    ctx.block[ctx.used] = 0x80
    ctx.used += 1
    if ctx.used > 56:
        memset(ctx.block + ctx.used, 0, 64 - ctx.used)
        _compress(ctx.h, ctx.block)
        ctx.used = 0
    memset(ctx.block + ctx.used, 0, 56 - ctx.used)
    _store_be32(ctx.block + 56, <uint32_t>(bits >> 32))
    _store_be32(ctx.block + 60, <uint32_t>bits)
    _compress(ctx.h, ctx.block)
    for i in range(8):
        _store_be32(out + 4 * i, ctx.h[i])


cdef void _hmac_states(const unsigned char* key, Py_ssize_t n, uint32_t* inner, uint32_t* outer) noexcept nogil:
    """RFC 2104: the SHA-256 states after the (key XOR ipad) and (key XOR opad) blocks."""
    cdef unsigned char block[64]
    cdef unsigned char digest[KEY_BYTES]
    cdef Sha256 ctx
    cdef int i
    if n > 64:  # a long key is replaced by its hash
        _sha_init(&ctx)
        _sha_update(&ctx, key, n)
        _sha_final(&ctx, digest)
        key = digest
        n = KEY_BYTES
    memset(block, 0, 64)
    memcpy(block, key, n)
    for i in range(64):
        block[i] ^= 0x36
    memcpy(inner, _H0, 32)
    _compress(inner, block)
    for i in range(64):
        block[i] ^= 0x36 ^ 0x5C
    memcpy(outer, _H0, 32)
    _compress(outer, block)
    memset(block, 0, 64)


cdef void _hmac_final(Sha256* ctx, const uint32_t* outer, unsigned char* out) noexcept nogil:
    """Ends an HMAC whose message went into ctx (started from the inner state): out = H(outer || H(inner || m))."""
    cdef unsigned char inner_digest[KEY_BYTES]
    _sha_final(ctx, inner_digest)
    _sha_resume(ctx, outer)
    _sha_update(ctx, inner_digest, KEY_BYTES)
    _sha_final(ctx, out)


def sha256(data):
    """SHA-256 digest of a bytes-like object."""
    cdef Py_buffer view
    cdef Sha256 ctx
    cdef unsigned char digest[KEY_BYTES]
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        _sha_init(&ctx)
        _sha_update(&ctx, <const unsigned char*>view.buf, view.len)
        _sha_final(&ctx, digest)
    finally:
        PyBuffer_Release(&view)
    return PyBytes_FromStringAndSize(<char*>digest, KEY_BYTES)


def hmac_sha256(key, message):
    """HMAC-SHA-256 (RFC 2104) of a bytes-like message under a bytes-like key of any length."""
    cdef Py_buffer key_view, message_view
    cdef Sha256 ctx
    cdef uint32_t inner[8]
    cdef uint32_t outer[8]
    cdef unsigned char digest[KEY_BYTES]
    PyObject_GetBuffer(key, &key_view, PyBUF_SIMPLE)
    try:
        _hmac_states(<const unsigned char*>key_view.buf, key_view.len, inner, outer)
    finally:
        PyBuffer_Release(&key_view)
    PyObject_GetBuffer(message, &message_view, PyBUF_SIMPLE)
    try:
        _sha_resume(&ctx, inner)
        _sha_update(&ctx, <const unsigned char*>message_view.buf, message_view.len)
        _hmac_final(&ctx, outer, digest)
    finally:
        PyBuffer_Release(&message_view)
    return PyBytes_FromStringAndSize(<char*>digest, KEY_BYTES)


# --------------------------------------------------------------------------- base64 (RFC 4648, standard alphabet)

cdef const char* _B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
cdef unsigned char _B64_VALUE[256]  # 0xFF: not in the alphabet ('=' included)


cdef void _init_base64_values() noexcept:
    cdef int i
    memset(_B64_VALUE, 0xFF, 256)
    for i in range(64):
        _B64_VALUE[<unsigned char>_B64_ALPHABET[i]] = <unsigned char>i


_init_base64_values()


cdef Py_ssize_t _b64encode(const unsigned char* src, Py_ssize_t n, unsigned char* out) noexcept nogil:
    """Padded base64 of n bytes into out (4 * ceil(n / 3) bytes); returns that length."""
    cdef Py_ssize_t i = 0, o = 0
    cdef uint32_t v
    while n - i >= 3:
        v = (<uint32_t>src[i] << 16) | (<uint32_t>src[i + 1] << 8) | src[i + 2]
        out[o] = _B64_ALPHABET[v >> 18]
        out[o + 1] = _B64_ALPHABET[(v >> 12) & 63]
        out[o + 2] = _B64_ALPHABET[(v >> 6) & 63]
        out[o + 3] = _B64_ALPHABET[v & 63]
        i += 3
        o += 4
    if n - i == 1:
        v = <uint32_t>src[i] << 16
        out[o] = _B64_ALPHABET[v >> 18]
        out[o + 1] = _B64_ALPHABET[(v >> 12) & 63]
        out[o + 2] = b"="
        out[o + 3] = b"="
        o += 4
    elif n - i == 2:
        v = (<uint32_t>src[i] << 16) | (<uint32_t>src[i + 1] << 8)
        out[o] = _B64_ALPHABET[v >> 18]
        out[o + 1] = _B64_ALPHABET[(v >> 12) & 63]
        out[o + 2] = _B64_ALPHABET[(v >> 6) & 63]
        out[o + 3] = b"="
        o += 4
    return o


cdef Py_ssize_t _b64decode(const unsigned char* src, Py_ssize_t n, unsigned char* out, Py_ssize_t cap) noexcept nogil:
    """Decoded length of strict base64 (whole quads, the last one possibly padded: scram_py's _BASE64, what
    base64.b64decode with validate=True accepts on Python 3.13+), or -1 for anything else. Only the first `cap`
    bytes are written. As in binascii, the unused bits before the padding need not be zero."""
    cdef Py_ssize_t pads = 0, data_chars, length, i, o = 0
    cdef uint32_t v = 0
    cdef unsigned char c
    if n & 3:
        return -1
    if n and src[n - 1] == b"=":
        pads = 2 if src[n - 2] == b"=" else 1
    data_chars = n - pads
    length = data_chars * 3 // 4
    for i in range(data_chars):
        c = _B64_VALUE[src[i]]
        if c == 0xFF:
            return -1
        v = (v << 6) | c
        if i & 3 == 3:
            if o < cap:
                out[o] = <unsigned char>(v >> 16)
            if o + 1 < cap:
                out[o + 1] = <unsigned char>(v >> 8)
            if o + 2 < cap:
                out[o + 2] = <unsigned char>v
            o += 3
            v = 0
    if pads == 2:  # two characters: one byte
        if o < cap:
            out[o] = <unsigned char>(v >> 4)
    elif pads == 1:  # three characters: two bytes
        if o < cap:
            out[o] = <unsigned char>(v >> 10)
        if o + 1 < cap:
            out[o + 1] = <unsigned char>(v >> 2)
    return length


# --------------------------------------------------------------------------- server nonces

# os.urandom output handed out RAW_NONCE_BYTES at a time: one getrandom call per ~227 logins instead of one each.
cdef unsigned char _pool[POOL_BYTES]
cdef Py_ssize_t _pool_pos = POOL_BYTES  # empty: filled at the first login
_urandom = os.urandom


cdef int _draw_nonce(unsigned char* out) except -1:
    """RAW_NONCE_BYTES fresh random bytes, each handed out once (and wiped from the pool)."""
    global _pool_pos
    cdef bytes fresh
    if _pool_pos > POOL_BYTES - RAW_NONCE_BYTES:
        fresh = _urandom(POOL_BYTES)  # releases the GIL; the pool is only touched once it returns
        if PyBytes_GET_SIZE(fresh) != POOL_BYTES:
            raise RuntimeError("os.urandom returned a short block")
        memcpy(_pool, PyBytes_AS_STRING(fresh), POOL_BYTES)
        _pool_pos = 0
    memcpy(out, _pool + _pool_pos, RAW_NONCE_BYTES)
    memset(_pool + _pool_pos, 0, RAW_NONCE_BYTES)
    _pool_pos += RAW_NONCE_BYTES
    return 0


def _forget_pool():
    """After fork the child must not hand out the nonces its parent will: it starts a pool of its own."""
    global _pool_pos
    memset(_pool, 0, POOL_BYTES)
    _pool_pos = POOL_BYTES


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


# --------------------------------------------------------------------------- SCRAM text

cdef bint _valid_utf8(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Well-formed UTF-8 (Unicode table 3-7): what bytes.decode("utf-8") accepts (no surrogates, no overlongs)."""
    cdef Py_ssize_t i = 0
    cdef unsigned char c, c1
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
        elif c < 0xC2:  # a continuation byte, or an overlong two-byte lead
            return False
        elif c < 0xE0:
            if n - i < 2 or s[i + 1] & 0xC0 != 0x80:
                return False
            i += 2
        elif c < 0xF0:
            if n - i < 3:
                return False
            c1 = s[i + 1]
            if c1 & 0xC0 != 0x80 or s[i + 2] & 0xC0 != 0x80:
                return False
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0):  # overlong, surrogate
                return False
            i += 3
        elif c < 0xF5:
            if n - i < 4:
                return False
            c1 = s[i + 1]
            if c1 & 0xC0 != 0x80 or s[i + 2] & 0xC0 != 0x80 or s[i + 3] & 0xC0 != 0x80:
                return False
            if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):  # overlong, past U+10FFFF
                return False
            i += 4
        else:
            return False
    return True


cdef int _check_text(const unsigned char* s, Py_ssize_t n, str what) except -1:
    if memchr(s, 0, n) != NULL:
        raise ProtocolViolation(f"malformed SCRAM {what}: contains a NUL byte")
    if not _valid_utf8(s, n):
        raise ProtocolViolation(f"malformed SCRAM {what}: not valid UTF-8")
    return 0


cdef struct Attributes:
    Py_ssize_t count
    int name0  # the attribute letter, or -1 for one of the two non-ASCII names Python accepts
    int name1
    Py_ssize_t value0  # value spans, as offsets into the text
    Py_ssize_t end0
    Py_ssize_t value1
    Py_ssize_t end1


cdef bint _split_attributes(const unsigned char* s, Py_ssize_t n, Attributes* out) noexcept nogil:
    """"a=value,b=value" (valid UTF-8): False unless every comma-separated part is a letter, '=' and a value.

    Names are characters whose str.lower() lies between "a" and "z", as scram_py checks them: the ASCII letters,
    and U+0130 (lower() is "i" + U+0307) and U+212A KELVIN SIGN (lower() is "k"). The first two are kept.
    """
    cdef Py_ssize_t start = 0, end, width
    cdef const unsigned char* comma
    cdef unsigned char c
    cdef int name
    out.count = 0
    while True:
        comma = <const unsigned char*>memchr(s + start, b",", n - start)
        end = n if comma == NULL else comma - s
        if end == start:
            return False
        c = s[start]
        if c < 0x80:
            if not (b"a" <= (c | 0x20) <= b"z"):
                return False
            name = c
            width = 1
        elif end - start >= 2 and c == 0xC4 and s[start + 1] == 0xB0:  # U+0130
            name = -1
            width = 2
        elif end - start >= 3 and c == 0xE2 and s[start + 1] == 0x84 and s[start + 2] == 0xAA:  # U+212A
            name = -1
            width = 3
        else:
            return False
        if end - start <= width or s[start + width] != b"=":
            return False
        if out.count == 0:
            out.name0 = name
            out.value0 = start + width + 1
            out.end0 = end
        elif out.count == 1:
            out.name1 = name
            out.value1 = start + width + 1
            out.end1 = end
        out.count += 1
        if end == n:
            return True
        start = end + 1


# --------------------------------------------------------------------------- server side


cdef bytes _as_bytes(value):
    return value if PyBytes_CheckExact(value) else bytes(memoryview(value))


cdef bytes _key(value, str what):
    cdef bytes key = _as_bytes(value)
    if PyBytes_GET_SIZE(key) != KEY_BYTES:
        raise ValueError(f"SCRAM {what} must be {KEY_BYTES} bytes, got {PyBytes_GET_SIZE(key)}")
    return key


@cython.final
@cython.auto_pickle(False)
cdef class ScramSecret:
    """A user's SCRAM-SHA-256 secret, with what every login can reuse prepared once: the HMAC key states of
    StoredKey and ServerKey, and the "s=<salt>,i=<iterations>" text of the server-first message.

    Build one per (user, password), from the four values or from_verifier(auth.ScramVerifier), and hand it to
    each ScramServer.
    """

    cdef readonly bytes salt
    cdef readonly long long iterations
    cdef readonly bytes stored_key
    cdef readonly bytes server_key
    cdef bytes _salt_and_iterations
    cdef uint32_t _stored_inner[8]
    cdef uint32_t _stored_outer[8]
    cdef uint32_t _server_inner[8]
    cdef uint32_t _server_outer[8]

    # __cinit__, not __init__: no instance exists with its fields unset (the C code reads them unchecked)
    def __cinit__(self, salt, iterations, stored_key, server_key):
        cdef bytes salt_bytes = _as_bytes(salt)
        cdef bytes salt_text
        cdef object count = index(iterations)
        if not 1 <= count <= _MAX_ITERATIONS:
            raise ValueError(f"SCRAM iteration count must be between 1 and {_MAX_ITERATIONS}")
        self.salt = salt_bytes
        self.iterations = count
        self.stored_key = _key(stored_key, "stored_key")
        self.server_key = _key(server_key, "server_key")
        salt_text = PyBytes_FromStringAndSize(NULL, (PyBytes_GET_SIZE(salt_bytes) + 2) // 3 * 4)
        _b64encode(
            <const unsigned char*>PyBytes_AS_STRING(salt_bytes),
            PyBytes_GET_SIZE(salt_bytes),
            <unsigned char*>PyBytes_AS_STRING(salt_text),
        )
        self._salt_and_iterations = b"s=" + salt_text + b",i=" + str(self.iterations).encode("ascii")
        _hmac_states(
            <const unsigned char*>PyBytes_AS_STRING(self.stored_key), KEY_BYTES, self._stored_inner, self._stored_outer
        )
        _hmac_states(
            <const unsigned char*>PyBytes_AS_STRING(self.server_key), KEY_BYTES, self._server_inner, self._server_outer
        )

    @classmethod
    def from_verifier(cls, verifier):
        """The secret of anything with salt, iterations, stored_key and server_key (e.g. auth.ScramVerifier)."""
        if isinstance(verifier, cls):
            return verifier
        return cls(verifier.salt, verifier.iterations, verifier.stored_key, verifier.server_key)

    def __repr__(self):  # the keys stay out of logs, as in ScramVerifier
        return f"ScramSecret(salt={self.salt!r}, iterations={self.iterations})"

    def __reduce__(self):
        return (ScramSecret, (self.salt, self.iterations, self.stored_key, self.server_key))


@cython.final
@cython.auto_pickle(False)
@cython.freelist(8)
cdef class ScramServer:
    """Verifies a client's SCRAM-SHA-256 login (no channel binding) against a ScramSecret.

    Usage: send start(); feed each 'p' message body from the client to handle() and send what it
    returns; once ``done`` is True, follow with AuthenticationOk. A wrong password raises
    AuthenticationFailed, a malformed exchange raises ProtocolViolation. `secret` may also be anything
    ScramSecret.from_verifier takes (an auth.ScramVerifier).
    """

    cdef ScramSecret _secret
    cdef bytes _fixed_nonce  # tests only; None: a random nonce per login
    cdef int _expecting
    cdef unsigned char _gs2_flag  # b"n" or b"y"
    # The client-first body, and where its client-first-message-bare lies in it.
    cdef bytes _first_body
    cdef Py_ssize_t _bare_start
    cdef Py_ssize_t _bare_len
    # The AuthenticationSASLContinue sent: the server-first-message starts at byte 9 with "r=<nonce>,".
    cdef bytes _first_reply
    cdef Py_ssize_t _nonce_len
    cdef readonly bint done

    def __cinit__(self, secret, *, _server_nonce=None):
        self._secret = secret if isinstance(secret, ScramSecret) else ScramSecret.from_verifier(secret)
        self._fixed_nonce = None if _server_nonce is None else _server_nonce.encode("ascii")
        self._expecting = EXPECT_FIRST
        self.done = False

    def start(self):
        return _AUTHENTICATION_SASL

    def handle(self, body):
        cdef int expecting = self._expecting
        cdef bytes reply
        self._expecting = EXPECT_NOTHING  # any exception ends the exchange
        if expecting == EXPECT_FIRST:
            reply = self._client_first(_as_bytes(body))
            self._expecting = EXPECT_FINAL
            return reply
        if expecting == EXPECT_FINAL:
            reply = self._client_final(_as_bytes(body))
            self.done = True
            return reply
        raise ProtocolViolation("unexpected SASL message: the SCRAM exchange is over")

    cdef bytes _client_first(self, bytes body):
        cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(body)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
        cdef Py_ssize_t name_len, pos, i, client_nonce_len, server_nonce_len, first_len
        cdef int32_t length
        cdef const unsigned char* data
        cdef const unsigned char* nul
        cdef Attributes attributes
        cdef unsigned char raw_nonce[RAW_NONCE_BYTES]
        cdef bytes reply
        cdef bytes salt_and_iterations = self._secret._salt_and_iterations
        cdef unsigned char* out

        # SASLInitialResponse: mechanism name, NUL, Int32 data length (-1: none), data.
        nul = <const unsigned char*>memchr(b, 0, n)
        if nul == NULL:
            raise ProtocolViolation("SASL mechanism name is not NUL-terminated")
        name_len = nul - b
        for i in range(name_len):
            if b[i] >= 0x80:
                raise ProtocolViolation("SASL mechanism name is not ASCII")
        pos = name_len + 1
        if n - pos < 4:
            raise ProtocolViolation("SASLInitialResponse is missing its data length")
        length = <int32_t>_load_be32(b + pos)
        pos += 4
        if length == -1:
            if pos != n:
                raise ProtocolViolation(f"SASLInitialResponse has {n - pos} unexpected trailing bytes")
        elif length < 0 or n - pos != length:
            raise ProtocolViolation(f"SASLInitialResponse declares {length} data bytes but carries {n - pos}")
        if name_len != 13 or memcmp(b, b"SCRAM-SHA-256", 13) != 0:
            mechanism = body[:name_len].decode("ascii")
            raise ProtocolViolation(f"client selected an invalid SASL authentication mechanism {mechanism!r}")
        if length <= 0:
            raise ProtocolViolation("malformed SCRAM client-first-message: empty")

        # client-first-message: gs2-header ("n,," or "y,,"), then client-first-message-bare.
        data = b + pos
        _check_text(data, length, "client-first-message")
        if length >= 2 and data[0] == b"p" and data[1] == b"=":
            raise ProtocolViolation("client requested SCRAM channel binding, but the proxy offers only SCRAM-SHA-256")
        # 'y' means the client could bind but believes we cannot: true, since we offer no -PLUS.
        if length < 2 or (data[0] != b"n" and data[0] != b"y") or data[1] != b",":
            raise ProtocolViolation("malformed SCRAM client-first-message: bad channel-binding flag")
        if length >= 4 and data[2] == b"a" and data[3] == b"=":
            raise ProtocolViolation("client uses a SCRAM authorization identity, which is not supported")
        if length < 3 or data[2] != b",":
            raise ProtocolViolation("malformed SCRAM client-first-message: bad GS2 header")
        if not _split_attributes(data + 3, length - 3, &attributes):
            raise ProtocolViolation("malformed SCRAM client-first-message: expected attribute=value")
        if attributes.name0 == b"m":
            raise ProtocolViolation("client requires an unsupported SCRAM extension")
        # The user name ("n=") is ignored, as in PostgreSQL: the startup packet names the user.
        if attributes.count < 2 or attributes.name0 != b"n" or attributes.name1 != b"r":
            raise ProtocolViolation("malformed SCRAM client-first-message: expected n= and r=")
        client_nonce_len = attributes.end1 - attributes.value1
        if client_nonce_len == 0:
            raise ProtocolViolation("malformed SCRAM client-first-message: bad nonce")
        for i in range(attributes.value1, attributes.end1):
            # RFC 5802 "printable": %x21-2B / %x2D-7E (visible ASCII except the comma).
            if not (0x21 <= data[3 + i] <= 0x7E) or data[3 + i] == b",":
                raise ProtocolViolation("malformed SCRAM client-first-message: bad nonce")

        # server-first-message: "r=" client nonce + server nonce "," "s=<salt>,i=<iterations>".
        server_nonce_len = NONCE_CHARS if self._fixed_nonce is None else PyBytes_GET_SIZE(self._fixed_nonce)
        first_len = 2 + client_nonce_len + server_nonce_len + 1 + PyBytes_GET_SIZE(salt_and_iterations)
        reply = PyBytes_FromStringAndSize(NULL, 9 + first_len)
        out = <unsigned char*>PyBytes_AS_STRING(reply)
        out[0] = b"R"
        _store_be32(out + 1, <uint32_t>(8 + first_len))
        _store_be32(out + 5, AUTH_SASL_CONTINUE)
        out[9] = b"r"
        out[10] = b"="
        memcpy(out + 11, data + 3 + attributes.value1, client_nonce_len)
        out += 11 + client_nonce_len
        if self._fixed_nonce is None:
            _draw_nonce(raw_nonce)
            _b64encode(raw_nonce, RAW_NONCE_BYTES, out)
        else:
            memcpy(out, PyBytes_AS_STRING(self._fixed_nonce), server_nonce_len)
        out += server_nonce_len
        out[0] = b","
        memcpy(out + 1, PyBytes_AS_STRING(salt_and_iterations), PyBytes_GET_SIZE(salt_and_iterations))

        self._gs2_flag = data[0]
        self._first_body = body
        self._bare_start = pos + 3
        self._bare_len = length - 3
        self._first_reply = reply
        self._nonce_len = client_nonce_len + server_nonce_len
        return reply

    cdef bytes _client_final(self, bytes body):
        cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(body)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
        cdef Py_ssize_t proof_start, i
        cdef Attributes attributes
        cdef unsigned char binding[3]
        cdef unsigned char proof[KEY_BYTES]
        cdef unsigned char signature[KEY_BYTES]
        cdef unsigned char digest[KEY_BYTES]
        cdef unsigned char difference = 0
        cdef const unsigned char* server_first = <const unsigned char*>PyBytes_AS_STRING(self._first_reply) + 9
        cdef Py_ssize_t server_first_len = PyBytes_GET_SIZE(self._first_reply) - 9
        cdef ScramSecret secret = self._secret
        cdef Sha256 ctx
        cdef bytes reply
        cdef unsigned char* out

        # client-final-message: "c=<base64 gs2 header>,r=<nonce>[,extensions],p=<base64 proof>"
        _check_text(b, n, "client-final-message")
        # The last ",p=": a client proof is base64, so no comma follows it in a well-formed message.
        proof_start = n - 3
        while proof_start >= 0 and (b[proof_start] != b"," or b[proof_start + 1] != b"p" or b[proof_start + 2] != b"="):
            proof_start -= 1
        if proof_start < 0:
            raise ProtocolViolation("malformed SCRAM client-final-message: no proof")
        if not _split_attributes(b, proof_start, &attributes):
            raise ProtocolViolation("malformed SCRAM client-final-message: expected attribute=value")
        if attributes.count < 2 or attributes.name0 != b"c" or attributes.name1 != b"r":
            raise ProtocolViolation("malformed SCRAM client-final-message: expected c= and r=")
        i = _b64decode(b + attributes.value0, attributes.end0 - attributes.value0, binding, 3)
        if i < 0:
            raise ProtocolViolation("malformed SCRAM message: channel-binding attribute is not valid base64")
        if i != 3 or binding[0] != self._gs2_flag or binding[1] != b"," or binding[2] != b",":
            raise ProtocolViolation("unexpected SCRAM channel-binding attribute in client-final-message")
        if (
            attributes.end1 - attributes.value1 != self._nonce_len
            or memcmp(b + attributes.value1, server_first + 2, self._nonce_len) != 0
        ):
            raise ProtocolViolation("invalid SCRAM response: nonce does not match")
        i = _b64decode(b + proof_start + 3, n - proof_start - 3, proof, KEY_BYTES)
        if i < 0:
            raise ProtocolViolation("malformed SCRAM message: client proof is not valid base64")
        if i != KEY_BYTES:
            raise ProtocolViolation("malformed SCRAM client-final-message: proof has the wrong length")

        # AuthMessage = client-first-message-bare "," server-first-message "," client-final-message-without-proof
        # ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); the password is right if H(ClientKey) = StoredKey.
        _sha_resume(&ctx, secret._stored_inner)
        self._auth_message(&ctx, b, proof_start, server_first, server_first_len)
        _hmac_final(&ctx, secret._stored_outer, signature)
        for i in range(KEY_BYTES):
            proof[i] ^= signature[i]
        _sha_init(&ctx)
        _sha_update(&ctx, proof, KEY_BYTES)
        _sha_final(&ctx, digest)
        # Constant time: every byte is compared, whatever the first difference.
        for i in range(KEY_BYTES):
            difference |= digest[i] ^ (<const unsigned char*>PyBytes_AS_STRING(secret.stored_key))[i]
        memset(proof, 0, KEY_BYTES)
        if difference:
            raise AuthenticationFailed("SCRAM authentication failed: wrong password")

        # server-final-message: "v=" base64(HMAC(ServerKey, AuthMessage)).
        _sha_resume(&ctx, secret._server_inner)
        self._auth_message(&ctx, b, proof_start, server_first, server_first_len)
        _hmac_final(&ctx, secret._server_outer, signature)
        reply = PyBytes_FromStringAndSize(NULL, 9 + 2 + 44)
        out = <unsigned char*>PyBytes_AS_STRING(reply)
        out[0] = b"R"
        _store_be32(out + 1, 8 + 2 + 44)
        _store_be32(out + 5, AUTH_SASL_FINAL)
        out[9] = b"v"
        out[10] = b"="
        _b64encode(signature, KEY_BYTES, out + 11)
        return reply

    cdef void _auth_message(
        self, Sha256* ctx, const unsigned char* final, Py_ssize_t without_proof_len,
        const unsigned char* server_first, Py_ssize_t server_first_len
    ) noexcept:
        _sha_update(ctx, <const unsigned char*>PyBytes_AS_STRING(self._first_body) + self._bare_start, self._bare_len)
        _sha_update(ctx, <const unsigned char*>b",", 1)
        _sha_update(ctx, server_first, server_first_len)
        _sha_update(ctx, <const unsigned char*>b",", 1)
        _sha_update(ctx, final, without_proof_len)
