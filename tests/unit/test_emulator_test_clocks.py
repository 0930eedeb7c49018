"""Test clocks in the Stripe emulator (/v1/test_helpers/test_clocks) and what
happens while one advances — renewals, the period roll, trials, cancellation at
period end, prorations on the next invoice, dunning — driven through the
official SDK; the `emulator` fixture holds the traffic to Stripe's OpenAPI spec."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from emulator_helpers import recurring_price

from stripe_emulator import EmulatorServer

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

DAY = 86400
HOUR = 3600
# 2026-01-31 12:00 UTC: a month-end anchor, so renewals must keep to the anchor.
START = int(dt.datetime(2026, 1, 31, 12, tzinfo=dt.UTC).timestamp())
FAILS = "pm_card_chargeCustomerFail"


def _ts(year: int, month: int, day: int, hour: int = 12) -> int:
    return int(dt.datetime(year, month, day, hour, tzinfo=dt.UTC).timestamp())


def _clock(client: stripe.StripeClient, at: int = START) -> stripe.test_helpers.TestClock:
    return client.v1.test_helpers.test_clocks.create(params={"frozen_time": at, "name": "year"})


def _customer(
    client: stripe.StripeClient, clock: str, card: str = "pm_card_visa"
) -> stripe.Customer:
    return client.v1.customers.create(
        params={
            "email": "clock@example.com",
            "test_clock": clock,
            "payment_method": card,
            "invoice_settings": {"default_payment_method": card},
        }
    )


def _subscribe(client: stripe.StripeClient, customer: str, **extra: Any) -> stripe.Subscription:
    price = recurring_price(client, 1000)
    params: Any = {"customer": customer, "items": [{"price": price.id}], **extra}
    return client.v1.subscriptions.create(params=params)


def _subscribed(client: stripe.StripeClient, **extra: Any) -> tuple[str, str, stripe.Subscription]:
    """A monthly subscription of a new customer on a new clock at START: the
    clock's id, the customer's and the subscription."""
    clock = _clock(client).id
    cus = _customer(client, clock).id
    return clock, cus, _subscribe(client, cus, **extra)


def _advance(client: stripe.StripeClient, clock: str, to: int) -> stripe.test_helpers.TestClock:
    return client.v1.test_helpers.test_clocks.advance(clock, params={"frozen_time": to})


def _events_since(emulator: EmulatorServer, count: int) -> list[dict[str, Any]]:
    return emulator.emulator.objects("events")[count:]


def _customer_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if not e["type"].startswith("test_helpers.")]


def test_clock_create_retrieve_list_advance_delete(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    made = _clock(stripe_client)
    clock = made.id
    assert (made.object, made.frozen_time, made.name, made.status) == (
        "test_helpers.test_clock",
        START,
        "year",
        "ready",
    )
    assert made.deletes_after == made.created + 30 * DAY
    assert stripe_client.v1.test_helpers.test_clocks.retrieve(clock).id == clock
    listed = stripe_client.v1.test_helpers.test_clocks.list()
    assert [c.id for c in listed.data] == [clock]
    cus = _customer(stripe_client, clock)
    assert (cus.test_clock, cus.created) == (clock, START)
    stripe_client.v1.customers.create(params={"email": "no-clock@example.com"})
    on_clock = stripe_client.v1.customers.list(params={"test_clock": clock})
    assert [c.id for c in on_clock.data] == [cus.id]

    answer = _advance(stripe_client, clock, START + DAY)
    assert answer.status == "advancing"
    assert answer.status_details["advancing"]["target_frozen_time"] == START + DAY
    now = stripe_client.v1.test_helpers.test_clocks.retrieve(clock)
    assert (now.status, now.frozen_time) == ("ready", START + DAY)
    # Objects made afterwards live on the clock's new time.
    later = stripe_client.v1.customers.update(cus.id, params={"name": "Ada"})
    assert later.created == START
    sub = _subscribe(stripe_client, cus.id)
    assert (sub.created, sub.test_clock) == (START + DAY, clock)
    subs = stripe_client.v1.subscriptions.list(params={"test_clock": clock})
    assert [s.id for s in subs.data] == [sub.id]

    # A request that names an object of the customer's by another parameter too.
    pi = stripe_client.v1.payment_intents.list(params={"customer": cus.id}).data[0]
    refund = stripe_client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 100})
    assert refund.created == START + DAY

    deleted = stripe_client.v1.test_helpers.test_clocks.delete(clock)
    assert deleted.deleted is True
    with pytest.raises(stripe.InvalidRequestError) as missing:
        stripe_client.v1.test_helpers.test_clocks.retrieve(clock)
    assert missing.value.http_status == 404
    assert stripe_client.v1.customers.retrieve(cus.id).deleted is True
    types = [e["type"] for e in emulator.emulator.objects("events")]
    assert [t for t in types if t.startswith("test_helpers.")] == [
        "test_helpers.test_clock.created",
        "test_helpers.test_clock.advancing",
        "test_helpers.test_clock.ready",
        "test_helpers.test_clock.deleted",
    ]


def test_clock_shapes_are_stripes(emulator: EmulatorServer) -> None:
    """Every field of Stripe's fixtures for a test clock and a deleted one, no other."""
    fixtures = json.loads(
        (Path(__file__).parents[1] / "data" / "stripe_openapi_fixtures.json").read_text()
    )["resources"]
    api = httpx.Client(base_url=emulator.base_url, auth=("sk_test_x", ""))
    made = api.post("/v1/test_helpers/test_clocks", data={"frozen_time": START}).json()
    assert set(made) == set(fixtures["test_helpers.test_clock"])
    deleted = api.delete(f"/v1/test_helpers/test_clocks/{made['id']}").json()
    assert set(deleted) == set(fixtures["deleted_test_helpers.test_clock"])


def test_advance_is_limited_to_two_intervals_of_the_shortest_subscription(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    clock = _clock(stripe_client).id
    with pytest.raises(stripe.InvalidRequestError) as backwards:
        _advance(stripe_client, clock, START - 1)
    assert backwards.value.param == "frozen_time"
    with pytest.raises(stripe.InvalidRequestError) as no_subs:
        _advance(stripe_client, clock, START + 2 * 365 * DAY + 1)
    assert no_subs.value.param == "frozen_time"
    _subscribe(stripe_client, _customer(stripe_client, clock).id)
    two_months = _ts(2026, 3, 31)
    with pytest.raises(stripe.InvalidRequestError) as too_far:
        _advance(stripe_client, clock, two_months + 1)
    assert too_far.value.param == "frozen_time"
    assert "two intervals" in str(too_far.value.user_message)
    assert _advance(stripe_client, clock, two_months).status == "advancing"


def test_renewal_rolls_the_period_then_drafts_finalizes_and_pays_in_time_order(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    clock, _cus, sub = _subscribed(stripe_client)
    first = stripe_client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert (first.created, first.test_clock) == (START, clock)
    before = len(emulator.emulator.objects("events"))
    feb_end = _ts(2026, 2, 28)  # Jan 31 renews on Feb 28 ...
    _advance(stripe_client, clock, feb_end + 2 * HOUR)
    events = _customer_events(_events_since(emulator, before))
    assert [e["type"] for e in events] == [
        "customer.subscription.updated",
        "invoice.created",
        "invoice.finalized",
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.succeeded",
        "invoice_payment.paid",
        "invoice.paid",
        "invoice.payment_succeeded",
    ]
    assert [e["created"] for e in events] == [feb_end] * 2 + [feb_end + HOUR] * 7
    rolled = events[0]["data"]
    item = rolled["object"]["items"]["data"][0]
    assert (item["current_period_start"], item["current_period_end"]) == (
        feb_end,
        _ts(2026, 3, 31),  # ... and on Mar 31, the anchor's day
    )
    assert rolled["previous_attributes"]["latest_invoice"] == sub.latest_invoice
    draft = events[1]["data"]["object"]
    assert (draft["status"], draft["billing_reason"]) == ("draft", "subscription_cycle")
    assert draft["automatically_finalizes_at"] == feb_end + HOUR
    assert (draft["period_start"], draft["period_end"]) == (START, feb_end)
    renewal = stripe_client.v1.invoices.retrieve(draft["id"])
    assert (renewal.status, renewal.amount_paid, renewal.attempt_count) == ("paid", 1000, 1)
    assert renewal.lines.data[0].period.start == feb_end
    assert stripe_client.v1.subscriptions.retrieve(sub.id).latest_invoice == renewal.id


def test_before_api_2025_03_31_the_subscription_carries_its_period_too(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    config = emulator.emulator.config
    current, config.api_version = config.api_version, "2024-06-20"
    try:
        clock, _, sub = _subscribed(stripe_client)
        assert (sub["current_period_start"], sub["current_period_end"]) == (START, _ts(2026, 2, 28))
        _advance(stripe_client, clock, _ts(2026, 2, 28) + 2 * HOUR)
    finally:
        config.api_version = current
    [rolled] = emulator.emulator.events_of_type("customer.subscription.updated")
    now = rolled["data"]["object"]
    assert (now["current_period_start"], now["current_period_end"]) == (
        _ts(2026, 2, 28),
        _ts(2026, 3, 31),
    )
    assert rolled["data"]["previous_attributes"]["current_period_end"] == _ts(2026, 2, 28)


def test_trial_warns_three_days_before_then_bills_the_first_period(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    clock, _, sub = _subscribed(stripe_client, trial_period_days=14)
    assert sub.status == "trialing"
    _advance(stripe_client, clock, START + 12 * DAY)
    [warning] = emulator.emulator.events_of_type("customer.subscription.trial_will_end")
    assert warning["created"] == START + 11 * DAY
    _advance(stripe_client, clock, START + 14 * DAY + 2 * HOUR)
    assert len(emulator.emulator.events_of_type("customer.subscription.trial_will_end")) == 1
    now = stripe_client.v1.subscriptions.retrieve(sub.id)
    assert now.status == "active"
    invoice = stripe_client.v1.invoices.retrieve(str(now.latest_invoice))
    assert (invoice.billing_reason, invoice.status, invoice.amount_paid) == (
        "subscription_cycle",
        "paid",
        1000,
    )
    assert invoice.created == START + 14 * DAY


def test_cancel_at_period_end_ends_the_subscription_at_the_period_end(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    clock, _cus, sub = _subscribed(stripe_client)
    stripe_client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    before = len(emulator.emulator.objects("events"))
    _advance(stripe_client, clock, _ts(2026, 3, 15))
    events = _customer_events(_events_since(emulator, before))
    assert [e["type"] for e in events] == ["customer.subscription.deleted"]
    ended = stripe_client.v1.subscriptions.retrieve(sub.id)
    assert (ended.status, ended.ended_at, ended.canceled_at) == (
        "canceled",
        _ts(2026, 2, 28),
        START,
    )


def test_cancel_at_ends_the_subscription_then(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    clock, _cus, sub = _subscribed(stripe_client)
    at = START + 10 * DAY
    stripe_client.v1.subscriptions.update(sub.id, params={"cancel_at": at})
    _advance(stripe_client, clock, START + 20 * DAY)
    [deleted] = emulator.emulator.events_of_type("customer.subscription.deleted")
    assert deleted["created"] == at
    assert stripe_client.v1.subscriptions.retrieve(sub.id).ended_at == at


def test_pending_prorations_land_on_the_next_invoice_with_the_new_quantity(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    clock, _cus, sub = _subscribed(stripe_client)
    _advance(stripe_client, clock, START + 14 * DAY)
    item = sub["items"]["data"][0]
    stripe_client.v1.subscriptions.update(
        sub.id, params={"items": [{"id": item.id, "quantity": 3}]}
    )
    prorations = emulator.emulator.objects("invoiceitems")
    assert len(prorations) == 2 and all(ii["invoice"] is None for ii in prorations)
    assert {ii["test_clock"] for ii in prorations} == {clock}
    _advance(stripe_client, clock, _ts(2026, 2, 28) + 2 * HOUR)
    renewal = stripe_client.v1.invoices.retrieve(
        str(stripe_client.v1.subscriptions.retrieve(sub.id).latest_invoice)
    )
    cycle, *prorated = renewal.lines.data
    assert (cycle.amount, cycle.quantity) == (3000, 3)
    assert sorted(line.amount for line in prorated) == sorted(ii["amount"] for ii in prorations)
    assert renewal.amount_paid == 3000 + sum(ii["amount"] for ii in prorations)
    assert all(ii["invoice"] == renewal.id for ii in emulator.emulator.objects("invoiceitems"))


@pytest.mark.parametrize(
    ("behavior", "status", "event"),
    [
        ("keep_as_draft", "draft", None),
        ("void", "void", "invoice.voided"),
        ("mark_uncollectible", "uncollectible", "invoice.marked_uncollectible"),
    ],
)
def test_paused_collection_leaves_renewals_unpaid_until_it_resumes(
    stripe_client: stripe.StripeClient,
    emulator: EmulatorServer,
    behavior: str,
    status: str,
    event: str | None,
) -> None:
    clock, _, sub = _subscribed(stripe_client)
    resumes = _ts(2026, 3, 15)
    params: Any = {"pause_collection": {"behavior": behavior, "resumes_at": resumes}}
    stripe_client.v1.subscriptions.update(sub.id, params=params)
    _advance(stripe_client, clock, _ts(2026, 2, 28) + 2 * HOUR)
    paused = stripe_client.v1.subscriptions.retrieve(sub.id)
    invoice = stripe_client.v1.invoices.retrieve(str(paused.latest_invoice))
    assert (invoice.status, invoice.amount_paid) == (status, 0)
    if event is not None:
        assert [e["data"]["object"]["id"] for e in emulator.emulator.events_of_type(event)] == [
            invoice.id
        ]
    _advance(stripe_client, clock, _ts(2026, 3, 31) + 2 * HOUR)
    resumed = stripe_client.v1.subscriptions.retrieve(sub.id)
    assert (resumed.pause_collection, resumed.status) == (None, "active")
    renewal = stripe_client.v1.invoices.retrieve(str(resumed.latest_invoice))
    assert (renewal.status, renewal.amount_paid) == ("paid", 1000)


def test_a_subscription_that_sends_invoices_is_not_charged_at_renewal(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    clock, _, sub = _subscribed(stripe_client)
    params: Any = {"collection_method": "send_invoice", "days_until_due": 14}
    stripe_client.v1.subscriptions.update(sub.id, params=params)
    _advance(stripe_client, clock, _ts(2026, 2, 28) + 2 * HOUR)
    now = stripe_client.v1.subscriptions.retrieve(sub.id)
    invoice = stripe_client.v1.invoices.retrieve(str(now.latest_invoice))
    assert (invoice.status, invoice.collection_method, invoice.attempt_count) == (
        "open",
        "send_invoice",
        0,
    )
    assert invoice.due_date == _ts(2026, 2, 28) + HOUR + 14 * DAY
    assert now.status == "active"
    assert emulator.emulator.events_of_type("invoice.sent")


def test_invoice_items_land_on_the_next_renewal_invoice(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    clock, cus, sub = _subscribed(stripe_client)
    items = stripe_client.v1.invoice_items
    setup = items.create(
        params={"customer": cus, "subscription": sub.id, "amount": 500, "currency": "usd"}
    )
    extra: Any = {"customer": cus, "amount": 250, "currency": "usd", "description": "Extra seat"}
    seat = items.create(params=extra)
    assert (setup.invoice, seat.test_clock, seat.date) == (None, clock, START)
    pending = items.list(params={"customer": cus, "pending": True}).data
    assert {ii.id for ii in pending} == {setup.id, seat.id}
    _advance(stripe_client, clock, _ts(2026, 2, 28) + 2 * HOUR)
    renewal = stripe_client.v1.invoices.retrieve(
        str(stripe_client.v1.subscriptions.retrieve(sub.id).latest_invoice)
    )
    assert [line.amount for line in renewal.lines.data] == [1000, 500, 250]
    assert renewal.lines.data[2].description == "Extra seat"
    assert renewal.amount_paid == 1750
    assert {items.retrieve(ii).invoice for ii in (setup.id, seat.id)} == {renewal.id}
    assert items.list(params={"customer": cus, "pending": True}).data == []


def _failing_default(client: stripe.StripeClient, customer: str, card: str) -> None:
    pm = client.v1.payment_methods.attach(card, params={"customer": customer})
    client.v1.customers.update(
        customer, params={"invoice_settings": {"default_payment_method": pm.id}}
    )


def test_a_failed_renewal_is_past_due_until_a_new_card_pays_a_retry(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    clock, cus, sub = _subscribed(stripe_client)
    _failing_default(stripe_client, cus, FAILS)  # attaching it works
    renewal_at = _ts(2026, 2, 28) + HOUR
    _advance(stripe_client, clock, renewal_at + HOUR)
    now = stripe_client.v1.subscriptions.retrieve(sub.id)
    assert now.status == "past_due"
    assert stripe_client.v1.customers.retrieve(cus).delinquent is True
    invoice = stripe_client.v1.invoices.retrieve(str(now.latest_invoice))
    assert (invoice.status, invoice.attempt_count) == ("open", 1)
    assert invoice.next_payment_attempt == renewal_at + 3 * DAY
    [failed] = emulator.emulator.events_of_type("invoice.payment_failed")
    assert failed["created"] == renewal_at
    _failing_default(stripe_client, cus, "pm_card_mastercard")
    _advance(stripe_client, clock, renewal_at + 4 * DAY)
    now = stripe_client.v1.subscriptions.retrieve(sub.id)
    invoice = stripe_client.v1.invoices.retrieve(invoice.id, params={"expand": ["payments"]})
    assert (now.status, invoice.status, invoice.attempt_count) == ("active", "paid", 2)
    assert stripe_client.v1.customers.retrieve(cus).delinquent is False
    assert invoice.payments is not None
    [payment] = invoice.payments.data
    pi = stripe_client.v1.payment_intents.retrieve(str(payment.payment.payment_intent))
    assert pi.status == "succeeded"
    charges = stripe_client.v1.charges.list(params={"payment_intent": pi.id}).data
    assert sorted(c.status for c in charges) == ["failed", "succeeded"]  # one intent, two tries


@pytest.mark.parametrize("end", ["canceled", "unpaid"])
def test_exhausted_retries_end_the_subscription_as_the_setting_says(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer, end: str
) -> None:
    emulator.emulator.time.dunning.exhausted = end
    clock, cus, sub = _subscribed(stripe_client)
    _failing_default(stripe_client, cus, FAILS)
    failed_at = _ts(2026, 2, 28) + HOUR
    _advance(stripe_client, clock, failed_at + 14 * DAY)
    assert stripe_client.v1.subscriptions.retrieve(sub.id).status == "past_due"
    _advance(stripe_client, clock, failed_at + 16 * DAY)
    now = stripe_client.v1.subscriptions.retrieve(sub.id, params={})
    attempts = [e["created"] for e in emulator.emulator.events_of_type("invoice.payment_failed")]
    # Retries 3, 5 and 7 days after the previous attempt: about two weeks.
    assert attempts == [failed_at + d * DAY for d in (0, 3, 8, 15)]
    assert now.status == end
    if end == "canceled":
        assert now.ended_at == failed_at + 15 * DAY
        assert now.cancellation_details is not None
        assert now.cancellation_details.reason == "payment_failed"
        assert emulator.emulator.events_of_type("customer.subscription.deleted")
    invoice = stripe_client.v1.invoices.retrieve(str(now.latest_invoice))
    assert (invoice.status, invoice.next_payment_attempt) == ("open", None)


def test_the_emulator_clock_renews_what_is_on_no_test_clock(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    """Subscriptions on no test clock live in real time, which the emulator's clock
    stands for: moving it renews them; a test clock's stay where it is."""
    emu = emulator.emulator
    clock, _, on_clock = _subscribed(stripe_client)
    customer = stripe_client.v1.customers.create(params={"email": "real@example.com"})
    product = stripe_client.v1.products.create(params={"name": "Weekly"})
    weekly: Any = {"product": product.id, "currency": "usd", "unit_amount": 300}
    weekly["recurring"] = {"interval": "week"}
    price = stripe_client.v1.prices.create(params=weekly)
    real = stripe_client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": price.id}]}
    )
    period_end = real["items"]["data"][0].current_period_end
    emu.advance_clock(period_end - emu.clock.timestamp() + 2 * HOUR)
    renewed = stripe_client.v1.subscriptions.retrieve(real.id)
    assert renewed["items"]["data"][0].current_period_start == period_end
    invoice = stripe_client.v1.invoices.retrieve(str(renewed.latest_invoice))
    assert (invoice.billing_reason, invoice.status, invoice.created) == (
        "subscription_cycle",
        "paid",
        period_end,
    )
    assert stripe_client.v1.subscriptions.retrieve(on_clock.id).latest_invoice == (
        on_clock.latest_invoice
    )
    assert stripe_client.v1.test_helpers.test_clocks.retrieve(clock).frozen_time == START


def test_the_emulator_clock_and_test_clocks_agree(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    """Idempotency keys expire on the emulator's (real) clock, not a test clock's;
    a test clock expires 30 days after its creation on the emulator's clock."""
    emu = emulator.emulator
    clock = _clock(stripe_client).id
    params: Any = {"email": "once@example.com", "test_clock": clock}
    cus = stripe_client.v1.customers.create(params=params, options={"idempotency_key": "k1"})
    _advance(stripe_client, clock, START + 300 * DAY)
    again = stripe_client.v1.customers.create(params=params, options={"idempotency_key": "k1"})
    assert again.id == cus.id  # a year on the test clock is not a day of real time
    emu.advance_clock(31 * DAY)
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.test_helpers.test_clocks.retrieve(clock)
    assert [e["type"] for e in emu.objects("events")][-1] == "test_helpers.test_clock.deleted"
