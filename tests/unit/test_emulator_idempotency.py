"""Idempotency-Key semantics of the Stripe emulator, through the official SDK."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import stripe

from stripe_emulator import EmulatorServer

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _post(server: EmulatorServer, path: str, data: dict[str, str], key: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}{path}",
        data=data,
        headers={"Authorization": "Bearer sk_test_x", "Idempotency-Key": key},
    )


def test_replay_returns_first_response(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    opts: stripe.RequestOptions = {"idempotency_key": "key-1"}
    first = stripe_client.v1.customers.create(params={"email": "a@x.io"}, options=opts)
    second = stripe_client.v1.customers.create(params={"email": "a@x.io"}, options=opts)
    assert first.id == second.id
    assert emulator.emulator.count("customers") == 1
    assert len(emulator.emulator.events_of_type("customer.created")) == 1
    raw1 = _post(emulator, "/v1/customers", {"email": "raw"}, "key-raw")
    raw2 = _post(emulator, "/v1/customers", {"email": "raw"}, "key-raw")
    assert raw2.status_code == raw1.status_code == 200 and raw2.content == raw1.content
    assert raw2.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in raw1.headers


def test_errors_are_replayed(emulator: EmulatorServer) -> None:
    first = _post(emulator, "/v1/prices", {"currency": "usd"}, "bad-1")
    assert first.status_code == 400
    second = _post(emulator, "/v1/prices", {"currency": "usd"}, "bad-1")
    assert second.status_code == 400 and second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"


def test_different_parameters_conflict(stripe_client: stripe.StripeClient) -> None:
    opts: stripe.RequestOptions = {"idempotency_key": "key-2"}
    stripe_client.v1.customers.create(params={"email": "a@x.io"}, options=opts)
    with pytest.raises(stripe.IdempotencyError) as err:
        stripe_client.v1.customers.create(params={"email": "b@x.io"}, options=opts)
    assert err.value.http_status == 400
    assert err.value.error is not None and err.value.error.type == "idempotency_error"
    with pytest.raises(stripe.IdempotencyError):
        stripe_client.v1.products.create(params={"name": "other endpoint"}, options=opts)


def test_keys_expire_after_24_hours(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    opts: stripe.RequestOptions = {"idempotency_key": "key-3"}
    first = stripe_client.v1.customers.create(options=opts)
    emulator.emulator.advance_clock(23 * 3600)
    assert stripe_client.v1.customers.create(options=opts).id == first.id
    httpx.post(f"{emulator.base_url}/_emulator/clock", json={"advance": 3600})
    assert stripe_client.v1.customers.create(options=opts).id != first.id
    assert emulator.emulator.count("customers") == 2


def test_keys_are_per_api_key(emulator: EmulatorServer) -> None:
    one = _post(emulator, "/v1/customers", {}, "shared")
    other = httpx.post(
        f"{emulator.base_url}/v1/customers",
        headers={"Authorization": "Bearer sk_test_other", "Idempotency-Key": "shared"},
    )
    assert one.json()["id"] != other.json()["id"]


def _fault(server: EmulatorServer, spec: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{server.base_url}/_emulator/faults", json=spec)


@pytest.mark.parametrize("created", [True, False])
def test_stored_500_is_replayed_for_24_hours(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer, created: bool
) -> None:
    # Stripe saves the first response of a key once the endpoint began executing,
    # a 500 included, and replays it; `created`: the customer exists all the same.
    fault = {"kind": "500", "endpoint": "POST /v1/customers", "stored": True, "created": created}
    assert _fault(emulator, fault).status_code == 200
    opts: stripe.RequestOptions = {"idempotency_key": "stored-500"}

    def create() -> stripe.Customer:
        return stripe_client.v1.customers.create(
            params={"email": "s@x.io", "metadata": {"mc_account_id": "1"}}, options=opts
        )

    with pytest.raises(stripe.APIError) as first:
        create()
    assert first.value.http_status == 500 and first.value.headers is not None
    assert first.value.headers["Stripe-Should-Retry"] == "false"
    assert "Idempotent-Replayed" not in first.value.headers
    emu = emulator.emulator
    assert emu.count("customers") == int(created)
    assert len(emu.events_of_type("customer.created")) == int(created)

    emu.advance_clock(24 * 3600 - 60)
    with pytest.raises(stripe.APIError) as replay:
        create()
    assert replay.value.http_status == 500 and replay.value.headers is not None
    assert replay.value.headers["Idempotent-Replayed"] == "true"
    assert replay.value.headers["Stripe-Should-Retry"] == "false"
    assert replay.value.http_body == first.value.http_body
    assert emu.count("customers") == int(created)

    emu.advance_clock(60)  # the key is pruned: the same request executes again
    again = create()
    assert again.email == "s@x.io" and emu.count("customers") == int(created) + 1


def test_plain_500_saves_nothing(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    assert _fault(emulator, {"kind": "500", "endpoint": "POST /v1/customers"}).status_code == 200
    opts: stripe.RequestOptions = {"idempotency_key": "front-500"}
    with pytest.raises(stripe.APIError) as err:
        stripe_client.v1.customers.create(options=opts)
    assert err.value.headers is not None and err.value.headers["Stripe-Should-Retry"] == "true"
    assert emulator.emulator.count("customers") == 0
    assert stripe_client.v1.customers.create(options=opts).id.startswith("cus_")
    assert emulator.emulator.count("customers") == 1


def test_a_key_in_use_gets_409_and_nothing_is_saved(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    # The first request takes the key and is held "executing" for a while.
    fault = {"kind": "latency", "endpoint": "POST /v1/customers", "seconds": 1.5, "executing": True}
    assert _fault(emulator, fault).status_code == 200
    opts: stripe.RequestOptions = {"idempotency_key": "in-use"}

    def create() -> stripe.Customer:
        return stripe_client.v1.customers.create(params={"email": "u@x.io"}, options=opts)

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(create)
        emu = emulator.emulator
        deadline = time.monotonic() + 5
        while emu.stats()["counts"].get("POST /v1/customers", 0) < 1:
            assert time.monotonic() < deadline, "the first request never arrived"
            time.sleep(0.01)
        # Stripe's 409 for a key whose first request is still executing. A v1 409
        # is no IdempotencyError to the SDK (that is only for 400/404): APIError.
        with pytest.raises(stripe.APIError) as conflict:
            create()
        assert emu.count("customers") == 0
        created = first.result(timeout=10)
    err = conflict.value
    assert type(err) is stripe.APIError and err.http_status == 409
    assert err.error is not None
    assert (err.error.type, err.error.code) == ("idempotency_error", "idempotency_key_in_use")
    assert err.error.message is not None and "in-use" in err.error.message
    assert err.headers is not None and "Idempotent-Replayed" not in err.headers
    # The 409 saved nothing: the same key now gets the first request's answer.
    again = create()
    assert again.id == created.id and emu.count("customers") == 1
    assert again.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    # Another key is not held up by the one in use, and the fault is spent.
    assert stripe_client.v1.customers.create(options={"idempotency_key": "other"}).id


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "500", "created": True},
        {"kind": "latency", "stored": True},
        {"kind": "500", "stored": "yes"},
        {"kind": "500", "executing": True},
        {"kind": "latency", "executing": 1},
    ],
)
def test_stored_fault_validation(emulator: EmulatorServer, spec: dict[str, object]) -> None:
    response = _fault(emulator, spec)
    assert response.status_code == 400
    assert any(name in response.json()["error"] for name in ("stored", "created", "executing"))


def test_reset_forgets_time_travel(emulator: EmulatorServer) -> None:
    """The next test starts at wall time: a test that moved the clock two days
    ahead must not make "created in the last day" mean something else after it."""
    emu = emulator.emulator
    start = emu.now()
    emu.advance_clock(48 * 3600)
    emu.reset()
    assert abs(emu.now() - start) < 60
