"""The full loop: MC rows → outbox → emulator → signed webhooks → the daemon's
endpoint → billing rows and mappings. The daemon runs as a real process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from stripe_emulator.server import EmulatorServer

from daemons import WEBHOOK_SECRET, DaemonProcess

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def daemon(dsn: str, emulator: EmulatorServer) -> Iterator[DaemonProcess]:
    d = DaemonProcess(dsn, emulator.base_url, STRIPE_SYNC_SWEEP_INTERVAL="0.5")
    try:
        d.start()
        emulator.emulator.add_webhook_endpoint(f"{d.url}/webhooks/stripe", [WEBHOOK_SECRET])
        yield d
    finally:
        d.stop()


def wait_for(
    conn: Conn, query: str, *params: Any, timeout: float = 15.0, daemon: DaemonProcess | None = None
) -> tuple[Any, ...]:
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(query, params).fetchone()
        if row is not None and all(v is not None for v in row):
            return row
        if time.monotonic() > deadline:
            events = conn.execute(
                "SELECT event_type, status, last_error FROM integration.webhook_events ORDER BY id"
            ).fetchall()
            raise AssertionError(
                f"not within {timeout}s: {query}\nwebhook events: {events}\n"
                f"{daemon.output() if daemon else ''}"
            )
        time.sleep(0.05)


def settled(
    conn: Conn, emulator: EmulatorServer, daemon: DaemonProcess
) -> list[tuple[str, str, str | None]]:
    """Once every event the emulator sent is stored and applied: (type, status, error) of each."""
    assert emulator.emulator.webhooks.wait_idle(10)
    wait_for(
        conn,
        "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM integration.webhook_events "
        "WHERE status IN ('pending', 'processing'))",
        daemon=daemon,
    )
    return conn.execute(
        "SELECT event_type, status, last_error FROM integration.webhook_events ORDER BY id"
    ).fetchall()


def seeded_customer(conn: Conn, daemon: DaemonProcess, email: str) -> tuple[int, str]:
    """An MC account the outbox created in Stripe: (account id, Stripe customer id)."""
    account = conn.execute(
        "INSERT INTO billing.accounts (email) VALUES (%s) RETURNING id", [email]
    ).fetchone()[0]  # type: ignore[index]
    conn.execute("SELECT integration.seed_outbox()")
    (customer,) = wait_for(
        conn,
        "SELECT stripe_customer_id FROM stripe.customer_mappings "
        "WHERE account_id = %s AND last_event_id IS NOT NULL",
        account,
        daemon=daemon,
    )
    return account, customer


def seeded_price(conn: Conn, daemon: DaemonProcess, currency: str, amount: int) -> tuple[int, str]:
    """A monthly MC price (and its product) the outbox created: (price id, Stripe price id)."""
    product = conn.execute(
        "INSERT INTO billing.products (name) VALUES ('Pro') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    price = conn.execute(
        "INSERT INTO billing.prices (product_id, currency, unit_amount, "
        "recurring_interval) VALUES (%s, %s, %s, 'month') RETURNING id",
        [product, currency, amount],
    ).fetchone()[0]  # type: ignore[index]
    conn.execute("SELECT integration.seed_outbox()")
    (stripe_price,) = wait_for(
        conn,
        "SELECT stripe_price_id FROM stripe.price_mappings "
        "WHERE price_id = %s AND last_event_id IS NOT NULL",
        price,
        daemon=daemon,
    )
    return price, stripe_price


def test_subscribe_pay_refund(
    daemon: DaemonProcess,
    conn: Conn,
    stripe_client: Any,
    emulator: EmulatorServer,
) -> None:
    # The outbox creates them; the webhooks about them confirm the mappings.
    price, stripe_price = seeded_price(conn, daemon, "usd", 2500)
    account, customer = seeded_customer(conn, daemon, "ada@example.com")

    sub = stripe_client.v1.subscriptions.create(
        params={"customer": customer, "items": [{"price": stripe_price, "quantity": 2}]}
    )

    sub_row = wait_for(
        conn,
        "SELECT s.id, s.account_id, s.status FROM billing.subscriptions s "
        "JOIN stripe.subscription_mappings m ON m.subscription_id = s.id "
        "WHERE m.stripe_subscription_id = %s AND s.status = 'active'",
        sub.id,
        daemon=daemon,
    )
    assert sub_row[1:] == (account, "active")
    assert conn.execute(
        "SELECT price_id, quantity FROM billing.subscription_items WHERE subscription_id = %s",
        [sub_row[0]],
    ).fetchall() == [(price, 2)]
    invoice = wait_for(
        conn,
        "SELECT i.account_id, i.subscription_id, i.amount_paid, m.stripe_invoice_id "
        "FROM billing.invoices i JOIN stripe.invoice_mappings m "
        "ON m.invoice_id = i.id WHERE i.status = 'paid'",
        daemon=daemon,
    )
    assert invoice[:3] == (account, sub_row[0], 5000)
    payment = wait_for(
        conn,
        "SELECT p.id, p.account_id, p.amount_received, "
        "m.stripe_payment_intent_id, m.stripe_charge_id "
        "FROM billing.payments p JOIN stripe.payment_mappings m "
        "ON m.payment_id = p.id WHERE p.status = 'succeeded'",
        daemon=daemon,
    )
    assert payment[1:3] == (account, 5000)
    # Today's shapes name the invoice of a payment only in invoice_payment.paid.
    linked = wait_for(
        conn,
        "SELECT m.stripe_invoice_id FROM billing.payments p "
        "JOIN stripe.invoice_mappings m ON m.invoice_id = p.invoice_id WHERE p.id = %s",
        payment[0],
        daemon=daemon,
    )
    assert linked == (invoice[3],)

    stripe_client.v1.refunds.create(params={"payment_intent": payment[3], "amount": 1000})
    refunded = wait_for(
        conn,
        "SELECT amount_refunded, refund_status FROM billing.payments "
        "WHERE id = %s AND amount_refunded > 0",
        payment[0],
        daemon=daemon,
    )
    assert refunded == (1000, "partial")
    stripe_client.v1.refunds.create(params={"payment_intent": payment[3]})
    wait_for(
        conn,
        "SELECT 1 FROM billing.payments WHERE id = %s AND refund_status = 'full' "
        "AND amount_refunded = 5000",
        payment[0],
        daemon=daemon,
    )

    # Everything the emulator sent ended well: processed, or ignored with a reason.
    rows = settled(conn, emulator, daemon)
    assert rows
    assert all(status in ("processed", "ignored") for _, status, _ in rows), rows
    assert all(err for _, status, err in rows if status == "ignored"), rows


def test_a_disputed_payment_and_its_deadline(
    daemon: DaemonProcess,
    conn: Conn,
    stripe_client: Any,
    emulator: EmulatorServer,
) -> None:
    """Stripe's dispute test card: the payment succeeds, then is disputed; MC
    sees the dispute with its deadline, then closed once it is accepted."""
    account, customer = seeded_customer(conn, daemon, "eve@example.com")
    pi = stripe_client.v1.payment_intents.create(
        params={
            "amount": 4200,
            "currency": "eur",
            "customer": customer,
            "payment_method": "pm_card_createDispute",
            "confirm": True,
        }
    )
    assert pi.status == "succeeded"
    dispute = wait_for(
        conn,
        "SELECT d.id, p.account_id, d.status, d.reason, d.amount, d.currency, "
        "extract(epoch FROM d.evidence_due_by)::bigint, m.stripe_dispute_id "
        "FROM billing.disputes d JOIN billing.payments p ON p.id = d.payment_id "
        "JOIN stripe.payment_mappings pm ON pm.payment_id = p.id "
        "JOIN stripe.dispute_mappings m ON m.dispute_id = d.id "
        "WHERE pm.stripe_payment_intent_id = %s",
        pi.id,
        daemon=daemon,
    )
    stripe_dispute = stripe_client.v1.disputes.retrieve(dispute[7])
    assert dispute[1:7] == (
        account,
        "needs_response",
        "fraudulent",
        4200,
        "eur",
        stripe_dispute.evidence_details.due_by,
    )
    assert conn.execute("SELECT closed_at FROM billing.disputes").fetchone() == (None,)

    closed = stripe_client.v1.disputes.close(dispute[7])
    assert closed.status == "lost"
    closed_at = wait_for(
        conn,
        "SELECT closed_at FROM billing.disputes WHERE id = %s AND status = 'lost'",
        dispute[0],
        daemon=daemon,
    )
    # The time of the event that closed it, not when MC applied it.
    events = stripe_client.v1.events.list(params={"type": "charge.dispute.closed"}).data
    [closing] = [e for e in events if e.data.object["id"] == dispute[7]]
    assert closed_at == (datetime.fromtimestamp(closing.created, UTC),)
    rows = [r for r in settled(conn, emulator, daemon) if r[0].startswith("charge.dispute.")]
    assert rows == [
        ("charge.dispute.created", "processed", None),
        ("charge.dispute.funds_withdrawn", "processed", None),
        ("charge.dispute.closed", "processed", None),
    ]


_CARDS = (
    "SELECT p.account_id, p.type, p.brand, p.last4, p.exp_month, p.exp_year, p.is_default, "
    "m.sync_status FROM billing.payment_methods p JOIN stripe.payment_method_mappings m "
    "ON m.payment_method_id = p.id WHERE m.stripe_payment_method_id = %s"
)


def test_cards_on_file(
    daemon: DaemonProcess,
    conn: Conn,
    stripe_client: Any,
    emulator: EmulatorServer,
) -> None:
    """A card saved with a setup intent, a second one attached and made the
    default, its new expiry, then detached: billing.payment_methods follows."""
    account, customer = seeded_customer(conn, daemon, "card@example.com")
    si = stripe_client.v1.setup_intents.create(
        params={"customer": customer, "payment_method": "pm_card_visa", "confirm": True}
    )
    visa = si.payment_method
    mastercard = stripe_client.v1.payment_methods.attach(
        "pm_card_mastercard", params={"customer": customer}
    ).id
    stripe_client.v1.customers.update(
        customer, params={"invoice_settings": {"default_payment_method": mastercard}}
    )
    stripe_client.v1.payment_methods.update(
        mastercard, params={"card": {"exp_month": 5, "exp_year": 2027}}
    )
    expiring = (account, "card", "mastercard", "4444", 5, 2027, True, "synced")
    assert wait_for(conn, _CARDS + " AND p.exp_year = 2027", mastercard, daemon=daemon) == expiring
    assert wait_for(conn, _CARDS, visa, daemon=daemon) == (
        account,
        "card",
        "visa",
        "4242",
        12,
        2034,
        False,
        "synced",
    )

    stripe_client.v1.payment_methods.detach(mastercard)
    rows = settled(conn, emulator, daemon)
    assert conn.execute(_CARDS, [mastercard]).fetchone() == (
        None,
        "card",
        "mastercard",
        "4444",
        5,
        2027,
        False,
        "deleted",
    )
    assert all(status in ("processed", "ignored") for _, status, _ in rows), rows
    applied = [t for t, status, _ in rows if status == "processed"]
    for event_type in (
        "setup_intent.succeeded",
        "payment_method.attached",
        "payment_method.updated",
        "payment_method.detached",
        "customer.updated",
    ):
        assert event_type in applied, rows


def test_credit_notes_issued_and_voided(
    daemon: DaemonProcess,
    conn: Conn,
    stripe_client: Any,
    emulator: EmulatorServer,
) -> None:
    """Credit notes on a subscription's paid invoice: one credited to the
    customer's balance and then voided, one refunded to the card."""
    _, stripe_price = seeded_price(conn, daemon, "eur", 4000)
    _, customer = seeded_customer(conn, daemon, "credit@example.com")
    sub = stripe_client.v1.subscriptions.create(
        params={"customer": customer, "items": [{"price": stripe_price}]}
    )
    invoice_id = sub.latest_invoice
    (invoice,) = wait_for(
        conn,
        "SELECT invoice_id FROM stripe.invoice_mappings WHERE stripe_invoice_id = %s",
        invoice_id,
        daemon=daemon,
    )
    credit = stripe_client.v1.credit_notes.create(
        params={
            "invoice": invoice_id,
            "amount": 1500,
            "credit_amount": 1500,
            "reason": "order_change",
            "memo": "Downgraded mid-month",
        }
    )
    [line] = stripe_client.v1.invoices.retrieve(invoice_id).lines.data
    refund = stripe_client.v1.credit_notes.create(
        params={
            "invoice": invoice_id,
            "lines": [{"type": "invoice_line_item", "invoice_line_item": line.id, "amount": 500}],
            "refund_amount": 500,
            "reason": "product_unsatisfactory",
        }
    )
    query = (
        "SELECT c.invoice_id, c.status, c.amount, c.currency, c.reason, c.memo, m.sync_status "
        "FROM billing.credit_notes c JOIN stripe.credit_note_mappings m "
        "ON m.credit_note_id = c.id WHERE m.stripe_credit_note_id = %s"
    )
    assert wait_for(conn, query.replace("c.memo", "coalesce(c.memo, '')"), refund.id) == (
        invoice,
        "issued",
        500,
        "eur",
        "product_unsatisfactory",
        "",
        "synced",
    )
    issued = (invoice, "issued", 1500, "eur", "order_change", "Downgraded mid-month", "synced")
    assert wait_for(conn, query, credit.id, daemon=daemon) == issued
    # The refund reached the payment too.
    wait_for(
        conn,
        "SELECT 1 FROM billing.payments WHERE invoice_id = %s AND amount_refunded = 500",
        invoice,
        daemon=daemon,
    )

    stripe_client.v1.credit_notes.void_credit_note(credit.id)
    wait_for(conn, query + " AND c.status = 'void'", credit.id, daemon=daemon)
    rows = settled(conn, emulator, daemon)
    assert all(status in ("processed", "ignored") for _, status, _ in rows), rows
    assert [r for r in rows if r[0].startswith("credit_note.")] == [
        ("credit_note.created", "processed", None),
        ("credit_note.created", "processed", None),
        ("credit_note.voided", "processed", None),
    ]
    assert conn.execute("SELECT count(*) FROM billing.credit_notes").fetchone() == (2,)
