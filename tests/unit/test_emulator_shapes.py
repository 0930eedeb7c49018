"""Emulated objects carry every top-level field Stripe's published fixtures have
(tests/data/stripe_openapi_fixtures.json, from stripe/openapi; see LICENSE-stripe-openapi.txt)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from stripe_emulator import EmulatorServer

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

FIXTURES = json.loads(
    (Path(__file__).parents[1] / "data" / "stripe_openapi_fixtures.json").read_text()
)["resources"]


def _raw(server: EmulatorServer, path: str) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}{path}", headers={"Authorization": "Bearer sk_test_x"})
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def test_every_fixture_field_present(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    cus = stripe_client.v1.customers.create(params={"email": "shape@x.io"})
    product = stripe_client.v1.products.create(params={"name": "Shape"})
    price = stripe_client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 700,
            "recurring": {"interval": "month"},
        }
    )
    sub = stripe_client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": price.id}]}
    )
    # payments is includable (API 2025-03-31+): only there when asked for
    invoice = _raw(emulator, f"/v1/invoices/{sub.latest_invoice}?expand[]=payments")
    assert "payments" not in _raw(emulator, f"/v1/invoices/{sub.latest_invoice}")
    pi_id = invoice["payments"]["data"][0]["payment"]["payment_intent"]
    payment_intent = _raw(emulator, f"/v1/payment_intents/{pi_id}")
    refund = stripe_client.v1.refunds.create(params={"payment_intent": pi_id})
    subscription = _raw(emulator, f"/v1/subscriptions/{sub.id}")
    si = stripe_client.v1.setup_intents.create(
        params={"customer": cus.id, "payment_method": "pm_card_visa", "confirm": True}
    )
    line = invoice["lines"]["data"][0]["id"]
    credit_note = stripe_client.v1.credit_notes.create(
        params={
            "invoice": invoice["id"],
            "lines": [{"type": "invoice_line_item", "invoice_line_item": line, "amount": 100}],
            "out_of_band_amount": 100,
        }
    )
    credit_note_raw = _raw(emulator, f"/v1/credit_notes/{credit_note.id}")
    ours = {
        "customer": _raw(emulator, f"/v1/customers/{cus.id}"),
        "product": _raw(emulator, f"/v1/products/{product.id}"),
        "price": _raw(emulator, f"/v1/prices/{price.id}"),
        "subscription": subscription,
        "subscription_item": subscription["items"]["data"][0],
        "invoice": invoice,
        "invoice_payment": _raw(
            emulator, f"/v1/invoice_payments/{invoice['payments']['data'][0]['id']}"
        ),
        "payment_intent": payment_intent,
        "charge": _raw(emulator, f"/v1/charges/{payment_intent['latest_charge']}"),
        "refund": _raw(emulator, f"/v1/refunds/{refund.id}"),
        "event": _raw(emulator, "/v1/events")["data"][0],
        "account": _raw(emulator, "/v1/account"),
        "setup_intent": _raw(emulator, f"/v1/setup_intents/{si.id}"),
        "payment_method": _raw(emulator, f"/v1/payment_methods/{si.payment_method}"),
        "credit_note": credit_note_raw,
        "credit_note_line_item": credit_note_raw["lines"]["data"][0],
    }
    for name, ours_object in ours.items():
        fixture = FIXTURES[name]
        missing = sorted(set(fixture) - set(ours_object))
        assert not missing, f"{name} lacks {missing}"
        assert ours_object["object"] == fixture["object"]
