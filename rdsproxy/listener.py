"""Client-facing listeners: one TCP server per endpoint, each handing connections to the engine's sessions."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable, Optional

from .config import EndpointConfig, parse_host_port
from .sockets import start_server

log = logging.getLogger("rdsproxy.listener")

# Serverless storms arrive as bursts of connects: a deep accept queue keeps them from being refused.
LISTEN_BACKLOG = 4096


class Listener:
    """Accepts client connections for one endpoint."""

    def __init__(
        self, endpoint: EndpointConfig, protocol_factory: Callable[[], asyncio.Protocol], relay: Optional[Any] = None
    ) -> None:
        self.endpoint = endpoint
        self._factory = protocol_factory
        self._relay = relay
        self._server: Optional[Any] = None
        self.address: tuple[str, int] = ("", 0)

    async def start(self) -> None:
        host, port = parse_host_port(
            self.endpoint.listen, what=f"endpoints.{self.endpoint.name}.listen", allow_zero=True
        )
        self._server = await start_server(self._relay, self._factory, host, port, backlog=LISTEN_BACKLOG)
        sock = self._server.sockets[0]
        self.address = sock.getsockname()[:2]
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            log.info("endpoint %s listening on %s:%d", self.endpoint.name, *self.address)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
