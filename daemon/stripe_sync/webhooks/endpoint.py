"""POST /webhooks/stripe: verify, store, answer. Never processes.

Stripe retries anything but a 2xx for three days, so the answer is 200 only
once the event has committed to integration.webhook_events (a duplicate id
is a no-op and also 200), and 5xx when it could not be stored. Requests
that can never succeed (no or bad signature, stale timestamp, not an event,
too large) get 4xx with a short JSON reason and store nothing.

Mounting (the daemon): the endpoint stores through an Ingestor, whose
group-commit collector its owner runs, and is a plain ASGI application that
``http.create_app`` puts in front of the Starlette app (which serves every
other path)::

    ingestor = Ingestor(pool)
    endpoint = WebhookEndpoint(ingestor, secrets)
    app = create_app(endpoint, ready)
    ... tg.start(ingestor.run)

Why plain ASGI: under load most of the daemon's requests are webhooks, and
Starlette's middleware stack, router, Request and Response objects cost
CPU per request that this path does not need (docs/benchmarks.md, "Issue 11
— webhooks", Round 2). Its answers are the ones Starlette gave: short JSON,
405 with ``Allow: POST`` for other methods, 500 ``internal error`` on a bug.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import stripe
from starlette.types import Receive, Scope, Send

from ..config import DEFAULTS
from ..runtime.metrics import WEBHOOK_INGEST_SECONDS, WEBHOOKS_RECEIVED
from .events import Envelope, ObjectHead
from .ingest import Ingestor, StoreError, Unstorable

log = logging.getLogger(__name__)


class _Reject(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Disconnected(Exception):
    """The client hung up before its body arrived."""


# A JSON answer: its bytes, or an object to encode.
Answer = bytes | dict[str, Any]

# The answers of nearly every request, encoded once.
_STORED = msgspec.json.encode({"received": True, "duplicate": False})
_DUPLICATE = msgspec.json.encode({"received": True, "duplicate": True})
_INTERNAL_ERROR = msgspec.json.encode({"error": "internal error"})
_ALLOW_POST = [(b"allow", b"POST")]


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by lower-case name (the first of repeated ones, as Starlette)."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name, value)
    return headers


async def _answer(
    send: Send, status: int, answer: Answer, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = answer if isinstance(answer, bytes) else msgspec.json.encode(answer)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class WebhookEndpoint:
    def __init__(
        self,
        ingestor: Ingestor,
        secrets: Sequence[str],
        *,
        tolerance: int = DEFAULTS.webhook_tolerance,
        max_body: int = 1 << 20,
    ) -> None:
        # Several secrets while one is being rotated: either verifies.
        self.secrets = [s for s in secrets if s.strip()]
        if not self.secrets:
            raise ValueError("WebhookEndpoint needs at least one webhook signing secret")
        self.tolerance = tolerance
        self.max_body = max_body
        self.ingestor = ingestor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI, for HTTP requests to the webhook path (``create_app`` routes them)."""
        try:
            if scope["method"] != "POST":
                await _answer(send, 405, {"error": "Method Not Allowed"}, _ALLOW_POST)
                return
            status, body = await self._handle(scope, receive)
        except _Disconnected:
            return  # nobody left to answer; nothing was stored
        except Exception as exc:
            log.error("request failed", exc_info=exc, extra={"path": scope.get("path")})
            status, body = 500, _INTERNAL_ERROR
        await _answer(send, status, body)

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, Answer]:
        started = time.perf_counter()
        headers = _headers(scope)
        try:
            body = await self._read(headers.get(b"content-length"), receive)
            envelope = self._verify(body, headers.get(b"stripe-signature"))
        except _Reject as exc:
            WEBHOOKS_RECEIVED.labels("rejected").inc()
            log.warning("webhook rejected", extra={"status": exc.status, "reason": exc.reason})
            return exc.status, {"error": exc.reason}
        try:
            new = await self.ingestor.store(body, envelope)
        except Unstorable as exc:
            WEBHOOKS_RECEIVED.labels("rejected").inc()
            log.error(
                "webhook event cannot be stored", extra={"event": envelope.id, "error": str(exc)}
            )
            return 400, {"error": f"cannot be stored: {exc}"}
        except StoreError as exc:
            WEBHOOKS_RECEIVED.labels("unavailable").inc()
            return 503, {"error": f"not stored, retry later: {exc}"}
        WEBHOOKS_RECEIVED.labels("stored" if new else "duplicate").inc()
        WEBHOOK_INGEST_SECONDS.observe(time.perf_counter() - started)
        return 200, (_STORED if new else _DUPLICATE)

    async def _read(self, declared: bytes | None, receive: Receive) -> bytes:
        if declared is not None:
            if not declared.isdigit():
                raise _Reject(400, "invalid Content-Length")
            if int(declared) > self.max_body:
                raise _Reject(413, f"body larger than {self.max_body} bytes")
        # Counted as it streams too: a chunked body has no Content-Length.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _Reject(413, f"body larger than {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _verify(self, body: bytes, header: bytes | None) -> Envelope:
        if not header:
            raise _Reject(400, "missing Stripe-Signature header")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(400, "body is not valid UTF-8") from None
        # Header values are latin-1 in ASGI (as Starlette decodes them).
        signature = header.decode("latin-1")
        stale = False
        for secret in self.secrets:
            try:
                stripe.WebhookSignature.verify_header(text, signature, secret, self.tolerance)
                break
            except stripe.SignatureVerificationError as exc:
                # The SDK checks the signature before the timestamp, so this
                # message means the signature matched but is too old.
                stale = stale or "tolerance" in str(exc)
        else:
            raise _Reject(
                400, "signature timestamp outside the tolerance" if stale else "invalid signature"
            )
        return _envelope(body)


def _envelope(body: bytes) -> Envelope:
    """The event, if the body is one: id evt_..., type, created, data.object."""
    try:
        event = msgspec.json.decode(body, type=Envelope)
    except msgspec.ValidationError as exc:
        raise _Reject(400, f"not a Stripe event: {exc}") from None
    except msgspec.DecodeError:
        raise _Reject(400, "not a Stripe event: body is not JSON") from None
    except RecursionError:  # msgspec gives up on objects nested ~1,000 deep
        raise _Reject(400, "not a Stripe event: nested too deeply") from None
    if not event.id or not event.id.startswith("evt_"):
        raise _Reject(400, "not a Stripe event: no id starting with evt_")
    if not event.type:
        raise _Reject(400, "not a Stripe event: no type")
    if event.created is None:
        raise _Reject(400, "not a Stripe event: no created")
    if event.data is None or not len(event.data.object):
        raise _Reject(400, "not a Stripe event: no data.object")
    try:
        msgspec.json.decode(event.data.object, type=ObjectHead)
    except msgspec.ValidationError:
        raise _Reject(400, "not a Stripe event: data.object is not an object") from None
    return event
