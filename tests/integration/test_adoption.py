"""Adopting an existing Stripe account (#24): an emulator holding months of an
account's past (stripe_emulator.history), MC accounts and a catalog with the
same emails and plans, then `link`, `seed`'s look and `backfill`, through the
official SDK over HTTP against the emulator and a real PostgreSQL.

The comparison is object by object: every subscription, invoice, payment,
refund, dispute, card and credit note of a linked customer in the emulator
has its MC row, equal field by field, and nothing else is in MC."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from typing import Any

import anyio
import psycopg
import pytest

from stripe_emulator.history import MONTH, History, email_of, seed_history
from stripe_emulator.server import EmulatorServer
from stripe_sync.config import Secret, load_settings
from stripe_sync.db import make_pool
from stripe_sync.mappings import PRICES, PRODUCTS
from stripe_sync.ops import backfill, link
from stripe_sync.ops.backfill import Backfill, BackfillResult
from stripe_sync.queue.jobs import Job
from stripe_sync.stripe_api import StripeApi
from stripe_sync.webhooks.common import WebhookContext
from stripe_sync.webhooks.execute import make_handler

from daemons import API_KEY, cli_env, poll, run_cli
from pipeline import all_settled, eventually, outbox_pipeline

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
        *(link.Pair(PRODUCTS, i + 1, p) for i, p in enumerate(history.products)),
        *(link.Pair(PRICES, i + 1, p) for i, p in enumerate(history.prices)),
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


async def apply_event(dsn: str, event: JSON) -> str | None:
    """One webhook event through the daemon's handler table, committed; its note."""
    async with make_pool(dsn, size=2) as pool:
        handler = make_handler(WebhookContext(pool))
        done = await handler(Job(1, event["type"], 1, json.dumps(event)))
        if done.apply is not None:
            async with pool.connection() as conn, conn.transaction():
                await done.apply(conn)
        return done.note


def mc_subscription(conn: Conn, sub_id: str) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT s.cancel_at_period_end, m.last_event_id FROM stripe.subscription_mappings m "
        "JOIN billing.subscriptions s ON s.id = m.subscription_id "
        "WHERE m.stripe_subscription_id = %s",
        (sub_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


async def test_backfill_and_a_webhook_racing_end_in_the_newer_state(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    """A webhook applied after the backfill listed an object but before it applied
    it is newer than the listed state, which is then kept out (stale); an event
    older than the listing that arrives after the backfill is stale in turn."""
    await adopted(dsn, conn, emulator, customers=6, months=2)
    emu = emulator.emulator
    subs = [s for s in emu.objects("subscriptions") if s["status"] == "active"]
    raced, late = subs[0]["id"], subs[1]["id"]
    client = stripe_client(emulator)

    # An event older than any listing, delivered late (after the backfill).
    emu.advance_clock(-30)
    client.v1.subscriptions.update(late, params={"cancel_at_period_end": True})
    emu.advance_clock(30)
    old_event = emu.events_of_type("customer.subscription.updated")[-1]
    client.v1.subscriptions.update(late, params={"cancel_at_period_end": False})

    async def webhook_meanwhile(family: str, objects: list[JSON]) -> None:
        if family != "subscriptions":
            return
        assert any(o["id"] == raced for o in objects)
        emu.advance_clock(5)  # Stripe's next second and after: newer than the listing
        client.v1.subscriptions.update(raced, params={"cancel_at_period_end": True})
        event = emu.events_of_type("customer.subscription.updated")[-1]
        assert event["data"]["object"]["id"] == raced
        assert await apply_event(dsn, event) is None

    result = await backfill_with(dsn, emulator, before_apply=webhook_meanwhile)
    assert result.families["subscriptions"].stale == 1
    # The webhook's newer state stands; the listed (older) one was not applied over it.
    assert mc_subscription(conn, raced)[0] is True
    assert mc_subscription(conn, late)[0] is False

    note = await apply_event(dsn, old_event)
    assert note is not None and note.startswith("stale"), note
    assert mc_subscription(conn, late)[0] is False
    assert_equal_state(conn, emulator)


async def backfill_with(dsn: str, emulator: EmulatorServer, **kwargs: Any) -> BackfillResult:
    api = StripeApi(Secret(API_KEY), api_base=emulator.base_url, rate_limit=0)
    async with api, make_pool(dsn, size=2 * backfill.APPLY_AT_ONCE + 1) as pool:
        return await Backfill(api, pool, **kwargs).run()


class Crash(Exception):
    pass


@pytest.mark.parametrize("at_once", [1, 4])
async def test_backfill_resumes_where_it_stopped(
    dsn: str, conn: Conn, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, at_once: int
) -> None:
    """Stopped in the middle of a family (an exception after N objects, as a crash
    or Ctrl-C would), a rerun continues after the last committed page and the
    tables end as one uninterrupted run leaves them. Pages applied side by side
    (at_once > 1) may have committed past the checkpoint: applied again, unchanged.
    The invoices are listed again while the payments are not done: the payments
    learn their invoices from them."""
    monkeypatch.setattr(backfill, "PAGE_SIZE", 10)
    monkeypatch.setattr(backfill, "APPLY_AT_ONCE", at_once)
    await adopted(dsn, conn, emulator, customers=8, months=4)
    seen: list[int] = []

    async def crash_on_the_third_page(family: str, objects: list[JSON]) -> None:
        if family == "payment_intents":
            seen.append(len(objects))
            if len(seen) == 3:
                raise Crash

    with pytest.raises(Crash):
        await backfill_with(dsn, emulator, before_apply=crash_on_the_third_page)
    checkpoints: dict[str, int] = dict(
        conn.execute(
            "SELECT family, objects FROM integration.backfill_checkpoints WHERE NOT done"
        ).fetchall()
    )
    imported = conn.execute("SELECT count(*) FROM stripe.payment_mappings").fetchone()
    assert imported is not None
    if at_once == 1:
        assert set(checkpoints) == {"payment_intents"} and checkpoints["payment_intents"] > 0, (
            checkpoints
        )
        assert imported[0] == checkpoints["payment_intents"]
    else:
        assert imported[0] >= checkpoints.get("payment_intents", 0)

    rerun = await backfill_with(dsn, emulator)
    assert rerun.resumed
    # Only what the stopped run had not done: no family before invoices again,
    # the invoices listed again and found unchanged.
    assert rerun.families["subscriptions"].imported == 0
    linked = linked_customers(conn)
    invoices = [i for i in emulator.emulator.objects("invoices") if i["customer"] in linked]
    assert rerun.families["invoices"].imported == len(invoices)
    assert rerun.families["invoices"].changed == 0
    payments = [p for p in emulator.emulator.objects("payment_intents") if p["customer"] in linked]
    assert rerun.families["payment_intents"].imported == len(payments) - checkpoints.get(
        "payment_intents", 0
    )
    assert_equal_state(conn, emulator)
    # Finished: the next run starts over, and finds nothing to change.
    again = await backfill_with(dsn, emulator)
    assert not again.resumed and again.changed == 0 and again.objects > 0


async def test_backfill_one_customer_and_dry_run(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    history = await adopted(dsn, conn, emulator, customers=5, months=3)
    one = history.customers[1]
    dry = await run_backfill(dsn, emulator, customer=one, dry_run=True)
    assert dry.changed > 0 and "would change" in dry.summary()
    assert mc_state(conn) == {}
    assert conn.execute("SELECT count(*) FROM integration.backfill_checkpoints").fetchone() == (0,)

    done = await run_backfill(dsn, emulator, customer=one)
    assert done.changed == dry.changed
    want = stripe_state(emulator, {one})
    assert mc_state(conn) == want and want

    # The first customer's charge was disputed: its import takes the dispute, and a
    # later import of another customer does not take it again.
    disputed = history.customers[0]
    assert (await run_backfill(dsn, emulator, customer=disputed)).families["disputes"].imported
    assert not (await run_backfill(dsn, emulator, customer=one)).families["disputes"].imported
    assert mc_state(conn) == stripe_state(emulator, {one, disputed})


async def test_backfill_skips_an_object_whose_reference_it_cannot_get(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    """An object naming a reference MC lacks, which the handler cannot supply, is
    skipped with a reason that names what it lacks (MissingReference), neither
    failing the run nor retried as a race. Here: --since leaves the
    subscriptions out (made before it) while their renewal invoices are in, and
    the key may not read subscriptions (a restricted key's 403), so the
    subscription an invoice names can be neither found nor fetched."""
    await adopted(dsn, conn, emulator, customers=4, months=2)
    emu = emulator.emulator
    since = int(emu.clock.now()) - 3 * MONTH + MONTH // 2  # the history began 3 months ago
    emu.add_fault("403", "GET /v1/subscriptions/{id}", rate=1.0)
    result = await backfill_with(dsn, emulator, since=since)

    linked = linked_customers(conn)
    lacking = [
        i["id"]
        for i in emu.objects("invoices")
        if i["customer"] in linked and i["created"] >= since and subscription_of(i)
    ]
    invoices = result.families["invoices"]
    assert lacking and invoices.skipped == {"no mapping for sub_…": len(lacking)}, invoices
    assert invoices.imported == len(lacking) and invoices.changed == 0
    assert result.families["subscriptions"].imported == 0
    assert result.families["payment_intents"].changed > 0  # the rest is imported
    mapped = conn.execute(
        "SELECT count(*) FROM stripe.invoice_mappings WHERE stripe_invoice_id = ANY (%s)",
        (lacking,),
    ).fetchone()
    assert mapped == (0,)
    assert f"skipped {len(lacking)}: no mapping for sub_…" in rendered(result)


async def test_backfill_never_imports_a_payment_without_its_invoice(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    """A price that is not linked: its subscriptions cannot be imported, nor
    their invoices, nor the payments that paid those: all skipped with the
    price's reason (the payments learn it from their invoices' pages), no
    billing.payments row for them; the rest is imported."""
    history = seed_history(emulator.emulator, customers=6, months=3, mc_source=source_of(conn))
    account(conn, history)
    unlinked = history.prices[2]
    pairs = [p for p in catalog_pairs(history) if p.stripe_id != unlinked]
    result = await link.run(settings(dsn, emulator), pairs, by_email=True, dry_run=False)
    assert not result.refused and not result.ambiguous, result

    done = await run_backfill(dsn, emulator)
    emu, linked = emulator.emulator, linked_customers(conn)
    subs = {
        s["id"]
        for s in emu.objects("subscriptions")
        if s["customer"] in linked and any(i["price"]["id"] == unlinked for i in s["items"]["data"])
    }
    invoices = [i for i in emu.objects("invoices") if subscription_of(i) in subs]
    paid = [
        p["payment"]["payment_intent"]
        for i in invoices
        for p in i["payments"]["data"]
        if p["status"] == "paid"
    ]
    assert subs and invoices and paid, (subs, invoices)
    reasons = {n: dict(f.skipped) for n, f in done.families.items() if f.skipped}
    [reason] = reasons["subscriptions"]
    assert "price_…" in reason, reasons
    assert reasons == {
        "subscriptions": {reason: len(subs)},
        "invoices": {reason: len(invoices)},
        "payment_intents": {reason: len(paid)},
    }
    imported = conn.execute(
        "SELECT count(*) FROM stripe.payment_mappings WHERE stripe_payment_intent_id = ANY (%s)",
        (paid,),
    ).fetchone()
    assert imported == (0,)
    assert done.families["payment_intents"].changed > 0  # the rest is imported


async def test_backfill_takes_the_whole_limit_alone_and_half_beside_a_daemon(
    dsn: str, conn: Conn, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STRIPE_SYNC_BACKFILL_SHARE unset: the whole limit while no daemon runs on the
    database, half while one does (its LISTEN connection's application_name), a
    daemon that starts meanwhile slowing it down; set, it is obeyed whatever runs.
    The shares the run reports, not its timing."""
    await adopted(dsn, conn, emulator, customers=3, months=1)
    fast = {**cli_env(dsn, emulator.base_url), "STRIPE_SYNC_RATE_LIMIT": "1000"}

    alone = await backfill.run(load_settings({}, **fast))
    assert [(c.share, c.why, c.rate) for c in alone.shares] == [(1.0, "no daemon running", 1000)]
    assert json.loads(alone.to_json())["share"] == 1.0
    assert "share 1 (no daemon running, 1000 req/s)" in alone.summary()

    with psycopg.connect(dsn, application_name="stripe-sync/listen"):
        beside = await backfill.run(load_settings({}, **fast))
        assert [(c.share, c.why, c.rate) for c in beside.shares] == [
            (0.5, "1 daemon(s) running", 500)
        ]
        explicit = await backfill.run(load_settings({}, **fast, STRIPE_SYNC_BACKFILL_SHARE="0.8"))
        assert [(c.share, c.why) for c in explicit.shares] == [(0.8, "STRIPE_SYNC_BACKFILL_SHARE")]
    explicit = await backfill.run(load_settings({}, **fast, STRIPE_SYNC_BACKFILL_SHARE="0.3"))
    assert [c.share for c in explicit.shares] == [0.3]

    # A daemon started in the middle of a run: the run slows down to half.
    monkeypatch.setattr(backfill, "SHARE_CHECK_SECONDS", 0.05)
    api = StripeApi(Secret(API_KEY), api_base=emulator.base_url, rate_limit=0)
    started: list[psycopg.Connection[Any]] = []

    async def daemon_starts(family: str, objects: list[JSON]) -> None:
        if family == "subscriptions" and not started:
            started.append(psycopg.connect(dsn, application_name="stripe-sync/listen"))
            with anyio.fail_after(30):
                while api.pacer.rate != 500:
                    await anyio.sleep(0.05)

    try:
        async with api, make_pool(dsn, size=2 * backfill.APPLY_AT_ONCE + 1) as pool:
            midway = await Backfill(api, pool, rate_limit=1000, before_apply=daemon_starts).run()
    finally:
        for daemon in started:
            daemon.close()
    assert [(c.share, c.rate) for c in midway.shares] == [(1.0, 1000), (0.5, 500)]
    assert midway.shares[1].at > 0


def subscription_of(invoice: JSON) -> str | None:
    """The subscription an invoice names (under parent since API 2025-03-31)."""
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    found = details.get("subscription") or invoice.get("subscription")
    return str(found) if found else None


def rendered(result: BackfillResult) -> str:
    out, err = io.StringIO(), io.StringIO()
    result.render(out, err)
    return out.getvalue()


def stripe_client(emulator: EmulatorServer) -> Any:
    import stripe

    return stripe.StripeClient(
        API_KEY,
        base_addresses={"api": emulator.base_url},
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
        max_network_retries=0,
    )


# -- link ---------------------------------------------------------------------------------
def outbox(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT action_type, payload FROM integration.outbox ORDER BY id"
    ).fetchall()


async def test_link_pairs_conflicts_and_one_metadata_push(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    emu = emulator.emulator
    history = seed_history(emu, customers=4, months=1)
    other = seed_history_extra(emulator, "other/db000001")
    account(conn, history)
    env = cli_env(dsn, emulator.base_url)
    cus = history.customers

    first = run_cli("link", "1", cus[0], "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["linked"] == [f"billing.accounts id=1 ↔ {cus[0]}"]
    again = run_cli("link", "1", cus[0], env=env)
    assert again.returncode == 0 and "1 already linked" in again.stdout, again.stdout
    assert outbox(conn) == [("update_stripe_customer", {"account_id": 1})]

    refusals = {
        ("2", cus[0]): f"{cus[0]} is already linked to billing.accounts id=1",
        ("1", cus[1]): f"billing.accounts id=1 is already linked to {cus[0]}",
        ("2", "cus_nosuch"): "no live Stripe customer cus_nosuch",
        ("999", cus[2]): "no billing.accounts id=999",
        ("2", other): f"{other} belongs to another database (mc_source=other/db000001)",
    }
    for (mc_id, stripe_id), reason in refusals.items():
        refused = run_cli("link", mc_id, stripe_id, env=env)
        assert refused.returncode == 1, refused
        assert refused.stderr.strip().splitlines() == [
            f"stripe-sync link: refused: billing.accounts id={mc_id} ↔ {stripe_id}: {reason}"
        ]
    bad = run_cli("link", "1", env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert len(outbox(conn)) == 1

    # A price whose Stripe product is not the one its MC product is linked to.
    ok = run_cli("link", "--product", "1", history.products[0], env=env)
    assert ok.returncode == 0, ok.stderr
    wrong = run_cli("link", "--price", "1", history.prices[1], env=env)
    assert wrong.returncode == 1
    assert f"is a price of {history.products[1]}" in wrong.stderr

    # The outbox pushes MC's metadata to the customer once.
    async with outbox_pipeline(dsn, emulator.base_url):
        await eventually(lambda: all_settled(dsn))
    pushed = emu.store.require("customers", cus[0])
    assert pushed["metadata"] == {"mc_account_id": "1", "mc_source": source_of(conn)}
    assert emu.request_counts["POST /v1/customers/{id}"] == 1


def seed_history_extra(emulator: EmulatorServer, mc_source: str) -> str:
    """A customer another database (sharing the Stripe account) made."""
    client = stripe_client(emulator)
    made = client.v1.customers.create(
        params={
            "email": "x@example.com",
            "metadata": {"mc_account_id": "2", "mc_source": mc_source},
        }
    )
    return str(made.id)


async def test_link_by_email_unique_ambiguous_unmatched(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    history = seed_history(emulator.emulator, customers=5, months=1)
    account(conn, history)  # accounts 1..3 for customers 0..2; 90000 matches nothing
    # Account 3's email belongs to two Stripe customers; accounts 2 and 50 share one.
    stripe_client(emulator).v1.customers.create(params={"email": email_of(2).upper()})
    conn.execute("INSERT INTO billing.accounts (id, email) VALUES (50, %s)", (email_of(1),))
    env = cli_env(dsn, emulator.base_url)

    dry = run_cli("link", "--by-email", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["linked"] == [f"billing.accounts id=1 ↔ {history.customers[0]}"]
    assert len(report["ambiguous"]) == 3 and report["unmatched"] == [
        "billing.accounts id=90000 (nobody@example.com)"
    ]
    assert any(history.customers[2] in line for line in report["ambiguous"])
    assert conn.execute("SELECT count(*) FROM stripe.customer_mappings").fetchone() == (0,)
    assert outbox(conn) == []

    done = run_cli("link", "--by-email", env=env)
    assert done.returncode == 0 and "linked billing.accounts id=1" in done.stdout
    assert linked_customers(conn) == {history.customers[0]}


async def test_seed_links_twins_instead_of_creating_them(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    history = seed_history(emulator.emulator, customers=6, months=1, mc_source=source_of(conn))
    account(conn, history)
    # Account 1 changed its email since; its customer carries our metadata.
    conn.execute("UPDATE billing.accounts SET email = 'renamed@example.com' WHERE id = 1")
    # Account 3's email now has two customers: neither linked nor created.
    client = stripe_client(emulator)
    client.v1.customers.create(params={"email": email_of(2)})
    # Product 1 exists in Stripe with this database's metadata (its mapping was lost).
    ours = {"mc_product_id": "1", "mc_source": source_of(conn)}
    product = client.v1.products.create(params={"name": "Basic", "metadata": ours})
    env = cli_env(dsn, emulator.base_url)
    seeded = run_cli("seed", "--json", env=env)
    assert seeded.returncode == 0, seeded.stderr
    report = json.loads(seeded.stdout)
    assert report["looked"] and len(report["linked"]) == 4, report
    assert f"billing.products id=1 ↔ {product.id}" in report["linked"]
    assert len(report["ambiguous"]) == 1 and history.customers[2] in report["ambiguous"][0]
    # The account Stripe does not know, two products and the three prices.
    assert report["enqueued"] == 6
    assert linked_customers(conn) == {history.customers[i] for i in (0, 1, 3)}
    async with outbox_pipeline(dsn, emulator.base_url):
        await eventually(lambda: all_settled(dsn))
    customers = emulator.emulator.objects("customers")
    assert len(customers) == 6 + 1 + 1  # only nobody@example.com was created
    assert len(emulator.emulator.objects("products")) == 3 + 1 + 2
    again = run_cli("seed", env=env)
    assert again.returncode == 0 and "enqueued 0 " in again.stdout, again.stdout


async def test_the_commands_help_json_and_one_line_errors(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    for command, flags in {
        "backfill": ("--since", "--customer", "--dry-run", "--json"),
        "link": ("--by-email", "--product", "--price", "--dry-run", "--json"),
    }.items():
        shown = run_cli(command, "--help")
        assert shown.returncode == 0 and all(f in shown.stdout for f in flags), shown.stdout
    history = await adopted(dsn, conn, emulator, customers=3, months=1)
    env = cli_env(dsn, emulator.base_url)
    ran = run_cli("backfill", "--json", "--since", "400d", env=env)
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report["objects"] > 0 and report["changed"] == report["objects"]
    text = run_cli("backfill", "--customer", history.customers[0], env=env)
    assert text.returncode == 0 and "nothing to change" in text.stdout, text.stdout
    for args, code, line in (
        (("--customer", "nope"), 2, "--customer: expected a cus_ id, got 'nope'"),
        (("--customer", "cus_unknown"), 2, "customer cus_unknown is not linked"),
    ):
        failed = run_cli("backfill", *args, env=env)
        lines = failed.stderr.strip().splitlines()
        assert failed.returncode == code and len(lines) == 1 and line in lines[0], failed.stderr
    # argparse's own errors: its usage, then the one line.
    since = run_cli("backfill", "--since", "yesterday", env=env)
    assert since.returncode == 2 and "is neither a duration" in since.stderr.splitlines()[-1]
    unset = run_cli("backfill", env={"DATABASE_URL": dsn})
    assert unset.returncode == 78 and "STRIPE_API_KEY" in unset.stderr.strip(), unset.stderr


def stopped(dsn: str, env: dict[str, str], signum: int, progress: str) -> tuple[int, str]:
    """`stripe-sync backfill` as a process, sent ``signum`` once ``progress`` (SQL) holds."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DATABASE_URL"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stripe_sync.cli", "backfill"],
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with psycopg.connect(dsn, autocommit=True) as watch:
        poll(lambda: proc.poll() is not None or watch.execute(progress).fetchone() == (True,))
    assert proc.poll() is None, "the backfill ended before it could be stopped"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


async def test_backfill_stopped_by_sigterm_or_killed_resumes(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    await adopted(dsn, conn, emulator, customers=30, months=2)
    # Paced at 2 requests/s, so that it is still listing cards when stopped.
    slow = {**cli_env(dsn, emulator.base_url), "STRIPE_SYNC_RATE_LIMIT": "4"}
    some_cards = (
        "SELECT count(*) > 0 FROM integration.backfill_checkpoints WHERE family = 'payment_methods'"
    )
    code, err = stopped(dsn, slow, signal.SIGTERM, some_cards)
    assert code == 130, err
    assert err.strip().splitlines() == ["stripe-sync backfill: stopped; run it again to resume"]
    more_cards = (
        "SELECT objects > (SELECT count(*) FROM stripe.payment_method_mappings) - 20 "
        "FROM integration.backfill_checkpoints WHERE family = 'payment_methods' AND NOT done "
        "AND cursor > (SELECT min(stripe_customer_id) FROM stripe.customer_mappings)"
    )
    code, err = stopped(dsn, slow, signal.SIGKILL, more_cards)
    assert code == -signal.SIGKILL, err
    rerun = run_cli("backfill", "--json", env=cli_env(dsn, emulator.base_url))
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["resumed"] is True
    assert_equal_state(conn, emulator)
