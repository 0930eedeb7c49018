"""POST /webhooks/stripe: verify, store, answer. Never processes.

Stripe retries anything but a 2xx for three days, so the answer is 200 only
once the event has committed to integration.webhook_events (a duplicate id
is a no-op and also 200), and 5xx when it could not be stored. Requests
that can never succeed (no or bad signature, stale timestamp, not an event,
too large) get 4xx with a short JSON reason and store nothing.

Mounting (the daemon): the endpoint stores through an Ingestor, whose
group-commit collector its owner runs, and is a Starlette request handler::

    ingestor = Ingestor(pool)
    endpoint = WebhookEndpoint(ingestor, secrets)
    Route("/webhooks/stripe", endpoint.handle, methods=["POST"])
    ... tg.start(ingestor.run)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import msgspec
import stripe
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from ..config import DEFAULTS
from ..metrics import WEBHOOK_INGEST_SECONDS, WEBHOOKS_RECEIVED
from .events import Envelope, ObjectHead
from .ingest import Ingestor, StoreError, Unstorable

log = logging.getLogger(__name__)


class _Reject(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await self._read(request)
            envelope = self._verify(body, request.headers.get("stripe-signature"))
        except _Reject as exc:
            WEBHOOKS_RECEIVED.labels("rejected").inc()
            log.warning("webhook rejected", extra={"status": exc.status, "reason": exc.reason})
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            new = await self.ingestor.store(body, envelope)
        except Unstorable as exc:
            WEBHOOKS_RECEIVED.labels("rejected").inc()
            log.error(
                "webhook event cannot be stored", extra={"event": envelope.id, "error": str(exc)}
            )
            return JSONResponse({"error": f"cannot be stored: {exc}"}, status_code=400)
        except StoreError as exc:
            WEBHOOKS_RECEIVED.labels("unavailable").inc()
            return JSONResponse({"error": f"not stored, retry later: {exc}"}, status_code=503)
        WEBHOOKS_RECEIVED.labels("stored" if new else "duplicate").inc()
        WEBHOOK_INGEST_SECONDS.observe(time.perf_counter() - started)
        return JSONResponse({"received": True, "duplicate": not new})

    async def _read(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise _Reject(400, "invalid Content-Length")
            if int(declared) > self.max_body:
                raise _Reject(413, f"body larger than {self.max_body} bytes")
        # Counted as it streams too: a chunked body has no Content-Length.
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise _Reject(413, f"body larger than {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _verify(self, body: bytes, header: str | None) -> Envelope:
        if not header:
            raise _Reject(400, "missing Stripe-Signature header")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(400, "body is not valid UTF-8") from None
        stale = False
        for secret in self.secrets:
            try:
                stripe.WebhookSignature.verify_header(text, header, secret, self.tolerance)
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
