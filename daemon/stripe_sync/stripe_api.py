"""The Stripe SDK client, one pace for all calls, and what each failure means.

:func:`from_settings` is the one place a client is built from the settings
(the daemon and the operator commands alike; :func:`for_command` adds the
small pool that catch-up and reconcile work with).

The SDK's own retries are off: a retry is the queue's job, so that it is
logged, backed off, counted against the row's attempts, and sent with the
same idempotency key however many restarts lie in between.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import quote_plus, urlencode

import aiohttp
import anyio
import stripe
from psycopg_pool import AsyncConnectionPool

# The SDK's own pieces of the request raw_request_async sends (StripeApi._post).
from stripe._encode import _api_encode
from stripe._request_options import merge_options

from . import STRIPE_API_VERSION
from .config import DEFAULTS, RATE_LIMITS, Secret, Settings
from .db import make_pool
from .errors import PermanentError, SavedFailure, TransientError, joined
from .runtime.metrics import STRIPE_RATE_LIMITED, STRIPE_SECONDS

log = logging.getLogger(__name__)
T = TypeVar("T")

# First backoff step (seconds) after a 409: the request holding the key is
# usually done within a second or two.
CONFLICT_BACKOFF = 0.5


class Pacer:
    """At most ``rate`` calls in any one-second window (0: no pacing).

    Calls are spaced evenly (2 % under the rate) so load stays smooth, and
    the times they actually left are checked against a sliding window: a
    task that woke late must not bunch up with the ones after it and give
    Stripe's limiter a 429.
    """

    WINDOW = 1.02  # seconds; a little over Stripe's second, for network jitter

    def __init__(self, rate: float) -> None:
        self._next = 0.0
        self._sent: deque[float] = deque()
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        """Change the rate at run time (``stripe-sync backfill`` slows down when a
        daemon starts beside it). Calls already given a slot keep it; the window
        of calls sent is kept, so a lower rate holds at once."""
        self.rate = rate
        self.interval = 1.0 / (rate * 0.98) if rate > 0 else 0.0
        self.limit = max(1, int(rate))

    async def wait(self) -> None:
        if not self.interval:
            return
        now = anyio.current_time()
        slot = max(now, self._next)
        # Reserve before sleeping: the event loop is single-threaded, so no lock.
        self._next = slot + self.interval
        while True:
            now = anyio.current_time()
            while self._sent and self._sent[0] <= now - self.WINDOW:
                self._sent.popleft()
            if now >= slot and len(self._sent) < self.limit:
                self._sent.append(now)  # no await since the check: it holds
                return
            if len(self._sent) >= self.limit:
                slot = max(slot, self._sent[0] + self.WINDOW)
            await anyio.sleep(slot - now)


class StripeApi:
    def __init__(
        self,
        api_key: Secret,
        *,
        api_base: str | None = None,
        rate_limit: float = RATE_LIMITS["test"],
        timeout: float = DEFAULTS.stripe_timeout,
    ) -> None:
        # The SDK's aiohttp client, chosen by measurement (docs/benchmarks.md,
        # issue 11): about half the CPU per call of its httpx client, which was
        # the largest single cost of a synced row. Its session opens on the
        # first call, in the event loop that makes it; aclose() ends it.
        self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout))
        # No client telemetry (the SDK's header reporting each last request's
        # duration to Stripe, and its platform string in the user agent): work
        # before every request on the pickup path that nothing here reads
        # (docs/benchmarks.md, issue 27, pickup round 3). A process-wide SDK
        # setting; the daemon and the operator commands alike.
        stripe.enable_telemetry = False
        self.client = stripe.StripeClient(
            api_key.reveal(),
            base_addresses={"api": api_base} if api_base else None,
            http_client=self._http,
            max_network_retries=0,
            stripe_version=STRIPE_API_VERSION,  # chosen, not the SDK's (__init__.py)
        )
        self._post_headers: dict[str, str] | None = None  # _post's, built on its first call
        self._api_base = ""
        self.pacer = Pacer(rate_limit)
        self.calls = 0
        self.rate_limited = 0

    async def __aenter__(self) -> StripeApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session and its keep-alive connections (in the loop that used them)."""
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def call(self, what: str, request: Awaitable[T]) -> T:
        """Await one SDK coroutine, paced; map its failure to Permanent/TransientError.

        ``what`` names the call in errors, e.g. ``create customer``.
        """
        try:
            await self.pacer.wait()
        except BaseException:
            # Cancelled (Ctrl-C, SIGTERM) while paced: the request was never sent;
            # close its coroutine, or Python warns at exit that it was never awaited.
            close = getattr(request, "close", None)
            if close is not None:
                close()
            raise
        self.calls += 1
        # "create customer for billing.accounts id=1" → "create customer": no ids in labels
        timer = STRIPE_SECONDS.labels(" ".join(what.split()[:2])).time()
        try:
            with timer:
                return await request
        except stripe.StripeError as exc:
            if isinstance(exc, stripe.RateLimitError):
                self.rate_limited += 1
                STRIPE_RATE_LIMITED.inc()
            raise classify(what, exc) from exc

    def raw_post(self, path: str, params: dict[str, Any], options: dict[str, Any]) -> Any:
        """A POST (a create, an update) whose answer the caller reads as plain JSON,
        to be awaited through ``call``: the request the SDK's ``raw_request_async``
        sends (the SDK's headers, encoding, HTTP client and error classes), whose
        answer (``.data``) is not turned into a ``StripeObject``; that cost ~15 % of
        the daemon's CPU in T1, for the ``id`` the outbox reads (docs/benchmarks.md,
        issue 11, step 9). ``path``: :func:`object_path`; ``options``: the SDK's
        ``idempotency_key`` and no other (the headers are the client's, built once)."""
        if options.keys() != {"idempotency_key"}:
            raise TypeError(f"raw_post takes an idempotency_key and no other option: {options}")
        return self._post(path, params, options["idempotency_key"])

    async def _post(self, path: str, params: dict[str, Any], key: str) -> Any:
        """``raw_request_async("post", …)`` with what is the same for every request
        done once: the SDK's own headers (``request_headers``: its user agent JSON,
        a scan of the environment, the key and version) are built on the first POST
        and reused with each request's idempotency key, and its request and
        response logging (five logfmt lines formatted per request whether or not
        anything logs them) is skipped; the body is the SDK's encoding, the answer
        and its errors the SDK's (``_interpret_response``). A quarter of the CPU of
        an outbox create, 39 % of its instructions (docs/benchmarks.md, issue 27,
        pickup round 3); tests/unit/test_stripe_api.py holds it to
        ``raw_request_async``'s request byte for byte."""
        requestor = self.client._requestor
        if self._post_headers is None:
            headers = requestor.request_headers(
                "post", "V1", merge_options(requestor._options, None)
            )
            headers.pop("Idempotency-Key", None)  # a random one: each request sets its own
            self._post_headers = headers
            self._api_base = requestor._options.base_addresses.get("api") or stripe.api_base
        body = urlencode(list(_api_encode(params))).replace("%5B", "[").replace("%5D", "]")
        rbody, rcode, rheaders = await self._http.request_async(
            "post", f"{self._api_base}{path}", {**self._post_headers, "Idempotency-Key": key}, body
        )
        return requestor._interpret_response(rbody, rcode, rheaders, "V1")

    async def post(
        self, what: str, path: str, params: dict[str, Any], options: dict[str, Any]
    ) -> dict[str, Any]:
        """``raw_post`` through ``call``: the answer as parsed JSON."""
        data: dict[str, Any] = (await self.call(what, self.raw_post(path, params, options))).data
        return data

    async def get(
        self, what: str, path: str, params: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """A GET (a retrieve, or a list with ``params`` as its query) through
        ``call``, its answer as parsed JSON, as ``post`` reads it; None when
        Stripe has no such object (404)."""
        try:
            request = self.client.raw_request_async("get", path, **(params or {}))
            response = await self.call(what, request)
        except PermanentError as exc:
            if is_missing(exc):
                return None
            raise
        data: dict[str, Any] = response.data
        return data


def object_path(resource: str, stripe_id: str | None = None) -> str:
    """The API path of a resource (``customers``), or of one object of it, its id
    quoted as the SDK's service methods quote it."""
    return f"/v1/{resource}" if stripe_id is None else f"/v1/{resource}/{quote_plus(stripe_id)}"


def from_settings(settings: Settings) -> StripeApi:
    """The client for ``STRIPE_API_KEY``, ``STRIPE_API_BASE``, the rate limit and the timeout."""
    settings.require("STRIPE_API_KEY")
    assert settings.stripe_api_key is not None
    return StripeApi(
        settings.stripe_api_key,
        api_base=settings.stripe_api_base,
        rate_limit=settings.effective_rate_limit,
        timeout=settings.stripe_timeout,
    )


@asynccontextmanager
async def for_command(
    settings: Settings, role: str
) -> AsyncIterator[tuple[StripeApi, AsyncConnectionPool]]:
    """An operator command's client and its small pool (catch-up, reconcile)."""
    settings.require("DATABASE_URL", "STRIPE_API_KEY")
    assert settings.database_url is not None
    async with (
        from_settings(settings) as api,
        make_pool(settings.database_url, size=2, role=role) as pool,
    ):
        yield api, pool


async def call_with_retries(
    api: StripeApi, what: str, request: Callable[[], Awaitable[T]], attempts: int = 5
) -> T:
    """``api.call`` with a few retries of temporary failures (429, 5xx, network).

    For operator commands, which have no queue to retry for them.
    """
    for attempt in range(attempts):
        try:
            return await api.call(what, request())
        except TransientError as exc:
            if attempt == attempts - 1:
                raise
            await anyio.sleep(max(exc.retry_after or 0.0, min(30.0, 0.25 * 2**attempt)))
    raise AssertionError("unreachable")  # pragma: no cover


def search_clause(field: str, value: str) -> str:
    """One clause of Stripe's search query language: ``metadata['k']:'v'`` with
    the value quoted, a quote or backslash inside it escaped with a backslash
    (a database name may hold a ``'``, and mc_source embeds it)."""
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"{field}:'{quoted}'"


def classify(what: str, exc: stripe.StripeError) -> PermanentError | TransientError:
    status = exc.http_status
    headers = exc.headers or {}
    detail = _detail(exc)
    should_retry = headers.get("stripe-should-retry")
    retry_after = _seconds(headers.get("retry-after"))
    if isinstance(exc, stripe.APIConnectionError):
        return TransientError(f"Stripe unreachable during {what}: {detail}")
    if should_retry == "true" or status == 429 or status is None or status >= 500:
        replayed = headers.get("idempotent-replayed") == "true"
        if status is not None and status >= 500 and (should_retry == "false" or replayed):
            return SavedFailure(
                f"Stripe failed with {status} during {what} and saved that answer under "
                f"the idempotency key{' (this was its replay)' if replayed else ''}: {detail}",
                replayed=replayed,
            )
        if should_retry == "false":
            return PermanentError(
                f"Stripe refused {what} ({status}) and says not to retry: {detail}"
            )
        kind = "rate-limited" if status == 429 else f"failed with {status}"
        return TransientError(f"Stripe {kind} during {what}: {detail}", retry_after=retry_after)
    if status == 409 and should_retry != "false":
        # A conflict: mostly idempotency_key_in_use, an earlier attempt with this
        # key still executing (one whose response we gave up on). Nothing was
        # saved; soon the same key gets that attempt's answer. The SDK, too,
        # retries a 409.
        # The SDK gives a v1 409 no code of its own; the body has it.
        code = exc.code or (exc.error.code if exc.error is not None else None)
        return TransientError(
            f"Stripe conflict (409{f' {code}' if code else ''}) during {what}: {detail}; "
            "retrying shortly with the same idempotency key",
            retry_after=retry_after,
            backoff_base=CONFLICT_BACKOFF,
        )
    return PermanentError(f"Stripe rejected {what} ({status}{_code(exc)}): {detail}")


def is_idempotency_conflict(exc: BaseException) -> bool:
    """Stripe's 400 for a key reused with other parameters (not the 409 of a key in use)."""
    cause = exc.__cause__
    return isinstance(cause, stripe.IdempotencyError) or (
        isinstance(cause, stripe.StripeError)
        and cause.http_status == 400
        and isinstance(cause.json_body, dict)
        and cause.json_body.get("error", {}).get("type") == "idempotency_error"
    )


def is_missing(exc: BaseException) -> bool:
    """Stripe's 404: no such object (never made, or deleted where Stripe forgets)."""
    cause = exc.__cause__
    return isinstance(cause, stripe.StripeError) and cause.http_status == 404


def _code(exc: stripe.StripeError) -> str:
    parts = [p for p in (exc.code, getattr(exc, "param", None)) if p]
    if isinstance(exc, stripe.InvalidRequestError) and getattr(exc, "param", None):
        return f" {exc.code or 'invalid_request'}, param {exc.param}"
    return f" {' '.join(parts)}" if parts else ""


def _detail(exc: stripe.StripeError) -> str:
    message = exc.user_message or str(getattr(exc, "_message", "") or "")
    return joined(message) or type(exc).__name__


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
