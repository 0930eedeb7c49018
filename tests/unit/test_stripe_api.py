"""The pacer and the error classification of stripe_api."""

from __future__ import annotations

import inspect
import random
import time

import anyio
import pytest
import stripe

from stripe_sync.errors import PermanentError, TransientError
from stripe_sync.stripe_api import Pacer, classify


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
