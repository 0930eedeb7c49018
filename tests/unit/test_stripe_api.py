"""The pacer and the error classification of stripe_api."""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
import stripe

from stripe_sync.config import Secret
from stripe_sync.errors import PermanentError, TransientError
from stripe_sync.stripe_api import Pacer, StripeApi, classify


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times.sort()
    best = start = 0
    for end in range(len(times)):
        while times[end] - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.anyio
async def test_pacer_never_exceeds_the_rate_in_any_second_even_when_the_loop_stalls() -> None:
    pacer, sent = Pacer(40), []
    rng = random.Random(7)

    async def caller() -> None:
        for _ in range(12):
            await pacer.wait()
            sent.append(anyio.current_time())
            if rng.random() < 0.02:
                time.sleep(0.15)  # noqa: ASYNC251 - the loop stalls: later wake-ups bunch up
            await anyio.sleep(rng.uniform(0, 0.01))

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(caller)
    assert max_in_window(list(sent)) <= 40
    elapsed = max(sent) - min(sent)
    assert len(sent) / elapsed > 40 * 0.5  # and it does not crawl (loose: CI may be busy)


def test_unpaced_pacer_returns_at_once() -> None:
    assert Pacer(0).interval == 0.0


def error(cls: type[stripe.StripeError], status: int, **headers: str) -> stripe.StripeError:
    extra = {"param": None} if "param" in inspect.signature(cls).parameters else {}
    return cls(
        "boom",
        **extra,
        http_status=status,
        headers=headers,
        json_body={"error": {"message": "boom"}},
    )


@pytest.mark.parametrize(
    "exc,kind",
    [
        (error(stripe.RateLimitError, 429), TransientError),
        (error(stripe.APIError, 500), TransientError),
        (error(stripe.APIError, 503), TransientError),
        (stripe.APIConnectionError("reset"), TransientError),  # type: ignore[no-untyped-call]
        (error(stripe.InvalidRequestError, 409, **{"stripe-should-retry": "true"}), TransientError),
        (error(stripe.APIError, 409), TransientError),  # idempotency_key_in_use
        (error(stripe.APIError, 500, **{"stripe-should-retry": "false"}), PermanentError),
        (error(stripe.InvalidRequestError, 400), PermanentError),
        (error(stripe.AuthenticationError, 401), PermanentError),
        (error(stripe.InvalidRequestError, 404), PermanentError),
    ],
)
def test_classification(exc: stripe.StripeError, kind: type[Exception]) -> None:
    result = classify("create customer", exc)
    assert isinstance(result, kind)
    assert "create customer" in str(result)


def test_the_request_version_is_chosen_and_known_to_the_installed_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """STRIPE_API_VERSION is sent on every request (not the SDK's default, which another
    SDK release changes), and the installed SDK knows it: an SDK upgrade that drops it
    fails here, not in production."""
    from stripe._api_version import _ApiVersion

    from stripe_sync import STRIPE_API_VERSION
    from stripe_sync.config import Secret
    from stripe_sync.stripe_api import StripeApi

    sdk_version = _ApiVersion.CURRENT
    monkeypatch.setattr(_ApiVersion, "CURRENT", "2099-01-01.another_sdk")  # a later SDK's
    api = StripeApi(Secret("sk_test_x"))
    assert api.client._requestor._options.stripe_version == STRIPE_API_VERSION
    monkeypatch.setattr(_ApiVersion, "CURRENT", sdk_version)
    release = STRIPE_API_VERSION.rpartition(".")[2]
    assert STRIPE_API_VERSION <= _ApiVersion.CURRENT and _ApiVersion.CURRENT.endswith(release)


def capturing(api: StripeApi, status: int, body: bytes) -> list[tuple[object, ...]]:
    """Requests ``api`` sends, answered with ``status`` and ``body`` (no network)."""
    sent: list[tuple[object, ...]] = []

    async def request_async(
        method: str, url: str, headers: Mapping[str, str], post_data: object = None
    ) -> tuple[bytes, int, dict[str, str]]:
        sent.append((method, url, dict(headers), post_data))
        return body, status, {"Request-Id": "req_1"}

    api._http.request_async = request_async  # type: ignore[method-assign]
    return sent


@pytest.mark.anyio
async def test_post_sends_the_request_the_sdks_raw_request_sends() -> None:
    # StripeApi.post builds the SDK's headers once and skips its logging: the
    # request must stay the SDK's own, byte for byte (key, version, user agent,
    # content type, the encoding of nested and non-ASCII values).
    api = StripeApi(Secret("sk_test_same"), api_base="http://stripe.invalid", rate_limit=0)
    sent = capturing(api, 200, b'{"id": "cus_1", "object": "customer"}')
    params: dict[str, Any] = {
        "email": "a+b c@example.com",
        "name": "Zoë [x] & y",
        "metadata": {"mc_account_id": "7", "mc_source": "db'x/0"},
    }
    for key in ("key-1", "key-2"):  # the second reuses the headers built by the first
        ours = await api.post("create customer", "/v1/customers", params, {"idempotency_key": key})
        sdk = await api.client.raw_request_async(
            "post", "/v1/customers", idempotency_key=key, **params
        )
        assert ours == sdk.data == {"id": "cus_1", "object": "customer"}
        assert sent[-2] == sent[-1]
        assert sent[-1][2]["Idempotency-Key"] == key  # type: ignore[index]


@pytest.mark.anyio
async def test_post_refused_raises_what_the_sdk_raises() -> None:
    api = StripeApi(Secret("sk_test_same"), api_base="http://stripe.invalid", rate_limit=0)
    body = b'{"error": {"type": "invalid_request_error", "message": "No such thing", "param": "x"}}'
    capturing(api, 400, body)
    with pytest.raises(PermanentError) as refused:
        await api.post("create customer", "/v1/customers", {"email": "e"}, {"idempotency_key": "k"})
    assert isinstance(refused.value.__cause__, stripe.InvalidRequestError)
    assert "No such thing" in str(refused.value)


def test_post_takes_an_idempotency_key_and_no_other_option() -> None:
    # Its headers are the client's, built once: an option such as stripe_account
    # would be dropped silently, so it is refused.
    api = StripeApi(Secret("sk_test_same"), api_base="http://stripe.invalid", rate_limit=0)
    for options in ({}, {"idempotency_key": "k", "stripe_account": "acct_1"}):
        with pytest.raises(TypeError):
            api.raw_post("/v1/customers", {}, options)
