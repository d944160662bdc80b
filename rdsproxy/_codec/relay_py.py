"""Socket transports over one epoll set serviced from the event loop (pure-Python twin of relay_c)."""

from __future__ import annotations

import asyncio
import select
import socket
from typing import Any, Optional

READ_SIZE = 256 * 1024
DEFAULT_HIGH_WATER = 64 * 1024
MAX_EVENTS = 256

# epoll is Linux's: elsewhere this module imports (the selector needs it) but Relay cannot be made.
_EPOLLIN = getattr(select, "EPOLLIN", 0x001)
_EPOLLOUT = getattr(select, "EPOLLOUT", 0x004)
_FAILED = getattr(select, "EPOLLERR", 0x008) | getattr(select, "EPOLLHUP", 0x010)
_OUT_OR_FAILED = _EPOLLOUT | _FAILED
_IN_OR_FAILED = _EPOLLIN | _FAILED


class Relay:
    """An epoll set of nonblocking sockets, each with an asyncio-compatible transport, driven by one loop reader.

    One reader callback per wake-up serves every ready socket, instead of one loop callback per socket event.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll: Optional[select.epoll] = select.epoll()
        self._transports: dict[int, RelayTransport] = {}
        loop.add_reader(self._epoll.fileno(), self._ready)

    @property
    def connections(self) -> int:
        return len(self._transports)

    @property
    def closed(self) -> bool:
        return self._epoll is None

    def adopt(self, sock: socket.socket, protocol: Any) -> RelayTransport:
        """Take over a connected stream socket (its fd; `sock` is detached) and serve it with `protocol`."""
        if self._epoll is None:
            raise RuntimeError("the relay is closed")
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._serve(sock.detach(), protocol)

    def accept(self, listening: socket.socket, protocol_factory: Any, limit: int, tcp: bool) -> int:
        """Accept up to `limit` connections waiting on the nonblocking listening socket `listening`, each served
        with a new protocol from `protocol_factory()`; TCP ones get TCP_NODELAY. Returns how many were accepted,
        fewer than `limit` once none is waiting.

        A failure of the factory or of connection_made closes that connection and propagates; an accept error
        other than "none waiting" or "aborted by the peer" (out of descriptors, say) raises OSError.
        """
        if self._epoll is None:
            raise RuntimeError("the relay is closed")
        accepted = 0
        while accepted < limit:
            try:
                conn, _ = listening.accept()
            except BlockingIOError:
                break
            except (InterruptedError, ConnectionAbortedError):
                continue
            accepted += 1
            try:
                conn.setblocking(False)
                if tcp:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                protocol = protocol_factory()
            except BaseException:
                conn.close()
                raise
            self._serve(conn.detach(), protocol)
        return accepted

    def _serve(self, fd: int, protocol: Any) -> RelayTransport:
        transport = RelayTransport(self, fd, protocol)
        try:
            self._epoll.register(fd, _EPOLLIN)
        except OSError:
            transport._sock.close()
            raise
        self._transports[fd] = transport
        try:
            protocol.connection_made(transport)
        except BaseException:
            transport.abort()  # a protocol that failed to start must not keep its socket in the set
            raise
        return transport

    def close(self) -> None:
        """Abort every transport and stop serving; idempotent."""
        if self._epoll is None:
            return
        for transport in list(self._transports.values()):
            transport.abort()
        self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._epoll = None

    # ------------------------------------------------------------------ internals for the transports
    def _watch(self, fd: int, old: int, new: int) -> None:
        # A socket with nothing to watch leaves the set: epoll reports hang-ups even for an empty event mask,
        # and a paused socket whose peer hung up would wake the loop on every iteration.
        epoll = self._epoll
        if epoll is None:
            return
        if not new:
            epoll.unregister(fd)
        elif not old:
            epoll.register(fd, new)
        else:
            epoll.modify(fd, new)

    def _forget(self, fd: int) -> None:
        # No unregister: the caller closes fd next, its only descriptor, which takes it out of the epoll set
        # (one syscall less per connection).
        self._transports.pop(fd, None)

    def _ready(self) -> None:
        epoll = self._epoll
        if epoll is None:
            return
        transports = self._transports
        for fd, events in epoll.poll(0, MAX_EVENTS):
            transport = transports.get(fd)
            if transport is None:  # closed by an earlier event of this batch
                continue
            if events & _OUT_OR_FAILED and transport._buffered:
                transport._flush()
            if events & _IN_OR_FAILED and transport._reading:
                transport._read()


class RelayTransport:
    """asyncio.Transport for one socket of a Relay."""

    __slots__ = (
        "_relay",
        "_fd",
        "_sock",
        "_protocol",
        "_peername",
        "_sockname",
        "_buffer",
        "_buffered",
        "_reading",
        "_closing",
        "_eof_pending",
        "_eof_sent",
        "_writing_paused",
        "_high",
        "_low",
        "_lost",
        "_events",
    )

    def __init__(self, relay: Relay, fd: int, protocol: Any) -> None:
        self._relay = relay
        self._fd = fd
        self._sock = socket.socket(fileno=fd)
        self._protocol = protocol
        self._peername: Any = None  # read from the socket when first asked: most connections never are
        self._sockname: Any = None
        self._buffer: Optional[list[bytes]] = None  # allocated when a write has to wait: most never need one
        self._buffered = 0
        self._reading = True
        self._closing = False
        self._eof_pending = False
        self._eof_sent = False
        self._writing_paused = False
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        self._lost = False
        self._events = _EPOLLIN  # what the relay's epoll set watches for this socket

    # ------------------------------------------------------------------ asyncio.Transport
    def write(self, data: Any) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if type(data) is not bytes:
            data = bytes(data)  # a wide memoryview slices by items, and the caller may reuse a bytearray
        if self._closing or self._eof_pending or self._fd < 0:
            return
        if not data:
            return
        if not self._buffered:
            try:
                sent = _send(self._sock, data)
            except OSError as exc:
                self._fatal(exc)
                return
            if sent == len(data):
                return
            data = data[sent:]
            self._buffer = [data]
            self._buffered = len(data)
            self._update_events()
        else:
            self._buffer.append(data)  # type: ignore[union-attr]
            self._buffered += len(data)
        if self._buffered > self._high and not self._writing_paused:
            self._writing_paused = True
            self._call_protocol("pause_writing")

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        if self._closing or self._fd < 0:
            return
        self._closing = True
        self._reading = False
        if self._buffered:
            self._update_events()
        else:
            self._finish(None)

    def abort(self) -> None:
        if self._fd < 0:
            return
        self._closing = True
        self._buffer = None
        self._buffered = 0
        self._finish(None)

    def is_closing(self) -> bool:
        return self._closing or self._fd < 0

    def pause_reading(self) -> None:
        if self._reading and not self._closing and self._fd >= 0:
            self._reading = False
            self._update_events()

    def resume_reading(self) -> None:
        if not self._reading and not self._closing and self._fd >= 0:
            self._reading = True
            self._update_events()

    def is_reading(self) -> bool:
        return self._reading and not self._closing and self._fd >= 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            if self._peername is None and self._fd >= 0:
                self._peername = _address_of(self._sock, self._sock.getpeername)
            return self._peername if self._peername is not None else default
        if name == "sockname":
            if self._sockname is None and self._fd >= 0:
                self._sockname = _address_of(self._sock, self._sock.getsockname)
            return self._sockname if self._sockname is not None else default
        return default

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def set_write_buffer_limits(self, high: Optional[int] = None, low: Optional[int] = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high = high
        self._low = low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def get_protocol(self) -> Any:
        return self._protocol

    def set_protocol(self, protocol: Any) -> None:
        self._protocol = protocol

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_pending or self._fd < 0:
            return
        self._eof_pending = True
        if not self._buffered:
            self._shutdown_write()

    # ------------------------------------------------------------------ events from the relay
    def _read(self) -> None:
        try:
            data = self._sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if data:
            self._call_protocol("data_received", data)
            return
        # the peer shut down its side: asyncio's contract is eof_received, and a falsy answer closes
        self._reading = False
        self._update_events()
        try:
            keep_open = self._protocol.eof_received()
        except Exception as exc:  # noqa: BLE001 - a protocol bug ends this connection only
            self._report(exc, "eof_received")
            return
        if not keep_open:
            self.close()

    def _flush(self) -> None:
        if self._fd < 0:
            return
        buffer = self._buffer or [b""]
        data = b"".join(buffer) if len(buffer) > 1 else buffer[0]
        self._buffer = None
        try:
            sent = _send(self._sock, data) if data else 0
        except OSError as exc:
            self._buffered = 0
            self._fatal(exc)
            return
        if sent < len(data):
            self._buffer = [data[sent:]]
        self._buffered = len(data) - sent
        if self._writing_paused and self._buffered <= self._low:
            self._writing_paused = False
            self._call_protocol("resume_writing")
            if self._fd < 0:
                return
        if not self._buffered:
            if self._closing:
                self._finish(None)
                return
            if self._eof_pending:
                self._shutdown_write()
        self._update_events()

    # ------------------------------------------------------------------ internals
    def _update_events(self) -> None:
        if self._fd < 0:
            return
        events = (_EPOLLIN if self._reading else 0) | (_EPOLLOUT if self._buffered else 0)
        if events != self._events:
            self._relay._watch(self._fd, self._events, events)
            self._events = events

    def _shutdown_write(self) -> None:
        if self._eof_sent:
            return
        self._eof_sent = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _call_protocol(self, method: str, *args: Any) -> None:
        try:
            getattr(self._protocol, method)(*args)
        except Exception as exc:  # noqa: BLE001 - a protocol bug ends this connection only
            self._report(exc, method)

    def _report(self, exc: BaseException, method: str) -> None:
        self._relay.loop.call_exception_handler(
            {
                "message": f"Fatal error: protocol.{method}() call failed.",
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            }
        )
        self.abort()

    def _fatal(self, exc: OSError) -> None:
        self._closing = True
        self._buffer = None
        self._buffered = 0
        self._finish(exc)

    def _finish(self, exc: Optional[BaseException]) -> None:
        fd = self._fd
        if fd < 0:
            return
        self._fd = -1
        self._reading = False
        self._relay._forget(fd)
        self._events = 0
        self._sock.close()
        if not self._lost:
            self._lost = True
            self._relay.loop.call_soon(self._protocol.connection_lost, exc)


def _address_of(sock: socket.socket, read: Any) -> Any:
    """The socket module's address of an open socket, or None when it has none (unconnected)."""
    try:
        return read()
    except OSError:
        return None


def _send(sock: socket.socket, data: Any) -> int:
    """Bytes sent now (0 when the socket buffer is full); raises OSError when the connection failed."""
    try:
        return sock.send(data)
    except (BlockingIOError, InterruptedError):
        return 0
