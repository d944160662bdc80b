"""The data path's sockets: listeners and server connections served by the compiled relay, or by asyncio's own."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import select
import socket
from typing import Any, Callable, Optional

from ._codec import Relay

log = logging.getLogger("rdsproxy.sockets")

# Accepts per wake-up of a listening socket: a connect storm is served in batches, without starving the rest.
ACCEPT_BATCH = 64
# After the process ran out of file descriptors, wait this long before accepting again rather than spin.
ACCEPT_PAUSE = 1.0
OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


def relay_enabled() -> bool:
    """The relay serves the data path unless epoll is missing (not Linux) or RDSPROXY_RELAY=0 asks for asyncio's
    transports (uvloop's when installed)."""
    return hasattr(select, "epoll") and os.environ.get("RDSPROXY_RELAY", "1") != "0"


def new_relay() -> Optional[Any]:
    """A relay for the running loop, or None when asyncio's transports serve the data path."""
    return Relay(asyncio.get_running_loop()) if relay_enabled() else None


async def open_connection(
    relay: Optional[Any], protocol_factory: Callable[[], asyncio.Protocol], host: str, port: int
) -> tuple[asyncio.BaseTransport, Any]:
    """Connect to host:port and serve the connection with a new protocol; raises OSError."""
    loop = asyncio.get_running_loop()
    if relay is None:
        return await loop.create_connection(protocol_factory, host, port)
    infos = _literal_address(host, port) or await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    failure: Optional[OSError] = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:  # cancelled (a connect timeout): the socket must not leak
            sock.close()
            raise
        protocol = protocol_factory()
        return relay.adopt(sock, protocol), protocol
    raise failure or OSError(f"could not resolve {host}")


def _literal_address(host: str, port: int) -> Optional[list[tuple[Any, ...]]]:
    """getaddrinfo's answer for an IP address literal, without its trip to the executor's thread."""
    if "%" in host:  # a scoped IPv6 address: getaddrinfo knows its interface index
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version == 4:
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
    return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]


def _is_tcp(sock: socket.socket) -> bool:
    """Whether accepted connections get TCP_NODELAY; asked once per listener (sock.family builds an enum)."""
    return sock.family in (socket.AF_INET, socket.AF_INET6)


class RelayServer:
    """Listening sockets whose accepted connections go to the relay, each with a new protocol."""

    def __init__(self, relay: Any, protocol_factory: Callable[[], asyncio.Protocol], sockets: list[socket.socket]):
        self._relay = relay
        self._factory = protocol_factory
        self.sockets = sockets
        self._loop = asyncio.get_running_loop()
        self._serving = True
        for sock in sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock, _is_tcp(sock))

    def _accept(self, sock: socket.socket, tcp: bool) -> None:
        # The relay accepts in C (accept4, no socket objects); this only handles what it cannot decide alone.
        remaining = ACCEPT_BATCH
        while remaining > 0:
            try:
                accepted = self._relay.accept(sock, self._factory, remaining, tcp)
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    log.warning("could not accept or set up a client connection on %s: %s", sock.getsockname(), exc)
                    remaining -= 1
                    continue
                # out of file descriptors or memory: retrying at once would spin
                log.error(
                    "cannot accept connections on %s (%s): pausing for %g s", sock.getsockname(), exc, ACCEPT_PAUSE
                )
                self._loop.remove_reader(sock.fileno())
                self._loop.call_later(ACCEPT_PAUSE, self._resume, sock, tcp)
                return
            except Exception:  # noqa: BLE001 - one connection's setup failure must not stop the listener
                log.exception("could not set up a client connection; closed it")
                remaining -= 1
                continue
            if accepted < remaining:
                return  # none is waiting any more
            remaining -= accepted

    def _resume(self, sock: socket.socket, tcp: bool) -> None:
        if self._serving:
            self._loop.add_reader(sock.fileno(), self._accept, sock, tcp)

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        return None


async def start_server(
    relay: Optional[Any], protocol_factory: Callable[[], asyncio.Protocol], host: str, port: int, *, backlog: int
) -> Any:
    """Listen on host:port (every address it resolves to); the result has `sockets`, `close()`, `wait_closed()`."""
    loop = asyncio.get_running_loop()
    if relay is None:
        return await loop.create_server(protocol_factory, host, port, backlog=backlog, reuse_address=True)
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return RelayServer(relay, protocol_factory, sockets)
