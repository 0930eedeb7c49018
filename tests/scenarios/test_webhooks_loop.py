"""The full loop: MC rows → outbox → emulator → signed webhooks → the daemon's
endpoint → billing rows and mappings. The daemon runs as a real process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from stripe_sync.emulator.server import EmulatorServer

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


def test_subscribe_pay_refund(
    daemon: DaemonProcess,
    conn: Conn,
    stripe_client: Any,
    emulator: EmulatorServer,
) -> None:
    account = conn.execute(
        "INSERT INTO billing.accounts (email, name) VALUES ('ada@example.com', 'Ada') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    product = conn.execute(
        "INSERT INTO billing.products (name) VALUES ('Pro') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    price = conn.execute(
        "INSERT INTO billing.prices (product_id, currency, unit_amount, "
        "recurring_interval) VALUES (%s, 'usd', 2500, 'month') RETURNING id",
        [product],
    ).fetchone()[0]  # type: ignore[index]
    conn.execute("SELECT integration.seed_outbox()")

    # The outbox creates them; the webhooks about them confirm the mappings.
    (customer,) = wait_for(
        conn,
        "SELECT stripe_customer_id FROM stripe.customer_mappings "
        "WHERE account_id = %s AND last_event_id IS NOT NULL",
        account,
        daemon=daemon,
    )
    (stripe_price,) = wait_for(
        conn,
        "SELECT stripe_price_id FROM stripe.price_mappings "
        "WHERE price_id = %s AND last_event_id IS NOT NULL",
        price,
        daemon=daemon,
    )

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
    account = conn.execute(
        "INSERT INTO billing.accounts (email) VALUES ('eve@example.com') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    conn.execute("SELECT integration.seed_outbox()")
    (customer,) = wait_for(
        conn,
        "SELECT stripe_customer_id FROM stripe.customer_mappings "
        "WHERE account_id = %s AND last_event_id IS NOT NULL",
        account,
        daemon=daemon,
    )
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
    wait_for(
        conn,
        "SELECT closed_at FROM billing.disputes WHERE id = %s AND status = 'lost'",
        dispute[0],
        daemon=daemon,
    )
    rows = [r for r in settled(conn, emulator, daemon) if r[0].startswith("charge.dispute.")]
    assert rows == [
        ("charge.dispute.created", "processed", None),
        ("charge.dispute.funds_withdrawn", "processed", None),
        ("charge.dispute.closed", "processed", None),
    ]
