"""Cards on file and credit notes in the Stripe emulator, driven through the official
SDK: the objects, the errors Stripe gives, and the events each call sends (the
`emulator` fixture holds all of it to Stripe's OpenAPI spec)."""

from __future__ import annotations

import pytest
import stripe
from emulator_helpers import recurring_price

from stripe_emulator import EmulatorServer

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _types(emulator: EmulatorServer) -> list[str]:
    """Event types in the order they were sent (the store lists oldest first)."""
    return [e["type"] for e in emulator.emulator.objects("events")]


def test_attach_default_detach(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    cus = stripe_client.v1.customers.create(params={"email": "card@example.com"})
    pm = stripe_client.v1.payment_methods.attach("pm_card_mastercard", params={"customer": cus.id})
    # A test token becomes a new payment method of its own, as on Stripe.
    assert pm.id.startswith("pm_") and pm.id != "pm_card_mastercard"
    assert pm.customer == cus.id and pm.card is not None
    assert (pm.card.brand, pm.card.last4, pm.card.exp_month, pm.card.exp_year) == (
        "mastercard",
        "4444",
        12,
        2034,
    )
    assert stripe_client.v1.payment_methods.retrieve(pm.id).customer == cus.id
    listed = stripe_client.v1.payment_methods.list(params={"customer": cus.id, "type": "card"})
    assert [m.id for m in listed.data] == [pm.id]

    # The default must be one of the customer's own payment methods.
    other = stripe_client.v1.customers.create()
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.customers.update(
            other.id, params={"invoice_settings": {"default_payment_method": pm.id}}
        )
    assert err.value.param == "invoice_settings[default_payment_method]"
    updated = stripe_client.v1.customers.update(
        cus.id, params={"invoice_settings": {"default_payment_method": pm.id}}
    )
    assert updated.invoice_settings is not None
    assert updated.invoice_settings.default_payment_method == pm.id

    expiring = stripe_client.v1.payment_methods.update(
        pm.id, params={"card": {"exp_month": 5, "exp_year": 2027}}
    )
    assert expiring.card is not None and (expiring.card.exp_month, expiring.card.exp_year) == (
        5,
        2027,
    )

    detached = stripe_client.v1.payment_methods.detach(pm.id)
    assert detached.customer is None
    # Detaching the default unsets it (customer.updated).
    after = stripe_client.v1.customers.retrieve(cus.id)
    assert after.invoice_settings is not None
    assert after.invoice_settings.default_payment_method is None
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.payment_methods.attach(pm.id, params={"customer": cus.id})
    assert err.value.code == "payment_method_unexpected_state"
    assert [t for t in _types(emulator) if t != "customer.created"] == [
        "payment_method.attached",
        "customer.updated",
        "payment_method.updated",
        "payment_method.detached",
        "customer.updated",
    ]
    detached_event = emulator.emulator.events_of_type("payment_method.detached")[0]
    assert detached_event["data"]["previous_attributes"] == {"customer": cus.id}


def test_setup_intent_saves_the_card(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    cus = stripe_client.v1.customers.create()
    si = stripe_client.v1.setup_intents.create(
        params={"customer": cus.id, "payment_method": "pm_card_amex", "confirm": True}
    )
    assert si.status == "succeeded" and isinstance(si.payment_method, str)
    pm = stripe_client.v1.payment_methods.retrieve(si.payment_method)
    assert pm.customer == cus.id and pm.card is not None and pm.card.last4 == "8431"
    assert _types(emulator)[1:] == [
        "setup_intent.created",
        "payment_method.attached",
        "setup_intent.succeeded",
    ]
    # The event names the payment method by id only, as Stripe's does.
    [event] = emulator.emulator.events_of_type("setup_intent.succeeded")
    assert event["data"]["object"]["payment_method"] == pm.id

    pending = stripe_client.v1.setup_intents.create(params={"customer": cus.id})
    with pytest.raises(stripe.CardError):
        stripe_client.v1.setup_intents.confirm(
            pending.id, params={"payment_method": "pm_card_chargeDeclined"}
        )
    failed = stripe_client.v1.setup_intents.retrieve(pending.id)
    assert failed.status == "requires_payment_method" and failed.last_setup_error is not None


def test_subscription_charges_the_default_card(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    cus = stripe_client.v1.customers.create(
        params={
            "payment_method": "pm_card_createDispute",
            "invoice_settings": {"default_payment_method": "pm_card_createDispute"},
        }
    )
    assert cus.invoice_settings is not None
    default = cus.invoice_settings.default_payment_method
    assert isinstance(default, str) and default.startswith("pm_")
    assert default != "pm_card_createDispute"
    price = recurring_price(stripe_client, 900)
    stripe_client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": price.id}]}
    )
    [charge] = stripe_client.v1.charges.list(params={"customer": cus.id}).data
    assert charge.payment_method == default
    assert charge.payment_method_details is not None
    assert charge.payment_method_details.card is not None
    assert charge.payment_method_details.card.last4 == "0259"
    # The saved card behaves as its number does: this one is disputed.
    assert charge.disputed is True


def _paid_invoice(client: stripe.StripeClient, amount: int = 3000) -> stripe.Invoice:
    cus = client.v1.customers.create()
    price = recurring_price(client, amount, "eur", "Plan")
    sub = client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": price.id}]}
    )
    return client.v1.invoices.retrieve(str(sub.latest_invoice))


def test_credit_notes(stripe_client: stripe.StripeClient, emulator: EmulatorServer) -> None:
    inv = _paid_invoice(stripe_client)
    assert inv.status == "paid"
    before = len(emulator.emulator.objects("events"))

    # A paid invoice: every cent must go somewhere (refund, balance, out of band).
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.credit_notes.create(params={"invoice": str(inv.id), "amount": 500})
    assert err.value.param == "out_of_band_amount"
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.credit_notes.create(
            params={"invoice": str(inv.id), "amount": 5000, "credit_amount": 5000}
        )
    assert err.value.param == "amount"

    credit = stripe_client.v1.credit_notes.create(
        params={
            "invoice": str(inv.id),
            "amount": 500,
            "credit_amount": 500,
            "reason": "order_change",
            "memo": "Sorry",
        }
    )
    assert (credit.status, credit.amount, credit.currency, credit.type) == (
        "issued",
        500,
        "eur",
        "post_payment",
    )
    assert stripe_client.v1.customers.retrieve(str(credit.customer)).balance == -500
    [line] = inv.lines.data
    refund = stripe_client.v1.credit_notes.create(
        params={
            "invoice": str(inv.id),
            "lines": [{"type": "invoice_line_item", "invoice_line_item": line.id, "amount": 1000}],
            "refund_amount": 1000,
        }
    )
    assert refund.amount == 1000 and refund.refunds and refund.lines.data[0].amount == 1000
    assert stripe_client.v1.invoices.retrieve(str(inv.id)).post_payment_credit_notes_amount == 1500
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.credit_notes.void_credit_note(refund.id)

    voided = stripe_client.v1.credit_notes.void_credit_note(credit.id)
    assert voided.status == "void" and voided.voided_at is not None
    assert stripe_client.v1.customers.retrieve(str(credit.customer)).balance == 0
    assert stripe_client.v1.invoices.retrieve(str(inv.id)).post_payment_credit_notes_amount == 1000
    listed = stripe_client.v1.credit_notes.list(params={"invoice": str(inv.id)})
    assert [c.id for c in listed.data] == [refund.id, credit.id]
    assert _types(emulator)[before:] == [
        "customer.updated",
        "credit_note.created",
        "invoice.updated",
        "charge.refunded",
        "refund.created",
        "credit_note.created",
        "invoice.updated",
        "credit_note.voided",
        "customer.updated",
        "invoice.updated",
    ]
