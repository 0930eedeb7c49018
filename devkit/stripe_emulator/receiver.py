"""A tiny webhook receiver for tests and demos: records every POST, can be told to
fail the next N deliveries, and lets callers wait for a count without sleeping."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .server import BackgroundServer


@dataclass(frozen=True)
class Received:
    body: bytes
    signature: str
    status: int
    received_at: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class WebhookReceiver(BackgroundServer):
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self._cond = threading.Condition()
        self.requests: list[Received] = []
        self._fail: list[int] = []

    @property
    def url(self) -> str:
        return f"{self.base_url}/webhooks"

    def fail_next(self, count: int, status: int = 500) -> None:
        with self._cond:
            self._fail.extend([status] * count)

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()
            self._fail.clear()

    def delivered(self) -> list[Received]:
        """Requests answered 2xx, in arrival order."""
        with self._cond:
            return [r for r in self.requests if r.ok]

    def wait_for(self, count: int, timeout: float = 5.0, *, ok_only: bool = True) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [r for r in self.requests if r.ok or not ok_only]
                remaining = deadline - time.monotonic()
                if len(got) >= count or remaining <= 0:
                    return got
                self._cond.wait(remaining)

    def make_app(self) -> Any:
        async def hook(request: Request) -> Response:
            body = await request.body()
            with self._cond:
                status = self._fail.pop(0) if self._fail else 200
                self.requests.append(
                    Received(body, request.headers.get("stripe-signature", ""), status, time.time())
                )
                self._cond.notify_all()
            return Response(b"{}", status_code=status, media_type="application/json")

        return Starlette(routes=[Route("/webhooks", hook, methods=["POST"])])
