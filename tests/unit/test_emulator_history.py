"""The emulator's history (stripe_emulator.history): an account's past made by
the emulator's own operations, served as POST /_emulator/history, and listed
through the official SDK as Stripe lists it (newest first, by customer, paged)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import stripe

from stripe_emulator import EmulatorServer
from stripe_emulator.history import email_of

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def post_history(emulator: EmulatorServer, **body: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{emulator.base_url}/_emulator/history",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_history_is_an_accounts_past_listed_as_stripe_lists_it(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    status, made = post_history(emulator, customers=10, months=3, seed=7, mc_source="db/abc")
    assert status == 200, made
    counts = made["counts"]
    assert counts["customers"] == 10 and counts["disputes"] == 1
    assert counts["invoices"] >= 3 * 9 and counts["payment_intents"] >= counts["invoices"]
    assert made["objects"] == sum(counts.values())
    assert made["emails"] == [email_of(i) for i in range(10)]
    emu = emulator.emulator
    # No events: Stripe keeps 30 days of them, and nobody was listening.
    assert emu.count("events") == 0
    # Customers 0, 4, 8 carry an earlier MC install's metadata.
    tagged = [c["id"] for c in emu.objects("customers") if c["metadata"]]
    assert tagged == [made["customers"][i] for i in (0, 4, 8)]

    # Made in the past, listed newest first, by customer and a page at a time.
    now = time.time()
    customer = made["customers"][1]
    first = stripe_client.v1.invoices.list(params={"customer": customer, "limit": 2})
    assert first.has_more and all(i.customer == customer for i in first.data)
    rest = stripe_client.v1.invoices.list(
        params={"customer": customer, "limit": 100, "starting_after": first.data[-1].id}
    )
    created = [i.created for i in [*first.data, *rest.data]]
    assert created == sorted(created, reverse=True) and created[-1] < now - 2 * 30 * 86400
    assert first.data[0].billing_reason == "subscription_cycle"
    disputes = stripe_client.v1.disputes.list()
    assert len(disputes.data) == 1 and disputes.data[0].status == "needs_response"
    methods = stripe_client.v1.payment_methods.list(params={"customer": customer})
    default = stripe_client.v1.customers.retrieve(customer).invoice_settings
    assert default is not None and default.default_payment_method in [m.id for m in methods.data]

    # Only into an empty emulator (the store's order is Stripe's list order).
    status, refused = post_history(emulator, customers=1, months=1)
    assert status == 400 and "empty emulator" in refused["error"]
    status, refused = post_history(emulator, custmers=1)
    assert status == 400 and "keys among" in refused["error"]
