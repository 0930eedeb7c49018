"""Scripted faults and the enforced rate limit, as the official SDK experiences them."""

from __future__ import annotations

import time

import httpx
import pytest
import stripe

from stripe_emulator import EmulatorServer
from stripe_emulator.faults import RateLimiter

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_permission_fault_is_a_restricted_keys_403(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    customer = stripe_client.v1.customers.create()
    emulator.emulator.add_fault("403", "GET /v1/customers/{id}", rate=1.0)
    for _ in range(2):  # until cleared
        with pytest.raises(stripe.PermissionError) as err:
            stripe_client.v1.customers.retrieve(customer.id)
        assert err.value.http_status == 403
        assert "does not have the required permissions" in str(err.value)
    emulator.emulator.clear_faults()
    assert stripe_client.v1.customers.retrieve(customer.id).id == customer.id


def test_rate_limit_fault(stripe_client: stripe.StripeClient, emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault("rate_limit", "POST /v1/customers", count=1)
    with pytest.raises(stripe.RateLimitError) as err:
        stripe_client.v1.customers.create()
    assert err.value.http_status == 429
    assert err.value.error is not None and err.value.error.code == "rate_limit"
    assert err.value.headers is not None and err.value.headers["Stripe-Should-Retry"] == "true"
    stripe_client.v1.customers.create()  # only the next one was scripted
    stripe_client.v1.customers.list()
    stats = httpx.get(f"{emulator.base_url}/_emulator/requests").json()
    assert stats["counts"] == {"POST /v1/customers": 2, "GET /v1/customers": 1}
    assert stats["total"] == 3 and stats["rate_limited"] == 1


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer, status: int
) -> None:
    httpx.post(
        f"{emulator.base_url}/_emulator/faults",
        json={"kind": str(status), "endpoint": "GET /v1/customers/*", "count": 2},
    )
    cus = stripe_client.v1.customers.create()
    for _ in range(2):
        with pytest.raises(stripe.APIError) as err:
            stripe_client.v1.customers.retrieve(cus.id)
        assert err.value.http_status == status
    assert stripe_client.v1.customers.retrieve(cus.id).id == cus.id
    assert emulator.emulator.stats()["counts"]["GET /v1/customers/{id}"] == 3


def test_drop_is_connection_error_and_not_applied(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    emulator.emulator.add_fault("drop", "POST /v1/customers")
    with pytest.raises(stripe.APIConnectionError):
        stripe_client.v1.customers.create(params={"email": "lost@x.io"})
    assert emulator.emulator.count("customers") == 0
    assert stripe_client.v1.customers.create().id.startswith("cus_")


def test_applied_response_lost_then_retry(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    emulator.emulator.add_fault("applied_response_lost", "POST /v1/customers")
    opts: stripe.RequestOptions = {"idempotency_key": "lost-1"}
    with pytest.raises(stripe.APIConnectionError):
        stripe_client.v1.customers.create(params={"email": "x@x.io"}, options=opts)
    objects = emulator.emulator.objects("customers")
    assert len(objects) == 1 and len(emulator.emulator.events_of_type("customer.created")) == 1
    retried = stripe_client.v1.customers.create(params={"email": "x@x.io"}, options=opts)
    assert retried.id == objects[0]["id"]
    assert emulator.emulator.count("customers") == 1


@pytest.mark.anyio
async def test_async_faults(stripe_client: stripe.StripeClient, emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault("drop", "POST /v1/products")
    with pytest.raises(stripe.APIConnectionError):
        await stripe_client.v1.products.create_async(params={"name": "n"})
    emulator.emulator.add_fault("applied_response_lost", "POST /v1/products")
    with pytest.raises(stripe.APIConnectionError):
        await stripe_client.v1.products.create_async(
            params={"name": "n"}, options={"idempotency_key": "p"}
        )
    again = await stripe_client.v1.products.create_async(
        params={"name": "n"}, options={"idempotency_key": "p"}
    )
    assert [p["id"] for p in emulator.emulator.objects("products")] == [again.id]


def test_latency(stripe_client: stripe.StripeClient, emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault("latency", "GET /v1/customers", count=1, seconds=0.3)
    started = time.monotonic()
    stripe_client.v1.customers.list()
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    stripe_client.v1.customers.list()
    assert time.monotonic() - started < 0.3


def test_probabilistic_faults_are_seeded(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    def run() -> list[bool]:
        emulator.emulator.clear_faults()
        emulator.emulator.add_fault("500", "GET /v1/customers", rate=0.5)
        outcome = []
        for _ in range(20):
            try:
                stripe_client.v1.customers.list()
                outcome.append(True)
            except stripe.APIError:
                outcome.append(False)
        return outcome

    first = run()
    assert 0 < first.count(False) < 20
    assert run() == first
    httpx.delete(f"{emulator.base_url}/_emulator/faults")
    stripe_client.v1.customers.list()


def test_enforced_rate_limit(stripe_client: stripe.StripeClient, emulator: EmulatorServer) -> None:
    emulator.emulator.set_rate_limit(5)
    outcomes = []
    for _ in range(8):
        try:
            stripe_client.v1.customers.list()
            outcomes.append(200)
        except stripe.RateLimitError:
            outcomes.append(429)
    # A full bucket lets one second's worth through at once; what follows within
    # the same moment is refused (a slow machine may have refilled one token).
    assert outcomes[:5] == [200] * 5 and outcomes.count(429) >= 2
    assert emulator.emulator.stats()["rate_limited"] == outcomes.count(429)


def test_the_rate_limit_refuses_a_sustained_excess_but_absorbs_jitter() -> None:
    now = [0.0]
    limiter = RateLimiter(10, clock=lambda: now[0])

    def burst(n: int, then_wait: float) -> int:
        refused = sum(not limiter.allow() for _ in range(n))
        now[0] += then_wait
        return refused

    # At the limit, with arrivals bunched three at a time: nothing refused.
    assert sum(burst(3, 0.3) for _ in range(20)) == 0
    # Twice the limit for two seconds: the bucket runs dry, the excess is refused
    # (10 in the bucket + 19.5 refilled over the 39 gaps: 29 pass, 11 refused).
    assert sum(burst(1, 0.05) for _ in range(40)) == 11
    # A burst of more than one second's worth after a rest: the rest is refused.
    now[0] += 5
    assert burst(15, 0) == 5
