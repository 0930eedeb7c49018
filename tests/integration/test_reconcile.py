"""stripe-sync reconcile: mappings against the emulator's objects, through the
official SDK. A catalog is synced by the real outbox pipeline, then drifted
in Stripe by hand (SDK calls), reported, fixed, and synced back."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from typing import Any

import psycopg
import pytest
from test_outbox import source

from stripe_emulator.server import EmulatorServer

from daemons import cli_env, run_cli
from pipeline import all_settled, eventually, outbox_pipeline

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[tuple[Any, ...]]
API_KEY = "sk_test_emulator"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli("reconcile", *args, env=env)


def settings_env(dsn: str, emulator: EmulatorServer) -> dict[str, str]:
    return cli_env(dsn, emulator.base_url)


async def sync(dsn: str, emulator: EmulatorServer) -> None:
    async with outbox_pipeline(dsn, emulator.base_url):
        rows = await eventually(lambda: all_settled(dsn))
    assert all(r[2] == "done" for r in rows), rows


async def synced_catalog(dsn: str, conn: Conn, emulator: EmulatorServer) -> None:
    conn.execute(
        "INSERT INTO billing.accounts (id, email, name) VALUES "
        "(1, 'ada@example.com', 'Ada'), (2, 'bob@example.com', NULL)"
    )
    conn.execute(
        "INSERT INTO billing.products (id, name, description) VALUES "
        "(1, 'Gold', 'The plan'), (2, 'Silver', NULL)"
    )
    conn.execute(
        "INSERT INTO billing.prices (id, product_id, currency, unit_amount, "
        "recurring_interval, nickname) VALUES (1, 1, 'eur', 1500, 'month', 'monthly')"
    )
    conn.execute("SELECT integration.seed_outbox()")
    await sync(dsn, emulator)


def stripe_id(conn: Conn, noun: str, mc_col: str, mc_id: int) -> str:
    row = conn.execute(
        f"SELECT stripe_{noun}_id FROM stripe.{noun}_mappings WHERE {mc_col} = %s", (mc_id,)
    ).fetchone()
    assert row is not None and row[0] is not None
    return str(row[0])


def outbox(conn: Conn, after: int = 0) -> list[tuple[str, dict[str, Any]]]:
    rows = conn.execute(
        "SELECT action_type, payload FROM integration.outbox WHERE id > %s ORDER BY id", (after,)
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def last_outbox_id(conn: Conn) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM integration.outbox").fetchone()
    return int(row[0]) if row else 0


async def test_clean_state_is_exit_0(dsn: str, conn: Conn, emulator: EmulatorServer) -> None:
    await synced_catalog(dsn, conn, emulator)
    env = settings_env(dsn, emulator)
    plain = cli(env=env)
    assert plain.returncode == 0, plain.stderr + plain.stdout
    assert plain.stdout == "checked 2 customer(s), 2 product(s), 1 price(s): no drift\n"
    report = json.loads(cli("--json", env=env).stdout)
    assert report["checked"] == {"customer": 2, "product": 2, "price": 1}
    assert report["drift"] == [] and set(report["counts"].values()) == {0}
    assert emulator.emulator.stats()["counts"]["GET /v1/customers/{id}"] >= 2


async def test_drift_of_each_kind_reported_fixed_and_gone(
    dsn: str, conn: Conn, emulator: EmulatorServer, stripe_client: Any
) -> None:
    await synced_catalog(dsn, conn, emulator)
    env = settings_env(dsn, emulator)
    cus1, cus2 = (
        stripe_id(conn, "customer", "account_id", 1),
        stripe_id(conn, "customer", "account_id", 2),
    )
    prod1, prod2 = (
        stripe_id(conn, "product", "product_id", 1),
        stripe_id(conn, "product", "product_id", 2),
    )
    price1 = stripe_id(conn, "price", "price_id", 1)

    # Someone edits Stripe directly (no webhooks reach us in this test).
    stripe_client.v1.customers.update(cus1, params={"email": "ada@elsewhere.example"})
    stripe_client.v1.customers.delete(cus2)
    stripe_client.v1.products.update(prod1, params={"active": False})
    stripe_client.v1.products.delete(prod2)  # no prices: Stripe removes it (404 after)
    stripe_client.v1.prices.update(price1, params={"metadata": {"mc_price_id": "999"}})

    before = last_outbox_id(conn)
    found = cli("--json", env=env)
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    kinds = {(d["family"], d["mc_id"]): d["kind"] for d in report["drift"]}
    assert kinds == {
        ("customer", 1): "changed",
        ("customer", 2): "deleted",
        ("product", 1): "deleted",
        ("product", 2): "missing",
        ("price", 1): "metadata",
    }
    assert report["counts"] == {
        "missing": 1,
        "deleted": 2,
        "changed": 1,
        "metadata": 1,
        "duplicate": 0,
    }
    changed = next(d for d in report["drift"] if d["kind"] == "changed")
    assert "ada@example.com" in changed["detail"] and "ada@elsewhere.example" in changed["detail"]
    assert all(d["fix"] is None for d in report["drift"])
    assert outbox(conn, before) == []  # reporting changes nothing

    plain = cli(env=env)
    assert plain.returncode == 1
    assert f"customer billing.accounts id=1 {cus1}: changed: email" in plain.stdout
    assert plain.stdout.splitlines()[-1].startswith("checked 2 customer(s), 2 product(s)")

    fixed = cli("--fix", env=env)
    assert fixed.returncode == 1, fixed.stderr
    assert "mapping marked deleted" in fixed.stdout
    assert "mapping set back to pending, enqueued create_stripe_product" in fixed.stdout
    assert sorted(outbox(conn, before), key=str) == sorted(
        [
            ("update_stripe_customer", {"account_id": 1}),
            ("update_stripe_product", {"product_id": 1}),
            ("create_stripe_product", {"product_id": 2}),
            ("update_stripe_price", {"price_id": 1}),
        ],
        key=str,
    )
    assert conn.execute(
        "SELECT stripe_customer_id, sync_status FROM stripe.customer_mappings WHERE account_id = 2"
    ).fetchone() == (cus2, "deleted")
    assert conn.execute(
        "SELECT stripe_product_id, sync_status FROM stripe.product_mappings WHERE product_id = 2"
    ).fetchone() == (None, "pending")

    # A second --fix before the daemon ran enqueues nothing twice.
    count = last_outbox_id(conn)
    again = cli("--fix", env=env)
    assert again.returncode == 1
    assert "update_stripe_customer already pending" in again.stdout
    assert last_outbox_id(conn) == count

    # The reset started a new create generation: a new idempotency key, so
    # Stripe does not replay the first answer (the deleted product).
    await sync(dsn, emulator)

    clean = cli("--json", env=env)
    assert clean.returncode == 0, clean.stdout
    assert json.loads(clean.stdout)["checked"] == {"customer": 1, "product": 2, "price": 1}
    customer = next(c for c in emulator.emulator.objects("customers") if c["id"] == cus1)
    assert customer["email"] == "ada@example.com"
    new_prod2 = stripe_id(conn, "product", "product_id", 2)
    assert new_prod2 != prod2


async def test_an_archive_of_an_active_row_is_refused_and_reconcile_agrees(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    """MC's row is the truth: an archive while it says active fails naming why, and
    an archive after active = false is what reconcile expects (#28)."""
    await synced_catalog(dsn, conn, emulator)
    env = settings_env(dsn, emulator)
    price1 = stripe_id(conn, "price", "price_id", 1)
    before = last_outbox_id(conn)
    conn.execute(
        "INSERT INTO integration.outbox (action_type, payload) VALUES "
        """('archive_stripe_price', '{"price_id": 1}'), """
        """('archive_stripe_product', '{"product_id": 2}')"""
    )
    async with outbox_pipeline(dsn, emulator.base_url):
        rows = await eventually(lambda: all_settled(dsn))
    refused = [r for r in rows if r[0] > before]
    assert [(r[1], r[2], r[4]) for r in refused] == [
        (
            "archive_stripe_price",
            "failed",
            "billing.prices id=1 is active: set active = false (with the "
            "archive, in one transaction) to archive its Stripe price; nothing was sent",
        ),
        (
            "archive_stripe_product",
            "failed",
            "billing.products id=2 is active: set active = false (with the "
            "archive, in one transaction) to archive its Stripe product; nothing was sent",
        ),
    ]
    assert [p["active"] for p in emulator.emulator.objects("prices")] == [True]
    assert cli(env=env).returncode == 0

    # As the runbook says: both in one transaction.
    with conn.transaction():
        conn.execute("UPDATE billing.prices SET active = false WHERE id = 1")
        conn.execute(
            "INSERT INTO integration.outbox (action_type, payload) "
            """VALUES ('archive_stripe_price', '{"price_id": 1}')"""
        )
    async with outbox_pipeline(dsn, emulator.base_url):
        rows = await eventually(lambda: all_settled(dsn))
    assert rows[-1][1:3] == ("archive_stripe_price", "done"), rows[-1]
    assert [p["active"] for p in emulator.emulator.objects("prices")] == [False]
    # Archived as MC asked: the mapping is deleted (its price.updated webhook keeps
    # it so, webhooks/catalog.py), a confirmed archive reconcile does not compare.
    assert conn.execute(
        "SELECT sync_status FROM stripe.price_mappings WHERE price_id = 1"
    ).fetchone() == ("deleted",)
    clean = cli(env=env)
    assert clean.returncode == 0, clean.stdout
    # An archive made in Stripe alone (MC's row active: its webhook leaves the
    # mapping synced) is drift, and the line says how MC keeps it.
    conn.execute("UPDATE stripe.price_mappings SET sync_status = 'synced' WHERE price_id = 1")
    conn.execute("UPDATE billing.prices SET active = true WHERE id = 1")
    drift = cli(env=env)
    assert drift.returncode == 1
    assert f"{price1}: deleted: archived in Stripe while the MC row is active (MC's row" in (
        drift.stdout
    )


async def test_several_stripe_objects_for_one_mc_row_are_reported_never_fixed(
    dsn: str, conn: Conn, emulator: EmulatorServer, stripe_client: Any
) -> None:
    await synced_catalog(dsn, conn, emulator)
    cus1 = stripe_id(conn, "customer", "account_id", 1)
    prod2 = stripe_id(conn, "product", "product_id", 2)
    env, ours = settings_env(dsn, emulator), source(conn)

    def create(service: Any, key: str, mc_id: str, mc_source: str, **params: Any) -> str:
        metadata = {key: mc_id, "mc_source": mc_source}
        return str(service.create(params={**params, "metadata": metadata}).id)

    # A second customer for account 1 and a second product for product 2, as a
    # search slower than STRIPE_SYNC_SEARCH_LAG could leave them; not duplicates:
    # another database's customer for its account 1, and a deleted one of ours.
    extra_cus = create(stripe_client.v1.customers, "mc_account_id", "1", ours, email="a@x.io")
    extra_prod = create(stripe_client.v1.products, "mc_product_id", "2", ours, name="Silver")
    create(stripe_client.v1.customers, "mc_account_id", "1", "other_db/12345678")
    gone = create(stripe_client.v1.customers, "mc_account_id", "2", ours)
    stripe_client.v1.customers.delete(gone)

    before = last_outbox_id(conn)
    found = cli("--json", "--fix", env=env)
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert report["counts"]["duplicate"] == 2 and len(report["drift"]) == 2, report
    by_family = {d["family"]: d for d in report["drift"]}
    customer, product = by_family["customer"], by_family["product"]
    assert (customer["kind"], customer["mc_id"], customer["stripe_id"]) == ("duplicate", 1, cus1)
    assert (product["kind"], product["mc_id"], product["stripe_id"]) == ("duplicate", 2, prod2)
    assert customer["detail"] == (
        f"2 Stripe customers carry mc_account_id=1 of this database "
        f"({', '.join(sorted([cus1, extra_cus]))}); the mapped one is {cus1}: "
        "delete or merge the others by hand"
    )
    assert extra_prod in product["detail"]
    assert {d["fix"] for d in report["drift"]} == {"left alone: resolve by hand"}
    assert outbox(conn, before) == []  # nothing is repaired
    plain = cli(env=env)
    assert f"customer billing.accounts id=1 {cus1}: duplicate: 2 Stripe customers" in plain.stdout


async def test_missing_metadata_and_bad_stripe_id(
    dsn: str, conn: Conn, emulator: EmulatorServer, stripe_client: Any
) -> None:
    await synced_catalog(dsn, conn, emulator)
    env = settings_env(dsn, emulator)
    cus1 = stripe_id(conn, "customer", "account_id", 1)
    # Stripe drops a metadata key set to "".
    stripe_client.v1.customers.update(cus1, params={"metadata": {"mc_account_id": ""}})
    conn.execute(
        "UPDATE stripe.customer_mappings SET stripe_customer_id = 'cus_doesnotexist' "
        "WHERE account_id = 2"
    )
    report = json.loads(cli("--json", "--fix", env=env).stdout)
    kinds = {(d["family"], d["mc_id"]): (d["kind"], d["detail"]) for d in report["drift"]}
    assert kinds == {
        ("customer", 1): ("metadata", "metadata mc_account_id missing"),
        ("customer", 2): ("missing", "Stripe has no customer cus_doesnotexist"),
    }
    # The re-create for account 2 (a new generation, so a new key) searches first
    # and adopts its real customer; account 1 gets its metadata back. No duplicate.
    await sync(dsn, emulator)
    assert cli(env=env).returncode == 0
    assert stripe_id(conn, "customer", "account_id", 2).startswith("cus_")
    assert emulator.emulator.count("customers") == 2


def test_usage_and_config_errors() -> None:
    assert cli("--bogus", env={}).returncode == 2
    missing = cli(env={"DATABASE_URL": "postgresql:///x"})
    assert (missing.returncode, missing.stderr) == (
        78,
        "stripe-sync: configuration error: STRIPE_API_KEY is not set\n",
    )


async def test_stripe_failures_retried_then_one_line_exit_3(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    await synced_catalog(dsn, conn, emulator)
    env = settings_env(dsn, emulator)
    emulator.emulator.add_fault("500", "GET /v1/customers/{id}", count=2)
    assert cli(env=env).returncode == 0  # a temporary failure is retried
    emulator.emulator.add_fault("500", "GET /v1/customers/{id}", rate=1.0)
    result = cli(env=env)
    assert result.returncode == 3
    assert result.stderr.startswith("stripe-sync reconcile: Stripe failed with 500")
    assert len(result.stderr.splitlines()) == 1


def with_terminal_stderr(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """Run reconcile with stderr on a pseudo-terminal and stdout on a pipe."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DATABASE_URL"))}
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.run(
        [sys.executable, "-m", "stripe_sync.cli", "reconcile"],
        env={**base, **env, "TERM": "xterm", "COLUMNS": "100"},
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
        timeout=60,
        check=False,
    )
    os.close(slave)
    reader.join(5)
    os.close(master)
    return proc, b"".join(chunks)


async def test_progress_bar_on_a_terminal(
    dsn: str, conn: Conn, emulator: EmulatorServer, stripe_client: Any
) -> None:
    await synced_catalog(dsn, conn, emulator)
    stripe_client.v1.customers.update(
        stripe_id(conn, "customer", "account_id", 1), params={"name": "Eve"}
    )
    proc, terminal = with_terminal_stderr(settings_env(dsn, emulator))
    # Drift lines and the summary stay plain on stdout; the bar went to the terminal.
    assert proc.returncode == 1
    assert "changed: name 'Ada' in MC, 'Eve' in Stripe" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("checked 2 customer(s)")
    assert b"\x1b[" in terminal and b"checking" in terminal
