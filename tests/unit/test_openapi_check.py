"""The spec check (tests/openapi_check.py) that every test's emulator traffic goes
through: it must catch what Stripe would refuse and what Stripe never sends."""

from __future__ import annotations

import json
from typing import Any

import stripe
from conftest import SPEC
from openapi_check import SpecCheck

from stripe_emulator import EmulatorServer

CUSTOMER = "POST /v1/customers"


def _request_problems(params: dict[str, Any], op: str = CUSTOMER) -> list[str]:
    check = SpecCheck()
    method, template = op.split(" ")
    check.observe(method, template, params, json.dumps({"object": "list", "data": []}).encode())
    return [p for p in check.take() if ": params" in p]


def test_requests_stripe_would_refuse_are_named() -> None:
    assert _request_problems({"email": "a@example.com", "metadata": {"k": ""}}) == []
    assert _request_problems({"email": "a" * 513}) == [
        f"{CUSTOMER}: params.email: 513 characters, Stripe's limit is 512"
    ]
    assert _request_problems({"name": ""}) == [
        f"{CUSTOMER}: params.name: an empty string, which Stripe takes as unsetting it; "
        "not allowed here"
    ]
    assert _request_problems({"emial": "a@example.com"}) == [
        f"{CUSTOMER}: params.emial: no such parameter"
    ]
    assert _request_problems({"balance": "ten"}) == [
        f"{CUSTOMER}: params.balance: expected an integer, got 'ten'"
    ]
    # Unsettable where the spec says so: a product's description on update.
    assert _request_problems({"description": ""}, "POST /v1/products/{id}") == []


def test_responses_stripe_would_not_send_are_named(stripe_client: stripe.StripeClient) -> None:
    customer = stripe_client.v1.customers.create(params={"email": "a@example.com"}).to_dict()
    check = SpecCheck()

    def problems(body: dict[str, Any]) -> list[str]:
        check.observe("GET", "/v1/customers/{id}", {}, json.dumps(body).encode())
        return check.take()

    assert problems(customer) == []
    assert problems({**customer, "balance": "0"}) == [
        "GET /v1/customers/{id}: response.balance: expected integer, got str '0'"
    ]
    assert problems({**customer, "loyalty": 3}) == [
        "GET /v1/customers/{id}: response.loyalty: a field Stripe does not send"
    ]
    del customer["created"]
    assert problems(customer) == [
        "GET /v1/customers/{id}: response.created: missing (Stripe always sends it)"
    ]


def test_the_emulator_hands_every_accepted_request_to_the_check(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    # The emulator does not check this enum; the check sees the request pass.
    stripe_client.v1.customers.create(params={"tax_exempt": "sometimes"})
    emulator.emulator.wait_requests_idle()
    problems = SPEC.take()  # (taken, so this test's teardown does not fail it)
    assert any(
        p.startswith(f"{CUSTOMER}: params.tax_exempt: 'sometimes' is not one of") for p in problems
    ), problems
