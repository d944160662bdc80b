"""Opening the data path's sockets: listeners and outgoing connections on the relay, or on asyncio's transports."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
from typing import Any, Optional

import pytest

from rdsproxy import sockets
from rdsproxy._codec import Relay

TIMEOUT = 10


class Echo(asyncio.Protocol):
    """Sends back what it receives; records the transport it was given."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.received = bytearray()
        self.got = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.got.set()


@pytest.fixture(params=["relay", "asyncio"])
async def relay(request: pytest.FixtureRequest) -> Any:
    if request.param == "asyncio":
        yield None
        return
    relay = Relay(asyncio.get_running_loop())
    yield relay
    relay.close()


async def round_trip(relay: Any, host: str, port: int) -> tuple[Any, bytes]:
    transport, client = await asyncio.wait_for(sockets.open_connection(relay, Collect, host, port), TIMEOUT)
    transport.write(b"ping")
    while bytes(client.received) != b"ping":
        client.got.clear()
        await asyncio.wait_for(client.got.wait(), TIMEOUT)
    transport.close()
    return transport, bytes(client.received)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_listener_and_a_connection_carry_bytes_both_ways(relay: Any, host: str) -> None:
    echoes: list[Echo] = []

    def factory() -> Echo:
        echoes.append(Echo())
        return echoes[-1]

    server = await sockets.start_server(relay, factory, host, 0, backlog=16)
    try:
        port = server.sockets[0].getsockname()[1]
        transport, received = await round_trip(relay, host, port)
        assert received == b"ping"
        assert await asyncio.wait_for(echoes[0].lost, TIMEOUT) is None  # our close reached the server side
        on_relay = type(transport).__name__ == "RelayTransport"
        assert on_relay == (relay is not None)
        assert (type(echoes[0].transport).__name__ == "RelayTransport") == (relay is not None)
    finally:
        server.close()
        await server.wait_closed()


async def test_connecting_to_a_closed_port_raises_oserror(relay: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(OSError):
            await asyncio.wait_for(sockets.open_connection(relay, Collect, "127.0.0.1", port), TIMEOUT)
    if relay is not None:
        assert relay.connections == 0


async def test_a_closed_listener_refuses_new_connections(relay: Any) -> None:
    server = await sockets.start_server(relay, Echo, "127.0.0.1", 0, backlog=16)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await asyncio.wait_for(sockets.open_connection(relay, Collect, "127.0.0.1", port), TIMEOUT)


async def test_listening_on_a_port_in_use_raises_oserror(relay: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(OSError):
            await sockets.start_server(relay, Echo, "127.0.0.1", taken.getsockname()[1], backlog=16)


async def test_a_cancelled_or_failed_connect_leaves_no_socket_behind() -> None:
    # 192.0.2.0/24 (TEST-NET-1) is never routed: the connect hangs until the timeout cancels it, or fails at once
    relay = Relay(asyncio.get_running_loop())
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            with pytest.raises((asyncio.TimeoutError, OSError)):
                await asyncio.wait_for(sockets.open_connection(relay, Collect, "192.0.2.1", 9), 0.05)
        assert relay.connections == 0
        assert len(os.listdir("/proc/self/fd")) <= before  # not one socket per attempt left open
    finally:
        relay.close()


def test_literal_addresses_skip_the_resolver() -> None:
    assert sockets._literal_address("127.0.0.1", 5432) == [
        (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 5432))
    ]
    assert sockets._literal_address("::1", 5432)[0][0] == socket.AF_INET6  # type: ignore[index]
    assert sockets._literal_address("localhost", 5432) is None
    assert sockets._literal_address("fe80::1%lo", 5432) is None


def test_the_relay_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDSPROXY_RELAY", "0")
    assert not sockets.relay_enabled()
    monkeypatch.setenv("RDSPROXY_RELAY", "1")
    assert sockets.relay_enabled()


async def test_a_burst_beyond_one_accept_batch_is_served_whole() -> None:
    relay = Relay(asyncio.get_running_loop())
    server = await sockets.start_server(relay, Echo, "127.0.0.1", 0, backlog=512)
    clients: list[socket.socket] = []
    try:
        address = server.sockets[0].getsockname()
        for _ in range(sockets.ACCEPT_BATCH * 2 + 7):  # all waiting before the listener's first wake-up
            clients.append(socket.create_connection(address, timeout=TIMEOUT))
        for index, client in enumerate(clients):
            client.sendall(b"%d" % index)
        for index, client in enumerate(clients):
            expected = b"%d" % index
            received = b""
            while len(received) < len(expected):
                received += await asyncio.get_running_loop().run_in_executor(None, client.recv, 16)
            assert received == expected
        assert relay.connections == len(clients)
    finally:
        for client in clients:
            client.close()
        server.close()
        relay.close()


async def test_a_protocol_that_fails_to_start_costs_only_its_own_connection(caplog: pytest.LogCaptureFixture) -> None:
    relay = Relay(asyncio.get_running_loop())
    made: list[Echo] = []

    def factory() -> Echo:
        if not made:
            made.append(Echo())
            raise RuntimeError("the first protocol fails")
        made.append(Echo())
        return made[-1]

    server = await sockets.start_server(relay, factory, "127.0.0.1", 0, backlog=16)
    try:
        address = server.sockets[0].getsockname()
        with socket.create_connection(address, timeout=TIMEOUT) as first:
            assert await asyncio.get_running_loop().run_in_executor(None, first.recv, 1) == b""  # closed
        assert "could not set up a client connection" in caplog.text
        transport, received = await round_trip(None, "127.0.0.1", address[1])
        assert received == b"ping"
        assert relay.connections >= 1
    finally:
        server.close()
        relay.close()


async def test_running_out_of_descriptors_pauses_accepting_then_resumes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sockets, "ACCEPT_PAUSE", 0.2)
    relay = Relay(asyncio.get_running_loop())
    server = await sockets.start_server(relay, Echo, "127.0.0.1", 0, backlog=16)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with socket.create_connection(server.sockets[0].getsockname(), timeout=TIMEOUT) as client:
            lowest_free = os.dup(0)
            os.close(lowest_free)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor can be made
            try:
                for _ in range(200):
                    if "pausing for 0.2 s" in caplog.text:
                        break
                    await asyncio.sleep(0.01)
                assert "Too many open files" in caplog.text and "pausing for 0.2 s" in caplog.text
                assert relay.connections == 0
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            client.sendall(b"after the pause")
            received = b""
            while len(received) < 15:
                received += await asyncio.get_running_loop().run_in_executor(None, client.recv, 64)
            assert received == b"after the pause"
            assert relay.connections == 1
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        server.close()
        relay.close()
