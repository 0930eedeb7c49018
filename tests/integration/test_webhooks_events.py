"""Real sample events through the real endpoint, and order-independence:
shuffled delivery ends in the same tables as in-order delivery."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.lowlevel
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from stripe_sync.webhooks.execute import WebhookContext

from webhook_helpers import (
    add_account,
    add_price,
    add_product,
    event,
    running_worker,
    sample_events,
    serve_endpoint,
    snapshot,
    statuses,
    store,
    wait_idle,
)

pytestmark = pytest.mark.anyio
T0 = 1_700_000_000


def born_in_stripe(conn: psycopg.Connection[Any], account: int) -> None:
    """Subscriptions and payments the samples name but no sample creates."""
    for sub in ("sub_K4J0aB2bmSyb6b", "sub_JsuPyCPhXWfZar", "sub_JW4ilEI1mm5j4X"):
        row = conn.execute(
            "INSERT INTO billing.subscriptions (account_id, status) "
            "VALUES (%s, 'active') RETURNING id",
            [account],
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO stripe.subscription_mappings (subscription_id, "
            "stripe_subscription_id) VALUES (%s, %s)",
            [row[0], sub],
        )
    for pi in (
        "pi_3Kl36gJDPojXS6LN02fQVtKR",
        "pi_3KtQThJDPojXS6LN0H9EfsjV",
        "pi_1GszsK2eZvKYlo2CfhZyoZLp",
        "pi_103Q0w2eZvKYlo2C364X582Z",  # invoice_payment_paid.json links it
        "pi_1IqtG9JDPojXS6LNOGnYrIqq",  # the charge_dispute_*.json samples dispute it
    ):
        row = conn.execute(
            "INSERT INTO billing.payments (account_id, status, currency, amount, "
            "amount_received) VALUES (%s, 'succeeded', 'usd', 2500, 2500) "
            "RETURNING id",
            [account],
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO stripe.payment_mappings (payment_id, stripe_payment_intent_id) "
            "VALUES (%s, %s)",
            [row[0], pi],
        )
    for invoice in (
        "in_103Q0w2eZvKYlo2C5PYwf6Wf",
        "in_1MxvRkLkdIwHu7ixABNtI99m",  # the credit_note_*.json samples credit it
    ):
        row = conn.execute(
            "INSERT INTO billing.invoices (account_id, status, currency) "
            "VALUES (%s, 'paid', 'usd') RETURNING id",
            [account],
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO stripe.invoice_mappings (invoice_id, stripe_invoice_id) VALUES (%s, %s)",
            [row[0], invoice],
        )


# Per sample file: what it must end as. Everything else must end "ignored".
PROCESSED = {
    "stripe-sync-engine/invoice_payment_paid.json",
    "stripe-mock-data/2015-10-01/customer_created.json",
    "stripe-mock-data/2015-10-01/customer_deleted.json",
    "stripe-mock-data/2015-10-01/customer_subscription_created.json",
    "stripe-mock-data/2015-10-01/customer_subscription_deleted.json",
    "stripe-mock-data/2015-10-01/customer_subscription_trial_will_end.json",
    "stripe-mock-data/2015-10-01/customer_subscription_updated.json",
    "stripe-mock-data/2015-10-01/customer_updated.json",
    "stripe-mock-data/2015-10-01/invoice_created.json",
    "stripe-mock-data/2015-10-01/invoice_payment_failed.json",
    "stripe-mock-data/2015-10-01/invoice_payment_succeeded.json",
    "stripe-mock-data/2015-10-01/invoice_updated.json",
    "stripe-mock-data/2015-10-01/plan_created.json",
    "stripe-mock-data/2015-10-01/plan_deleted.json",
    "stripe-mock-data/2015-10-01/plan_updated.json",
    "stripe-mock-data/2015-10-01/product_created.json",
    "stripe-mock-data/2015-10-01/product_updated.json",
    "stripe-sync-engine/charge_refunded.json",
    "stripe-sync-engine/charge_dispute_created.json",
    "stripe-sync-engine/charge_dispute_updated.json",
    "stripe-sync-engine/charge_dispute_closed.json",
    "stripe-sync-engine/charge_dispute_funds_withdrawn.json",
    "stripe-sync-engine/charge_dispute_funds_reinstated.json",
    "stripe-sync-engine/payment_method_attached.json",
    "stripe-sync-engine/credit_note_created.json",
    "stripe-sync-engine/credit_note_updated.json",
    "stripe-sync-engine/credit_note_voided.json",
    "stripe-sync-engine/payment_method_updated.json",
    "stripe-sync-engine/payment_method_automatically_updated.json",
    "stripe-sync-engine/payment_method_detached.json",
    "stripe-sync-engine/charge_succeeded.json",
    "stripe-sync-engine/checkout_session_completed.json",
    "stripe-sync-engine/customer_deleted.json",
    "stripe-sync-engine/customer_updated.json",
    "stripe-sync-engine/invoice_deleted.json",
    "stripe-sync-engine/invoice_finalized.json",
    "stripe-sync-engine/invoice_paid.json",
    "stripe-sync-engine/invoice_updated.json",
    "stripe-sync-engine/invoice_voided.json",
    "stripe-sync-engine/payment_intent_amount_capturable_updated.json",
    "stripe-sync-engine/payment_intent_canceled.json",
    "stripe-sync-engine/payment_intent_created.json",
    "stripe-sync-engine/payment_intent_partially_funded.json",
    "stripe-sync-engine/payment_intent_payment_failed.json",
    "stripe-sync-engine/payment_intent_processing.json",
    "stripe-sync-engine/payment_intent_requires_action.json",
    "stripe-sync-engine/payment_intent_succeeded.json",
    "stripe-sync-engine/plan_created.json",
    "stripe-sync-engine/plan_deleted.json",
    "stripe-sync-engine/plan_updated.json",
    "stripe-sync-engine/price_created.json",
    "stripe-sync-engine/price_deleted.json",
    "stripe-sync-engine/price_updated.json",
    "stripe-sync-engine/product_created.json",
    "stripe-sync-engine/product_deleted.json",
    "stripe-sync-engine/product_updated.json",
    "stripe-sync-engine/refund_created.json",
    "stripe-sync-engine/refund_failed.json",
    "stripe-sync-engine/refund_updated.json",
    "stripe-sync-engine/subscription_created.json",
    "stripe-sync-engine/subscription_deleted.json",
    "stripe-sync-engine/subscription_updated.json",
}


async def test_every_sample_event_is_accepted_and_ends_well(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
) -> None:
    account = 0
    for cus in (
        "cus_00000000000000",
        "cus_IhGfebO16cMIGN",
        "cus_J7Mkgr8mvbl1eK",
        "cus_JsuO3bmrj0QlAw",
        "cus_JVhbiWW9p3F6wq",
        "cus_N4vaPItLFHBqRE",  # payment_method_attached.json
        "cus_Mt3...",  # payment_method_automatically_updated.json (elided so in the sample)
        "cus_123",
    ):
        account = add_account(conn, cus)
    products = {
        p: add_product(conn, p)
        for p in ("prod_00000000000000", "prod_JdJ6Wt7rsz4EPJ", "prod_IsRLOp58Z7V4XN")
    }
    for price in (
        "pl_00000000000000",
        "price_1IDQm5JDPojXS6LNM31hxKzp",
        "price_1J02UOJDPojXS6LNDao8fiaO",
        "price_1MKL7PJDPojXS6LNpNepgHsK",
    ):
        add_price(conn, price, products["prod_IsRLOp58Z7V4XN"])
    born_in_stripe(conn, account)

    outcomes: dict[str, tuple[str, str | None]] = {}
    # Several files of a source reuse one event id, so each file's row is
    # removed once it has been processed, letting the next one be stored.
    ctx = WebhookContext(pool, reference_attempts=1)
    async with serve_endpoint(pool) as server, running_worker(pool, ctx) as worker:
        for name, body in sample_events():
            resp = await server.post(body)
            assert resp.status_code == 200, (name, resp.text)
            assert resp.json() == {"received": True, "duplicate": False}, name
            worker.wake()
            await wait_idle(pool)
            [(event_id, outcome)] = statuses(conn).items()
            assert event_id == json.loads(body)["id"]
            outcomes[name] = outcome
            conn.execute("DELETE FROM integration.webhook_events")

    assert len(outcomes) == 91
    for name, (status, note) in outcomes.items():
        expected = "processed" if name in PROCESSED else "ignored"
        assert status == expected, (name, status, note)
        if status == "ignored":
            assert note, name

    # A few results, as the samples say.
    sub = conn.execute(
        "SELECT s.status, s.canceled_at IS NOT NULL, "
        "(SELECT array_agg(quantity) FROM billing.subscription_items i "
        " WHERE i.subscription_id = s.id) "
        "FROM billing.subscriptions s "
        "JOIN stripe.subscription_mappings m ON m.subscription_id = s.id "
        "WHERE m.stripe_subscription_id = 'sub_JdIzvfy6o5GZRd'"
    ).fetchone()
    assert sub == ("canceled", True, [1])
    refunded = conn.execute(
        "SELECT p.amount_refunded, p.refund_status, m.stripe_charge_id FROM billing.payments p "
        "JOIN stripe.payment_mappings m ON m.payment_id = p.id "
        "WHERE m.stripe_payment_intent_id = 'pi_3Kl36gJDPojXS6LN02fQVtKR'"
    ).fetchone()
    assert refunded == (2500, "full", "ch_3Kl36gJDPojXS6LN0DCM4A8l")
    assert conn.execute(
        "SELECT sync_status FROM stripe.customer_mappings "
        "WHERE stripe_customer_id = 'cus_IhGfebO16cMIGN'"
    ).fetchone() == ("deleted",)
    assert conn.execute(
        "SELECT status FROM billing.invoices i JOIN stripe.invoice_mappings m "
        "ON m.invoice_id = i.id WHERE m.stripe_invoice_id = 'in_xyz'"
    ).fetchone() == ("deleted",)
    assert conn.execute(
        "SELECT m.stripe_credit_note_id, im.stripe_invoice_id, c.status, c.amount, c.currency, "
        "c.reason, c.memo FROM billing.credit_notes c "
        "JOIN stripe.credit_note_mappings m ON m.credit_note_id = c.id "
        "JOIN stripe.invoice_mappings im ON im.invoice_id = c.invoice_id"
    ).fetchall() == [
        (
            "cn_1MxvRqLkdIwHu7ixY0xbUcxk",
            "in_1MxvRkLkdIwHu7ixABNtI99m",
            "issued",
            1099,
            "usd",
            None,
            None,
        )
    ]
    cards = conn.execute(
        "SELECT m.stripe_payment_method_id, c.stripe_customer_id, p.type, p.brand, p.last4, "
        "p.exp_month, p.exp_year, p.is_default, m.sync_status "
        "FROM billing.payment_methods p "
        "JOIN stripe.payment_method_mappings m ON m.payment_method_id = p.id "
        "LEFT JOIN stripe.customer_mappings c ON c.account_id = p.account_id ORDER BY 1"
    ).fetchall()
    assert cards == [
        ("pm_1M9HtjJDP...", "cus_Mt3...", "card", "mastercard", "0123", 11, 2027, False, "synced"),
        ("pm_1MJUwRJDPojXS6LNh4fFA1z7", None, "card", "visa", "4242", 12, 2034, False, "deleted"),
        (
            "pm_1MKlmhJDPojXS6LNV8Rcj3WO",
            "cus_N4vaPItLFHBqRE",
            "card",
            "visa",
            "4242",
            4,
            2024,
            False,
            "synced",
        ),
    ]
    # customer_updated.json names a default payment method, but customer_deleted.json
    # (the same event id and second, a deletion ranks higher) left it with none.
    assert conn.execute(
        "SELECT sync_status, default_payment_method FROM stripe.customer_mappings "
        "WHERE stripe_customer_id = 'cus_IhGfebO16cMIGN'"
    ).fetchone() == ("deleted", None)
    assert conn.execute(
        "SELECT pm.stripe_payment_intent_id, d.status, d.reason, d.amount, d.currency, "
        "extract(epoch FROM d.evidence_due_by)::bigint, d.closed_at "
        "FROM billing.disputes d JOIN stripe.dispute_mappings m ON m.dispute_id = d.id "
        "JOIN stripe.payment_mappings pm ON pm.payment_id = d.payment_id"
    ).fetchall() == [
        (
            "pi_1IqtG9JDPojXS6LNOGnYrIqq",
            "warning_needs_response",
            "general",
            1000,
            "usd",
            1674345599,
            None,
        )
    ]


# -- order independence ----------------------------------------------------------------------


def story() -> list[dict[str, Any]]:
    """One customer's month, with many events sharing a second, in Stripe's order."""

    def sub(
        status: str, prices: tuple[str, ...] = ("price_A",), sub_id: str = "sub_1", **extra: Any
    ) -> dict[str, Any]:
        items = [
            {
                "id": f"si_{p}",
                "price": p,
                "quantity": 1,
                "current_period_start": T0,
                "current_period_end": T0 + 30,
            }
            for p in prices
        ]
        return {
            "id": sub_id,
            "object": "subscription",
            "customer": "cus_A",
            "status": status,
            "items": {"data": items},
            **extra,
        }

    def inv(status: str, paid: int = 0) -> dict[str, Any]:
        return {
            "id": "in_1",
            "object": "invoice",
            "customer": "cus_A",
            "subscription": "sub_1",
            "status": status,
            "currency": "usd",
            "amount_due": 1000,
            "amount_paid": paid,
            "amount_remaining": 1000 - paid,
            "total": 1000,
        }

    def pi(status: str, received: int = 0) -> dict[str, Any]:
        return {
            "id": "pi_1",
            "object": "payment_intent",
            "customer": "cus_A",
            "invoice": "in_1",
            "status": status,
            "currency": "usd",
            "amount": 1000,
            "amount_received": received,
            **({"latest_charge": "ch_1"} if received else {}),
        }

    def refund(re_id: str, amount: int, status: str) -> dict[str, Any]:
        return {
            "id": re_id,
            "object": "refund",
            "amount": amount,
            "charge": "ch_1",
            "payment_intent": "pi_1",
            "status": status,
        }

    def dispute(
        dp_id: str, status: str, pi_id: str | None = "pi_1", **extra: Any
    ) -> dict[str, Any]:
        return {
            "id": dp_id,
            "object": "dispute",
            "charge": "ch_1",
            "payment_intent": pi_id,
            "status": status,
            "reason": "fraudulent" if pi_id else "general",
            "amount": 1000 if pi_id else 200,
            "currency": "usd",
            "evidence_details": {"due_by": T0 + 86400, "has_evidence": False},
            **extra,
        }

    def card(pm_id: str, customer: str | None, brand: str, exp_year: int) -> dict[str, Any]:
        return {
            "id": pm_id,
            "object": "payment_method",
            "type": "card",
            "customer": customer,
            "card": {"brand": brand, "last4": "4242", "exp_month": 5, "exp_year": exp_year},
        }

    def credit(status: str, memo: str | None = None) -> dict[str, Any]:
        return {
            "id": "cn_1",
            "object": "credit_note",
            "invoice": "in_1",
            "status": status,
            "amount": 250,
            "total": 250,
            "currency": "usd",
            "reason": "order_change",
            "memo": memo,
        }

    def customer_b(default: str | None) -> dict[str, Any]:
        return {
            "id": "cus_B",
            "object": "customer",
            "invoice_settings": {"default_payment_method": default},
        }

    steps: list[tuple[int, str, dict[str, Any]]] = [
        (0, "customer.updated", {"id": "cus_A", "object": "customer"}),
        (0, "customer.subscription.created", sub("incomplete")),
        (0, "invoice.created", inv("draft")),
        (0, "invoice.finalized", inv("open")),
        (0, "payment_intent.created", pi("requires_payment_method")),
        (1, "payment_intent.succeeded", pi("succeeded", 1000)),
        (
            1,
            "charge.succeeded",
            {
                "id": "ch_1",
                "object": "charge",
                "payment_intent": "pi_1",
                "status": "succeeded",
                "amount_refunded": 0,
            },
        ),
        (1, "invoice.paid", inv("paid", 1000)),
        (1, "invoice.payment_succeeded", inv("paid", 1000)),
        (1, "customer.subscription.updated", sub("active")),
        (1, "customer.subscription.updated", sub("active", ("price_A", "price_B"))),
        (1, "customer.subscription.created", sub("trialing", ("price_B",), "sub_2")),
        (1, "customer.subscription.updated", sub("active", ("price_B",), "sub_2")),
        (2, "refund.created", refund("re_1", 300, "succeeded")),
        (
            2,
            "charge.refunded",
            {
                "id": "ch_1",
                "object": "charge",
                "payment_intent": "pi_1",
                "status": "succeeded",
                "amount_refunded": 300,
                "refunds": {"data": [refund("re_1", 300, "succeeded")]},
            },
        ),
        (2, "product.updated", {"id": "prod_A", "object": "product", "active": False}),
        (2, "price.updated", {"id": "price_B", "object": "price", "active": False}),
        (2, "price.deleted", {"id": "price_B", "object": "price", "deleted": True}),
        (3, "refund.created", refund("re_2", 700, "pending")),
        (3, "refund.failed", refund("re_2", 700, "failed")),
        (3, "refund.created", refund("re_3", 200, "pending")),
        (4, "refund.updated", refund("re_3", 200, "succeeded")),
        (4, "customer.subscription.updated", sub("active", cancel_at_period_end=True)),
        (4, "customer.subscription.deleted", sub("canceled", canceled_at=T0 + 4, ended_at=T0 + 4)),
        (5, "customer.updated", {"id": "cus_A", "object": "customer"}),
        (5, "customer.deleted", {"id": "cus_A", "object": "customer", "deleted": True}),
        # A chargeback: its same-second updates resolve by lifecycle rank.
        (2, "charge.dispute.created", dispute("dp_1", "needs_response")),
        (2, "charge.dispute.funds_withdrawn", dispute("dp_1", "needs_response")),
        # (by event id alone under_review would win: its id is the largest)
        (3, "charge.dispute.closed", dispute("dp_1", "won")),
        (3, "charge.dispute.funds_reinstated", dispute("dp_1", "won")),
        (3, "charge.dispute.updated", dispute("dp_1", "under_review")),
        # An inquiry naming only the charge, closed a second before its closed event.
        (2, "charge.dispute.created", dispute("dp_2", "warning_needs_response", None)),
        (4, "charge.dispute.updated", dispute("dp_2", "warning_closed", None)),
        (5, "charge.dispute.closed", dispute("dp_2", "warning_closed", None)),
        # Cards on file: the default moves from pm_1 to pm_2 and back; pm_2 is detached.
        (1, "payment_method.attached", card("pm_1", "cus_B", "visa", 2027)),
        (1, "customer.updated", customer_b("pm_1")),
        (2, "payment_method.attached", card("pm_2", "cus_B", "mastercard", 2028)),
        (3, "customer.updated", customer_b("pm_2")),
        (3, "payment_method.automatically_updated", card("pm_1", "cus_B", "visa", 2030)),
        (4, "customer.updated", customer_b("pm_1")),
        # (by event id alone the update would win: its id is the larger)
        (5, "payment_method.detached", card("pm_2", None, "mastercard", 2029)),
        (5, "payment_method.updated", card("pm_2", "cus_B", "mastercard", 2029)),
        # A credit note, voided in the second of its last update (whose id is larger).
        (2, "credit_note.created", credit("issued")),
        (3, "credit_note.updated", credit("issued", "Goodwill")),
        (4, "credit_note.voided", credit("void", "Goodwill")),
        (4, "credit_note.updated", credit("issued", "Goodwill, again")),
    ]
    return [
        event(kind, obj, created=T0 + dt, event_id=f"evt_{i:02d}{kind[:4]}")
        for i, (dt, kind, obj) in enumerate(steps)
    ]


RESET = """
TRUNCATE integration.webhook_events, stripe.dispute_mappings, billing.disputes,
    stripe.payment_method_mappings, billing.payment_methods,
    stripe.credit_note_mappings, billing.credit_notes,
    stripe.payment_refunds, stripe.payment_mappings,
    stripe.invoice_mappings, stripe.subscription_mappings, stripe.customer_mappings,
    stripe.price_mappings, stripe.product_mappings, billing.payments, billing.invoices,
    billing.subscription_items, billing.subscriptions, billing.prices, billing.products,
    billing.accounts RESTART IDENTITY CASCADE
"""


async def deliver(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any], events: list[dict[str, Any]]
) -> dict[str, list[tuple[Any, ...]]]:
    conn.execute(RESET)
    add_account(conn, "cus_A")
    add_account(conn, "cus_B")
    product = add_product(conn, "prod_A")
    add_price(conn, "price_A", product)
    add_price(conn, "price_B", product)
    # Generous reference waits: out of order, an invoice may come before its subscription.
    ctx = WebhookContext(pool, reference_attempts=200, reference_backoff=0.005)
    async with running_worker(pool, ctx, max_attempts=200, base_seconds=0.005) as worker:
        for evt in events:  # one at a time, each its own commit: arrival order = claim order
            await store(pool, evt)
            worker.wake()
        await wait_idle(pool, timeout=20)
    assert {s for s, _ in statuses(conn).values()} == {"processed"}, statuses(conn)
    return snapshot(conn)


async def test_shuffled_delivery_gives_the_same_tables(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
) -> None:
    events = story()
    expected = await deliver(pool, conn, events)
    # What in-order delivery gives, spelled out.
    assert [r[:5] for r in expected["subscriptions"]] == [
        ("sub_1", "deleted", "evt_23cust", 1, "canceled"),
        ("sub_2", "synced", "evt_12cust", 1, "active"),
    ]
    assert [r[-1] for r in expected["subscriptions"]] == [[[1, 1]], [[2, 1]]]
    assert [r[5:7] for r in expected["invoices"]] == [("paid", None)]
    assert [r[6:12] for r in expected["payments"]] == [
        ("succeeded", "usd", 1000, 1000, 500, "partial")
    ]
    assert expected["customers"][0] == (1, "cus_A", "deleted", "evt_25cust", None)
    assert expected["prices"] == [
        (1, "price_A", "synced", None),
        (2, "price_B", "deleted", "evt_17pric"),
    ]
    t = datetime.fromtimestamp
    assert expected["disputes"] == [
        (
            "dp_1",
            "synced",
            "evt_29char",
            "pi_1",
            "won",
            "fraudulent",
            1000,
            "usd",
            t(T0 + 86400, UTC),
            t(T0 + 3, UTC),
        ),
        (
            "dp_2",
            "synced",
            "evt_33char",
            "pi_1",
            "warning_closed",
            "general",
            200,
            "usd",
            t(T0 + 86400, UTC),
            t(T0 + 4, UTC),
        ),
    ]
    assert expected["payment_methods"] == [
        ("pm_1", "synced", "evt_38paym", 2, "card", "visa", "4242", 5, 2030, True),
        ("pm_2", "deleted", "evt_40paym", None, "card", "mastercard", "4242", 5, 2029, False),
    ]
    assert expected["customers"][1] == (2, "cus_B", "synced", "evt_39cust", "pm_1")
    assert expected["credit_notes"] == [
        ("cn_1", "synced", "evt_44cred", "in_1", "void", 250, "usd", "order_change", "Goodwill")
    ]
    rng = random.Random(5711)
    orders = [list(reversed(events))] + [rng.sample(events, len(events)) for _ in range(4)]
    for order in orders:
        assert await deliver(pool, conn, order) == expected, [e["id"] for e in order]


async def test_ties_in_one_second_resolve_the_same_way(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
) -> None:
    def sub(status: str, qty: int) -> dict[str, Any]:
        return {
            "id": "sub_t",
            "customer": "cus_A",
            "status": status,
            "items": {"data": [{"price": "price_A", "quantity": qty}]},
        }

    # Same second: the later lifecycle status wins; equal status: the larger event id.
    tied = [
        event("customer.subscription.updated", sub("canceled", 1), event_id="evt_a"),
        event("customer.subscription.updated", sub("active", 2), event_id="evt_z"),
        event("customer.subscription.updated", sub("past_due", 3), event_id="evt_m"),
        event("customer.subscription.updated", sub("canceled", 4), event_id="evt_b"),
    ]
    results = set()
    for order in (tied, tied[::-1], [tied[2], tied[0], tied[3], tied[1]]):
        snap = await deliver(pool, conn, order)
        results.add(json.dumps(snap["subscriptions"], default=str))
        assert [(r[2], r[4], r[-1]) for r in snap["subscriptions"]] == [
            ("evt_b", "canceled", [[1, 4]])
        ]
    assert len(results) == 1


async def test_concurrent_events_for_one_object(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """Many events for one subscription at once: row locks serialize them, the newest wins."""
    add_account(conn, "cus_A")
    add_price(conn, "price_A")
    events = [
        event(
            "customer.subscription.updated",
            {
                "id": "sub_c",
                "customer": "cus_A",
                "status": "active",
                "items": {"data": [{"price": "price_A", "quantity": i}]},
            },
            created=T0 + i,
            event_id=f"evt_c{i:03d}",
        )
        for i in range(40)
    ]
    random.Random(1).shuffle(events)
    await store(pool, *events)
    ctx = WebhookContext(pool, reference_backoff=0.005)
    async with running_worker(pool, ctx, max_attempts=50, base_seconds=0.005) as worker:
        worker.wake()
        await wait_idle(pool, timeout=20)
    assert conn.execute("SELECT quantity FROM billing.subscription_items").fetchall() == [(39,)]
    assert conn.execute("SELECT count(*) FROM billing.subscriptions").fetchone() == (1,)
    st = statuses(conn)
    assert {s for s, _ in st.values()} == {"processed"}
    assert st["evt_c039"] == ("processed", None)
    await anyio.lowlevel.checkpoint()
