"""Adopting an existing Stripe account (#24): an emulator holding months of an
account's past (stripe_emulator.history), MC accounts and a catalog with the
same emails and plans, then `link`, `seed`'s look and `backfill`, through the
official SDK over HTTP against the emulator and a real PostgreSQL.

The comparison is object by object: every subscription, invoice, payment,
refund, dispute, card and credit note of a linked customer in the emulator
has its MC row, equal field by field, and nothing else is in MC."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from stripe_emulator.history import History, email_of, seed_history
from stripe_emulator.server import EmulatorServer
from stripe_sync.config import load_settings
from stripe_sync.ops import backfill, link
from stripe_sync.ops.backfill import BackfillResult

from daemons import cli_env

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[tuple[Any, ...]]
JSON = dict[str, Any]


def settings(dsn: str, emulator: EmulatorServer) -> Any:
    return load_settings({}, **cli_env(dsn, emulator.base_url))


def source_of(conn: Conn) -> str:
    row = conn.execute(
        "SELECT current_database() || '/' || left((SELECT uuid::text FROM "
        "integration.installation), 8)"
    ).fetchone()
    assert row is not None
    return str(row[0])


# The last customers of the history have no MC account: Stripe's only.
STRIPE_ONLY = 2


def account(conn: Conn, history: History) -> None:
    """MC's side: an account per customer but the last STRIPE_ONLY (same email), one
    account Stripe does not know, and the catalog with the same plans."""
    rows = [(i + 1, email_of(i)) for i in range(len(history.customers) - STRIPE_ONLY)]
    rows.append((90000, "nobody@example.com"))
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO billing.accounts (id, email) VALUES (%s, %s)", rows)
    conn.execute(
        "INSERT INTO billing.products (id, name) VALUES (1, 'Basic'), (2, 'Pro'), (3, 'Team')"
    )
    conn.execute(
        "INSERT INTO billing.prices (id, product_id, currency, unit_amount, recurring_interval) "
        "VALUES (1, 1, 'usd', 900, 'month'), (2, 2, 'usd', 2900, 'month'), "
        "(3, 3, 'usd', 9900, 'month')"
    )
    conn.execute("SELECT setval(pg_get_serial_sequence('billing.accounts', 'id'), 100000)")


def catalog_pairs(history: History) -> list[link.Pair]:
    return [
        *(link.Pair(link.PRODUCTS, i + 1, p) for i, p in enumerate(history.products)),
        *(link.Pair(link.PRICES, i + 1, p) for i, p in enumerate(history.prices)),
    ]


async def adopted(
    dsn: str, conn: Conn, emulator: EmulatorServer, *, customers: int = 12, months: int = 4
) -> History:
    """The emulator's past, MC's rows, the catalog linked, every customer linked by email."""
    history = seed_history(
        emulator.emulator, customers=customers, months=months, mc_source=source_of(conn)
    )
    account(conn, history)
    result = await link.run(
        settings(dsn, emulator), catalog_pairs(history), by_email=True, dry_run=False
    )
    assert not result.refused and not result.ambiguous, result
    assert len(result.linked) == customers - STRIPE_ONLY + 6
    assert result.unmatched == ["billing.accounts id=90000 (nobody@example.com)"]
    return history


# -- what MC holds, and what it should hold -------------------------------------------
def mc_state(conn: Conn) -> dict[str, tuple[Any, ...]]:
    """Every imported object as MC holds it, by Stripe id."""
    queries = {
        "sub": """
            SELECT m.stripe_subscription_id, s.status,
                extract(epoch FROM s.current_period_start)::bigint,
                extract(epoch FROM s.current_period_end)::bigint, s.cancel_at_period_end,
                extract(epoch FROM s.canceled_at)::bigint, a.stripe_customer_id,
                (SELECT string_agg(pm.stripe_price_id || 'x' || i.quantity, ','
                                   ORDER BY pm.stripe_price_id)
                 FROM billing.subscription_items i
                 JOIN stripe.price_mappings pm ON pm.price_id = i.price_id
                 WHERE i.subscription_id = s.id)
            FROM stripe.subscription_mappings m
            JOIN billing.subscriptions s ON s.id = m.subscription_id
            JOIN stripe.customer_mappings a ON a.account_id = s.account_id""",
        "inv": """
            SELECT m.stripe_invoice_id, i.status, i.number, i.currency, i.amount_due,
                i.amount_paid, i.amount_remaining, i.total, sm.stripe_subscription_id,
                a.stripe_customer_id, extract(epoch FROM i.paid_at)::bigint
            FROM stripe.invoice_mappings m JOIN billing.invoices i ON i.id = m.invoice_id
            LEFT JOIN stripe.subscription_mappings sm ON sm.subscription_id = i.subscription_id
            JOIN stripe.customer_mappings a ON a.account_id = i.account_id""",
        "pay": """
            SELECT m.stripe_payment_intent_id, p.status, p.currency, p.amount,
                p.amount_received, p.amount_refunded, p.refund_status, im.stripe_invoice_id,
                a.stripe_customer_id, m.stripe_charge_id
            FROM stripe.payment_mappings m JOIN billing.payments p ON p.id = m.payment_id
            LEFT JOIN stripe.invoice_mappings im ON im.invoice_id = p.invoice_id
            LEFT JOIN stripe.customer_mappings a ON a.account_id = p.account_id""",
        "re": """
            SELECT r.stripe_refund_id, r.amount, r.status, m.stripe_payment_intent_id
            FROM stripe.payment_refunds r
            JOIN stripe.payment_mappings m ON m.payment_id = r.payment_id""",
        "dp": """
            SELECT m.stripe_dispute_id, d.status, d.reason, d.amount, d.currency,
                extract(epoch FROM d.evidence_due_by)::bigint, pm.stripe_payment_intent_id
            FROM stripe.dispute_mappings m JOIN billing.disputes d ON d.id = m.dispute_id
            JOIN stripe.payment_mappings pm ON pm.payment_id = d.payment_id""",
        "pm": """
            SELECT m.stripe_payment_method_id, p.type, p.brand, p.last4, p.exp_month,
                p.exp_year, p.is_default, a.stripe_customer_id
            FROM stripe.payment_method_mappings m
            JOIN billing.payment_methods p ON p.id = m.payment_method_id
            JOIN stripe.customer_mappings a ON a.account_id = p.account_id""",
        "cn": """
            SELECT m.stripe_credit_note_id, c.status, c.amount, c.currency, c.reason, c.memo,
                im.stripe_invoice_id
            FROM stripe.credit_note_mappings m
            JOIN billing.credit_notes c ON c.id = m.credit_note_id
            JOIN stripe.invoice_mappings im ON im.invoice_id = c.invoice_id""",
    }
    found: dict[str, tuple[Any, ...]] = {}
    for kind, query in queries.items():
        for row in conn.execute(query).fetchall():
            found[row[0]] = (kind, *row[1:])
    return found


def stripe_state(emulator: EmulatorServer, linked: set[str]) -> dict[str, tuple[Any, ...]]:
    """What MC should hold of the emulator's objects of ``linked`` customers."""
    emu = emulator.emulator
    objs = {
        kind: emu.objects(kind)
        for kind in (
            "subscriptions",
            "invoices",
            "payment_intents",
            "refunds",
            "disputes",
            "payment_methods",
            "credit_notes",
            "customers",
            "invoice_payments",
        )
    }
    pi_invoice = {p["payment"]["payment_intent"]: p["invoice"] for p in objs["invoice_payments"]}
    defaults = {c["id"]: c["invoice_settings"]["default_payment_method"] for c in objs["customers"]}
    refunds: dict[str, list[JSON]] = {}
    for r in objs["refunds"]:
        refunds.setdefault(r["payment_intent"], []).append(r)
    ours_pi: set[str] = set()
    want: dict[str, tuple[Any, ...]] = {}
    for s in objs["subscriptions"]:
        if s["customer"] in linked:
            item = s["items"]["data"][0]
            prices = ",".join(
                sorted(f"{i['price']['id']}x{i['quantity']}" for i in s["items"]["data"])
            )
            want[s["id"]] = (
                "sub",
                s["status"],
                item["current_period_start"],
                item["current_period_end"],
                s["cancel_at_period_end"],
                s["canceled_at"],
                s["customer"],
                prices,
            )
    for i in objs["invoices"]:
        if i["customer"] in linked:
            want[i["id"]] = (
                "inv",
                i["status"],
                i["number"],
                i["currency"],
                i["amount_due"],
                i["amount_paid"],
                i["amount_remaining"],
                i["total"],
                i["subscription"]
                if "subscription" in i
                else i["parent"]["subscription_details"]["subscription"],
                i["customer"],
                i["status_transitions"]["paid_at"],
            )
    for p in objs["payment_intents"]:
        if p["customer"] in linked:
            ours_pi.add(p["id"])
            refunded = sum(
                r["amount"]
                for r in refunds.get(p["id"], [])
                if r["status"] not in ("failed", "canceled")
            )
            status = (
                "none"
                if not refunded
                else "full"
                if refunded >= p["amount_received"]
                else "partial"
            )
            want[p["id"]] = (
                "pay",
                p["status"],
                p["currency"],
                p["amount"],
                p["amount_received"],
                refunded,
                status,
                pi_invoice.get(p["id"]),
                p["customer"],
                p["latest_charge"],
            )
    for r in objs["refunds"]:
        if r["payment_intent"] in ours_pi:
            want[r["id"]] = ("re", r["amount"], r["status"], r["payment_intent"])
    for d in objs["disputes"]:
        if d["payment_intent"] in ours_pi:
            want[d["id"]] = (
                "dp",
                d["status"],
                d["reason"],
                d["amount"],
                d["currency"],
                d["evidence_details"]["due_by"],
                d["payment_intent"],
            )
    for m in objs["payment_methods"]:
        if m["customer"] in linked:
            card = m["card"]
            want[m["id"]] = (
                "pm",
                m["type"],
                card["brand"],
                card["last4"],
                card["exp_month"],
                card["exp_year"],
                defaults.get(m["customer"]) == m["id"],
                m["customer"],
            )
    for c in objs["credit_notes"]:
        if c["customer"] in linked:
            want[c["id"]] = (
                "cn",
                c["status"],
                c["amount"],
                c["currency"],
                c["reason"],
                c["memo"],
                c["invoice"],
            )
    return want


def linked_customers(conn: Conn) -> set[str]:
    rows = conn.execute("SELECT stripe_customer_id FROM stripe.customer_mappings").fetchall()
    return {r[0] for r in rows}


def assert_equal_state(conn: Conn, emulator: EmulatorServer) -> None:
    want = stripe_state(emulator, linked_customers(conn))
    have = mc_state(conn)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    assert not missing and not extra, (missing[:5], extra[:5])
    differ = [(k, want[k], have[k]) for k in want if want[k] != have[k]]
    assert not differ, differ[:5]


async def run_backfill(dsn: str, emulator: EmulatorServer, **kwargs: Any) -> BackfillResult:
    return await backfill.run(settings(dsn, emulator), **kwargs)


# -- backfill ---------------------------------------------------------------------------
async def test_backfill_imports_the_history_object_by_object(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    history = await adopted(dsn, conn, emulator)
    first = await run_backfill(dsn, emulator)
    assert first.changed > 0 and not any(f.skipped for f in first.families.values()), (
        first.to_json()
    )
    assert_equal_state(conn, emulator)
    counts = {k: v for k, v in history.counts.items()}
    assert counts["disputes"] == 1 and counts["refunds"] > 0 and counts["credit_notes"] > 0

    # A second run changes nothing, and says so.
    before = conn.execute(
        "SELECT count(*), max(updated_at) FROM stripe.subscription_mappings"
    ).fetchone()
    second = await run_backfill(dsn, emulator)
    assert second.changed == 0 and second.objects == first.objects
    assert "nothing to change" in second.summary()
    assert (
        conn.execute(
            "SELECT count(*), max(updated_at) FROM stripe.subscription_mappings"
        ).fetchone()
        == before
    )
    assert_equal_state(conn, emulator)
