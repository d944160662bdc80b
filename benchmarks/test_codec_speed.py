"""Codec micro-benchmarks: compiled vs pure framing of realistic streams and classification of realistic SQL mixes.

Each benchmark records its input size in extra_info ("MB" or "statements"); the session summary (conftest.py)
turns the medians into MB/s or statements/s and the compiled/pure speed-up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import struct
from collections import deque

import pytest

from rdsproxy._codec import IMPLEMENTATIONS
from rdsproxy._codec.flags import PIN_MASK

CHUNK = 65536  # what one socket read typically hands the proxy under load
ROWS = 20_000
CLASSIFY_ROUNDS = 200


def _message(mtype: bytes, body: bytes) -> bytes:
    return mtype + struct.pack("!i", len(body) + 4) + body


def _cstring(text: bytes) -> bytes:
    return text + b"\x00"


def _backend_stream(rows: int = ROWS) -> bytes:
    """A PostgreSQL result set: RowDescription, DataRow-heavy body, CommandComplete, ReadyForQuery."""
    row = _message(b"D", struct.pack("!h", 3) + b"".join(struct.pack("!i", 8) + b"abcdefgh" for _ in range(3)))
    return (
        _message(b"T", b"\x00\x03" + b"c\x00" + b"\x00" * 18 * 3)
        + row * rows
        + _message(b"C", b"SELECT 20000\x00")
        + _message(b"Z", b"I")
    )


def _client_stream(transactions: int = ROWS) -> bytes:
    """What `pgbench -S -M extended` sends: Parse, Bind, Describe, Execute, Sync per transaction."""
    return b"".join(_client_transactions(transactions))


def _client_transactions(transactions: int) -> list[bytes]:
    sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
    parse = _message(b"P", _cstring(b"") + _cstring(sql) + struct.pack("!h", 0))
    describe = _message(b"D", b"P" + _cstring(b""))
    execute = _message(b"E", _cstring(b"") + struct.pack("!i", 0))
    sync = _message(b"S", b"")
    messages = []
    for aid in range(transactions):
        value = str(aid * 7919 % 100_000 + 1).encode()
        bind_body = _cstring(b"") + _cstring(b"") + struct.pack("!hhi", 0, 1, len(value)) + value + b"\x00\x00"
        messages.append(parse + _message(b"B", bind_body) + describe + execute + sync)
    return messages


def _mysql_packet(sequence: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([sequence & 0xFF]) + payload


def _lenenc_string(text: bytes) -> bytes:
    return bytes([len(text)]) + text


def _mysql_result_stream(rows: int = ROWS) -> bytes:
    """A MariaDB text result set of sysbench's sbtest shape (id, k, c), classic EOF framing."""
    column_names = (b"id", b"k", b"c")
    packets = [b"\x03"]  # column count
    for name in column_names:
        names = b"".join(_lenenc_string(part) for part in (b"def", b"app", b"sbtest1", b"sbtest1", name, name))
        packets.append(names + b"\x0c" + struct.pack("<HIBHB", 45, 255, 253, 0, 0) + b"\x00\x00")
    end_of_block = b"\xfe" + struct.pack("<HH", 0, 0x0002)  # EOF, status AUTOCOMMIT
    packets.append(end_of_block)
    filler = b"83868641912-28773972837-60736120486-75162659906-27563526494-20381887404-41576422241"
    for row in range(rows):
        packets.append(_lenenc_string(str(row + 1).encode()) + _lenenc_string(b"4993") + _lenenc_string(filler))
    packets.append(end_of_block)
    return b"".join(_mysql_packet(sequence + 1, payload) for sequence, payload in enumerate(packets))


def _chunks(stream: bytes) -> list[bytes]:
    return [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]


PG_SQL_MIX = [
    b"SELECT * FROM accounts WHERE id = $1",
    b"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 42",
    b"BEGIN; SET LOCAL statement_timeout = '5s'; SELECT pg_advisory_xact_lock(1); COMMIT",
    b"/* app:checkout */ INSERT INTO orders (id, note) VALUES (1, 'it''s -- not a comment')",
    b"SELECT $$ SET x = 1 $$, E'\\' DISCARD ALL', \"LISTEN\" FROM t",
]

MYSQL_SQL_MIX = [
    b"SELECT c FROM sbtest1 WHERE id=4993",
    b"UPDATE sbtest1 SET k=k+1 WHERE id=5012",
    b"START TRANSACTION; SELECT SUM(k) FROM sbtest1 WHERE id BETWEEN 10 AND 109; COMMIT",
    b"/* app:cart */ INSERT INTO `order` (id, note) VALUES (1, 'it\\'s -- not a comment')",
    b"SET @@session.sql_mode = 'ANSI_QUOTES'; SELECT GET_LOCK('x', 1) /*! STRAIGHT_JOIN */",
]


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request):
    return IMPLEMENTATIONS[request.param]


@pytest.mark.benchmark(group="codec: pg ServerScanner, DataRow-heavy result (MB/s)")
def test_scan_backend_stream(benchmark, impl):
    stream = _backend_stream()
    chunks = _chunks(stream)

    def scan() -> int:
        scanner = impl.ServerScanner()
        return sum(len(scanner.feed(chunk)) for chunk in chunks)

    assert benchmark(scan) == 1  # only ReadyForQuery is a state change
    benchmark.extra_info["MB"] = len(stream) / 1e6


@pytest.mark.benchmark(group="codec: pg ClientFramer, extended-protocol stream (MB/s)")
def test_frame_client_stream(benchmark, impl):
    stream = _client_stream()
    chunks = _chunks(stream)

    def frame() -> int:
        framer = impl.ClientFramer()
        framer.in_startup = False
        return sum(len(framer.feed(chunk)[1]) for chunk in chunks)

    assert benchmark(frame) == 5 * ROWS
    benchmark.extra_info["MB"] = len(stream) / 1e6


@pytest.mark.benchmark(group="codec: pg PgRequestState.take_plain, one pgbench transaction per chunk (MB/s)")
def test_account_client_requests(benchmark, impl):
    # The proxy's hot path for client bytes: each chunk (here one extended-protocol transaction, as pgbench
    # sends it) is accounted whole, its SQL classified, without framing it into a message list.
    chunks = _client_transactions(ROWS)
    framer = impl.ClientFramer()
    framer.in_startup = False

    def account() -> int:
        state = impl.PgRequestState()
        state.pin_mask = PIN_MASK
        requests = sum(state.take_plain(framer, chunk) for chunk in chunks)
        assert state.outstanding == ROWS
        return requests

    assert benchmark(account) == ROWS
    benchmark.extra_info["MB"] = sum(map(len, chunks)) / 1e6


@pytest.mark.benchmark(group="codec: MySQL response scanner, text result set (MB/s)")
def test_scan_mysql_result_stream(benchmark, impl):
    stream = _mysql_result_stream()
    chunks = _chunks(stream)
    com_query = 0x03

    def scan() -> list:
        scanner = impl.MyResponseScanner(False)
        scanner.expect(com_query)
        events: list = []
        for chunk in chunks:
            events += scanner.feed(chunk)
        return events

    events = benchmark(scan)
    assert len(events) == 1 and events[0][:2] == (1, 0x0002)  # one RESPONSE_DONE, status AUTOCOMMIT
    benchmark.extra_info["MB"] = len(stream) / 1e6


@pytest.mark.benchmark(group="codec: classify_pg, SQL mix (statements/s)")
def test_classify_sql_mix(benchmark, impl):
    classify = impl.classify_pg
    expected = {sql: IMPLEMENTATIONS["pure"].classify_pg(sql) for sql in PG_SQL_MIX}
    assert {sql: classify(sql) for sql in PG_SQL_MIX} == expected  # twins agree, so both do the same work

    def run() -> int:
        return sum(classify(sql) for _ in range(CLASSIFY_ROUNDS) for sql in PG_SQL_MIX)

    benchmark(run)
    benchmark.extra_info["statements"] = CLASSIFY_ROUNDS * len(PG_SQL_MIX)


@pytest.mark.benchmark(group="codec: classify_mysql, SQL mix (statements/s)")
def test_classify_mysql_mix(benchmark, impl):
    classify = impl.classify_mysql
    expected = {sql: IMPLEMENTATIONS["pure"].classify_mysql(sql) for sql in MYSQL_SQL_MIX}
    assert {sql: classify(sql) for sql in MYSQL_SQL_MIX} == expected  # twins agree, so both do the same work

    def run() -> int:
        return sum(classify(sql) for _ in range(CLASSIFY_ROUNDS) for sql in MYSQL_SQL_MIX)

    benchmark(run)
    benchmark.extra_info["statements"] = CLASSIFY_ROUNDS * len(MYSQL_SQL_MIX)


LATENCY_OBSERVATIONS = 100_000


def _latency_spread(count: int = LATENCY_OBSERVATIONS) -> list[int]:
    """Microsecond latencies shaped like a busy proxy's: mostly sub-millisecond loopback and same-zone round trips,
    a tail of slow queries, some zero-wait borrows and the odd multi-second outlier (fixed seed: repeatable)."""
    rng = random.Random(20240607)
    values = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.15:
            values.append(0)
        elif roll < 0.85:
            values.append(int(rng.lognormvariate(5.5, 0.6)))  # ~250 us median
        elif roll < 0.99:
            values.append(int(rng.lognormvariate(8.5, 1.0)))  # ~5 ms median
        else:
            values.append(rng.randrange(1_000_000, 90_000_000))
    return values


@pytest.mark.benchmark(group="codec: Latency.observe (observations/s)")
def test_latency_observe(benchmark, impl):
    values = _latency_spread()

    def run():
        latency = impl.Latency()
        # Driven from C (map into a zero-length deque): a Python for loop would add the same ~20 ns per value to
        # both twins and hide what observe() itself costs.
        deque(map(latency.observe, values), maxlen=0)
        return latency

    expected = IMPLEMENTATIONS["pure"].Latency()
    for us in values:
        expected.observe(us)
    latency = benchmark(run)
    # Twins agree, so both do the same work; and the spread reaches most buckets, not just one search path.
    assert (latency.count, latency.sum_us, latency.buckets) == (expected.count, expected.sum_us, expected.buckets)
    assert sum(1 for count in latency.buckets if count) >= len(latency.buckets) - 3
    benchmark.extra_info["observations"] = len(values)


SCRAM_LOGINS = 200


def _scram_logins(count: int) -> tuple[list[tuple[bytes, bytes]], bytes, bytes, int]:
    """`count` pairs of client-first and client-final bodies (a fixed server nonce per pair), and the user's secret."""
    salt, iterations = b"0123456789abcdef", 4096
    salted = hashlib.pbkdf2_hmac("sha256", b"app-secret", salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    logins = []
    for index in range(count):
        bare = f"n=,r=client{index:018d}"
        nonce = f"client{index:018d}server{index:018d}"
        first = b"SCRAM-SHA-256\0" + struct.pack("!i", len(bare) + 3) + b"n,," + bare.encode()
        server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        without_proof = f"c=biws,r={nonce}"
        signature = hmac.digest(stored_key, f"{bare},{server_first},{without_proof}".encode(), "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        logins.append((first, f"{without_proof},p={base64.b64encode(proof).decode()}".encode()))
    return logins, salt, stored_key + server_key, iterations


@pytest.mark.benchmark(group="codec: SCRAM-SHA-256 server exchange, cached secret (logins/s)")
def test_scram_server_exchange(benchmark, impl):
    logins, salt, keys, iterations = _scram_logins(SCRAM_LOGINS)
    secret = impl.ScramSecret(salt, iterations, keys[:32], keys[32:])
    nonces = [f"server{index:018d}" for index in range(SCRAM_LOGINS)]
    server_class = impl.ScramServer

    def run() -> int:
        done = 0
        for (first, final), nonce in zip(logins, nonces):
            server = server_class(secret, _server_nonce=nonce)
            server.handle(first)
            server.handle(final)
            done += server.done
        return done

    assert benchmark(run) == SCRAM_LOGINS  # every proof verified: both twins do the whole exchange
    benchmark.extra_info["logins"] = SCRAM_LOGINS
