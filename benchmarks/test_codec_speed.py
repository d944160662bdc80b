"""Codec micro-benchmarks: compiled vs pure framing of a DataRow-heavy stream and SQL classification."""

from __future__ import annotations

import struct

import pytest

from rdsproxy._codec import IMPLEMENTATIONS


def _message(mtype: bytes, body: bytes) -> bytes:
    return mtype + struct.pack("!i", len(body) + 4) + body


def _backend_stream(rows: int = 20_000) -> bytes:
    row = _message(b"D", struct.pack("!h", 3) + b"".join(struct.pack("!i", 8) + b"abcdefgh" for _ in range(3)))
    return (
        _message(b"T", b"\x00\x03" + b"c\x00" + b"\x00" * 18 * 3)
        + row * rows
        + _message(b"C", b"SELECT 20000\x00")
        + _message(b"Z", b"I")
    )


SQL_MIX = [
    b"SELECT * FROM accounts WHERE id = $1",
    b"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 42",
    b"BEGIN; SET LOCAL statement_timeout = '5s'; SELECT pg_advisory_xact_lock(1); COMMIT",
    b"/* app:checkout */ INSERT INTO orders (id, note) VALUES (1, 'it''s -- not a comment')",
    b"SELECT $$ SET x = 1 $$, E'\\' DISCARD ALL', \"LISTEN\" FROM t",
]


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request):
    return IMPLEMENTATIONS[request.param]


def test_scan_backend_stream(benchmark, impl):
    stream = _backend_stream()
    chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]

    def scan() -> int:
        scanner = impl.ServerScanner()
        return sum(len(scanner.feed(chunk)) for chunk in chunks)

    assert benchmark(scan) == 1
    benchmark.extra_info["MB"] = len(stream) / 1e6


def test_classify_sql_mix(benchmark, impl):
    classify = impl.classify_pg

    def run() -> int:
        return sum(classify(sql) for _ in range(200) for sql in SQL_MIX)

    benchmark(run)
    benchmark.extra_info["statements"] = 200 * len(SQL_MIX)
