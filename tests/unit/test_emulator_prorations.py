"""Prorations in the Stripe emulator (proration_behavior of a subscription update),
driven through the official SDK; the `emulator` fixture holds the traffic to
Stripe's OpenAPI spec."""

from __future__ import annotations

from typing import Any

import pytest
import stripe
from emulator_helpers import recurring_price

from stripe_emulator import EmulatorServer

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

DAY = 86400


def _subscribed(client: stripe.StripeClient, quantity: int = 2) -> stripe.Subscription:
    cus = client.v1.customers.create(params={"email": "prorate@example.com"})
    price = recurring_price(client, 1000)
    return client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": price.id, "quantity": quantity}]}
    )


def _change(client: stripe.StripeClient, sub: stripe.Subscription, qty: int, behavior: str) -> Any:
    item = sub["items"]["data"][0]
    return client.v1.subscriptions.update(
        sub.id,
        params={"items": [{"id": item.id, "quantity": qty}], "proration_behavior": behavior},
    )


def _prorated(sub: stripe.Subscription, unit_qty: int, at: int) -> int:
    """Stripe's amount for `unit_qty` units of the 1000 price over [at, period end]."""
    item = sub["items"]["data"][0]
    start, end = item.current_period_start, item.current_period_end
    return round(1000 * unit_qty * (int(end) - at) / (int(end) - int(start)))


def test_always_invoice_bills_the_rest_of_the_period_now(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    emu = emulator.emulator
    sub = _subscribed(stripe_client)
    emu.advance_clock(10 * DAY)
    before = len(emu.objects("events"))
    updated = _change(stripe_client, sub, 3, "always_invoice")
    assert updated.latest_invoice != sub.latest_invoice
    inv = stripe_client.v1.invoices.retrieve(str(updated.latest_invoice))
    assert (inv.billing_reason, inv.status) == ("subscription_update", "paid")
    unused, remaining = inv.lines.data
    at = remaining.period.start
    assert remaining.period.end == sub["items"]["data"][0].current_period_end
    assert unused.amount == -_prorated(sub, 2, at)
    assert remaining.amount == _prorated(sub, 3, at)
    assert unused.description is not None and unused.description.startswith("Unused time on 2 ×")  # noqa: RUF001
    for line in (unused, remaining):
        assert line.parent is not None
        details = line.parent.subscription_item_details
        assert details is not None and details.proration is True and details.invoice_item
    assert inv.total == inv.amount_paid == unused.amount + remaining.amount > 0
    assert [e["type"] for e in emu.objects("events")[before:]] == [
        "customer.subscription.updated",
        "invoiceitem.created",
        "invoiceitem.created",
        "invoice.created",
        "invoice.finalized",
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.succeeded",
        "invoice_payment.paid",
        "invoice.paid",
        "invoice.payment_succeeded",
    ]
    [event] = emu.events_of_type("customer.subscription.updated")
    assert event["data"]["previous_attributes"]["latest_invoice"] == sub.latest_invoice


def test_create_prorations_wait_for_the_next_invoice_and_none_makes_none(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    emu = emulator.emulator
    sub = _subscribed(stripe_client)
    emu.advance_clock(5 * DAY)
    _change(stripe_client, sub, 2, "create_prorations")  # no change: nothing to prorate
    assert emu.objects("invoiceitems") == []
    pending = _change(stripe_client, sub, 4, "create_prorations")
    assert pending.latest_invoice == sub.latest_invoice
    items = emu.objects("invoiceitems")
    assert [(ii["quantity"], ii["invoice"], ii["proration"]) for ii in items] == [
        (2, None, True),
        (4, None, True),
    ]
    assert len(emu.objects("invoices")) == 1
    _change(stripe_client, sub, 1, "none")
    assert len(emu.objects("invoiceitems")) == 2

    # The next invoice takes them, with this change's prorations.
    emu.advance_clock(DAY)
    updated = _change(stripe_client, sub, 5, "always_invoice")
    inv = stripe_client.v1.invoices.retrieve(str(updated.latest_invoice))
    assert [line.quantity for line in inv.lines.data] == [2, 4, 1, 5]
    assert {ii["invoice"] for ii in emu.objects("invoiceitems")} == {inv.id}


def test_a_credit_larger_than_the_charge_goes_to_the_balance(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    sub = _subscribed(stripe_client, quantity=3)
    updated = _change(stripe_client, sub, 1, "always_invoice")
    inv = stripe_client.v1.invoices.retrieve(str(updated.latest_invoice))
    assert inv.total < 0 and inv.amount_due == 0 and inv.status == "paid"
    assert stripe_client.v1.customers.retrieve(str(sub.customer)).balance == inv.total
    # Nothing was charged: the only payment is the first invoice's.
    assert len(emulator.emulator.objects("payment_intents")) == 1
