"""The proxy's own per-transaction work on the PostgreSQL data path, without sockets (pytest-benchmark).

A client chunk (one pgbench -S Query) and the backend's answer go through PgClient.data_received and
PgBackend.data_received with a real TargetPool (borrow and release) and recording-free fake transports, so the
figure is what rdsproxy's code costs per transaction, apart from the event loop and the kernel. Run it twice to
compare the codec twins: as is, and with RDSPROXY_NO_EXTENSIONS=1.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from rdsproxy._codec import ACTIVE, Route
from rdsproxy.client import READY
from rdsproxy.metrics import EndpointStats, TargetStats
from rdsproxy.pg.backend import _FORWARD_INTERESTING, PgBackend
from rdsproxy.pg.client import PgClient
from rdsproxy.pool import TargetPool

TRANSACTIONS = 10_000


class _NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _message(mtype: bytes, body: bytes) -> bytes:
    return mtype + struct.pack("!i", len(body) + 4) + body


async def _never_connect(key: object) -> None:
    raise AssertionError("the benchmark's pool must not open connections")


@pytest.mark.benchmark(group="pg data path: one transaction, borrow to release, no sockets (transactions/s)")
def test_pg_transaction_data_path(benchmark):
    pool = TargetPool("t", _never_connect, TargetStats("t"), limit=20, max_idle_percent=100, idle_backend_timeout=60)
    engine = SimpleNamespace(exclude_variable_sets=False, borrow_timeout=60.0)
    route = Route()
    route.pool = pool
    engine.targets = SimpleNamespace(pool_for=lambda name: pool, route=lambda name: route)
    client = PgClient(engine, "default", EndpointStats("default"))  # type: ignore[arg-type]
    client.transport = _NullTransport()  # type: ignore[assignment]
    client.state = READY
    client.key = ("app", "app")
    client.framer.in_startup = False
    backend = PgBackend("t", "app", None, "app", engine)
    backend.transport = _NullTransport()  # type: ignore[assignment]
    backend.scanner.interesting = _FORWARD_INTERESTING
    backend.key = ("app", "app")
    backend.pool = pool
    pool._total = 1
    pool._open_backends.add(backend)
    pool._place(backend)
    request = _message(b"Q", b"SELECT abalance FROM pgbench_accounts WHERE aid = 4242;\x00")
    answer = (
        _message(b"T", struct.pack("!h", 1) + b"abalance\x00" + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0))
        + _message(b"D", struct.pack("!hi", 1, 1) + b"0")
        + _message(b"C", b"SELECT 1\x00")
        + _message(b"Z", b"I")
    )
    client_received, backend_received = client.data_received, backend.data_received

    def transactions() -> None:
        for _ in range(TRANSACTIONS):
            client_received(request)
            backend_received(answer)

    benchmark(transactions)
    assert client.session.outstanding == 0 and client.backend is None and pool.idle_count == 1
    assert client.stats.QueryRequests >= TRANSACTIONS
    benchmark.extra_info["transactions"] = TRANSACTIONS
    benchmark.extra_info["codecs"] = ACTIVE.name
