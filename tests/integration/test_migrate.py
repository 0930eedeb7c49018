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
    ("integration", "outbox"),
    ("integration", "webhook_events"),
    ("integration", "schema_migrations"),
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
