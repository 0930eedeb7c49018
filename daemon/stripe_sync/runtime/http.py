"""The daemon's HTTP face: the webhook endpoint, liveness and readiness.

Served by Hypercorn in the daemon's own event loop. Errors are short JSON,
never a stack trace. The webhook path goes straight to its ASGI application
(``WebhookEndpoint``), in front of Starlette: it is nearly all the traffic,
and Starlette's routing and middleware would be most of its HTTP cost.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

import anyio
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import cannot_listen, split_address

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]


WEBHOOK_PATH = "/webhooks/stripe"


def create_app(webhook: ASGIApp, ready: ReadyCheck) -> ASGIApp:
    """``webhook`` serves every HTTP request to WEBHOOK_PATH; Starlette the rest."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        checks = await ready()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, **checks}, status_code=200 if ok else 503)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("request failed", exc_info=exc, extra={"path": request.url.path})
        return JSONResponse({"error": "internal error"}, status_code=500)

    rest = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH:
            await webhook(scope, receive, send)
        else:
            await rest(scope, receive, send)  # lifespan too

    return app


def bind_socket(address: str, name: str = "STRIPE_SYNC_BIND") -> socket.socket:
    """Bind before serving, so the port is known (``:0`` in tests) and ready at once."""
    host, port = split_address(name, address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise cannot_listen(name, address, exc) from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


async def serve_http(app: ASGIApp, sock: socket.socket, shutdown: anyio.Event) -> None:
    config = Config()
    # Hypercorn takes the descriptor over and closes it on shutdown.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 5
    config.keep_alive_timeout = 75  # longer than Stripe's connection reuse
    await serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
