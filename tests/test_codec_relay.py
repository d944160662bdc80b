"""The epoll relay's transports move bytes, flow-control, half-close and end as asyncio's do, compiled and pure."""

from __future__ import annotations

import array
import asyncio
import errno
import importlib
import os
import random
import select
import socket
import stat
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Optional

import pytest
from codec_impls import IMPLEMENTATION_NAMES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdsproxy._codec import extensions_disabled

TIMEOUT = 10.0  # every wait: a bug fails the test instead of hanging it
KIB = 1024
MIB = 1024 * KIB
MAX_CHUNK = 256 * KIB
BIG = 8 * MIB  # far more than a socket buffer holds: the transport must buffer and flow-control
DEFAULT_LIMITS = (16 * KIB, 64 * KIB)
KINDS = ("unix", "tcp")

_MODULES = {"compiled": "rdsproxy._codec.relay_c", "pure": "rdsproxy._codec.relay_py"}


@pytest.fixture(scope="module", params=IMPLEMENTATION_NAMES)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """One relay module, imported directly, whatever the selector in rdsproxy._codec picked."""
    try:
        return importlib.import_module(_MODULES[request.param])
    except ImportError:
        if request.param == "compiled" and extensions_disabled():
            pytest.skip("the compiled relay is not built and RDSPROXY_NO_EXTENSIONS is set")
        raise  # a normal build must have it: fail rather than skip


class Recorder(asyncio.Protocol):
    """Records every callback in order; `until` awaits a condition on what it recorded."""

    def __init__(self, eof_result: Any = None) -> None:
        self.transport: Any = None
        self.events: list[str] = []
        self.chunks: list[bytes] = []
        self.nbytes = 0
        self.eof_result = eof_result
        self.lost_calls: list[Optional[BaseException]] = []
        self.lost: asyncio.Future[Optional[BaseException]] = asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()

    def count(self, event: str) -> int:
        return self.events.count(event)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def _record(self, event: str) -> None:
        self.events.append(event)
        self._changed.set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._record("made")

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.nbytes += len(data)
        self._record("data")

    def eof_received(self) -> Any:
        self._record("eof")
        return self.eof_result

    def pause_writing(self) -> None:
        self._record("pause")

    def resume_writing(self) -> None:
        self._record("resume")

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost_calls.append(exc)
        if not self.lost.done():
            self.lost.set_result(exc)
        self._record("lost")

    async def until(self, condition: Callable[[], bool]) -> None:
        async def wait() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), TIMEOUT)

    async def ended(self) -> Optional[BaseException]:
        """The exception connection_lost got, once it has been called; then checks it was called only once."""
        exc = await asyncio.wait_for(asyncio.shield(self.lost), TIMEOUT)
        await run_pending_callbacks()
        assert self.lost_calls == [exc], f"connection_lost called {len(self.lost_calls)} times: {self.lost_calls}"
        assert self.events[-1] == "lost"
        return exc


async def run_pending_callbacks() -> None:
    # A second connection_lost would already sit in the loop's ready queue: a few iterations run it.
    for _ in range(5):
        await asyncio.sleep(0)


class Sockets:
    """Makes connected socket pairs and closes whatever is left of them at the end of the test."""

    def __init__(self) -> None:
        self.opened: list[socket.socket] = []

    def pair(self, kind: str) -> tuple[socket.socket, socket.socket]:
        """(side for the relay, nonblocking side for the test); for TCP the relay gets the accepted socket."""
        if kind == "unix":
            relay_side, peer = socket.socketpair()
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
                listener.bind(("127.0.0.1", 0))
                listener.listen(1)
                peer = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
                relay_side, _ = listener.accept()
        self.opened += [relay_side, peer]
        peer.setblocking(False)
        return relay_side, peer

    def close(self) -> None:
        for sock in self.opened:
            sock.close()  # a socket the relay detached has no fd any more: a no-op


@dataclass
class Link:
    """A relay transport with its recording protocol, and the test's end of the connection."""

    transport: Any
    rec: Recorder
    peer: socket.socket
    fd: int
    identity: tuple[int, int]  # (st_dev, st_ino) of the adopted socket, to tell it from a reused fd number
    peername: Any
    sockname: Any


def adopt(relay: Any, sock: socket.socket, rec: Optional[Recorder] = None) -> tuple[Any, Recorder, int, tuple]:
    rec = rec if rec is not None else Recorder()
    fd = sock.fileno()
    stat = os.fstat(fd)
    transport = relay.adopt(sock, rec)
    return transport, rec, fd, (stat.st_dev, stat.st_ino)


def link(relay: Any, sockets: Sockets, kind: str = "unix", rec: Optional[Recorder] = None) -> Link:
    relay_side, peer = sockets.pair(kind)
    peername, sockname = relay_side.getpeername(), relay_side.getsockname()
    transport, rec, fd, identity = adopt(relay, relay_side, rec)
    return Link(transport, rec, peer, fd, identity, peername, sockname)


def assert_fd_closed(fd: int, identity: tuple[int, int]) -> None:
    try:
        stat = os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return
    assert (stat.st_dev, stat.st_ino) != identity, f"fd {fd} still holds the relay's socket"


async def recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()

    async def read() -> bytes:
        received = bytearray()
        while len(received) < size:
            chunk = await loop.sock_recv(sock, min(size - len(received), MAX_CHUNK))
            assert chunk, f"EOF after {len(received)} of {size} bytes"
            received += chunk
        return bytes(received)

    return await asyncio.wait_for(read(), TIMEOUT)


async def recv_to_eof(sock: socket.socket, *, reset_ok: bool = False) -> bytes:
    """Everything the peer gets until EOF (or until a reset, when `reset_ok`)."""
    loop = asyncio.get_running_loop()

    async def read() -> bytes:
        received = bytearray()
        while True:
            try:
                chunk = await loop.sock_recv(sock, MAX_CHUNK)
            except ConnectionResetError:
                if not reset_ok:
                    raise
                return bytes(received)
            if not chunk:
                return bytes(received)
            received += chunk

    return await asyncio.wait_for(read(), TIMEOUT)


async def send_all(sock: socket.socket, data: bytes) -> None:
    await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(sock, data), TIMEOUT)


def assert_same_bytes(got: bytes, want: bytes) -> None:
    """Equality, with a short message (length and first differing offset) instead of a huge diff."""
    if got != want:
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise AssertionError(f"got {len(got)} bytes, want {len(want)}; first difference at offset {first}")


def assert_chunks_are_asyncio_like(rec: Recorder) -> None:
    assert all(type(chunk) is bytes and 0 < len(chunk) <= MAX_CHUNK for chunk in rec.chunks)


def epoll_fds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]":
                found.add(int(name))
        except OSError:
            pass  # the fd listdir itself used is gone by now
    return found


@pytest.fixture
async def relay(impl: ModuleType) -> AsyncIterator[Any]:
    relay = impl.Relay(asyncio.get_running_loop())
    yield relay
    relay.close()


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    made = Sockets()
    yield made
    made.close()


# ---------------------------------------------------------------------------------------------- adoption
@pytest.mark.parametrize("kind", KINDS)
async def test_adopt_takes_the_socket_and_calls_connection_made(relay, sockets, kind):
    assert relay.connections == 0 and relay.closed is False
    relay_side, _ = sockets.pair(kind)
    transport, rec, fd, _ = adopt(relay, relay_side)
    assert rec.events == ["made"] and rec.transport is transport  # before adopt returned
    assert relay_side.fileno() == -1  # detached: the relay owns the fd now
    assert os.get_blocking(fd) is False
    if kind == "tcp":
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as dup:
            assert dup.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert relay.connections == 1
    assert transport.get_protocol() is rec
    assert transport.is_reading() is True
    assert transport.is_closing() is False
    assert transport.get_write_buffer_size() == 0
    assert transport.get_write_buffer_limits() == DEFAULT_LIMITS
    assert transport.can_write_eof() is True


@pytest.mark.parametrize("kind", KINDS)
async def test_extra_info_is_what_the_socket_module_gives(relay, sockets, kind):
    side = link(relay, sockets, kind)
    assert side.transport.get_extra_info("peername") == side.peername
    assert side.transport.get_extra_info("sockname") == side.sockname
    if kind == "tcp":
        assert side.peername == side.peer.getsockname()
        assert side.sockname == side.peer.getpeername()
    assert side.transport.get_extra_info("no-such-thing") is None
    assert side.transport.get_extra_info("no-such-thing", 42) == 42


# ---------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("kind", KINDS)
async def test_small_messages_both_ways_arrive_intact_and_in_order(relay, sockets, kind):
    side = link(relay, sockets, kind)
    side.transport.write(b"sent at once")
    assert side.transport.get_write_buffer_size() == 0
    # Without yielding to the loop: write() itself handed the bytes to the kernel.
    assert select.select([side.peer], [], [], TIMEOUT)[0] == [side.peer]
    assert side.peer.recv(64) == b"sent at once"

    outgoing = [b"out-%04d;" % n for n in range(300)]
    for message in outgoing:
        side.transport.write(message)
    assert await recv_exactly(side.peer, len(b"".join(outgoing))) == b"".join(outgoing)

    incoming = [b"in-%04d;" % n for n in range(300)]
    for message in incoming:
        await send_all(side.peer, message)
    expected = b"".join(incoming)
    await side.rec.until(lambda: side.rec.nbytes >= len(expected))
    assert side.rec.data == expected
    assert_chunks_are_asyncio_like(side.rec)
    assert side.rec.count("pause") == 0 and side.transport.is_closing() is False


@pytest.mark.parametrize("kind", KINDS)
async def test_a_big_write_pauses_the_writer_then_resumes_it_while_the_peer_reads(relay, sockets, kind):
    side = link(relay, sockets, kind)
    payload = os.urandom(BIG)
    side.transport.write(payload)
    assert side.transport.get_write_buffer_size() > DEFAULT_LIMITS[1]
    assert side.rec.count("pause") == 1 and side.rec.count("resume") == 0  # as asyncio: during write()
    assert await recv_exactly(side.peer, BIG) == payload
    await side.rec.until(lambda: side.rec.count("resume") == 1)
    assert side.rec.events == ["made", "pause", "resume"]
    assert side.transport.get_write_buffer_size() == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_a_big_upload_arrives_in_order_in_chunks_of_at_most_256_kib(relay, sockets, kind):
    side = link(relay, sockets, kind)
    payload = os.urandom(BIG)
    await send_all(side.peer, payload)
    await side.rec.until(lambda: side.rec.nbytes >= BIG)
    assert side.rec.nbytes == BIG and side.rec.data == payload
    assert_chunks_are_asyncio_like(side.rec)


@pytest.mark.parametrize("kind", KINDS)
async def test_big_transfers_both_ways_at_once(relay, sockets, kind):
    side = link(relay, sockets, kind)
    down, up = os.urandom(BIG), os.urandom(BIG)
    side.transport.write(down)
    received, _ = await asyncio.gather(recv_exactly(side.peer, BIG), send_all(side.peer, up))
    assert received == down
    await side.rec.until(lambda: side.rec.nbytes >= BIG)
    assert side.rec.data == up


async def test_write_takes_bytearray_and_memoryview(relay, sockets):
    side = link(relay, sockets)
    side.transport.write(bytearray(b"ab"))
    side.transport.write(memoryview(b"xcdx")[1:3])
    side.transport.write(b"")
    side.transport.write(memoryview(bytearray(b"ef")))
    assert await recv_exactly(side.peer, 6) == b"abcdef"


async def test_buffered_data_is_copied_not_referenced(relay, sockets):
    side = link(relay, sockets)
    buffer = bytearray(os.urandom(BIG))
    expected = bytes(buffer)
    side.transport.write(buffer)
    side.transport.write(memoryview(buffer)[:KIB])
    assert side.transport.get_write_buffer_size() > 0
    buffer[:] = bytes(len(buffer))  # in place: the caller may reuse its buffer as soon as write() returns
    assert await recv_exactly(side.peer, BIG + KIB) == expected + expected[:KIB]


@pytest.mark.parametrize("bad", ["text", 5, [1, 2, 3]], ids=["str", "int", "list"])
async def test_write_rejects_what_is_not_bytes_like(relay, sockets, bad):
    # as asyncio's and uvloop's transports do: an int (bytes(5) is five zeros) or a list of ints is not data
    side = link(relay, sockets)
    with pytest.raises(TypeError):
        side.transport.write(bad)
    side.transport.write(b"ok")
    side.transport.close()
    assert await recv_to_eof(side.peer) == b"ok"


async def test_write_counts_the_bytes_of_a_wide_memoryview_not_its_items(relay, sockets):
    side = link(relay, sockets)
    small = array.array("H", [1, 2, 3])
    wide = array.array("I", range(BIG // 4))
    side.transport.write(memoryview(small))
    side.transport.write(memoryview(wide))  # partly sent at once, the rest buffered
    side.transport.close()
    assert_same_bytes(await recv_to_eof(side.peer), small.tobytes() + wide.tobytes())


async def test_writelines_sends_the_pieces_in_order(relay, sockets):
    side = link(relay, sockets)
    side.transport.writelines([b"one ", bytearray(b"two "), memoryview(b"three "), b""])
    side.transport.writelines([os.urandom(0), b"four"])
    assert await recv_exactly(side.peer, 18) == b"one two three four"


async def test_two_transports_of_one_relay_talk_to_each_other(relay, sockets):
    left_sock, right_sock = socket.socketpair()
    sockets.opened += [left_sock, right_sock]
    left, left_rec, _, _ = adopt(relay, left_sock)
    right, right_rec, _, _ = adopt(relay, right_sock)
    assert relay.connections == 2
    left.write(b"ping")
    await right_rec.until(lambda: right_rec.nbytes >= 4)
    right.write(b"pong")
    await left_rec.until(lambda: left_rec.nbytes >= 4)
    assert (left_rec.data, right_rec.data) == (b"pong", b"ping")

    payload = os.urandom(BIG)
    left.write(payload)
    await right_rec.until(lambda: right_rec.nbytes >= 4 + BIG)
    assert right_rec.data == b"ping" + payload
    await left_rec.until(lambda: left_rec.count("resume") == 1)
    assert left_rec.count("pause") == 1

    left.close()
    assert await left_rec.ended() is None
    assert await right_rec.ended() is None  # EOF, and a falsy eof_received closes
    assert right_rec.events[-2:] == ["eof", "lost"]
    assert relay.connections == 0


class Echo(Recorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.transport.write(data)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_protocol_writing_from_data_received_echoes_everything(relay, sockets, kind):
    side = link(relay, sockets, kind, Echo())
    payload = os.urandom(BIG)
    echoed, _ = await asyncio.gather(recv_exactly(side.peer, BIG), send_all(side.peer, payload))
    assert_same_bytes(echoed, payload)


async def test_more_ready_sockets_than_one_epoll_batch_are_all_served(relay, sockets):
    links = [link(relay, sockets) for _ in range(300)]  # the implementations take 256 events per wake-up
    for n, side in enumerate(links):
        side.peer.send(b"%d;" % n)
    for n, side in enumerate(links):
        await side.rec.until(lambda side=side, n=n: side.rec.data == b"%d;" % n)
        side.transport.write(b"back")
    for side in links:
        assert await recv_exactly(side.peer, 4) == b"back"
    for side in links:
        side.peer.shutdown(socket.SHUT_WR)
    for side in links:
        assert await side.rec.ended() is None
    assert relay.connections == 0


class Splice(asyncio.Protocol):
    """Forwards everything to its partner's transport with flow control, as the proxy relays a session."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.partner: Splice
        self.peak_partner_buffer = 0
        self.lost: asyncio.Future[Optional[BaseException]] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.partner.transport.write(data)
        self.peak_partner_buffer = max(self.peak_partner_buffer, self.partner.transport.get_write_buffer_size())

    def eof_received(self) -> bool:
        self.partner.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        self.partner.transport.pause_reading()

    def resume_writing(self) -> None:
        self.partner.transport.resume_reading()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost.set_result(exc)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_spliced_pair_relays_both_ways_with_flow_control(relay, sockets, kind):
    client_side, client = sockets.pair(kind)
    server_side, server = sockets.pair(kind)
    front, back = Splice(), Splice()
    front.partner, back.partner = back, front
    relay.adopt(client_side, front)
    relay.adopt(server_side, back)
    upload, download = os.urandom(BIG), os.urandom(BIG)

    async def send_then_shut(peer: socket.socket, data: bytes) -> None:
        await send_all(peer, data)
        peer.shutdown(socket.SHUT_WR)

    # each end reads while it sends: with flow control holding the data back, anything else would deadlock
    client_got, server_got, _, _ = await asyncio.gather(
        recv_to_eof(client), recv_to_eof(server), send_then_shut(client, upload), send_then_shut(server, download)
    )
    assert_same_bytes(server_got, upload)
    assert_same_bytes(client_got, download)
    # pause_writing stopped the reading side in time: a buffer never held more than the limit and one chunk
    assert max(front.peak_partner_buffer, back.peak_partner_buffer) <= DEFAULT_LIMITS[1] + MAX_CHUNK
    front.transport.close()
    back.transport.close()
    assert await asyncio.wait_for(asyncio.gather(front.lost, back.lost), TIMEOUT) == [None, None]
    assert relay.connections == 0


# ---------------------------------------------------------------------------------------------- endings
@pytest.mark.parametrize("kind", KINDS)
async def test_close_sends_the_buffer_before_the_peer_sees_eof(relay, sockets, kind):
    side = link(relay, sockets, kind)
    payload = os.urandom(BIG)
    side.transport.write(payload)
    side.transport.close()
    assert side.transport.is_closing() is True
    assert side.transport.is_reading() is False
    assert side.rec.lost_calls == []
    assert await recv_to_eof(side.peer) == payload
    assert await side.rec.ended() is None
    assert_fd_closed(side.fd, side.identity)
    assert relay.connections == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_abort_discards_the_buffer(relay, sockets, kind):
    side = link(relay, sockets, kind)
    payload = os.urandom(BIG)
    side.transport.write(payload)
    side.transport.abort()
    assert side.transport.is_closing() is True
    assert side.transport.get_write_buffer_size() == 0
    assert side.rec.lost_calls == []  # via call_soon, not from inside abort()
    received = await recv_to_eof(side.peer, reset_ok=True)
    assert len(received) < BIG and payload.startswith(received)
    assert await side.rec.ended() is None
    assert_fd_closed(side.fd, side.identity)


ENDINGS = {
    "close": lambda transport, relay: transport.close(),
    "abort": lambda transport, relay: transport.abort(),
    "close-close": lambda transport, relay: (transport.close(), transport.close()),
    "close-abort": lambda transport, relay: (transport.close(), transport.abort()),
    "abort-close": lambda transport, relay: (transport.abort(), transport.close()),
    "abort-abort": lambda transport, relay: (transport.abort(), transport.abort()),
    "relay-close": lambda transport, relay: relay.close(),
    "close-relay-close": lambda transport, relay: (transport.close(), relay.close()),
    "relay-close-close": lambda transport, relay: (relay.close(), relay.close(), transport.close()),
}


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("kind", KINDS)
async def test_connection_lost_is_called_exactly_once_however_it_ends(relay, sockets, kind, ending):
    side = link(relay, sockets, kind)
    side.transport.write(b"bye")
    ENDINGS[ending](side.transport, relay)
    assert side.transport.is_closing() is True
    assert side.rec.lost_calls == []
    assert await side.rec.ended() is None
    assert await recv_to_eof(side.peer, reset_ok=True) in (b"", b"bye")
    assert_fd_closed(side.fd, side.identity)
    assert relay.connections == 0
    side.transport.close()
    side.transport.abort()
    await run_pending_callbacks()
    assert side.rec.lost_calls == [None]


@pytest.mark.parametrize("kind", KINDS)
async def test_peer_eof_with_a_falsy_eof_received_closes_the_transport(relay, sockets, kind):
    side = link(relay, sockets, kind)
    await send_all(side.peer, b"last words")
    side.peer.shutdown(socket.SHUT_WR)
    assert await side.rec.ended() is None
    assert side.rec.data == b"last words"
    assert side.rec.count("eof") == 1
    assert side.rec.events.index("eof") > side.rec.events.index("data")
    assert side.transport.is_closing() is True
    assert await recv_to_eof(side.peer) == b""
    assert_fd_closed(side.fd, side.identity)
    assert relay.connections == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_eof_received_returning_true_keeps_the_transport_open_for_writing(relay, sockets, kind):
    side = link(relay, sockets, kind, Recorder(eof_result=True))
    await send_all(side.peer, b"request")
    side.peer.shutdown(socket.SHUT_WR)
    await side.rec.until(lambda: side.rec.count("eof") == 1)
    assert side.rec.data == b"request"
    assert side.transport.is_closing() is False
    side.transport.write(b"reply after the peer's EOF")
    assert await recv_exactly(side.peer, 26) == b"reply after the peer's EOF"
    payload = os.urandom(BIG)
    side.transport.write(payload)  # long enough for many loop iterations: EOF must not be reported again
    assert await recv_exactly(side.peer, BIG) == payload
    assert side.rec.lost_calls == [] and side.rec.count("eof") == 1
    side.transport.close()
    assert await recv_to_eof(side.peer) == b""
    assert await side.rec.ended() is None
    assert side.rec.count("eof") == 1
    assert_fd_closed(side.fd, side.identity)


async def test_peer_reset_gives_connection_lost_a_connection_reset_error(relay, sockets):
    side = link(relay, sockets, "tcp")
    side.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    side.peer.close()  # linger 0: RST instead of FIN
    exc = await side.rec.ended()
    assert isinstance(exc, ConnectionResetError), repr(exc)
    assert side.transport.is_closing() is True
    assert_fd_closed(side.fd, side.identity)
    assert relay.connections == 0


async def test_peer_reset_while_a_write_is_buffered_gives_an_oserror(relay, sockets):
    side = link(relay, sockets, "tcp")
    side.transport.write(os.urandom(BIG))
    assert side.transport.get_write_buffer_size() > 0
    side.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    side.peer.close()
    exc = await side.rec.ended()
    assert isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE), repr(exc)
    assert_fd_closed(side.fd, side.identity)
    assert relay.connections == 0


async def test_write_after_close_or_abort_is_ignored(relay, sockets):
    closed = link(relay, sockets)
    closed.transport.write(b"before")
    closed.transport.close()
    closed.transport.write(b"after")
    closed.transport.writelines([b"after", b"again"])
    assert await recv_to_eof(closed.peer) == b"before"
    assert await closed.rec.ended() is None
    closed.transport.write(b"after connection_lost")  # the fd is gone: still no error

    aborted = link(relay, sockets)
    aborted.transport.abort()
    for _ in range(10):  # asyncio starts warning after 5 such writes: the relay stays silent
        aborted.transport.write(b"after")
    assert aborted.transport.get_write_buffer_size() == 0
    assert await recv_to_eof(aborted.peer) == b""
    assert await aborted.rec.ended() is None


# ---------------------------------------------------------------------------------------------- protocol errors
@pytest.fixture
async def exception_contexts() -> AsyncIterator[list[dict[str, Any]]]:
    loop = asyncio.get_running_loop()
    contexts: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    yield contexts
    loop.set_exception_handler(previous)


class Boom(Exception):
    pass


class RaisingRecorder(Recorder):
    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.error = Boom(where)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.where == "data_received":
            raise self.error

    def eof_received(self) -> Any:
        super().eof_received()
        if self.where == "eof_received":
            raise self.error
        return True


@pytest.mark.parametrize("where", ["data_received", "eof_received"])
async def test_a_protocol_exception_goes_to_the_exception_handler_and_aborts(relay, sockets, exception_contexts, where):
    side = link(relay, sockets, "unix", RaisingRecorder(where))
    side.transport.write(b"unsent?")  # sent at once (the buffer is empty): only later writes are dropped
    await send_all(side.peer, b"trigger")
    if where == "eof_received":
        side.peer.shutdown(socket.SHUT_WR)
    exc = await side.rec.ended()
    # asyncio's own transports pass the protocol's exception to connection_lost; an abort passes None
    assert exc is None or exc is side.rec.error
    assert [context.get("exception") for context in exception_contexts] == [side.rec.error]
    assert side.transport.is_closing() is True
    assert await recv_to_eof(side.peer, reset_ok=True) == b"unsent?"
    assert_fd_closed(side.fd, side.identity)
    assert relay.connections == 0


# ---------------------------------------------------------------------------------------------- reading
async def test_pause_reading_holds_the_data_until_resume_reading(relay, sockets):
    side = link(relay, sockets)
    probe = link(relay, sockets)
    side.transport.pause_reading()
    side.transport.pause_reading()  # twice: a no-op, as asyncio
    assert side.transport.is_reading() is False
    side.peer.send(b"held back")
    for round_trip in range(3):
        # The relay services every socket from one epoll set: once the probe's later bytes are delivered,
        # it has seen the paused socket readable and must have left it alone.
        probe.peer.send(b"%d" % round_trip)
        await probe.rec.until(lambda n=round_trip: probe.rec.nbytes > n)
    assert side.rec.chunks == []
    side.transport.resume_reading()
    side.transport.resume_reading()
    assert side.transport.is_reading() is True
    await side.rec.until(lambda: side.rec.nbytes >= 9)
    assert side.rec.data == b"held back"


async def test_pause_reading_holds_the_peer_eof_too(relay, sockets):
    side = link(relay, sockets)
    probe = link(relay, sockets)
    side.transport.pause_reading()
    side.peer.send(b"x")
    side.peer.shutdown(socket.SHUT_WR)
    probe.peer.send(b"p")
    await probe.rec.until(lambda: probe.rec.nbytes >= 1)
    assert side.rec.events == ["made"]
    side.transport.resume_reading()
    assert await side.rec.ended() is None
    assert side.rec.events == ["made", "data", "eof", "lost"]


async def test_paused_reading_lets_the_peer_fill_its_buffer_then_delivers_everything(relay, sockets):
    side = link(relay, sockets)
    side.transport.pause_reading()
    payload = os.urandom(BIG)
    sender = asyncio.ensure_future(send_all(side.peer, payload))
    probe = link(relay, sockets)
    probe.peer.send(b"p")
    await probe.rec.until(lambda: probe.rec.nbytes >= 1)
    assert not sender.done()  # the peer is blocked: nothing is read behind the protocol's back
    assert side.rec.nbytes == 0
    side.transport.resume_reading()
    await sender
    await side.rec.until(lambda: side.rec.nbytes >= BIG)
    assert side.rec.data == payload


async def test_is_reading_and_is_closing_follow_the_transport_state(relay, sockets):
    side = link(relay, sockets)
    assert (side.transport.is_reading(), side.transport.is_closing()) == (True, False)
    side.transport.pause_reading()
    assert (side.transport.is_reading(), side.transport.is_closing()) == (False, False)
    side.transport.resume_reading()
    assert (side.transport.is_reading(), side.transport.is_closing()) == (True, False)
    side.transport.close()
    assert (side.transport.is_reading(), side.transport.is_closing()) == (False, True)
    side.transport.pause_reading()  # no-ops on a closing transport
    side.transport.resume_reading()
    assert side.transport.is_reading() is False
    assert await side.rec.ended() is None
    assert side.transport.is_closing() is True


# ---------------------------------------------------------------------------------------------- write_eof
@pytest.mark.parametrize("kind", KINDS)
async def test_write_eof_sends_the_buffer_then_eof_and_reading_goes_on(relay, sockets, kind):
    side = link(relay, sockets, kind)
    assert side.transport.can_write_eof() is True
    payload = os.urandom(BIG)
    side.transport.write(payload)
    side.transport.write_eof()
    side.transport.write_eof()  # again: a no-op
    assert side.transport.is_closing() is False
    received, _ = await asyncio.gather(recv_to_eof(side.peer), send_all(side.peer, b"still reading"))
    assert received == payload
    await side.rec.until(lambda: side.rec.nbytes >= 13)
    assert side.rec.data == b"still reading"
    assert side.rec.lost_calls == []
    side.peer.shutdown(socket.SHUT_WR)
    assert await side.rec.ended() is None
    assert side.rec.count("eof") == 1
    assert_fd_closed(side.fd, side.identity)


async def test_write_eof_with_an_empty_buffer_shuts_down_at_once(relay, sockets):
    side = link(relay, sockets)
    side.transport.write(b"all of it")
    side.transport.write_eof()
    assert await recv_to_eof(side.peer) == b"all of it"
    await send_all(side.peer, b"answer")
    await side.rec.until(lambda: side.rec.nbytes >= 6)
    assert side.rec.data == b"answer"
    side.transport.close()
    assert await side.rec.ended() is None


# ---------------------------------------------------------------------------------------------- flow control
async def test_write_buffer_limits(relay, sockets):
    side = link(relay, sockets)
    transport = side.transport
    assert transport.get_write_buffer_limits() == DEFAULT_LIMITS
    transport.set_write_buffer_limits(high=1000)
    assert transport.get_write_buffer_limits() == (250, 1000)
    transport.set_write_buffer_limits(high=100, low=10)
    assert transport.get_write_buffer_limits() == (10, 100)
    transport.set_write_buffer_limits()
    assert transport.get_write_buffer_limits() == DEFAULT_LIMITS

    transport.set_write_buffer_limits(high=4 * BIG)
    payload = os.urandom(BIG)
    transport.write(payload)
    assert transport.get_write_buffer_size() > 0
    assert await recv_exactly(side.peer, BIG) == payload
    assert side.rec.count("pause") == 0  # never above the raised limit

    transport.set_write_buffer_limits(high=2 * MIB, low=MIB)
    transport.write(payload)
    assert side.rec.count("pause") == 1
    received = bytearray()
    while side.rec.count("resume") == 0:
        received += await recv_exactly(side.peer, 64 * KIB)
    assert transport.get_write_buffer_size() <= MIB  # not resumed before the buffer drained to the low mark
    received += await recv_exactly(side.peer, BIG - len(received))
    assert received == payload
    assert side.rec.events == ["made", "pause", "resume"]


async def test_set_protocol_sends_later_callbacks_to_the_new_protocol(relay, sockets):
    side = link(relay, sockets)
    newer = Recorder()
    side.transport.set_protocol(newer)
    assert side.transport.get_protocol() is newer
    await send_all(side.peer, b"for the new one")
    await newer.until(lambda: newer.nbytes >= 15)
    assert newer.data == b"for the new one"
    side.transport.close()
    assert await newer.ended() is None
    assert side.rec.events == ["made"]
    assert newer.events == ["data", "lost"]


# ---------------------------------------------------------------------------------------------- the relay
async def test_connections_counts_up_and_down(relay, sockets):
    assert relay.connections == 0
    links = [link(relay, sockets, kind) for kind in ("unix", "tcp", "unix")]
    assert relay.connections == 3
    links[0].transport.close()
    await links[0].rec.ended()
    assert relay.connections == 2
    links[1].transport.abort()
    await links[1].rec.ended()
    assert relay.connections == 1
    links[2].peer.shutdown(socket.SHUT_WR)
    await links[2].rec.ended()
    assert relay.connections == 0
    link(relay, sockets)
    assert relay.connections == 1


class FailsToStart(Recorder):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        raise Boom("connection_made failed")


async def test_a_protocol_whose_connection_made_raises_is_aborted(relay, sockets):
    # adopt() re-raises, and the socket it took over is closed rather than left in the set with nobody to serve it
    relay_side, peer = sockets.pair("unix")
    rec = FailsToStart()
    fd, stat = relay_side.fileno(), os.fstat(relay_side.fileno())
    with pytest.raises(Boom):
        relay.adopt(relay_side, rec)
    assert relay.connections == 0
    await rec.ended()
    assert_fd_closed(fd, (stat.st_dev, stat.st_ino))
    assert await recv_to_eof(peer) == b""


async def test_relay_close_aborts_everything_and_is_idempotent(impl, sockets):
    loop = asyncio.get_running_loop()
    before = epoll_fds()
    relay = impl.Relay(loop)
    created = epoll_fds() - before
    assert len(created) == 1, "the relay makes one epoll fd"
    (epoll_fd,) = created

    links = [link(relay, sockets, kind) for kind in ("unix", "tcp", "unix", "tcp")]
    payload = os.urandom(BIG)
    links[0].transport.write(payload)
    links[1].transport.write(payload)
    links[2].transport.pause_reading()
    links[3].transport.close()
    assert relay.connections >= 3

    relay.close()
    assert relay.closed is True
    assert all(side.rec.lost_calls == [] for side in links)
    assert all(side.transport.is_closing() for side in links)
    relay.close()
    for index, side in enumerate(links):
        assert await side.rec.ended() is None
        received = await recv_to_eof(side.peer, reset_ok=True)
        if index < 2:
            assert len(received) < BIG and payload.startswith(received)  # the buffer was discarded, not sent
        else:
            assert received == b""
        assert_fd_closed(side.fd, side.identity)
    assert relay.connections == 0
    assert epoll_fd not in epoll_fds()
    relay.close()
    assert relay.closed is True and relay.connections == 0

    links[0].transport.write(b"ignored")
    for side in links:
        side.transport.close()
        side.transport.abort()
    await run_pending_callbacks()
    assert all(side.rec.lost_calls == [None] for side in links)

    # The loop is still fine for a new relay.
    other = impl.Relay(loop)
    try:
        side = link(other, sockets)
        side.transport.write(b"new")
        assert await recv_exactly(side.peer, 3) == b"new"
    finally:
        other.close()


async def test_an_idle_closed_relay_closes_again_quietly(impl):
    relay = impl.Relay(asyncio.get_running_loop())
    assert (relay.closed, relay.connections) == (False, 0)
    relay.close()
    relay.close()
    assert (relay.closed, relay.connections) == (True, 0)


# ---------------------------------------------------------------------------------------------- loops
async def _exchange_on_any_loop(impl: ModuleType) -> int:
    """Two transports of one relay swap 2 MB each way, then close; returns the relay's (closed) epoll fd."""
    before = epoll_fds()
    relay = impl.Relay(asyncio.get_running_loop())
    (epoll_fd,) = epoll_fds() - before
    left_sock, right_sock = socket.socketpair()
    try:
        left, left_rec, _, _ = adopt(relay, left_sock)
        right, right_rec, _, _ = adopt(relay, right_sock)
        payload = os.urandom(2 * MIB)
        left.write(payload)
        right.write(payload[::-1])
        await right_rec.until(lambda: right_rec.nbytes >= len(payload))
        await left_rec.until(lambda: left_rec.nbytes >= len(payload))
        assert right_rec.data == payload and left_rec.data == payload[::-1]
        assert left_rec.count("pause") == left_rec.count("resume") == 1
        left.close()
        assert await left_rec.ended() is None
        assert await right_rec.ended() is None
        assert relay.connections == 0
    finally:
        relay.close()
        left_sock.close()
        right_sock.close()
    assert epoll_fd not in epoll_fds()
    return epoll_fd


def test_the_relay_also_runs_on_the_stdlib_asyncio_loop(impl):
    loop = asyncio.SelectorEventLoop()
    try:
        assert type(loop).__module__.startswith("asyncio")
        epoll_fd = loop.run_until_complete(asyncio.wait_for(_exchange_on_any_loop(impl), 3 * TIMEOUT))
        # uvloop's remove_reader returns None whatever it did; asyncio's says whether a reader was still there
        assert loop.remove_reader(epoll_fd) is False, "relay.close() left its reader on the loop"
    finally:
        loop.close()


async def test_the_async_tests_run_on_uvloop(impl):
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    await _exchange_on_any_loop(impl)


# ---------------------------------------------------------------------------------------------- random chunks
# Big chunks are drawn as (size, seed) and made in the test: a failing example stays short to print.
chunk_specs = st.lists(
    st.one_of(
        st.binary(max_size=300),
        st.tuples(st.integers(min_value=300, max_value=600_000), st.integers(min_value=0, max_value=2**32)),
    ),
    max_size=12,
)


def _make_chunks(specs: list[Any]) -> list[bytes]:
    return [spec if isinstance(spec, bytes) else random.Random(spec[1]).randbytes(spec[0]) for spec in specs]


def _send(transport: Any, chunks: list[bytes], how: str) -> None:
    if how == "writelines":
        transport.writelines(chunks)
    else:
        for chunk in chunks:
            transport.write(memoryview(bytearray(chunk)) if how == "memoryview" else chunk)
    transport.write_eof()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    left_specs=chunk_specs,
    right_specs=chunk_specs,
    how=st.sampled_from(["write", "writelines", "memoryview"]),
)
async def test_random_chunks_arrive_intact_both_ways(impl, left_specs, right_specs, how):
    left_chunks, right_chunks = _make_chunks(left_specs), _make_chunks(right_specs)
    relay = impl.Relay(asyncio.get_running_loop())
    left_sock, right_sock = socket.socketpair()
    try:
        left, left_rec, _, _ = adopt(relay, left_sock)
        right, right_rec, _, _ = adopt(relay, right_sock)
        _send(left, left_chunks, how)
        _send(right, right_chunks, how)
        # each side gets the other's bytes, then EOF; a falsy eof_received closes it
        assert await left_rec.ended() is None
        assert await right_rec.ended() is None
        assert_same_bytes(right_rec.data, b"".join(left_chunks))
        assert_same_bytes(left_rec.data, b"".join(right_chunks))
        assert_chunks_are_asyncio_like(left_rec)
        assert_chunks_are_asyncio_like(right_rec)
        assert left_rec.count("eof") == right_rec.count("eof") == 1
        assert relay.connections == 0
    finally:
        relay.close()
        left_sock.close()
        right_sock.close()


# --------------------------------------------------------------------------- accepting


def listening_socket(kind: str) -> socket.socket:
    if kind == "unix":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind("")  # an abstract address: nothing to clean up
    else:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    return listener


def open_sockets() -> set[int]:
    """The process's open socket descriptors."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                found.add(int(name))
        except OSError:  # the directory listing's own descriptor, closed by now
            pass
    return found


@pytest.mark.parametrize("kind", KINDS)
async def test_accept_serves_each_waiting_connection_up_to_the_limit(relay, kind):
    with listening_socket(kind) as listener:
        clients = [socket.socket(listener.family, socket.SOCK_STREAM) for _ in range(3)]
        try:
            for client in clients:
                client.connect(listener.getsockname())
            made: list[Recorder] = []

            def factory() -> Recorder:
                made.append(Recorder())
                return made[-1]

            before = open_sockets()
            assert relay.accept(listener, factory, 2, kind == "tcp") == 2  # the limit holds back the third
            assert relay.accept(listener, factory, 5, kind == "tcp") == 1
            assert relay.accept(listener, factory, 5, kind == "tcp") == 0  # none waiting: no error
            assert relay.connections == 3
            assert [rec.events for rec in made] == [["made"]] * 3
            accepted = open_sockets() - before
            assert len(accepted) == 3
            for fd in accepted:
                assert os.get_blocking(fd) is False
                with socket.fromfd(fd, listener.family, socket.SOCK_STREAM) as dup:
                    if kind == "tcp":
                        assert dup.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                    assert dup.get_inheritable() is False
            # every accepted connection carries bytes both ways
            for index, (client, rec) in enumerate(zip(clients, made)):
                client.sendall(b"ping %d" % index)
                await rec.until(lambda rec=rec: rec.nbytes >= 6)
                rec.transport.write(b"pong %d" % index)
                client.settimeout(TIMEOUT)
                assert client.recv(16) == b"pong %d" % index
        finally:
            for client in clients:
                client.close()


async def test_accept_closes_a_connection_whose_protocol_cannot_start_and_raises(relay):
    with listening_socket("tcp") as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        try:
            before = open_sockets()

            def broken_factory() -> Recorder:
                raise ValueError("no protocol today")

            with pytest.raises(ValueError, match="no protocol today"):
                relay.accept(listener, broken_factory, 4, True)
            assert relay.connections == 0
            assert open_sockets() == before  # the accepted socket did not leak
            assert client.recv(1) == b""  # the client sees its connection closed
        finally:
            client.close()


async def test_accept_reports_an_accept_error_as_oserror(relay):
    listener = listening_socket("tcp")
    listener.close()
    with pytest.raises(OSError) as failure:
        relay.accept(listener, Recorder, 4, True)
    assert failure.value.errno in (errno.EBADF, None)


async def test_accept_on_a_closed_relay_raises(impl):
    relay = impl.Relay(asyncio.get_running_loop())
    relay.close()
    with listening_socket("tcp") as listener, pytest.raises(RuntimeError, match="closed"):
        relay.accept(listener, Recorder, 4, True)
