"""What every engine's server connection shares: pool hooks, attachment to a client, flow control."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

from ._codec import BackendLane
from .errors import ProtocolViolation

log = logging.getLogger("rdsproxy.backend")

# Connection states
CONNECTING, IDLE, ATTACHED, INTERNAL, CLOSED = range(5)


class BackendConnection(BackendLane, asyncio.Protocol):
    """A pooled server connection. While attached, received chunks go straight to the client's transport.

    Its hot fields and the attached forwarding path are BackendLane's (compiled).

    Engine subclasses set `data_received` to their engine's BackendLane method and implement what it calls back
    (`data_received_unattached`, and for PostgreSQL `forward_events`), connection_lost, startup and the proxy's
    own queries, and `goodbye()` (the bytes that end a session politely).
    """

    def __init__(self, address: str, key: Any, owner: Any) -> None:
        super().__init__()
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

    def forwarding_failed(self, exc: Exception) -> None:
        """Forwarding an attached chunk raised: this connection cannot be trusted with the rest of the stream."""
        if not isinstance(exc, ProtocolViolation):
            log.error("internal error while forwarding from %s; closing that connection", self.address, exc_info=exc)
        self.transport.abort()  # type: ignore[union-attr]  # connection_lost tells the client

    def goodbye(self) -> bytes:
        return b""

    def writable(self) -> bool:
        """Whether the proxy may send on this connection: open, and its transport not closed under it.

        uvloop closes a transport whose peer went away before the protocol hears connection_lost; writing in that
        window raises RuntimeError, so the proxy's own exchanges and close() ask first.
        """
        return self.state != CLOSED and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.state != CLOSED and self.transport is not None:
            writable = self.writable()
            self.state = CLOSED
            try:
                if writable:
                    self.transport.write(self.goodbye())
            finally:
                self.transport.close()
