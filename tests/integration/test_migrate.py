from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from stripe_sync import migrate as migrate_module
from stripe_sync.migrate import Migration, MigrationError, available, migrate

EXPECTED_TABLES = {
    ("billing", "accounts"),
    ("billing", "products"),
    ("billing", "prices"),
    ("billing", "subscriptions"),
    ("billing", "subscription_items"),
    ("billing", "invoices"),
    ("billing", "payments"),
    ("stripe", "provider_configs"),
    ("stripe", "customer_mappings"),
    ("stripe", "product_mappings"),
    ("stripe", "price_mappings"),
    ("stripe", "subscription_mappings"),
    ("stripe", "invoice_mappings"),
    ("stripe", "payment_refunds"),
    ("integration", "installation"),
    ("stripe", "payment_mappings"),
    ("billing", "disputes"),
    ("stripe", "dispute_mappings"),
    ("billing", "payment_methods"),
    ("stripe", "payment_method_mappings"),
    ("billing", "credit_notes"),
    ("stripe", "credit_note_mappings"),
    ("integration", "outbox"),
    ("integration", "webhook_events"),
    ("integration", "schema_migrations"),
    ("integration", "backfill_checkpoints"),
}


def tables(dsn: str) -> set[tuple[str, str]]:
    with psycopg.connect(dsn) as c:
        rows = c.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('billing', 'stripe', 'integration')"
        ).fetchall()
    return {(r[0], r[1]) for r in rows}


def test_migrate_builds_every_table_then_is_a_noop(empty_dsn: str) -> None:
    applied = migrate(empty_dsn)
    assert applied == [m.filename for m in available()]
    assert tables(empty_dsn) == EXPECTED_TABLES
    assert migrate(empty_dsn) == []


def test_migrations_are_numbered_and_ordered() -> None:
    names = [m.filename for m in available()]
    assert names == sorted(names)
    assert all(n[:4].isdigit() and n[4] == "_" for n in names)
    assert len({n[:4] for n in names}) == len(names)


def test_two_concurrent_runs_apply_each_file_once(empty_dsn: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrate(empty_dsn))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = sorted(f for r in results for f in r)
    assert applied == sorted(m.filename for m in available())
    with psycopg.connect(empty_dsn) as c:
        count = c.execute("SELECT count(*) FROM integration.schema_migrations").fetchone()
    assert count == (len(available()),)


def test_changed_applied_file_is_refused(empty_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    migrate(empty_dsn)
    original = available()
    changed = [Migration(original[0].filename, original[0].sql + "\n-- edited\n"), *original[1:]]
    monkeypatch.setattr(migrate_module, "available", lambda: changed)
    with pytest.raises(MigrationError, match=r"0001_billing\.sql changed after it was applied"):
        migrate(empty_dsn)


def test_new_file_is_applied_on_top(empty_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    migrate(empty_dsn)
    extra = Migration("9999_extra.sql", "CREATE TABLE billing.extra (id int);")
    everything: list[Any] = [*available(), extra]
    monkeypatch.setattr(migrate_module, "available", lambda: everything)
    assert migrate(empty_dsn) == ["9999_extra.sql"]
    assert ("billing", "extra") in tables(empty_dsn)


def test_failed_file_rolls_back_and_is_not_recorded(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(empty_dsn)
    broken = Migration("9999_broken.sql", "CREATE TABLE billing.half (id int); SELECT 1/0;")
    monkeypatch.setattr(migrate_module, "available", lambda: [*available(), broken])
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate(empty_dsn)
    assert ("billing", "half") not in tables(empty_dsn)


# Every table of the schema before 0010, one or more rows each, as MC and the
# daemon would have left them.
_FILL_BEFORE_0010 = """
INSERT INTO stripe.provider_configs (account_id, mode) VALUES ('acct_1', 'test');
INSERT INTO billing.accounts (id, email, name) VALUES (1, 'ada@example.com', 'Ada'),
    (2, 'bob@example.com', NULL);
INSERT INTO stripe.customer_mappings (account_id, stripe_customer_id, sync_status,
    last_event_created, last_event_rank, last_event_id)
    VALUES (1, 'cus_1', 'synced', 1700000000, 0, 'evt_1'), (2, NULL, 'pending', NULL, NULL, NULL);
INSERT INTO billing.products (id, name) VALUES (1, 'Pro');
INSERT INTO stripe.product_mappings (product_id, stripe_product_id, sync_status)
    VALUES (1, 'prod_1', 'synced');
INSERT INTO billing.prices (id, product_id, currency, unit_amount, recurring_interval)
    VALUES (1, 1, 'usd', 2500, 'month');
INSERT INTO stripe.price_mappings (price_id, stripe_price_id, sync_status)
    VALUES (1, 'price_1', 'synced');
INSERT INTO billing.subscriptions (id, account_id, status) VALUES (1, 1, 'active');
INSERT INTO billing.subscription_items (subscription_id, price_id, quantity) VALUES (1, 1, 2);
INSERT INTO stripe.subscription_mappings (subscription_id, stripe_subscription_id)
    VALUES (1, 'sub_1');
INSERT INTO billing.invoices (id, account_id, subscription_id, status, currency, amount_paid)
    VALUES (1, 1, 1, 'paid', 'usd', 5000);
INSERT INTO stripe.invoice_mappings (invoice_id, stripe_invoice_id) VALUES (1, 'in_1');
INSERT INTO billing.payments (id, account_id, invoice_id, status, currency, amount,
    amount_received, amount_refunded, refund_status)
    VALUES (1, 1, 1, 'succeeded', 'usd', 5000, 5000, 1000, 'partial');
INSERT INTO stripe.payment_mappings (payment_id, stripe_payment_intent_id, stripe_charge_id)
    VALUES (1, 'pi_1', 'ch_1');
INSERT INTO stripe.payment_refunds (stripe_refund_id, payment_id, amount, status,
    last_event_created, last_event_rank, last_event_id)
    VALUES ('re_1', 1, 1000, 'succeeded', 1700000001, 1, 'evt_2');
INSERT INTO integration.outbox (action_type, payload, status, note)
    VALUES ('create_stripe_customer', '{"account_id": 2}', 'pending', NULL);
INSERT INTO integration.webhook_events (stripe_event_id, event_type, livemode, event_created,
    payload, status, note)
    VALUES ('evt_1', 'customer.updated', false, 1700000000, '{}', 'processed', 'a note');
"""


def _rows(dsn: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, by table, as JSON objects in id order."""
    with psycopg.connect(dsn) as c:
        names = [f"{s}.{t}" for s, t in sorted(tables(dsn))]
        return {
            name: [r[0] for r in c.execute(f"SELECT to_jsonb(t) FROM {name} t ORDER BY 1")]
            for name in names
        }


def test_a_database_filled_before_0010_migrates_with_no_data_loss(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = available()
    monkeypatch.setattr(
        migrate_module, "available", lambda: [m for m in every if m.filename < "0010"]
    )
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn) as c:
        c.execute(_FILL_BEFORE_0010)
    before = _rows(empty_dsn)
    assert all(before[name] for name in before if name != "integration.installation"), before

    monkeypatch.setattr(migrate_module, "available", lambda: every)
    assert migrate(empty_dsn) == [m.filename for m in every if m.filename >= "0010"]
    after = _rows(empty_dsn)
    for name, rows in before.items():
        # New columns may appear; every old row keeps every old value (and
        # the ledger gains the new files' rows).
        kept = [{k: row[k] for k in rows[0]} for row in after[name]] if rows else []
        if name == "integration.schema_migrations":
            kept = [r for r in kept if r["filename"] < "0010"]
        assert kept == rows, name
    assert set(after) - set(before) == {
        "billing.disputes",
        "stripe.dispute_mappings",
        "billing.payment_methods",
        "stripe.payment_method_mappings",
        "billing.credit_notes",
        "stripe.credit_note_mappings",
        "integration.backfill_checkpoints",
    }
