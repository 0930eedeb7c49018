"""Webhook endpoints and signed, retried, per-endpoint-ordered event delivery over a
keep-alive HTTP/1.1 connection per endpoint."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .state import new_id

log = logging.getLogger(__name__)

ResultCallback = Callable[[str, str, bool], None]


def sign(payload: bytes, secrets: list[str], timestamp: int) -> str:
    """Stripe-Signature header: one v1 per active secret so receivers mid-rotation verify."""
    signed = f"{timestamp}.".encode() + payload
    parts = [f"t={timestamp}"]
    for secret in secrets:
        digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        parts.append(f"v1={digest}")
    return ",".join(parts)


@dataclass
class WebhookEndpoint:
    url: str
    secrets: list[str]
    id: str = field(default_factory=lambda: new_id("we"))
    enabled_events: list[str] = field(default_factory=lambda: ["*"])
    duplicates: int = 1
    shuffle_window: float = 0.0
    delay: float = 0.0
    max_attempts: int = 5
    backoff_base: float = 0.05
    backoff_max: float = 1.0
    timeout: float = 5.0
    attempts: int = 0
    deliveries: int = 0
    # Set by /v1/webhook_endpoints (webhook_endpoints.py): the version its events carry
    # (None: the account's) and whether Stripe delivers to it (false: disabled).
    api_version: str | None = None
    enabled: bool = True

    def wants(self, event_type: str) -> bool:
        return self.enabled and any(
            pattern == "*"
            or pattern == event_type
            or (pattern.endswith(".*") and event_type.startswith(pattern[:-1]))
            for pattern in self.enabled_events
        )

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "enabled_events": self.enabled_events,
            "duplicates": self.duplicates,
            "shuffle_window": self.shuffle_window,
            "delay": self.delay,
            "max_attempts": self.max_attempts,
            "backoff_base": self.backoff_base,
            "attempts": self.attempts,
            "deliveries": self.deliveries,
        }


_OPTION_TYPES: dict[str, type] = {
    "duplicates": int,
    "shuffle_window": float,
    "delay": float,
    "max_attempts": int,
    "backoff_base": float,
    "backoff_max": float,
    "timeout": float,
}


def make_endpoint(url: str, secrets: list[str], **options: Any) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(url=url, secrets=list(secrets))
    for name, value in options.items():
        if name == "enabled_events":
            endpoint.enabled_events = [str(v) for v in value]
        elif name in _OPTION_TYPES:
            setattr(endpoint, name, _OPTION_TYPES[name](value))
        else:
            raise ValueError(f"unknown webhook endpoint option {name!r}")
    if not endpoint.secrets:
        raise ValueError("a webhook endpoint needs at least one secret")
    return endpoint


class Dispatcher:
    """One sequential sender task per endpoint keeps delivery in creation order; it
    lives on the server's event loop, and producers on any thread hand work over."""

    def __init__(self, on_result: ResultCallback, seed: int = 0) -> None:
        self._on_result = on_result
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue[tuple[str, bytes]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._backlog: list[tuple[str, str, bytes]] = []
        self.endpoints: dict[str, WebhookEndpoint] = {}
        self._outstanding = 0
        self._idle = threading.Condition(self._lock)

    # -- lifecycle -------------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._loop = loop
            backlog, self._backlog = self._backlog, []
        for endpoint_id, event_id, body in backlog:
            loop.call_soon_threadsafe(self._put, endpoint_id, event_id, body)

    async def aclose(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        self._tasks.clear()
        self._queues.clear()

    def _in_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _call_in_loop(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or self._in_loop() or loop.is_closed():
            fn()
            return
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        done.wait(5.0)

    def reset(self) -> None:
        def clear() -> None:
            for task in self._tasks.values():
                task.cancel()
            self._tasks.clear()
            self._queues.clear()

        self._call_in_loop(clear)
        with self._lock:
            self.endpoints.clear()
            self._backlog.clear()
            self._outstanding = 0
            self._idle.notify_all()

    # -- producers -------------------------------------------------------------------
    def add_endpoint(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        with self._lock:
            self.endpoints[endpoint.id] = endpoint
        return endpoint

    def remove_endpoint(self, endpoint_id: str) -> None:
        with self._lock:
            self.endpoints.pop(endpoint_id, None)

    def targets(self, event_type: str) -> list[str]:
        with self._lock:
            return [e.id for e in self.endpoints.values() if e.wants(event_type)]

    def enqueue(self, endpoint_id: str, event_id: str, body: bytes) -> None:
        with self._lock:
            self._outstanding += 1
            loop = self._loop
            if loop is None or loop.is_closed():
                self._backlog.append((endpoint_id, event_id, body))
                return
        if self._in_loop():
            self._put(endpoint_id, event_id, body)
        else:
            loop.call_soon_threadsafe(self._put, endpoint_id, event_id, body)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block (from a non-loop thread) until every queued delivery has finished."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._outstanding > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    # -- loop side -------------------------------------------------------------------
    def _put(self, endpoint_id: str, event_id: str, body: bytes) -> None:
        queue = self._queues.get(endpoint_id)
        if queue is None:
            queue = asyncio.Queue()
            self._queues[endpoint_id] = queue
            self._tasks[endpoint_id] = asyncio.get_running_loop().create_task(
                self._sender(endpoint_id, queue)
            )
        queue.put_nowait((event_id, body))

    def _done(self, count: int = 1) -> None:
        with self._idle:
            self._outstanding = max(0, self._outstanding - count)
            self._idle.notify_all()

    async def _sender(self, endpoint_id: str, queue: asyncio.Queue[tuple[str, bytes]]) -> None:
        connection: Connection | None = None
        try:
            while True:
                batch = [await queue.get()]
                endpoint = self.endpoints.get(endpoint_id)
                if endpoint is None:  # deleted: its events no longer wait for it
                    self._on_result(batch[0][0], endpoint_id, True)
                    self._done()
                    continue
                if connection is None or connection.url != endpoint.url:
                    if connection is not None:  # the API changed the endpoint's URL
                        connection.close()
                    connection = Connection(endpoint.url)
                if endpoint.shuffle_window > 0:
                    # Gather what arrives within the window, then send it in random order.
                    await asyncio.sleep(endpoint.shuffle_window)
                    while not queue.empty():
                        batch.append(queue.get_nowait())
                    self._rng.shuffle(batch)
                for event_id, body in batch:
                    try:
                        if endpoint.delay > 0:
                            await asyncio.sleep(endpoint.delay)
                        ok = False
                        for _ in range(max(1, endpoint.duplicates)):
                            ok = await self._deliver(endpoint, connection, body) or ok
                        gone = endpoint_id not in self.endpoints  # deleted while retrying
                        self._on_result(event_id, endpoint_id, ok or gone)
                    finally:
                        self._done()
        finally:
            if connection is not None:
                connection.close()

    async def _deliver(
        self, endpoint: WebhookEndpoint, connection: Connection, body: bytes
    ) -> bool:
        for attempt in range(max(1, endpoint.max_attempts)):
            if attempt:
                delay = min(endpoint.backoff_max, endpoint.backoff_base * 2 ** (attempt - 1))
                await asyncio.sleep(delay)
            if endpoint.id not in self.endpoints:
                return False
            endpoint.attempts += 1
            # Wall time, not the emulator clock: receivers check tolerance against real time.
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": sign(body, endpoint.secrets, int(time.time())),
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            }
            try:
                async with asyncio.timeout(endpoint.timeout):
                    status = await connection.post(body, headers)
            except (OSError, TimeoutError, ValueError, EOFError, asyncio.LimitOverrunError) as exc:
                log.debug("webhook to %s failed: %r", endpoint.url, exc)
                continue
            if 200 <= status < 300:
                endpoint.deliveries += 1
                return True
        return False


class Connection:
    """A keep-alive HTTP/1.1 client connection for one endpoint's sender, which posts one
    event at a time. Hand-written because it is in the path of every emulated event:
    httpx cost several times more CPU per delivery than the rest of the emulator's work
    for the event. Reads Content-Length, chunked and read-until-close responses."""

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook URL must be http(s)://host/...: {url!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._authority = parts.netloc.rpartition("@")[2]
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        """The response status. On any failure (OSError, EOFError, ValueError for a
        response that is not HTTP/1.x, cancellation) the connection is closed."""
        try:
            reused = self._streams is not None
            try:
                return await self._exchange(body, headers)
            except (ConnectionError, asyncio.IncompleteReadError):
                if not reused:
                    raise
            # The server closed the idle connection before it saw our request:
            # send it once more on a fresh one, as HTTP clients do.
            self.close()
            return await self._exchange(body, headers)
        except BaseException:
            self.close()
            raise

    async def _exchange(self, body: bytes, headers: dict[str, str]) -> int:
        if self._streams is None:
            context = ssl.create_default_context() if self._tls else None
            self._streams = await asyncio.open_connection(self._host, self._port, ssl=context)
        reader, writer = self._streams
        lines = [
            f"POST {self._target} HTTP/1.1",
            f"Host: {self._authority}",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        while True:
            status, keep_alive = await _read_response(reader)
            if status >= 200:  # 1xx are interim: the final response follows
                break
        if not keep_alive:
            self.close()
        return status


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; its status and whether the connection stays usable."""
    status_line = await reader.readuntil(b"\r\n")
    version, _, rest = status_line.decode("latin-1").partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x response: {status_line[:40]!r}")
    status = int(rest[:3])
    fields: dict[str, str] = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        fields[name.strip().lower()] = value.strip().lower()
    keep_alive = fields.get("connection") != "close" and (
        version == "HTTP/1.1" or fields.get("connection") == "keep-alive"
    )
    if status < 200 or status in (204, 304):
        return status, keep_alive
    if "chunked" in fields.get("transfer-encoding", ""):
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
    elif "content-length" in fields:
        await reader.readexactly(int(fields["content-length"]))
    else:
        await reader.read()  # the body runs until the server closes
        keep_alive = False
    return status, keep_alive
