"""What every engine's server connection shares: pool hooks, attachment to a client, flow control."""

from __future__ import annotations

import asyncio
from typing import Any, Optional

# Connection states
CONNECTING, IDLE, ATTACHED, INTERNAL, CLOSED = range(5)


class BackendConnection(asyncio.Protocol):
    """A pooled server connection. While attached, received chunks go straight to the client's transport.

    Engine subclasses implement data_received/connection_lost, startup and the proxy's own queries, and
    `goodbye()` (the bytes that end a session politely).
    """

    def __init__(self, address: str, key: Any, owner: Any) -> None:
        self.address = address
        self.key = key  # the pool key (user, database or capability profile)
        self.owner = owner  # the engine: told when an idle backend dies
        self.pool: Any = None  # the pool that counts this connection, once it joined one
        self.transport: Optional[asyncio.Transport] = None
        self.state = CONNECTING
        self.client: Any = None
        self.idle_since = 0.0
        self.broken = False
        self.reading_paused = False
        self._waiter: Optional[asyncio.Future] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    # the server reads slower than the client sends: stop reading the client
    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading()

    def _resolve(self, value: Any) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(value)

    def _reject(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _fail(self, exc: BaseException) -> None:
        """Setup or an internal exchange failed in a way that leaves the connection unusable."""
        self.broken = True
        self._reject(exc)
        if self.transport is not None and self.state != CLOSED:
            self.transport.abort()

    def _lost(self) -> int:
        """Bookkeeping shared by connection_lost: returns the state the connection was in."""
        previous = self.state
        self.state = CLOSED
        self.broken = True
        client = self.client
        if client is not None:
            self.client = None
            client.backend_lost(self)
        elif previous == IDLE:
            self.owner.idle_backend_lost(self)
        return previous

    # ------------------------------------------------------------------ pool hooks (attaching and going idle
    # are inlined by ClientConnection._attach and TargetPool._place: they happen once per transaction)
    def detach(self) -> None:
        self.client = None
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def goodbye(self) -> bytes:
        return b""

    def close(self) -> None:
        if self.state != CLOSED and self.transport is not None:
            self.state = CLOSED
            try:
                self.transport.write(self.goodbye())
            finally:
                self.transport.close()
