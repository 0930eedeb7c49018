"""References MC lacks (webhooks/references.py): fetched from the emulator and
applied, or the event ignored at once (a customer not MC's, a 404), or set
aside whole with the reason it cannot be applied; and what `status` shows."""

from __future__ import annotations

import json
from typing import Any

import anyio
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from stripe_sync.ops.status import UnlinkedCustomer, collect
from stripe_sync.stripe_api import StripeApi
from stripe_sync.webhooks.execute import WebhookContext

from daemons import run_cli
from webhook_helpers import add_account, add_price, event, running_worker, store, wait_idle

pytestmark = pytest.mark.anyio
SOURCE = "billing/ours0001"


@pytest.fixture
def ctx(pool: AsyncConnectionPool, api: StripeApi) -> WebhookContext:
    """As the daemon runs it, except that an event never waits twice for a
    reference: one that waits at all fails, and the tests see it."""
    return WebhookContext(pool, api=api, source=SOURCE, reference_attempts=1)


async def run(pool: AsyncConnectionPool, ctx: WebhookContext, *events: dict[str, Any]) -> None:
    """Each event stored and applied in turn, in the order given."""
    async with running_worker(pool, ctx) as worker:
        for evt in events:
            await store(pool, evt)
            worker.wake()
            await wait_idle(pool)


def outcomes(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, int, str | None]]:
    return {
        r[0]: (r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT stripe_event_id, status, attempts, coalesce(last_error, note) "
            "FROM integration.webhook_events"
        )
    }


def subscribe(client: Any, customer_metadata: dict[str, str] | None = None) -> tuple[Any, ...]:
    """A customer subscribed to a price, made in the emulator (as in the Dashboard):
    the emulator records every event of it, and pays the first invoice."""
    v1 = client.v1
    customer = v1.customers.create(params={"metadata": customer_metadata or {}})
    product = v1.products.create(params={"name": "Made outside MC"})
    price = v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 1500,
            "recurring": {"interval": "month"},
        }
    )
    sub = v1.subscriptions.create(params={"customer": customer.id, "items": [{"price": price.id}]})
    return customer, price, sub


def recorded(emulator: Any, *types: str) -> list[dict[str, Any]]:
    """The emulator's events of these types, in the order it made them."""
    events: list[dict[str, Any]] = emulator.emulator.objects("events")
    return [e for e in events if not types or e["type"] in types]


def one(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    return row if row is None or len(row) > 1 else row[0]


async def test_an_invoice_naming_a_subscription_mc_lacks_fetches_it_and_orders_after_it(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    ctx: WebhookContext,
    emulator: Any,
    stripe_client: Any,
) -> None:
    customer, price, sub = subscribe(stripe_client)
    account = add_account(conn, customer.id)
    add_price(conn, price.id)
    [paid] = recorded(emulator, "invoice.paid")
    await run(pool, ctx, paid)  # its subscription's created event never reached us

    assert outcomes(conn)[paid["id"]] == ("processed", 1, None)
    fetched_key = one(
        conn,
        "SELECT m.last_event_created, m.last_event_id, s.status, s.account_id, "
        "(SELECT array_agg(quantity) FROM billing.subscription_items i "
        " WHERE i.subscription_id = s.id) "
        "FROM stripe.subscription_mappings m "
        "JOIN billing.subscriptions s ON s.id = m.subscription_id "
        "WHERE m.stripe_subscription_id = %s",
        sub.id,
    )
    assert fetched_key[1:] == (f"fetched for {paid['id']}", "active", account, [1])
    # Ordered at the second of the event that named it, on Stripe's clock.
    assert fetched_key[0] == paid["created"]
    assert one(
        conn,
        "SELECT sm.stripe_subscription_id FROM billing.invoices i "
        "JOIN stripe.subscription_mappings sm ON sm.subscription_id = i.subscription_id",
    ) == (sub.id)

    # The creating event, arriving late and older than the event that fetched: stale.
    [created] = recorded(emulator, "customer.subscription.created")
    created["created"] = fetched_key[0] - 5
    created["data"]["object"]["status"] = "incomplete"
    # A later change (newer than that event) applies over it.
    later = event(
        "customer.subscription.updated",
        {**created["data"]["object"], "status": "past_due"},
        created=fetched_key[0] + 5,
    )
    await run(pool, ctx, created, later)
    assert outcomes(conn)[created["id"]] == (
        "processed",
        1,
        f"stale: older than fetched for {paid['id']}",
    )
    assert outcomes(conn)[later["id"]] == ("processed", 1, None)
    assert one(conn, "SELECT status FROM billing.subscriptions") == "past_due"


async def test_invoice_payment_paid_alone_fetches_its_invoice_subscription_and_payment(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    ctx: WebhookContext,
    emulator: Any,
    stripe_client: Any,
) -> None:
    """A chain: the link names an invoice and a payment, the invoice its
    subscription; MC knows only the customer and the price. One retrieve each."""
    customer, price, sub = subscribe(stripe_client)
    add_account(conn, customer.id)
    add_price(conn, price.id)
    [link] = recorded(emulator, "invoice_payment.paid")
    counts = emulator.emulator.request_counts
    counts.clear()
    await run(pool, ctx, link)

    assert outcomes(conn)[link["id"]] == ("processed", 1, None)
    assert one(
        conn,
        "SELECT sm.stripe_subscription_id, im.stripe_invoice_id, pm.stripe_payment_intent_id "
        "FROM billing.payments p "
        "JOIN stripe.payment_mappings pm ON pm.payment_id = p.id "
        "JOIN stripe.invoice_mappings im ON im.invoice_id = p.invoice_id "
        "JOIN billing.invoices i ON i.id = p.invoice_id "
        "JOIN stripe.subscription_mappings sm ON sm.subscription_id = i.subscription_id",
    ) == (
        sub.id,
        link["data"]["object"]["invoice"],
        link["data"]["object"]["payment"]["payment_intent"],
    )
    assert {k: v for k, v in counts.items() if v} == {
        "GET /v1/invoices/{id}": 1,
        "GET /v1/subscriptions/{id}": 1,
        "GET /v1/payment_intents/{id}": 1,
    }


async def test_a_refund_naming_only_its_charge_fetches_the_payment(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    ctx: WebhookContext,
    emulator: Any,
    stripe_client: Any,
) -> None:
    customer, price, _ = subscribe(stripe_client)
    account = add_account(conn, customer.id)
    add_price(conn, price.id)  # the payment's invoice is applied with it (its subscription's)
    [charge] = emulator.emulator.objects("charges")
    stripe_client.v1.refunds.create(params={"charge": charge["id"], "amount": 500})
    [refund] = recorded(emulator, "refund.created")
    refund["data"]["object"]["payment_intent"] = None  # as old refunds name it: by charge
    await run(pool, ctx, refund)

    assert outcomes(conn)[refund["id"]] == ("processed", 1, None)
    assert one(
        conn,
        "SELECT m.stripe_payment_intent_id, m.stripe_charge_id, p.account_id, p.status, "
        "p.amount_received, p.amount_refunded, p.refund_status "
        "FROM billing.payments p JOIN stripe.payment_mappings m ON m.payment_id = p.id",
    ) == (charge["payment_intent"], charge["id"], account, "succeeded", 1500, 500, "partial")


async def test_events_of_a_customer_not_mcs_are_ignored_at_the_first_attempt(
    dsn: str,
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    ctx: WebhookContext,
    emulator: Any,
    stripe_client: Any,
) -> None:
    # Made in the Dashboard (no MC metadata), or by another database on the
    # same account (its metadata, not our mc_source).
    theirs, _, _ = subscribe(stripe_client)
    other_db, _, _ = subscribe(
        stripe_client, {"mc_account_id": "7", "mc_source": "billing/someone-else"}
    )
    events = [e for e in recorded(emulator) if not e["type"].startswith(("product.", "price."))]
    await run(pool, ctx, *events)

    seen = outcomes(conn)
    customer = theirs.id
    for evt in events:
        status, attempts, note = seen[evt["id"]]
        if evt["type"] == "customer.created":  # as before: not one of ours to confirm
            customer = evt["data"]["object"]["id"]  # the events after it are of this one
            assert (status, note) == ("ignored", f"customer {customer} is not mapped to any MC row")
            continue
        expected = ("ignored", 1, f"customer {customer} is not linked to an MC account")
        assert (status, attempts, note) == expected, evt["type"]
    assert not conn.execute("SELECT * FROM billing.subscriptions").fetchall()
    assert not conn.execute("SELECT * FROM billing.payments").fetchall()
    # Stripe was asked about each customer once: its later events knew.
    assert emulator.emulator.request_counts["GET /v1/customers/{id}"] == 2

    per_customer = {
        c: sum(
            1 for s, _, n in seen.values() if n == f"customer {c} is not linked to an MC account"
        )
        for c in (theirs.id, other_db.id)
    }
    report = await collect(dsn)
    assert report.exit_code == 0
    assert report.ignored_unlinked_24h == sum(per_customer.values())
    assert report.top_unlinked_customers == sorted(
        (UnlinkedCustomer(c, n) for c, n in per_customer.items()),
        key=lambda u: (-u.events, u.customer),
    )
    shown = run_cli("status", "--json", "--database-url", dsn)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["ignored_unlinked_24h"] == sum(per_customer.values())
    text = run_cli("status", "--database-url", dsn)
    assert text.returncode == 0
    assert f"{sum(per_customer.values())} webhook event(s) in the last 24 h" in text.stdout
    assert theirs.id in text.stdout


async def test_a_customer_our_outbox_is_creating_waits_for_its_mapping(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    api: StripeApi,
    emulator: Any,
    stripe_client: Any,
) -> None:
    account = add_account(conn, None)  # its create is in flight
    customer, price, _ = subscribe(
        stripe_client, {"mc_account_id": str(account), "mc_source": SOURCE}
    )
    add_price(conn, price.id)
    [created] = recorded(emulator, "customer.subscription.created")
    ctx = WebhookContext(
        pool, api=api, source=SOURCE, reference_attempts=50, reference_backoff=0.02
    )
    async with running_worker(pool, ctx, max_attempts=50, base_seconds=0.02) as worker:
        await store(pool, created)
        worker.wake()
        while not (row := outcomes(conn)[created["id"]])[1]:
            await anyio.sleep(0.02)
        assert row[0] in ("pending", "processing"), row  # waiting, not ignored
        conn.execute(
            "UPDATE stripe.customer_mappings SET stripe_customer_id = %s, sync_status = 'synced'",
            [customer.id],
        )
        await wait_idle(pool)
    assert outcomes(conn)[created["id"]][0] == "processed"
    assert one(conn, "SELECT account_id FROM billing.subscriptions") == account


async def test_a_reference_the_key_may_not_read_is_waited_for_as_before(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    api: StripeApi,
    emulator: Any,
    stripe_client: Any,
) -> None:
    """A restricted key without read permission for subscriptions (Stripe's 403):
    the invoice waits for its subscription's own event, as before issue 24."""
    customer, price, _ = subscribe(stripe_client)
    add_account(conn, customer.id)
    add_price(conn, price.id)
    emulator.emulator.add_fault("403", "GET /v1/subscriptions/{id}", rate=1.0)
    [paid] = recorded(emulator, "invoice.paid")
    [created] = recorded(emulator, "customer.subscription.created")
    ctx = WebhookContext(
        pool, api=api, source=SOURCE, reference_attempts=50, reference_backoff=0.02
    )
    async with running_worker(pool, ctx, max_attempts=50, base_seconds=0.02) as worker:
        await store(pool, paid)
        worker.wake()
        while (row := outcomes(conn)[paid["id"]])[1] < 2:
            await anyio.sleep(0.02)
        assert row[0] in ("pending", "processing"), row
        await store(pool, created)
        worker.wake()
        await wait_idle(pool)
    assert outcomes(conn)[paid["id"]][0] == "processed"
    assert one(conn, "SELECT count(*) FROM billing.invoices WHERE subscription_id IS NOT NULL") == 1


async def test_a_reference_stripe_does_not_have_ignores_the_event_with_the_reason(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    ctx: WebhookContext,
    stripe_client: Any,
) -> None:
    customer = stripe_client.v1.customers.create()
    add_account(conn, customer.id)
    invoice = event(
        "invoice.paid",
        {
            "id": "in_gone",
            "object": "invoice",
            "customer": customer.id,
            "status": "paid",
            "subscription": "sub_gone",
        },
    )
    setup = event(
        "setup_intent.succeeded",
        {
            "id": "seti_1",
            "object": "setup_intent",
            "customer": customer.id,
            "payment_method": "pm_gone",
            "status": "succeeded",
        },
    )
    stranger = event(
        "payment_intent.succeeded",
        {"id": "pi_x", "object": "payment_intent", "customer": "cus_gone", "status": "succeeded"},
    )
    await run(pool, ctx, invoice, setup, stranger)
    assert outcomes(conn) == {
        invoice["id"]: ("ignored", 1, "subscription sub_gone does not exist in Stripe (404)"),
        setup["id"]: ("ignored", 1, "payment method pm_gone does not exist in Stripe (404)"),
        stranger["id"]: ("ignored", 1, "customer cus_gone does not exist in Stripe (404)"),
    }
    assert not conn.execute("SELECT * FROM billing.invoices").fetchall()


@pytest.mark.parametrize("version", ["2024-06-20", "emulator's"])
async def test_a_subscription_on_a_price_mc_does_not_know_is_set_aside_whole(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    ctx: WebhookContext,
    emulator: Any,
    stripe_client: Any,
    version: str,
) -> None:
    """Nothing of it is applied: the subscription, its invoice and its payment
    fail at once with one reason; linked, they apply. Before API 2025-03-31 the
    payment names its invoice; since, Stripe's InvoicePayments say which it pays
    (the emulator's events are of a version since)."""
    customer, price, _ = subscribe(stripe_client)
    add_account(conn, customer.id)
    wanted = (
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "payment_intent.created",
        "payment_intent.succeeded",
        "charge.succeeded",
        "invoice_payment.paid",
    )
    events = recorded(emulator, *wanted)
    [invoice] = emulator.emulator.objects("invoices")
    assert all(e["api_version"] >= "2025-03-31" for e in events)
    for evt in events:
        if version != "emulator's" and evt["type"].startswith(("payment_intent.", "charge.")):
            # As versions before 2025-03-31 show them: the invoice named.
            evt["api_version"] = version
            evt["data"]["object"]["invoice"] = invoice["id"]
    await run(pool, ctx, *events)

    reason = (
        f"price {price.id} is not linked to any row of billing.prices (it was made outside MC), "
        "so the event cannot be applied whole; link it, then retry the event"
    )
    assert {e["id"]: outcomes(conn)[e["id"]] for e in events} == {
        e["id"]: ("failed", 1, reason) for e in events
    }
    for table in ("subscriptions", "subscription_items", "invoices", "payments"):
        assert not conn.execute(f"SELECT * FROM billing.{table}").fetchall(), table

    add_price(conn, price.id)  # linked (issue 24's `link`); the operator retries
    conn.execute("UPDATE integration.webhook_events SET status = 'pending', attempts = 0")
    async with running_worker(pool, ctx) as worker:
        worker.wake()
        await wait_idle(pool)
    assert {s for s, _, _ in outcomes(conn).values()} == {"processed"}
    assert one(
        conn,
        "SELECT s.status, i.status, p.status FROM billing.payments p "
        "JOIN billing.invoices i ON i.id = p.invoice_id "
        "JOIN billing.subscriptions s ON s.id = i.subscription_id",
    ) == ("active", "paid", "succeeded")


async def test_a_payment_mc_lacks_is_applied_with_the_invoice_stripe_says_it_pays(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    ctx: WebhookContext,
    emulator: Any,
    stripe_client: Any,
) -> None:
    """API 2025-03-31+: the PaymentIntent names no invoice. For a payment new to
    MC, Stripe is asked once which invoice it pays; that invoice (and its
    subscription) is fetched and the payment linked at once. A payment MC has,
    one paying no invoice, and one of an older version cost no more asking."""
    customer, price, sub = subscribe(stripe_client)
    account = add_account(conn, customer.id)
    add_price(conn, price.id)
    [succeeded] = recorded(emulator, "payment_intent.succeeded")
    [invoice] = emulator.emulator.objects("invoices")
    counts = emulator.emulator.request_counts
    counts.clear()
    await run(pool, ctx, succeeded)  # before any event of its invoice or subscription

    assert outcomes(conn)[succeeded["id"]] == ("processed", 1, None)
    payments = (
        "SELECT m.stripe_payment_intent_id, p.account_id, im.stripe_invoice_id, p.status "
        "FROM billing.payments p JOIN stripe.payment_mappings m ON m.payment_id = p.id "
        "LEFT JOIN stripe.invoice_mappings im ON im.invoice_id = p.invoice_id "
        "ORDER BY p.id"
    )
    pi_id = succeeded["data"]["object"]["id"]
    assert conn.execute(payments).fetchall() == [(pi_id, account, invoice["id"], "succeeded")]
    assert one(conn, "SELECT stripe_subscription_id FROM stripe.subscription_mappings") == sub.id
    asked = {k: v for k, v in counts.items() if v}
    assert asked == {
        "GET /v1/invoice_payments": 1,  # once: its answer is kept for the run after the fetch
        "GET /v1/invoices/{id}": 1,
        "GET /v1/subscriptions/{id}": 1,
    }

    # Known now: a newer event of it is applied without asking.
    again = {**succeeded, "id": "evt_again", "created": succeeded["created"] + 1}
    # A payment for no invoice: asked, applied without one.
    one_off = stripe_client.v1.payment_intents.create(
        params={
            "customer": customer.id,
            "amount": 700,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
        }
    )
    [alone] = [
        e
        for e in recorded(emulator, "payment_intent.succeeded")
        if e["data"]["object"]["id"] == one_off.id
    ]
    # An older version: its PaymentIntent would name an invoice; it names none.
    older = {
        **alone,
        "id": "evt_older",
        "api_version": "2024-06-20",
        "data": {"object": {**alone["data"]["object"], "id": "pi_older", "invoice": None}},
    }
    counts.clear()
    await run(pool, ctx, again, alone, older)
    assert {e["id"]: outcomes(conn)[e["id"]][0] for e in (again, alone, older)} == {
        e["id"]: "processed" for e in (again, alone, older)
    }
    assert {k: v for k, v in counts.items() if v} == {"GET /v1/invoice_payments": 1}
    assert conn.execute(payments).fetchall() == [
        (pi_id, account, invoice["id"], "succeeded"),
        (one_off.id, account, None, "succeeded"),
        ("pi_older", account, None, "succeeded"),
    ]


async def test_a_key_that_may_not_read_invoice_payments_applies_the_payment_as_before(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    ctx: WebhookContext,
    emulator: Any,
    stripe_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stripe's 403 for a restricted key: said in the log, the payment applied
    without its invoice (invoice_payment.paid links it later), never stuck."""
    customer, price, _ = subscribe(stripe_client)
    account = add_account(conn, customer.id)
    add_price(conn, price.id)
    emulator.emulator.add_fault("403", "GET /v1/invoice_payments", rate=1.0)
    [succeeded] = recorded(emulator, "payment_intent.succeeded")
    await run(pool, ctx, succeeded)
    assert outcomes(conn)[succeeded["id"]] == ("processed", 1, None)
    assert one(conn, "SELECT account_id, invoice_id FROM billing.payments") == (account, None)
    assert "cannot list the invoice payments of a PaymentIntent" in caplog.text


async def test_a_checkout_link_brings_back_the_events_ignored_before_it(
    pool: AsyncConnectionPool,
    conn: psycopg.Connection[Any],
    ctx: WebhookContext,
    emulator: Any,
    stripe_client: Any,
) -> None:
    """Checkout made the customer (no MC metadata): its subscription's event may
    come before the session's, and is ignored; the link makes it due again."""
    account = add_account(conn, None, email="checkout@example.com")
    customer, price, sub = subscribe(stripe_client)
    add_price(conn, price.id)
    [created] = recorded(emulator, "customer.subscription.created")
    session = event(
        "checkout.session.completed",
        {
            "id": "cs_1",
            "object": "checkout.session",
            "customer": customer.id,
            "client_reference_id": str(account),
            "subscription": sub.id,
        },
    )
    await run(pool, ctx, created)
    assert outcomes(conn)[created["id"]][0] == "ignored"
    await run(pool, ctx, session)
    seen = outcomes(conn)
    assert seen[session["id"]] == (
        "processed",
        1,
        f"linked {customer.id} to billing.accounts id={account}",
    )
    assert seen[created["id"]] == ("processed", 1, None)
    assert one(conn, "SELECT account_id FROM billing.subscriptions") == account
