"""Admin HTTP listener: /metrics (Prometheus text), /healthz and /stats (JSON), one request per connection."""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from rdsproxy.metrics import Metrics

__all__ = ["MAX_HEADER_BYTES", "MAX_REQUEST_LINE_BYTES", "READ_TIMEOUT_SECONDS", "AdminServer"]

logger = logging.getLogger(__name__)

MAX_REQUEST_LINE_BYTES = 8192
MAX_HEADER_BYTES = 8192  # all header lines together, request line excluded
MAX_HEADER_COUNT = 100
READ_TIMEOUT_SECONDS = 10.0
# After answering, the peer may still be sending (a body we never read, an oversized header); reading it away
# for a moment before closing keeps the kernel from answering with a reset that could destroy our response.
LINGER_SECONDS = 1.0
LINGER_MAX_BYTES = 65536

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_ROUTES = frozenset({"/metrics", "/healthz", "/stats"})
_ALLOWED_METHODS = ("GET", "HEAD")
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class _HttpError(Exception):
    """A request the server refuses with a status before routing it."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class AdminServer:
    """Serves the admin endpoints of one proxy on its own small asyncio server."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        health: Callable[[], tuple[bool, dict]],
        stats: Callable[[], dict],
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self._metrics = metrics
        self._health = health
        self._stats = stats
        # Recomputes gauges derived from live sessions, so a scrape never shows values up to a janitor pass old.
        self._refresh = refresh
        # A private registry so /metrics shows only this proxy, never process-wide default collectors.
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(metrics.collector())
        self._server: asyncio.AbstractServer | None = None
        self._address: tuple[str, int] | None = None
        self._handlers: set[asyncio.Task] = set()

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound; valid after start()."""
        if self._address is None:
            raise RuntimeError("AdminServer.address is only known after start()")
        return self._address

    async def start(self, host: str, port: int) -> None:
        if self._server is not None:
            raise RuntimeError("AdminServer already started")
        self._server = await asyncio.start_server(
            self._serve_connection,
            host,
            port,
            limit=max(MAX_REQUEST_LINE_BYTES, MAX_HEADER_BYTES),
            reuse_address=True,
        )
        sockname = self._server.sockets[0].getsockname()
        self._address = (sockname[0], sockname[1])
        logger.info("admin listener on %s:%d", *self._address)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        await server.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._answer_one_request(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the peer went away; nothing to answer
        except asyncio.CancelledError:
            # Only close() cancels these tasks and nobody awaits their result; letting the cancellation out
            # makes Python 3.11's stream callback log a spurious error.
            pass
        except Exception:
            logger.exception("admin listener: unexpected error serving %s", _peer(writer))
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            if task is not None:
                self._handlers.discard(task)

    async def _answer_one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path = await asyncio.wait_for(_read_request_head(reader), READ_TIMEOUT_SECONDS)
        except _HttpError as refusal:
            await _respond(writer, refusal.status, _TEXT, (refusal.reason + "\n").encode(), send_body=True)
            await _linger(reader)
            return
        except asyncio.TimeoutError:
            await _respond(writer, HTTPStatus.REQUEST_TIMEOUT, _TEXT, b"request timeout\n", send_body=True)
            return
        except asyncio.IncompleteReadError as incomplete:
            if incomplete.partial:
                await _respond(writer, HTTPStatus.BAD_REQUEST, _TEXT, b"incomplete request\n", send_body=True)
            return

        status, content_type, body, extra_headers = self._route(method, path)
        await _respond(writer, status, content_type, body, send_body=method != "HEAD", extra=extra_headers)
        await _linger(reader)

    def _route(self, method: str, path: str) -> tuple[HTTPStatus, str, bytes, tuple[tuple[str, str], ...]]:
        if path not in _ROUTES:
            return HTTPStatus.NOT_FOUND, _TEXT, b"not found\n", ()
        if method not in _ALLOWED_METHODS:
            allow = (("Allow", ", ".join(_ALLOWED_METHODS)),)
            return HTTPStatus.METHOD_NOT_ALLOWED, _TEXT, b"method not allowed\n", allow
        try:
            if path == "/metrics":
                if self._refresh is not None:
                    self._refresh()
                return HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(self._registry), ()
            if path == "/healthz":
                healthy, details = self._health()
                document: dict[str, Any] = {"status": "ok" if healthy else "unhealthy"}
                document.update((key, value) for key, value in details.items() if key != "status")
                status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
                return status, _JSON, _json_bytes(document), ()
            document = dict(self._stats())
            document["metrics"] = self._metrics.snapshot()
            return HTTPStatus.OK, _JSON, _json_bytes(document), ()
        except Exception:
            logger.exception("admin listener: %s failed", path)
            return HTTPStatus.INTERNAL_SERVER_ERROR, _JSON, _json_bytes({"error": "internal error"}), ()


async def _read_request_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """Reads the request line and headers (checked, then unused); returns (method, path without query)."""
    request_line = await _read_line(reader, HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
    if len(request_line) > MAX_REQUEST_LINE_BYTES:
        raise _HttpError(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
    method, target = _parse_request_line(request_line)

    header_bytes = 0
    header_count = 0
    while True:
        line = await _read_line(reader, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers too large")
        if line in (b"\r\n", b"\n"):
            break
        header_bytes += len(line)
        header_count += 1
        if header_bytes > MAX_HEADER_BYTES or header_count > MAX_HEADER_COUNT:
            raise _HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers too large")
        _check_header_line(line)
    return method, target.split("?", 1)[0]


async def _read_line(reader: asyncio.StreamReader, too_long: HTTPStatus, reason: str) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _HttpError(too_long, reason) from None
    return line


def _parse_request_line(line: bytes) -> tuple[str, str]:
    try:
        text = line.rstrip(b"\r\n").decode("ascii")
    except UnicodeDecodeError:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "request line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) != 3:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if not method or not set(method) <= _TOKEN_CHARS:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed method")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _HttpError(HTTPStatus.BAD_REQUEST, "unsupported HTTP version")
    if not target.startswith("/") or any(ord(char) <= 32 or ord(char) == 127 for char in target):
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed request target")
    return method, target


def _check_header_line(line: bytes) -> None:
    name, colon, _value = line.partition(b":")
    if not colon or not name:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed header line")
    try:
        name_text = name.decode("ascii")
    except UnicodeDecodeError:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed header name") from None
    # Rejects obsolete line folding and whitespace before the colon too (RFC 9112 section 5).
    if not set(name_text) <= _TOKEN_CHARS:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed header name")


def _json_bytes(document: dict) -> bytes:
    # default=str: a stats provider returning a non-JSON value should degrade, not fail the endpoint.
    return (json.dumps(document, default=str, sort_keys=False) + "\n").encode()


async def _respond(
    writer: asyncio.StreamWriter,
    status: HTTPStatus,
    content_type: str,
    body: bytes,
    *,
    send_body: bool,
    extra: tuple[tuple[str, str], ...] = (),
) -> None:
    head_lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    head_lines.extend(f"{name}: {value}" for name, value in extra)
    head = ("\r\n".join(head_lines) + "\r\n\r\n").encode("ascii")
    writer.write(head + body if send_body else head)
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def _linger(reader: asyncio.StreamReader) -> None:
    """Discards what the peer still sends, briefly and boundedly, so closing does not reset the connection."""
    discarded = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_SECONDS
    while discarded < LINGER_MAX_BYTES:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        try:
            chunk = await asyncio.wait_for(reader.read(LINGER_MAX_BYTES), remaining)
        except (asyncio.TimeoutError, ConnectionError):
            return
        if not chunk:
            return
        discarded += len(chunk)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "unknown peer"
