"""A byte-pump process for benchmarks.floors: `python -m benchmarks.floor_pump MODE PORT TARGET_HOST TARGET_PORT`.

MODE `c` runs the compiled pump's own epoll loop (nothing else in the process does any work per event); MODE
`c-in-uvloop` services the same pump from a uvloop event loop through one reader on its epoll fd, the way
rdsproxy's relay is driven. Each accepted client gets its own server connection; bytes are forwarded unchanged,
so authentication goes end to end. Needs `_floor_pump` importable (benchmarks.floors builds it).
"""

from __future__ import annotations

import asyncio
import socket
import sys

from _floor_pump import Pump  # type: ignore[import-not-found]


def main() -> None:
    mode, port, target_host, target_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    listener.setblocking(False)
    pump = Pump(listener.fileno())

    def accept_all() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                return
            server = socket.create_connection((target_host, target_port))
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
            pump.add_pair(client.detach(), server.detach())

    if mode == "c":
        while True:
            if pump.serve(-1):
                accept_all()
    elif mode == "c-in-uvloop":
        import uvloop

        async def serve() -> None:
            loop = asyncio.get_running_loop()
            loop.add_reader(pump.fileno(), lambda: pump.serve(0) and accept_all())
            await asyncio.Event().wait()

        uvloop.run(serve())
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
