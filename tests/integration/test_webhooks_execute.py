"""The webhook processor: handlers, ordering, references, mode and Connect checks."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from stripe_sync.stripe_api import StripeApi
from stripe_sync.webhooks.execute import WebhookContext

from webhook_helpers import (
    add_account,
    add_price,
    add_product,
    event,
    running_worker,
    statuses,
    store,
    wait_idle,
)

pytestmark = pytest.mark.anyio
T0 = 1_700_000_000


async def run(
    pool: AsyncConnectionPool, *events: dict[str, Any], ctx: WebhookContext | None = None
) -> None:
    await store(pool, *events)
    async with running_worker(pool, ctx) as worker:
        worker.wake()
        await wait_idle(pool)


def one(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    return row if row is None or len(row) > 1 else row[0]


def sub_obj(
    sub_id: str = "sub_1",
    customer: Any = "cus_A",
    status: str = "active",
    prices: tuple[str, ...] = ("price_A",),
    **extra: Any,
) -> dict[str, Any]:
    # Newer API versions: the period is on the items.
    items = [
        {
            "id": f"si_{p}",
            "object": "subscription_item",
            "price": {"id": p, "object": "price", "product": "prod_A"},
            "quantity": 2,
            "current_period_start": T0,
            "current_period_end": T0 + 2_592_000,
        }
        for p in prices
    ]
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "cancel_at_period_end": False,
        "items": {"object": "list", "data": items},
        **extra,
    }


# -- customers and catalog -----------------------------------------------------------


async def test_customer_events_confirm_known_customers(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
) -> None:
    known = add_account(conn, "cus_A", status="pending")
    pending = add_account(conn, None)
    await run(
        pool,
        event("customer.updated", {"id": "cus_A", "object": "customer"}, event_id="evt_a"),
        event(
            "customer.created",
            {"id": "cus_P", "object": "customer", "metadata": {"mc_account_id": str(pending)}},
            event_id="evt_p",
        ),
        event("customer.created", {"id": "cus_X", "object": "customer"}, event_id="evt_x"),
    )
    assert one(
        conn,
        "SELECT stripe_customer_id, sync_status, last_event_id "
        "FROM stripe.customer_mappings WHERE account_id = %s",
        known,
    ) == ("cus_A", "synced", "evt_a")
    # The webhook beat the outbox's commit: adopted by its metadata.
    assert one(
        conn,
        "SELECT stripe_customer_id, sync_status FROM stripe.customer_mappings "
        "WHERE account_id = %s",
        pending,
    ) == ("cus_P", "synced")
    st = statuses(conn)
    assert st["evt_a"] == ("processed", None)
    assert st["evt_x"] == ("ignored", "customer cus_X is not mapped to any MC row")


async def test_a_note_is_not_an_error(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """Why an event was ignored is a note; last_error stays for errors."""
    await run(pool, event("customer.created", {"id": "cus_X", "object": "customer"}, event_id="e"))
    row = conn.execute("SELECT status, note, last_error FROM integration.webhook_events").fetchone()
    assert row == ("ignored", "customer cus_X is not mapped to any MC row", None)


async def test_only_this_databases_objects_confirm_a_pending_mapping(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """Databases sharing a Stripe account each number their accounts from 1: a
    customer.created of another database names our pending account too."""
    pending = add_account(conn, None)

    def created(cus_id: str, mc_source: str) -> dict[str, Any]:
        metadata = {"mc_account_id": str(pending), "mc_source": mc_source}
        obj = {"id": cus_id, "object": "customer", "metadata": metadata}
        return event("customer.created", obj, event_id=f"evt_{cus_id}")

    ctx = WebhookContext(pool, source="billing/ours0001")
    await run(pool, created("cus_T", "billing/theirs01"), ctx=ctx)
    query = "SELECT stripe_customer_id FROM stripe.customer_mappings WHERE account_id = %s"
    assert one(conn, query, pending) is None
    assert statuses(conn)["evt_cus_T"] == ("ignored", "customer cus_T is not mapped to any MC row")
    await run(pool, created("cus_O", "billing/ours0001"), ctx=ctx)
    assert one(conn, query, pending) == "cus_O"


def _invoice_and_payment(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """(the invoice's MC id, the payment's MC id, the payment's invoice_id)."""
    invoice = one(conn, "SELECT invoice_id FROM stripe.invoice_mappings")
    payment = conn.execute("SELECT id, invoice_id FROM billing.payments").fetchone()
    return (invoice, *(payment or (None, None)))


_INVOICE = {
    "id": "in_1",
    "object": "invoice",
    "customer": "cus_A",
    "status": "paid",
    "currency": "eur",
    "total": 2000,
}
_PI = {
    "id": "pi_1",
    "object": "payment_intent",
    "customer": "cus_A",
    "status": "succeeded",
    "currency": "eur",
    "amount": 2000,
    "amount_received": 2000,
    "latest_charge": "ch_1",
}
_LINK = {
    "id": "inpay_1",
    "object": "invoice_payment",
    "invoice": "in_1",
    "payment": {"type": "payment_intent", "payment_intent": "pi_1"},
    "status": "paid",
}


@pytest.mark.parametrize("link_first", [False, True], ids=["link last", "link first"])
async def test_a_payment_learns_its_invoice_from_invoice_payment_paid(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any], link_first: bool
) -> None:
    """API 2025-03-31+: neither the PaymentIntent nor the invoice names the other."""
    add_account(conn, "cus_A")
    events = [
        event("invoice.paid", _INVOICE, created=T0, event_id="evt_in"),
        event("payment_intent.succeeded", _PI, created=T0, event_id="evt_pi"),
    ]
    link = event("invoice_payment.paid", _LINK, created=T0 + 1, event_id="evt_link")
    await run(pool, *([link, *events] if link_first else [*events, link]))
    invoice, _, linked = _invoice_and_payment(conn)
    assert linked == invoice
    assert statuses(conn)["evt_link"] == ("processed", None)
    # A later PaymentIntent event, which names no invoice, keeps the link.
    later = {**_PI, "metadata": {"note": "x"}}
    await run(pool, event("payment_intent.succeeded", later, created=T0 + 5, event_id="evt_pi2"))
    assert _invoice_and_payment(conn)[2] == invoice


@pytest.mark.parametrize("names_it", ["charge", "invoice"])
async def test_a_payment_learns_its_invoice_from_old_shapes(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any], names_it: str
) -> None:
    """Before 2025-03-31 the charge names its invoice, or the invoice its payment."""
    add_account(conn, "cus_A")
    charge = {"id": "ch_1", "object": "charge", "payment_intent": "pi_1", "status": "succeeded"}
    invoice = dict(_INVOICE)
    if names_it == "charge":
        charge["invoice"] = "in_1"
    else:
        invoice["payment_intent"] = "pi_1"
    # One at a time, so that only the event under test can make the link.
    await run(pool, event("payment_intent.succeeded", _PI, created=T0, event_id="evt_pi"))
    await run(pool, event("invoice.paid", invoice, created=T0, event_id="evt_in"))
    invoice_id = one(conn, "SELECT invoice_id FROM stripe.invoice_mappings")
    assert _invoice_and_payment(conn)[2] == (None if names_it == "charge" else invoice_id)
    await run(pool, event("charge.succeeded", charge, created=T0, event_id="evt_ch"))
    assert _invoice_and_payment(conn)[2] == invoice_id
    assert {s for s, _ in statuses(conn).values()} == {"processed"}


async def test_a_row_the_database_refuses_fails_at_once_naming_the_constraint(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """A CheckViolation is deterministic: no ten retries, and a message that says
    which table, which constraint and which Stripe id."""
    pending = add_account(conn, None)
    metadata = {"mc_account_id": str(pending), "mc_source": "billing/ours0001"}
    obj = {"id": "cux_not_a_customer_id", "object": "customer", "metadata": metadata}
    ctx = WebhookContext(pool, source="billing/ours0001")
    await run(pool, event("customer.created", obj, event_id="evt_bad"), ctx=ctx)
    status, error = statuses(conn)["evt_bad"]
    assert status == "failed", error
    assert error is not None
    assert "table stripe.customer_mappings" in error, error
    assert "constraint customer_mappings_stripe_customer_id_check" in error, error
    assert "cux_not_a_customer_id" in error, error
    attempts = one(conn, "SELECT attempts FROM integration.webhook_events")
    assert attempts == 1


async def test_customer_deleted_stub_then_stale_update(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
) -> None:
    add_account(conn, "cus_A")
    await run(
        pool,
        event(
            "customer.deleted",
            {"id": "cus_A", "object": "customer", "deleted": True},
            created=T0 + 5,
            event_id="evt_del",
        ),
    )
    await run(
        pool,
        event(
            "customer.updated",
            {"id": "cus_A", "object": "customer"},
            created=T0,
            event_id="evt_old",
        ),
    )
    assert one(conn, "SELECT sync_status, last_event_id FROM stripe.customer_mappings") == (
        "deleted",
        "evt_del",
    )
    assert statuses(conn)["evt_old"] == ("processed", "stale: older than evt_del")


async def test_catalog_deleted_and_archived(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    product = add_product(conn, "prod_A")
    add_price(conn, "price_A", product)
    add_price(conn, "plan_gold", product)
    await run(
        pool,
        event("product.updated", {"id": "prod_A", "object": "product", "active": False}),
        event("price.deleted", {"id": "price_A", "object": "price", "deleted": True}),
        event("plan.updated", {"id": "plan_gold", "object": "plan", "active": True}),
        event("price.created", {"id": "price_Z", "object": "price"}, event_id="evt_z"),
    )
    assert one(conn, "SELECT sync_status FROM stripe.product_mappings") == "synced"
    assert sorted(
        conn.execute("SELECT stripe_price_id, sync_status FROM stripe.price_mappings")
    ) == [("plan_gold", "synced"), ("price_A", "deleted")]
    assert statuses(conn)["evt_z"][0] == "ignored"


# -- subscriptions, invoices, payments -------------------------------------------------------


async def test_subscription_lifecycle(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    account = add_account(conn, "cus_A")
    price_a, price_b = add_price(conn, "price_A"), add_price(conn, "price_B")
    await run(
        pool,
        event(
            "customer.subscription.created",
            sub_obj(customer={"id": "cus_A", "object": "customer"}),
            created=T0,
        ),
    )
    row = one(
        conn,
        "SELECT account_id, status, current_period_start, current_period_end, paused "
        "FROM billing.subscriptions",
    )
    assert row[0] == account and row[1] == "active" and row[4] is False
    assert int(row[2].timestamp()) == T0 and int(row[3].timestamp()) == T0 + 2_592_000
    assert conn.execute("SELECT price_id, quantity FROM billing.subscription_items").fetchall() == [
        (price_a, 2)
    ]

    # An older-API shape: period on the subscription, price B replaces A, then paused.
    await run(
        pool,
        event(
            "customer.subscription.updated",
            {
                **sub_obj(prices=("price_B",)),
                "current_period_start": T0 + 10,
                "current_period_end": T0 + 20,
                "pause_collection": {"behavior": "void"},
            },
            created=T0 + 1,
        ),
    )
    row = one(conn, "SELECT status, current_period_start, paused FROM billing.subscriptions")
    assert int(row[1].timestamp()) == T0 + 10 and row[2] is True
    assert conn.execute("SELECT price_id FROM billing.subscription_items").fetchall() == [
        (price_b,)
    ]

    await run(
        pool,
        event(
            "customer.subscription.deleted",
            sub_obj(status="canceled", prices=("price_B",), canceled_at=T0 + 2, ended_at=T0 + 2),
            created=T0 + 2,
            event_id="evt_gone",
        ),
    )
    assert one(conn, "SELECT status, ended_at IS NOT NULL FROM billing.subscriptions") == (
        "canceled",
        True,
    )
    assert one(conn, "SELECT sync_status, last_event_id FROM stripe.subscription_mappings") == (
        "deleted",
        "evt_gone",
    )
    assert one(conn, "SELECT count(*) FROM billing.subscriptions") == 1


async def test_legacy_subscription_with_plan(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    add_account(conn, "cus_A")
    price = add_price(conn, "gold")
    await run(
        pool,
        event(
            "customer.subscription.created",
            {
                "id": "sub_old",
                "object": "subscription",
                "customer": "cus_A",
                "status": "trialing",
                "plan": {"id": "gold", "object": "plan"},
                "quantity": 3,
                "current_period_start": T0,
                "current_period_end": T0 + 100,
                "trial_start": T0,
                "trial_end": T0 + 100,
            },
        ),
    )
    assert conn.execute("SELECT price_id, quantity FROM billing.subscription_items").fetchall() == [
        (price, 3)
    ]
    assert one(conn, "SELECT status, trial_end IS NOT NULL FROM billing.subscriptions") == (
        "trialing",
        True,
    )


async def test_invoice_and_payment_and_refunds(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    account = add_account(conn, "cus_A")
    add_price(conn, "price_A")
    invoice = {
        "id": "in_1",
        "object": "invoice",
        "customer": "cus_A",
        "status": "open",
        "currency": "usd",
        "amount_due": 2000,
        "amount_paid": 0,
        "amount_remaining": 2000,
        "total": 2000,
        "number": "N-1",
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"subscription": "sub_1"},
        },
    }
    pi = {
        "id": "pi_1",
        "object": "payment_intent",
        "customer": "cus_A",
        "status": "succeeded",
        "currency": "usd",
        "amount": 2000,
        "amount_received": 2000,
        "latest_charge": "ch_1",
        "invoice": "in_1",
    }
    await run(
        pool,
        event("customer.subscription.created", sub_obj(), created=T0),
        event("invoice.finalized", invoice, created=T0),
        event(
            "invoice.paid",
            {
                **invoice,
                "status": "paid",
                "amount_paid": 2000,
                "amount_remaining": 0,
                "status_transitions": {"paid_at": T0 + 1},
            },
            created=T0 + 1,
        ),
        event("payment_intent.succeeded", pi, created=T0 + 1),
    )
    sub_id = one(conn, "SELECT subscription_id FROM stripe.subscription_mappings")
    row = one(
        conn,
        "SELECT account_id, subscription_id, status, amount_paid, paid_at IS NOT NULL, "
        "number FROM billing.invoices",
    )
    assert row == (account, sub_id, "paid", 2000, True, "N-1")
    invoice_id = one(conn, "SELECT invoice_id FROM stripe.invoice_mappings")
    row = one(
        conn, "SELECT account_id, invoice_id, status, amount, refund_status FROM billing.payments"
    )
    assert row == (account, invoice_id, "succeeded", 2000, "none")
    assert one(conn, "SELECT stripe_charge_id FROM stripe.payment_mappings") == "ch_1"

    # A refund naming only the charge, then the charge's own report, then a second refund.
    await run(
        pool,
        event(
            "refund.created",
            {
                "id": "re_1",
                "object": "refund",
                "amount": 500,
                "charge": "ch_1",
                "status": "succeeded",
            },
            created=T0 + 5,
        ),
    )
    assert one(conn, "SELECT amount_refunded, refund_status FROM billing.payments") == (
        500,
        "partial",
    )
    await run(
        pool,
        event(
            "charge.refunded",
            {
                "id": "ch_1",
                "object": "charge",
                "payment_intent": "pi_1",
                "status": "succeeded",
                "amount_refunded": 500,
            },
            created=T0 + 5,
        ),
    )
    await run(
        pool,
        event(
            "refund.created",
            {
                "id": "re_2",
                "object": "refund",
                "amount": 1500,
                "payment_intent": "pi_1",
                "status": "pending",
            },
            created=T0 + 6,
        ),
    )
    assert one(conn, "SELECT amount_refunded, refund_status FROM billing.payments") == (
        2000,
        "full",
    )
    # The second refund fails: back to partial.
    await run(
        pool,
        event(
            "refund.failed",
            {
                "id": "re_2",
                "object": "refund",
                "amount": 1500,
                "payment_intent": "pi_1",
                "status": "failed",
            },
            created=T0 + 7,
        ),
    )
    assert one(conn, "SELECT amount_refunded, refund_status FROM billing.payments") == (
        500,
        "partial",
    )
    assert {s for s, _ in statuses(conn).values()} == {"processed"}


def _payment(amount: int) -> dict[str, Any]:
    return {
        "id": "pi_r",
        "object": "payment_intent",
        "customer": "cus_A",
        "status": "succeeded",
        "currency": "usd",
        "amount": amount,
        "amount_received": amount,
        "latest_charge": "ch_r",
    }


def _refund(refund_id: str, amount: int, status: str) -> dict[str, Any]:
    return {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "payment_intent": "pi_r",
        "charge": "ch_r",
        "status": status,
    }


@pytest.mark.parametrize("order", ["in order", "reversed"])
async def test_a_canceled_full_refund_refunds_nothing(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any], order: str
) -> None:
    """Issue #17: a canceled refund never counts toward amount_refunded, in any arrival order."""
    add_account(conn, "cus_A")
    await run(pool, event("payment_intent.succeeded", _payment(2000), created=T0))
    refund_events = [
        event("refund.created", _refund("re_full", 2000, "succeeded"), created=T0 + 5),
        event("refund.updated", _refund("re_full", 2000, "canceled"), created=T0 + 9),
    ]
    if order == "reversed":
        refund_events.reverse()
    for e in refund_events:  # one at a time: the arrival order is the point
        await run(pool, e)
    assert one(conn, "SELECT amount_refunded, refund_status FROM billing.payments") == (0, "none")
    assert one(conn, "SELECT status FROM stripe.payment_refunds") == "canceled"


@pytest.mark.parametrize("order", ["in order", "reversed"])
async def test_a_canceled_partial_refund_among_others(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any], order: str
) -> None:
    add_account(conn, "cus_A")
    await run(pool, event("payment_intent.succeeded", _payment(2000), created=T0))
    refund_events = [
        event("refund.created", _refund("re_a", 500, "succeeded"), created=T0 + 5),
        event("refund.created", _refund("re_b", 700, "succeeded"), created=T0 + 6),
        event("refund.created", _refund("re_c", 300, "pending"), created=T0 + 6),
        event("refund.updated", _refund("re_b", 700, "canceled"), created=T0 + 8),
    ]
    if order == "reversed":
        refund_events.reverse()
    for e in refund_events:
        await run(pool, e)
    # re_a and the pending re_c count; the canceled re_b does not.
    assert one(conn, "SELECT amount_refunded, refund_status FROM billing.payments") == (
        800,
        "partial",
    )


async def test_payment_intent_with_old_charges_list(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    await run(
        pool,
        event(
            "payment_intent.succeeded",
            {
                "id": "pi_2",
                "object": "payment_intent",
                "status": "succeeded",
                "currency": "eur",
                "amount": 900,
                "amount_received": 900,
                "customer": None,
                "charges": {
                    "object": "list",
                    "data": [
                        {"id": "ch_failed", "status": "failed", "amount_refunded": 0},
                        {"id": "ch_ok", "status": "succeeded", "amount_refunded": 900},
                    ],
                },
            },
        ),
    )
    assert one(conn, "SELECT stripe_charge_id FROM stripe.payment_mappings") == "ch_ok"
    assert one(conn, "SELECT account_id, amount_refunded, refund_status FROM billing.payments") == (
        None,
        900,
        "full",
    )


async def test_checkout_links_customer_by_client_reference(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
) -> None:
    account = add_account(conn, None)
    other = add_account(conn, "cus_other")
    session = {
        "id": "cs_1",
        "object": "checkout.session",
        "customer": "cus_new",
        "client_reference_id": str(account),
        "mode": "subscription",
    }
    await run(
        pool,
        event("checkout.session.completed", session, event_id="evt_cs1"),
        event(
            "checkout.session.completed",
            {**session, "id": "cs_2", "customer": "cus_3", "client_reference_id": str(other)},
            event_id="evt_cs2",
        ),
    )
    await run(
        pool,
        event(
            "checkout.session.completed",
            {**session, "id": "cs_3", "client_reference_id": None},
            event_id="evt_cs3",
            created=T0 + 9,
        ),
    )
    assert one(
        conn,
        "SELECT stripe_customer_id, sync_status FROM stripe.customer_mappings "
        "WHERE account_id = %s",
        account,
    ) == ("cus_new", "synced")
    st = statuses(conn)
    assert st["evt_cs1"] == ("processed", f"linked cus_new to billing.accounts id={account}")
    assert st["evt_cs2"][0] == "ignored" and "already has Stripe customer cus_other" in str(
        st["evt_cs2"][1]
    )
    assert st["evt_cs3"] == (
        "processed",
        f"cus_new is already mapped to billing.accounts id={account}; nothing to link",
    )


# -- checks before dispatch ----------------------------------------------------------------


async def test_mode_connect_and_unknown_types_are_ignored(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
) -> None:
    add_account(conn, "cus_A")
    obj = {"id": "cus_A", "object": "customer"}
    ctx = WebhookContext(pool, mode="test")
    await run(
        pool,
        event("customer.updated", obj, event_id="evt_live", livemode=True),
        event("customer.updated", obj, event_id="evt_connect", account="acct_1"),
        event("balance.available", {"object": "balance"}, event_id="evt_bal"),
        event("customer.updated", obj, event_id="evt_fine"),
        ctx=ctx,
    )
    st = statuses(conn)
    assert st["evt_live"] == ("ignored", "live-mode event, but this daemon syncs test mode")
    assert st["evt_connect"] == (
        "ignored",
        "Connect event for account acct_1; Connect events are not synced",
    )
    assert st["evt_bal"] == ("ignored", "event type balance.available is not synced by stripe-sync")
    assert st["evt_fine"] == ("processed", None)


async def test_connect_allowed(pool: AsyncConnectionPool, conn: psycopg.Connection[Any]) -> None:
    add_account(conn, "cus_A")
    await run(
        pool,
        event("customer.updated", {"id": "cus_A"}, event_id="evt_c", account="acct_1"),
        ctx=WebhookContext(pool, allow_connect=True),
    )
    assert statuses(conn)["evt_c"] == ("processed", None)


async def test_unreadable_object_fails_with_the_field(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
) -> None:
    await run(
        pool,
        event(
            "customer.subscription.updated",
            {"id": "sub_1", "customer": "cus_A", "items": {"data": [{"quantity": "two"}]}},
            event_id="evt_bad",
        ),
    )
    status, error = statuses(conn)["evt_bad"]
    assert status == "failed"
    assert error == "event.data.object.items.data[0].quantity: Expected `int | null`, got `str`"


# -- references ------------------------------------------------------------------------------


async def test_missing_customer_is_retried_until_its_mapping_appears(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
) -> None:
    add_price(conn, "price_A")
    await store(
        pool,
        event("customer.subscription.created", sub_obj(customer="cus_late"), event_id="evt_wait"),
    )
    ctx = WebhookContext(pool, reference_attempts=50, reference_backoff=0.02)
    async with running_worker(pool, ctx, max_attempts=50) as worker:
        worker.wake()
        # Wait until it has been tried (and put back) at least twice.
        import anyio

        with anyio.fail_after(10):
            while one(conn, "SELECT attempts FROM integration.webhook_events") < 2:
                await anyio.sleep(0.02)
        assert one(conn, "SELECT status, last_error FROM integration.webhook_events") in (
            ("pending", "no mapping for cus_late"),
            ("processing", "no mapping for cus_late"),
        )
        add_account(conn, "cus_late")
        await wait_idle(pool)
    assert statuses(conn)["evt_wait"] == ("processed", None)
    assert one(conn, "SELECT count(*) FROM billing.subscriptions") == 1


async def test_missing_customer_fails_when_it_never_appears(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
) -> None:
    add_price(conn, "price_A")
    await store(
        pool,
        event("customer.subscription.created", sub_obj(customer="cus_never"), event_id="evt_never"),
        event(
            "invoice.created",
            {"id": "in_9", "customer": "cus_A2", "status": "draft"},
            event_id="evt_inv",
        ),
    )
    ctx = WebhookContext(pool, reference_attempts=3, reference_backoff=0.01)
    async with running_worker(pool, ctx, max_attempts=10) as worker:
        worker.wake()
        await wait_idle(pool)
    st = statuses(conn)
    assert st["evt_never"] == ("failed", "no mapping for cus_never (waited 3 attempts)")
    assert st["evt_inv"] == ("failed", "no mapping for cus_A2 (waited 3 attempts)")
    # The queue's own limit, when lower, ends it the same way.
    conn.execute("UPDATE integration.webhook_events SET status = 'pending', attempts = 0")
    async with running_worker(
        pool, WebhookContext(pool, reference_backoff=0.01), max_attempts=2
    ) as worker:
        worker.wake()
        await wait_idle(pool)
    assert statuses(conn)["evt_never"] == (
        "failed",
        "no mapping for cus_never (gave up after 2 attempts)",
    )


async def test_missing_price_waits_too(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    add_account(conn, "cus_A")
    await run(
        pool,
        event("customer.subscription.created", sub_obj(prices=("price_nope",)), event_id="evt_p"),
        ctx=WebhookContext(pool, reference_attempts=2, reference_backoff=0.01),
    )
    assert statuses(conn)["evt_p"] == ("failed", "no mapping for price_nope (waited 2 attempts)")


# -- refetch ------------------------------------------------------------------------------


async def test_refetch_applies_the_state_stripe_has_now(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    api: StripeApi,
    stripe_client: Any,
) -> None:

    pi = stripe_client.v1.payment_intents.create(
        params={
            "amount": 4200,
            "currency": "eur",
            "confirm": True,
            "payment_method": "pm_card_visa",
        }
    )
    # The event's copy is old (requires_payment_method, 1 cent); Stripe's is current.
    stale_copy = {
        "id": pi.id,
        "object": "payment_intent",
        "status": "requires_payment_method",
        "amount": 1,
        "currency": "eur",
    }
    await run(
        pool,
        event("payment_intent.created", stale_copy, event_id="evt_rf"),
        ctx=WebhookContext(pool, api=api, refetch=True),
    )
    assert statuses(conn)["evt_rf"] == ("processed", None)
    assert one(conn, "SELECT status, amount, amount_received FROM billing.payments") == (
        "succeeded",
        4200,
        4200,
    )
    assert one(conn, "SELECT stripe_charge_id FROM stripe.payment_mappings") == pi.latest_charge


async def test_confirm_applies_only_over_an_older_key(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """The apply checks the key again under the row lock: an event that was newer
    at the handler's check but not any more at the apply raises Raced and writes
    nothing; one still newer marks the row."""
    from stripe_sync.queue.jobs import Job
    from stripe_sync.webhooks import customers
    from stripe_sync.webhooks.common import Raced

    account = add_account(conn, "cus_A")
    ctx = WebhookContext(pool)

    async def prepared(event_id: str, created: int, deleted: bool = False) -> Any:
        evt = event(
            "customer.deleted" if deleted else "customer.updated",
            {"id": "cus_A", "object": "customer"},
            event_id=event_id,
            created=created,
        )
        done = await customers.handle(ctx, Job(1, evt["type"], 1, json.dumps(evt)))
        assert done.apply is not None and done.note is None
        return done.apply

    def mapping() -> Any:
        return one(
            conn,
            "SELECT sync_status, last_event_created, last_event_rank, last_event_id "
            "FROM stripe.customer_mappings WHERE account_id = %s",
            account,
        )

    older, same, newer = (
        await prepared("evt_b", T0),
        await prepared("evt_a", T0 + 1),
        await prepared("evt_c", T0 + 1, deleted=True),
    )
    # Meanwhile an event (T0 + 1, rank 1 of an update, evt_a) is applied.
    conn.execute(
        "UPDATE stripe.customer_mappings SET last_event_created = %s, last_event_rank = 1, "
        "last_event_id = 'evt_a' WHERE account_id = %s",
        [T0 + 1, account],
    )
    for stale in (older, same):  # older, and the very same key
        with pytest.raises(Raced):
            async with pool.connection() as c, c.transaction():
                await stale(c)
    assert mapping() == ("synced", T0 + 1, 1, "evt_a")
    async with pool.connection() as c, c.transaction():
        await newer(c)  # same second, higher rank (a deletion)
    assert mapping() == ("deleted", T0 + 1, 100, "evt_c")


async def test_confirms_that_finish_together_are_one_statement(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """Customer events finishing together mark their mappings and finish in one
    statement (confirm_rows); one that changes the default, or whose key is no
    longer the newest, is declined there and recorded through its own apply."""
    import anyio
    from psycopg import AsyncConnection

    from stripe_sync.queue.store import PostgresStore
    from stripe_sync.webhooks.common import Raced
    from stripe_sync.webhooks.execute import make_handler
    from stripe_sync.webhooks.queue import WEBHOOKS

    customers = ["cus_H", "cus_A", "cus_B", "cus_C", "cus_D"]
    for customer in customers:
        add_account(conn, customer)
    default = {"cus_C": {"invoice_settings": {"default_payment_method": "pm_C"}}}
    await store(
        pool,
        *(
            event(
                "customer.updated",
                {"id": c, "object": "customer", **default.get(c, {})},
                event_id=f"evt_{c}",
                created=T0,
            )
            for c in customers
        ),
    )
    queue = PostgresStore(WEBHOOKS, pool)
    queue.completions.max_leaders = 1  # one group at a time: the others queue behind it
    jobs = await queue.claim(10, "w", 30)
    handle = make_handler(WebhookContext(pool))
    dones = {job.id: await handle(job) for job in jobs}
    by_event = {json.loads(job.payload)["id"]: job.id for job in jobs}
    # After cus_D's check, a newer event of it is applied.
    conn.execute(
        "UPDATE stripe.customer_mappings SET last_event_created = %s "
        "WHERE stripe_customer_id = 'cus_D'",
        [T0 + 1],
    )
    release = anyio.Event()

    async def hold(c: AsyncConnection[Any]) -> None:
        await release.wait()

    outcomes: dict[str, Any] = {}

    async def finish(event_id: str) -> None:
        job_id, done = by_event[event_id], dones[by_event[event_id]]
        apply = hold if event_id == "evt_cus_H" else done.apply
        written = None if event_id == "evt_cus_H" else done.written
        try:
            await queue.finish(job_id, "w", "processed", done.note, apply, written)
            outcomes[event_id] = "done"
        except Exception as exc:
            outcomes[event_id] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(finish, "evt_cus_H")
        await anyio.wait_all_tasks_blocked()
        for customer in customers[1:]:
            tg.start_soon(finish, f"evt_{customer}")
        await anyio.wait_all_tasks_blocked()
        release.set()

    assert isinstance(outcomes.pop("evt_cus_D"), Raced)
    assert outcomes == dict.fromkeys(["evt_cus_H", "evt_cus_A", "evt_cus_B", "evt_cus_C"], "done")
    events = dict(
        conn.execute(
            "SELECT stripe_event_id, (status, xmin::text) FROM integration.webhook_events"
        ).fetchall()
    )
    mappings = dict(
        conn.execute(
            "SELECT stripe_customer_id, (last_event_id, default_payment_method, xmin::text) "
            "FROM stripe.customer_mappings"
        ).fetchall()
    )
    group = events["evt_cus_A"][1]
    for c in ("cus_A", "cus_B"):  # one statement: one transaction wrote both
        assert events[f"evt_{c}"] == ("processed", group)
        assert mappings[c] == (f"evt_{c}", None, group)
    # A new default: its apply (set_default) in a transaction of its own.
    assert events["evt_cus_C"][0] == "processed" and events["evt_cus_C"][1] != group
    assert mappings["cus_C"][:2] == ("evt_cus_C", "pm_C")
    assert events["evt_cus_D"][0] == "processing"  # the worker records the retry
    assert mappings["cus_D"][0] is None


async def test_confirm_checks_the_row_preloaded_for_its_batch(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """The worker's preload reads a batch's mapping rows in one query; each handler
    takes its own once (then forgets it) instead of reading it again."""
    from stripe_sync.queue.jobs import Job
    from stripe_sync.webhooks.execute import make_handler, make_preload

    add_account(conn, "cus_A")
    add_product(conn, "prod_A")
    ctx = WebhookContext(pool)
    jobs = [
        Job(i, e["type"], 1, json.dumps(e))
        for i, e in enumerate(
            [
                event("customer.updated", {"id": "cus_A", "object": "customer"}, created=T0),
                event("product.updated", {"id": "prod_A", "object": "product"}, created=T0),
                event("customer.updated", {"id": "cus_unknown", "object": "customer"}),
                event("invoice.paid", {"id": "in_1", "object": "invoice"}),
            ]
        )
    ]
    await make_preload(ctx)(jobs)
    assert len(ctx.preloaded) == 2  # the mapped customer and product; nothing else
    # After the preload, a newer event is applied to both: the handlers still
    # check the rows as preloaded (the apply checks again under the lock).
    for table in ("customer_mappings", "product_mappings"):
        conn.execute(f"UPDATE stripe.{table} SET last_event_created = %s", [T0 + 5])
    handle = make_handler(ctx)
    for job in jobs[:2]:
        done = await handle(job)
        assert done.apply is not None and done.note is None, job.type
    assert len(ctx.preloaded) == 0
    # Without a preloaded row the handler reads its own, and finds the event stale.
    done = await handle(jobs[0])
    assert done.apply is None and done.note is not None and done.note.startswith("stale")


async def test_the_claim_reads_what_the_preload_needs(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """The webhook queue's claim reads each event's ids and, for customer,
    product, price and plan events, its object's mapping row: the preload then
    keeps those rows without a query of its own."""
    from typing import cast

    from stripe_sync.queue.store import PostgresStore
    from stripe_sync.webhooks.execute import claimed, make_preload, object_of
    from stripe_sync.webhooks.queue import WEBHOOKS

    account = add_account(conn, "cus_A")
    add_price(conn, "price_A")
    await store(
        pool,
        event("customer.updated", {"id": "cus_A", "object": "customer"}, event_id="evt_c"),
        event("plan.updated", {"id": "price_A", "object": "plan"}, event_id="evt_p"),
        event("customer.updated", {"id": "cus_X", "object": "customer"}, event_id="evt_x"),
        event("customer.subscription.updated", sub_obj("cus_A"), event_id="evt_s"),
    )
    jobs = await PostgresStore(WEBHOOKS, pool).claim(10, "w", 30)
    read = {job.type + " " + str(object_of(job)): claimed(job) for job in jobs}
    customer = read["customer.updated cus_A"]
    assert customer is not None and customer.event == "evt_c" and customer.row is not None
    assert (customer.row.mc_id, customer.row.sync_status) == (account, "synced")
    plan = read["plan.updated price_A"]
    assert plan is not None and plan.row is not None
    unknown = read["customer.updated cus_X"]
    assert unknown is not None and unknown.row is None
    subscription = read["customer.subscription.updated cus_A"]
    assert subscription is not None and subscription.row is None  # not a mapping it checks
    # No pool to read from: what the handlers check came with the claim.
    ctx = WebhookContext(cast(AsyncConnectionPool, None))
    await make_preload(ctx)(jobs)
    assert len(ctx.preloaded) == 2


async def test_an_object_with_two_events_in_the_batch_is_not_preloaded(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """They run one after the other: the second must read what the first wrote."""
    from stripe_sync.queue.jobs import Job
    from stripe_sync.webhooks.execute import make_preload

    add_account(conn, "cus_A")
    add_account(conn, "cus_B")
    ctx = WebhookContext(pool)
    objects = ["cus_A", "cus_A", "cus_B"]
    jobs = [
        Job(i, "customer.updated", 1, json.dumps(
            event("customer.updated", {"id": obj, "object": "customer"}, event_id=f"evt_{i}")
        ))
        for i, obj in enumerate(objects)
    ]  # fmt: skip
    await make_preload(ctx)(jobs)
    assert len(ctx.preloaded) == 1  # cus_B's


async def test_a_setup_intent_keeps_the_card_it_shows_and_only_that(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
) -> None:
    account = add_account(conn, "cus_S")
    card = {
        "id": "pm_S",
        "object": "payment_method",
        "type": "card",
        "customer": "cus_S",
        "card": {
            "brand": "amex",
            "last4": "0005",
            "exp_month": 9,
            "exp_year": 2031,
            "fingerprint": "never-kept",
            "country": "US",
        },
    }
    await run(
        pool,
        event(
            "setup_intent.succeeded",
            {"id": "seti_1", "object": "setup_intent", "customer": "cus_S", "payment_method": card},
            event_id="evt_expanded",
        ),
        event(
            "setup_intent.succeeded",
            {
                "id": "seti_2",
                "object": "setup_intent",
                "customer": "cus_S",
                "payment_method": "pm_T",
            },
            event_id="evt_id_only",
        ),
    )
    assert conn.execute(
        "SELECT to_jsonb(p) - 'id' - 'created_at' - 'updated_at' FROM billing.payment_methods p"
    ).fetchall() == [
        (
            {
                "account_id": account,
                "type": "card",
                "brand": "amex",
                "last4": "0005",
                "exp_month": 9,
                "exp_year": 2031,
                "is_default": False,
            },
        )
    ]
    assert statuses(conn)["evt_id_only"][0] == "ignored"


async def test_a_default_named_while_its_card_is_attached_is_the_default(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
) -> None:
    """A customer event naming the default and the attach of that card, applied
    at the same moment by two workers: neither may miss the other's write."""
    add_account(conn, "cus_D")
    for i in range(15):
        pm = f"pm_{i}"
        await run(
            pool,
            event(
                "customer.updated",
                {
                    "id": "cus_D",
                    "object": "customer",
                    "invoice_settings": {"default_payment_method": pm},
                },
                created=1_700_000_000 + i,
                event_id=f"evt_c{i:02d}",
            ),
            event(
                "payment_method.attached",
                {"id": pm, "object": "payment_method", "type": "card", "customer": "cus_D"},
                created=1_700_000_000 + i,
                event_id=f"evt_p{i:02d}",
            ),
        )
        defaults = conn.execute(
            "SELECT m.stripe_payment_method_id FROM billing.payment_methods p "
            "JOIN stripe.payment_method_mappings m ON m.payment_method_id = p.id "
            "WHERE p.is_default"
        ).fetchall()
        assert defaults == [(pm,)], i


# -- same-second ties ---------------------------------------------------------------


@pytest.mark.parametrize("arrival", ["cancel first", "resume first"])
async def test_a_same_second_tie_applies_the_state_stripe_has_now(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    api: StripeApi,
    stripe_client: Any,
    arrival: str,
) -> None:
    """A cancellation at period end and its undoing in one second: both events
    say ``active``, so neither the second nor the rank orders them, and the ids
    are chosen to order them wrongly. Whichever arrives second asks Stripe and
    applies what Stripe has now (resumed), in both arrival orders."""

    v1 = stripe_client.v1
    customer = v1.customers.create(params={"email": "tie@example.com"})
    product = v1.products.create(params={"name": "Tie"})
    price = v1.prices.create(
        params={
            "product": product.id,
            "currency": "eur",
            "unit_amount": 900,
            "recurring": {"interval": "month"},
        }
    )
    sub = v1.subscriptions.create(params={"customer": customer.id, "items": [{"price": price.id}]})
    v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    v1.subscriptions.update(sub.id, params={"cancel_at_period_end": False})
    add_account(conn, customer.id)
    add_price(conn, price.id)
    # The same second and status; the cancel's id sorts above the resume's.
    cancel = event(
        "customer.subscription.updated",
        sub_obj(sub.id, customer.id, prices=(price.id,), cancel_at_period_end=True),
        event_id="evt_z_cancel",
    )
    resume = event(
        "customer.subscription.updated",
        sub_obj(sub.id, customer.id, prices=(price.id,)),
        event_id="evt_a_resume",
    )
    ctx = WebhookContext(pool, api=api)
    first, second = (cancel, resume) if arrival == "cancel first" else (resume, cancel)
    await run(pool, first, ctx=ctx)
    await run(pool, second, ctx=ctx)
    assert one(conn, "SELECT cancel_at_period_end FROM billing.subscriptions") is False
    assert statuses(conn)[second["id"]] == (
        "processed",
        f"same second and rank as {first['id']}: applied {sub.id} as Stripe has it now",
    )
    # The higher key is kept: a redelivery of either is recognised.
    assert one(conn, "SELECT last_event_id FROM stripe.subscription_mappings") == "evt_z_cancel"


async def test_a_tie_stripe_cannot_answer_is_ordered_by_event_id(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any], api: StripeApi
) -> None:
    """Stripe does not have the object (404): the ids decide, as without a client."""

    add_account(conn, "cus_A")
    add_price(conn, "price_A")
    ctx = WebhookContext(pool, api=api)
    await run(
        pool,
        event("customer.subscription.updated", sub_obj(), event_id="evt_a"),
        ctx=ctx,
    )
    await run(
        pool,
        event(
            "customer.subscription.updated",
            sub_obj(cancel_at_period_end=True),
            event_id="evt_b",
        ),
        ctx=ctx,
    )
    assert statuses(conn)["evt_b"] == ("processed", None)
    assert one(conn, "SELECT cancel_at_period_end FROM billing.subscriptions") is True


async def _tied_before_apply(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any], done: Any, table: str, rank: int
) -> None:
    """evt_a, of the same second and rank as the event ``done`` was prepared
    for (evt_z), commits first: the apply must raise Raced and write nothing."""
    from stripe_sync.webhooks.common import Raced

    assert done.apply is not None
    conn.execute(
        f"UPDATE {table} SET last_event_created = %s, last_event_rank = %s, "
        "last_event_id = 'evt_a'",
        [T0, rank],
    )
    with pytest.raises(Raced):
        async with pool.connection() as c, c.transaction():
            await done.apply(c)
    assert one(conn, f"SELECT last_event_id FROM {table}") == "evt_a"


async def test_a_tie_that_commits_between_check_and_apply_is_checked_again(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any], api: StripeApi
) -> None:
    """Two events of one second and rank handled side by side: the one that
    locks second raises Raced (and so goes through the check, and Stripe,
    again) rather than applying its copy because its id sorts higher."""
    from stripe_sync.queue.jobs import Job
    from stripe_sync.webhooks import subscriptions

    add_account(conn, "cus_A")
    add_price(conn, "price_A")
    await run(pool, event("customer.subscription.created", sub_obj(), created=T0 - 5))
    ctx = WebhookContext(pool, api=api)
    evt = event("customer.subscription.updated", sub_obj(), event_id="evt_z")
    done = await subscriptions.handle(ctx, Job(1, evt["type"], 1, json.dumps(evt)))
    # Meanwhile evt_a, of the same second and status, is applied.
    await _tied_before_apply(pool, conn, done, "stripe.subscription_mappings", rank=2)


async def test_a_setup_intent_naming_its_card_by_id_is_fetched(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    emulator: Any,
    api: StripeApi,
    stripe_client: Any,
) -> None:
    """Stripe's setup_intent.succeeded names the payment method by id: with an
    API client the handler retrieves it (here the emulator's own event, alone,
    without the payment_method.attached that came with it)."""

    cus = stripe_client.v1.customers.create()
    account = add_account(conn, cus.id)
    si = stripe_client.v1.setup_intents.create(
        params={"customer": cus.id, "payment_method": "pm_card_mastercard", "confirm": True}
    )
    [succeeded] = emulator.emulator.events_of_type("setup_intent.succeeded")
    assert succeeded["data"]["object"]["payment_method"] == si.payment_method
    await run(pool, succeeded, ctx=WebhookContext(pool, api=api))
    assert statuses(conn)[succeeded["id"]] == ("processed", None)
    assert one(
        conn,
        "SELECT p.account_id, p.brand, p.last4, p.exp_month, p.exp_year, "
        "m.stripe_payment_method_id "
        "FROM billing.payment_methods p JOIN stripe.payment_method_mappings m "
        "ON m.payment_method_id = p.id",
    ) == (account, "mastercard", "4444", 12, 2034, si.payment_method)


@pytest.mark.parametrize("arrival", ["a first", "b first"])
async def test_a_customer_tie_keeps_the_default_card_stripe_has_now(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    api: StripeApi,
    stripe_client: Any,
    arrival: str,
) -> None:
    """customer.updated writes the default payment method: two in one second
    (card A, then card B) ask Stripe too, whatever the ids say."""

    v1 = stripe_client.v1
    customer = v1.customers.create(params={"email": "cards@example.com"})
    card_a, card_b = (
        v1.payment_methods.attach(pm, params={"customer": customer.id}).id
        for pm in ("pm_card_visa", "pm_card_mastercard")
    )
    for card in (card_a, card_b):
        v1.customers.update(
            customer.id, params={"invoice_settings": {"default_payment_method": card}}
        )
    add_account(conn, customer.id)

    def updated(card: str, event_id: str) -> dict[str, Any]:
        obj = {"id": customer.id, "object": "customer"}
        return event(
            "customer.updated",
            {**obj, "invoice_settings": {"default_payment_method": card}},
            event_id=event_id,
        )

    # Card A's event has the higher id.
    set_a, set_b = updated(card_a, "evt_z_a"), updated(card_b, "evt_a_b")
    first, second = (set_a, set_b) if arrival == "a first" else (set_b, set_a)
    await run(pool, first, ctx=WebhookContext(pool, api=api))
    await run(pool, second, ctx=WebhookContext(pool, api=api))
    assert one(
        conn, "SELECT default_payment_method, last_event_id FROM stripe.customer_mappings"
    ) == (card_b, "evt_z_a")
    assert statuses(conn)[second["id"]][1] == (
        f"same second and rank as {first['id']}: applied {customer.id} as Stripe has it now"
    )


async def test_a_customer_tie_committed_before_the_apply_is_checked_again(
    pool: AsyncConnectionPool, conn: psycopg.Connection[Any], api: StripeApi
) -> None:
    """confirm's one-statement apply refuses a tie it would have to ask about."""
    from stripe_sync.queue.jobs import Job
    from stripe_sync.webhooks import customers

    add_account(conn, "cus_A")
    evt = event("customer.updated", {"id": "cus_A", "object": "customer"}, event_id="evt_z")
    done = await customers.handle(
        WebhookContext(pool, api=api), Job(1, evt["type"], 1, json.dumps(evt))
    )
    await _tied_before_apply(pool, conn, done, "stripe.customer_mappings", rank=1)
