"""A small HTTP/1.1 server for ASGI apps: what the emulator and the test webhook
receiver need (keep-alive, Content-Length and chunked bodies, Expect: 100-continue,
HEAD, a graceful stop) and nothing more (no HTTP/2, no lifespan, no pipelining).

It replaced Hypercorn for the emulator because the emulator is in the path of every
test and benchmark request, and under the daemon's load Hypercorn's per-request work
(h11 state machine, a task group and an idle-timeout task per request) was about 60 %
of the emulator's CPU. The daemon itself still serves with Hypercorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

log = logging.getLogger(__name__)

Message = dict[str, Any]
ASGIApp = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

_HEAD_LIMIT = 64 * 1024
_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class BadRequest(Exception):
    """The request cannot be parsed; answered 400 and the connection closed."""


class HTTPServer:
    """Serves `app` on a listening socket until `close`."""

    def __init__(self, app: ASGIApp, *, quiet: tuple[type[BaseException], ...] = ()) -> None:
        self._app = app
        # Exceptions an app raises on purpose to tear a connection down (not logged).
        self._quiet = quiet
        self._server: asyncio.Server | None = None
        self._idle: set[asyncio.StreamWriter] = set()
        self._busy: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._drained = asyncio.Event()  # set once closing and no request is in progress

    async def start(self, sock: Any) -> None:
        self._server = await asyncio.start_server(self._connection, sock=sock, limit=_HEAD_LIMIT)

    async def close(self, grace: float = 1.0) -> None:
        """Stop accepting; close idle connections now and busy ones after their response
        (or after `grace` seconds)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._idle):
            writer.close()
        if self._busy:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._drained.wait()
        for writer in list(self._busy):
            writer.transport.abort()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._idle.add(writer)
        sockname = writer.get_extra_info("sockname")
        peername = writer.get_extra_info("peername")
        ends = (
            tuple(sockname[:2]) if sockname else None,
            tuple(peername[:2]) if peername else None,
        )
        try:
            while not self._closing:
                # No idle timeout: the clients are local processes, whose connections
                # the kernel closes when they exit; `close` ends the idle ones.
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    writer.write(_simple(431, "request head too large"))
                    return
                self._idle.discard(writer)
                self._busy.add(writer)
                try:
                    if not await self._exchange(head, reader, writer, ends):
                        return
                finally:
                    self._busy.discard(writer)
                    self._idle.add(writer)
                    if self._closing and not self._busy:
                        self._drained.set()
        except BadRequest as exc:
            writer.write(_simple(400, str(exc)))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._idle.discard(writer)
            writer.close()

    async def _exchange(
        self,
        head: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ends: tuple[Any, Any],
    ) -> bool:
        """One request and its response; whether the connection may serve another."""
        method, target, version, headers = _parse_head(head)
        fields = {name: value for name, value in headers}
        if fields.get(b"expect", b"").lower() == b"100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await _read_body(reader, fields)
        connection = fields.get(b"connection", b"").lower()
        keep_alive = connection != b"close" and (version == "1.1" or connection == b"keep-alive")
        path, _, query = target.partition(b"?")
        scope: Message = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version,
            "method": method,
            "scheme": "http",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "server": ends[0],
            "client": ends[1],
        }
        response = _Response(writer, head_only=method == "HEAD", keep_alive=keep_alive)
        received = False
        closed = asyncio.Event()

        async def receive() -> Message:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            await closed.wait()  # nothing more will come: only a disconnect
            return {"type": "http.disconnect"}

        try:
            await self._app(scope, receive, response.send)
        except Exception as exc:
            if not isinstance(exc, self._quiet):
                log.exception("emulator request %s %s failed", method, target[:200])
            if response.started:
                writer.transport.abort()
                return False
            writer.write(_simple(500, "internal error"))
            return False
        finally:
            closed.set()
        if not response.complete:
            writer.transport.abort()
            return False
        await writer.drain()
        return keep_alive


class _Response:
    """Collects an ASGI response and writes it: head and body in one write when the
    body comes in one message (as every response here does)."""

    def __init__(self, writer: asyncio.StreamWriter, *, head_only: bool, keep_alive: bool) -> None:
        self._writer = writer
        self._head_only = head_only
        self._keep_alive = keep_alive
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_sent = False
        self._chunked = False
        self.started = False
        self.complete = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._status = int(message["status"])
            self._headers = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers", ())]
            self.started = True
            return
        if message["type"] != "http.response.body" or not self.started or self.complete:
            return
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        out = b""
        if not self._head_sent:
            names = {name for name, _ in self._headers}
            headers = list(self._headers)
            if b"content-length" not in names:
                if more:
                    self._chunked = True
                    headers.append((b"transfer-encoding", b"chunked"))
                else:
                    headers.append((b"content-length", str(len(body)).encode()))
            if not self._keep_alive:
                headers.append((b"connection", b"close"))
            reason = _REASONS.get(self._status, "Unknown")
            lines = [f"HTTP/1.1 {self._status} {reason}".encode()]
            lines += [name + b": " + value for name, value in headers]
            out = b"\r\n".join(lines) + b"\r\n\r\n"
            self._head_sent = True
        if not self._head_only:
            if self._chunked:
                if body:
                    out += b"%x\r\n%s\r\n" % (len(body), body)
                if not more:
                    out += b"0\r\n\r\n"
            else:
                out += body
        self._writer.write(out)
        if not more:
            self.complete = True


def _parse_head(head: bytes) -> tuple[str, bytes, str, list[tuple[bytes, bytes]]]:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest(f"bad request line {lines[0][:100]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():  # no obs-fold, no blanks
            raise BadRequest(f"bad header line {line[:100]!r}")
        headers.append((name.lower(), value.strip()))
    return parts[0].decode("latin-1"), parts[1], parts[2][5:].decode("latin-1"), headers


async def _read_body(reader: asyncio.StreamReader, fields: dict[bytes, bytes]) -> bytes:
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        chunks: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                raise BadRequest("bad chunk size") from None
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            chunks.append((await reader.readexactly(size + 2))[:-2])
    length = fields.get(b"content-length")
    if length is None:
        return b""
    if not length.isdigit():
        raise BadRequest("bad Content-Length")
    return await reader.readexactly(int(length))


def _simple(status: int, text: str) -> bytes:
    body = text.encode()
    reason = _REASONS.get(status, "Error")
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body
