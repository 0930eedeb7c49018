"""The outbox pipeline end to end: a DBA's SQL insert → NOTIFY → claim → the
official SDK over HTTP → the emulator → mapping row + done."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import SPEC, fresh_database
from emulator_helpers import text_of_length

from stripe_emulator.server import EmulatorServer
from stripe_sync.db import make_pool, queries
from stripe_sync.outbox.execute import EXECUTORS
from stripe_sync.webhooks.execute import WebhookContext

from pipeline import all_settled, eventually, outbox_pipeline, outbox_rows
from webhook_helpers import running_worker, statuses, store, wait_idle

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[tuple[Any, ...]]


def catalog(conn: Conn, *, price: bool = True) -> None:
    conn.execute(
        "INSERT INTO billing.accounts (id, email, name) VALUES (1, 'ada@example.com', 'Ada')"
    )
    conn.execute(
        "INSERT INTO billing.products (id, name, description) VALUES (1, 'Gold', 'The plan')"
    )
    if price:
        conn.execute(
            "INSERT INTO billing.prices (id, product_id, currency, unit_amount, "
            "recurring_interval, nickname) VALUES (1, 1, 'eur', 1500, 'month', 'monthly')"
        )


def enqueue(conn: Conn, action: str, payload: str) -> int:
    row = conn.execute(
        "INSERT INTO integration.outbox (action_type, payload) VALUES (%s, %s) RETURNING id",
        (action, payload),
    ).fetchone()
    assert row is not None
    return int(row[0])


def source(conn: Conn) -> str:
    row = conn.execute(queries("outbox")["source"]).fetchone()
    assert row is not None
    return str(row[0])


def mapping(conn: Conn, table: str, mc_col: str, mc_id: int = 1) -> tuple[Any, ...] | None:
    stripe_col = {
        "customer": "stripe_customer_id",
        "product": "stripe_product_id",
        "price": "stripe_price_id",
    }[table]
    return conn.execute(
        f"SELECT {stripe_col}, sync_status FROM stripe.{table}_mappings WHERE {mc_col} = %s",
        (mc_id,),
    ).fetchone()


def test_every_allowed_action_has_an_executor(conn: Conn) -> None:
    # The one CHECK constraint on action_type (migration 0011 names it), by its
    # name and kind: any other constraint that mentions the column is not it.
    checks = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'integration.outbox'::regclass "
        "AND conname = 'outbox_action_type_check' AND contype = 'c'"
    ).fetchall()
    assert len(checks) == 1, checks
    # The CHECK and the trigger that names the valid actions read one list (schema/0014).
    assert "integration.outbox_actions()" in checks[0][0]
    row = conn.execute("SELECT integration.outbox_actions()").fetchone()
    assert row is not None and row[0] == list(EXECUTORS)


async def test_create_customer_product_price(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    catalog(conn)
    async with outbox_pipeline(dsn, emulator.base_url):
        # A DBA's plain SQL, in one transaction; the price waits for its product.
        with conn.transaction():
            enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
            enqueue(conn, "create_stripe_price", '{"price_id": 1}')
            enqueue(conn, "create_stripe_product", '{"product_id": 1}')
        rows = await eventually(lambda: all_settled(dsn))
    assert [r[2] for r in rows] == ["done", "done", "done"], rows

    cus_id, status = mapping(conn, "customer", "account_id") or (None, None)
    assert status == "synced"
    customer = emulator.emulator.objects("customers")
    assert [(c["id"], c["email"], c["name"], c["metadata"]) for c in customer] == [
        (cus_id, "ada@example.com", "Ada", {"mc_account_id": "1", "mc_source": source(conn)})
    ]

    prod_id, _ = mapping(conn, "product", "product_id") or (None, None)
    price_id, price_status = mapping(conn, "price", "price_id") or (None, None)
    assert price_status == "synced"
    [price] = emulator.emulator.objects("prices")
    assert price["id"] == price_id and price["product"] == prod_id
    assert (
        price["unit_amount"],
        price["currency"],
        price["recurring"]["interval"],
        price["nickname"],
        price["metadata"],
    ) == (1500, "eur", "month", "monthly", {"mc_price_id": "1", "mc_source": source(conn)})


async def test_updates_and_archives(dsn: str, conn: Conn, emulator: EmulatorServer) -> None:
    catalog(conn)
    async with outbox_pipeline(dsn, emulator.base_url):
        for action, payload in [
            ("create_stripe_customer", '{"account_id": 1}'),
            ("create_stripe_product", '{"product_id": 1}'),
            ("create_stripe_price", '{"price_id": 1}'),
        ]:
            enqueue(conn, action, payload)
        await eventually(lambda: all_settled(dsn))
        conn.execute("UPDATE billing.accounts SET email = 'ada@new.example', name = 'Ada L.'")
        conn.execute("UPDATE billing.products SET name = 'Gold+', description = 'Better'")
        conn.execute("UPDATE billing.prices SET nickname = 'monthly gold'")
        enqueue(conn, "update_stripe_customer", '{"account_id": 1}')
        enqueue(conn, "update_stripe_product", '{"product_id": 1}')
        enqueue(conn, "update_stripe_price", '{"price_id": 1}')
        await eventually(lambda: all_settled(dsn))
        # An archive follows MC's row (an active one is refused: test_reconcile.py).
        conn.execute("UPDATE billing.prices SET active = false")
        conn.execute("UPDATE billing.products SET active = false")
        enqueue(conn, "archive_stripe_price", '{"price_id": 1}')
        enqueue(conn, "archive_stripe_product", '{"product_id": 1}')
        rows = await eventually(lambda: all_settled(dsn))
    assert [r[2] for r in rows] == ["done"] * 8, rows
    emu = emulator.emulator
    [customer] = emu.objects("customers")
    assert (customer["email"], customer["name"]) == ("ada@new.example", "Ada L.")
    [product] = emu.objects("products")
    assert (product["name"], product["description"], product["active"]) == (
        "Gold+",
        "Better",
        False,
    )
    [price] = emu.objects("prices")
    assert (price["nickname"], price["active"], price["unit_amount"]) == (
        "monthly gold",
        False,
        1500,
    )
    assert mapping(conn, "product", "product_id") == (product["id"], "deleted")
    assert mapping(conn, "price", "price_id") == (price["id"], "deleted")


async def test_an_archive_survives_its_own_webhook_and_an_update_unarchives(
    dsn: str, conn: Conn, emulator: EmulatorServer, stripe_client: Any
) -> None:
    """The product.updated/price.updated (active=false) Stripe sends for an
    archive MC asked for keeps the mapping deleted, whichever of the outbox's
    record and the webhook comes first; an update of the MC row made active
    again un-archives, and its webhook keeps the mapping synced. An archive made
    in Stripe alone (the MC row active) leaves it synced: reconcile reports it."""
    catalog(conn)
    emu = emulator.emulator
    applied = 0

    async def webhooks() -> None:
        """The catalog events the emulator made since the last call, applied."""
        nonlocal applied
        made = emu.objects("events")
        new = [e for e in made[applied:] if e["type"].startswith(("product.", "price."))]
        applied = len(made)
        async with make_pool(dsn, size=2) as pool, running_worker(pool, WebhookContext(pool)):
            await store(pool, *new)  # (stored already: replayed as they are)
            await wait_idle(pool)
        assert {e["id"]: statuses(conn)[e["id"]][0] for e in new} == {
            e["id"]: "processed" for e in new
        }

    def statuses_of_mappings() -> tuple[Any, ...]:
        return (mapping(conn, "product", "product_id"), mapping(conn, "price", "price_id"))

    async def run(*actions: str) -> None:
        for action in actions:
            noun = action.rsplit("_", 1)[1]
            enqueue(conn, action, f'{{"{noun}_id": 1}}')
        async with outbox_pipeline(dsn, emulator.base_url):
            rows = await eventually(lambda: all_settled(dsn))
        assert [r[2] for r in rows] == ["done"] * len(rows), rows

    await run("create_stripe_product", "create_stripe_price")
    await webhooks()
    [product], [price] = emu.objects("products"), emu.objects("prices")
    assert statuses_of_mappings() == ((product["id"], "synced"), (price["id"], "synced"))

    conn.execute("UPDATE billing.prices SET active = false")
    conn.execute("UPDATE billing.products SET active = false")
    await run("archive_stripe_price", "archive_stripe_product")
    archived = ((product["id"], "deleted"), (price["id"], "deleted"))
    assert statuses_of_mappings() == archived
    await webhooks()  # the archive's own events, after the outbox recorded it
    assert statuses_of_mappings() == archived
    # The other order: the webhooks before the outbox's record (which writes deleted).
    for table in ("product", "price"):
        conn.execute(
            f"UPDATE stripe.{table}_mappings SET sync_status = 'synced', "
            "last_event_created = NULL, last_event_rank = NULL, last_event_id = NULL"
        )
    conn.execute("UPDATE integration.webhook_events SET status = 'pending', attempts = 0")
    applied = 0
    await webhooks()
    assert statuses_of_mappings() == archived

    # Un-archived: MC's row active again, pushed by an update.
    conn.execute("UPDATE billing.products SET active = true")
    conn.execute("UPDATE billing.prices SET active = true")
    await run("update_stripe_product", "update_stripe_price")
    assert (emu.objects("products")[0]["active"], emu.objects("prices")[0]["active"]) == (
        True,
        True,
    )
    live = ((product["id"], "synced"), (price["id"], "synced"))
    assert statuses_of_mappings() == live
    await webhooks()
    assert statuses_of_mappings() == live

    # Archived in Stripe alone while MC's row is active: drift, left for reconcile to see.
    stripe_client.v1.prices.update(price["id"], params={"active": False})
    await webhooks()
    assert statuses_of_mappings() == live

    # Archived again by MC: an archive, not "already archived".
    conn.execute("UPDATE billing.prices SET active = false")
    conn.execute("UPDATE billing.products SET active = false")
    await run("archive_stripe_price", "archive_stripe_product")
    await webhooks()
    assert statuses_of_mappings() == archived
    assert [r[4] for r in outbox_rows(dsn)[-2:]] == [None, None]  # sent, not skipped

    # An archived row's other fields still reach Stripe; it stays archived.
    conn.execute("UPDATE billing.prices SET nickname = 'retired'")
    await run("update_stripe_price")
    assert (emu.objects("prices")[0]["nickname"], emu.objects("prices")[0]["active"]) == (
        "retired",
        False,
    )
    assert statuses_of_mappings() == archived
    await webhooks()
    assert statuses_of_mappings() == archived


async def test_values_stripe_would_refuse_fail_before_any_request(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    conn.execute(
        "INSERT INTO billing.accounts (id, email, name) VALUES (1, %s, 'Ada'), (2, 'b@x.io', '')",
        ("a" * 600 + "@example.com",),
    )
    async with outbox_pipeline(dsn, emulator.base_url):
        enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
        enqueue(conn, "create_stripe_customer", '{"account_id": 2}')
        rows = await eventually(lambda: all_settled(dsn))
    too_long, empty = rows
    assert too_long[2:4] == ("failed", 1), too_long
    assert too_long[4] == (
        "billing.accounts.email id=1: 612 characters; Stripe accepts at most 512, "
        "so nothing was sent"
    )
    # An empty name is left out (Stripe refuses name=): the customer has none.
    assert empty[2] == "done", empty
    [customer] = emulator.emulator.objects("customers")
    assert (customer["email"], customer["name"]) == ("b@x.io", None)


# Every column the outbox sends that Stripe limits (its spec's maxLength), with the
# MC table, the payload's field and the emulator's kind.
LIMITED = [
    ("customer", "billing.accounts", "email"),
    ("customer", "billing.accounts", "name"),
    ("product", "billing.products", "name"),
    ("product", "billing.products", "description"),
    ("price", "billing.prices", "nickname"),
]
_SECOND_ROW = {
    "billing.accounts": "INSERT INTO billing.accounts (id, email) VALUES (2, 'bo@example.com')",
    "billing.products": "INSERT INTO billing.products (id, name) VALUES (2, 'Silver')",
    "billing.prices": "INSERT INTO billing.prices (id, product_id, currency, unit_amount) "
    "VALUES (2, 1, 'eur', 900)",
}


@pytest.mark.parametrize(("family", "table", "column"), LIMITED)
async def test_stripe_length_limits_at_the_boundary(
    dsn: str, conn: Conn, emulator: EmulatorServer, family: str, table: str, column: str
) -> None:
    """At the limit the value reaches Stripe whole, on a create and on an update;
    one character over, on either, the row fails naming the column and nothing is sent."""
    limit = SPEC.max_length(f"POST /v1/{family}s", column)
    assert limit is not None

    def set_to(mc_id: int, length: int, fill: str) -> str:
        value = text_of_length(column, length, fill)
        conn.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s", (value, mc_id))
        return value

    def push(action: str, mc_id: int) -> None:
        field = {"customer": "account_id", "product": "product_id", "price": "price_id"}[family]
        enqueue(conn, f"{action}_stripe_{family}", f'{{"{field}": {mc_id}}}')

    catalog(conn)
    conn.execute(_SECOND_ROW[table])
    async with outbox_pipeline(dsn, emulator.base_url) as pipeline:
        if family == "price":
            enqueue(conn, "create_stripe_product", '{"product_id": 1}')
            await eventually(lambda: all_settled(dsn))
        at = set_to(1, limit, "a")
        push("create", 1)
        await eventually(lambda: all_settled(dsn))
        [sent] = emulator.emulator.objects(f"{family}s")
        assert sent[column] == at
        set_to(1, limit + 1, "b")
        set_to(2, limit + 1, "c")
        calls = pipeline.api.calls
        push("update", 1)
        push("create", 2)
        refused = (await eventually(lambda: all_settled(dsn)))[-2:]
        assert pipeline.api.calls == calls
        assert emulator.emulator.objects(f"{family}s") == [sent]
        at = set_to(1, limit, "d")
        push("update", 1)
        updated = (await eventually(lambda: all_settled(dsn)))[-1]
    assert [r[2:] for r in refused] == [
        (
            "failed",
            1,
            f"{table}.{column} id={mc_id}: {limit + 1} characters; Stripe accepts at most "
            f"{limit}, so nothing was sent",
        )
        for mc_id in (1, 2)
    ]
    assert updated[2] == "done", updated
    [sent] = emulator.emulator.objects(f"{family}s")
    assert sent[column] == at


async def test_an_emptied_description_is_unset_in_stripe(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    catalog(conn, price=False)
    async with outbox_pipeline(dsn, emulator.base_url):
        enqueue(conn, "create_stripe_product", '{"product_id": 1}')
        await eventually(lambda: all_settled(dsn))
        conn.execute("UPDATE billing.products SET description = ''")
        enqueue(conn, "update_stripe_product", '{"product_id": 1}')
        rows = await eventually(lambda: all_settled(dsn))
    assert [r[2] for r in rows] == ["done", "done"], rows
    [product] = emulator.emulator.objects("products")
    assert product["description"] is None


async def test_a_repeated_create_or_archive_is_done_without_a_request(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    catalog(conn, price=False)
    async with outbox_pipeline(dsn, emulator.base_url) as pipeline:
        enqueue(conn, "create_stripe_product", '{"product_id": 1}')
        await eventually(lambda: all_settled(dsn))
        conn.execute("UPDATE billing.products SET active = false")
        enqueue(conn, "archive_stripe_product", '{"product_id": 1}')
        await eventually(lambda: all_settled(dsn))
        calls = pipeline.api.calls
        enqueue(conn, "create_stripe_product", '{"product_id": 1}')
        enqueue(conn, "archive_stripe_product", '{"product_id": 1}')
        rows = await eventually(lambda: all_settled(dsn) if len(outbox_rows(dsn)) == 4 else None)
        assert pipeline.api.calls == calls
    [product] = emulator.emulator.objects("products")
    assert [(r[1], r[2], r[4]) for r in rows[2:]] == [
        ("create_stripe_product", "done", f"already mapped to {product['id']}"),
        ("archive_stripe_product", "done", f"{product['id']} already archived"),
    ]
    assert mapping(conn, "product", "product_id") == (product["id"], "deleted")


@pytest.mark.parametrize(
    "payload,error",
    [
        ('{"account_id": "1"}', "payload.account_id: expected int, got str"),
        ("{}", 'payload.account_id: missing (expected {"account_id": <id>})'),
        ('{"acount_id": 1}', "payload: unknown key acount_id (did you mean account_id?)"),
        ("[1]", "payload: expected a JSON object, got array"),
        ('{"account_id": 42}', "billing.accounts id=42 does not exist"),
        ('{"account_id": 0}', "payload.account_id: expected a positive 64-bit id"),
        ('{"account_id": 1' + "0" * 30 + "}", "payload.account_id: expected a positive 64-bit id"),
    ],
)
async def test_bad_payload_fails_clearly_and_the_daemon_keeps_going(
    dsn: str, conn: Conn, emulator: EmulatorServer, payload: str, error: str
) -> None:
    catalog(conn, price=False)
    async with outbox_pipeline(dsn, emulator.base_url):
        bad = enqueue(conn, "create_stripe_customer", payload)
        good = enqueue(conn, "create_stripe_product", '{"product_id": 1}')
        rows = {r[0]: r for r in await eventually(lambda: all_settled(dsn))}
    assert rows[bad][2:] == ("failed", 1, rows[bad][4])
    assert error in rows[bad][4]
    assert rows[good][2] == "done"
    assert emulator.emulator.count("customers") == 0


@pytest.mark.parametrize("fault", ["rate_limit", "500", "503", "drop"])
async def test_transient_faults_are_retried_to_exactly_one_object(
    dsn: str, conn: Conn, emulator: EmulatorServer, fault: str
) -> None:
    catalog(conn, price=False)
    emulator.emulator.add_fault(fault, "POST /v1/customers", count=2)
    async with outbox_pipeline(dsn, emulator.base_url):
        enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
        [row] = await eventually(lambda: all_settled(dsn))
    assert row[2:4] == ("done", 3)
    assert emulator.emulator.count("customers") == 1


async def test_applied_but_response_lost_makes_exactly_one_customer(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    catalog(conn, price=False)
    emulator.emulator.add_fault("applied_response_lost", "POST /v1/customers", count=3)
    async with outbox_pipeline(dsn, emulator.base_url):
        enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
        [row] = await eventually(lambda: all_settled(dsn))
    assert row[2] == "done"
    [customer] = emulator.emulator.objects("customers")
    assert mapping(conn, "customer", "account_id") == (customer["id"], "synced")


async def test_a_key_in_use_is_retried_shortly_with_the_same_key(
    dsn: str, conn: Conn, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Attempt 1 gives up on its answer (timeout) while Stripe still executes it; the
    retries meet 409 idempotency_key_in_use until it is done, then get its customer
    (replayed under the key, or found by the search a retry makes first)."""
    catalog(conn, price=False)
    emu = emulator.emulator
    emu.add_fault("latency", "POST /v1/customers", seconds=2.0, executing=True)
    async with outbox_pipeline(dsn, emulator.base_url, stripe_timeout=0.5, max_attempts=30):
        enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
        [row] = await eventually(lambda: all_settled(dsn), timeout=30)
    assert row[2] == "done", row
    [customer] = emu.objects("customers")
    assert mapping(conn, "customer", "account_id") == (customer["id"], "synced")
    reasons = [str(getattr(r, "reason", "")) for r in caplog.records]
    assert any("409 idempotency_key_in_use" in r for r in reasons), reasons
    assert emu.stats()["counts"]["POST /v1/customers"] >= 2


async def test_a_create_retried_after_stripe_forgot_the_key_adopts(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    """Idempotency keys live 24 h; past that, the metadata search finds the object."""
    catalog(conn, price=False)
    emu = emulator.emulator
    emu.add_fault("applied_response_lost", "POST /v1/customers", count=1)
    async with outbox_pipeline(dsn, emulator.base_url, max_attempts=3):
        enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
        await eventually(lambda: emu.count("customers") == 1)
        emu.advance_clock(25 * 3600)
        [row] = await eventually(lambda: all_settled(dsn))
    assert row[2] == "done"
    assert emu.count("customers") == 1
    assert emu.stats()["counts"].get("GET /v1/customers/search", 0) >= 1


@pytest.fixture
def quoted_dsn(pg_server: dict[str, Any], db_template: str) -> Iterator[str]:
    """A database whose name holds a quote: mc_source embeds it in search queries."""
    with fresh_database(pg_server, f"stripe_sync_q{os.getpid()}_o'brien", db_template) as d:
        yield d


async def test_the_adoption_search_quotes_a_database_name(
    quoted_dsn: str, emulator: EmulatorServer
) -> None:
    with psycopg.connect(quoted_dsn, autocommit=True) as conn:
        catalog(conn, price=False)
        assert "o'brien/" in source(conn)
        emu = emulator.emulator
        emu.add_fault("applied_response_lost", "POST /v1/customers", count=1)
        async with outbox_pipeline(quoted_dsn, emulator.base_url, max_attempts=3):
            enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
            await eventually(lambda: emu.count("customers") == 1)
            emu.advance_clock(25 * 3600)  # the key is forgotten: only the search can tell
            [row] = await eventually(lambda: all_settled(quoted_dsn))
    assert row[2] == "done", row
    assert emu.count("customers") == 1


async def test_never_adopts_another_databases_customer(
    dsn: str, conn: Conn, emulator: EmulatorServer, stripe_client: Any
) -> None:
    """Another database on the same Stripe account has a customer for its account 1."""
    catalog(conn, price=False)
    theirs = stripe_client.v1.customers.create(
        params={
            "email": "other@example.com",
            "metadata": {"mc_account_id": "1", "mc_source": "other_db/12345678"},
        }
    )
    emulator.emulator.add_fault("503", "POST /v1/customers", count=1)  # so attempt 2 searches
    async with outbox_pipeline(dsn, emulator.base_url):
        enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
        [row] = await eventually(lambda: all_settled(dsn))
    assert row[2:4] == ("done", 2)
    ours = mapping(conn, "customer", "account_id")
    assert ours is not None and ours[0] != theirs.id
    assert emulator.emulator.count("customers") == 2


async def test_two_create_rows_for_one_account_make_one_customer(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    catalog(conn, price=False)
    async with outbox_pipeline(dsn, emulator.base_url):
        with conn.transaction():
            enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
            enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
        rows = await eventually(lambda: all_settled(dsn))
    assert [r[2] for r in rows] == ["done", "done"]
    assert emulator.emulator.count("customers") == 1


async def test_stripe_rejection_fails_at_once(
    dsn: str, conn: Conn, emulator: EmulatorServer, stripe_client: Any
) -> None:
    catalog(conn, price=False)
    async with outbox_pipeline(dsn, emulator.base_url):
        enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
        await eventually(lambda: all_settled(dsn))
        [customer] = emulator.emulator.objects("customers")
        stripe_client.v1.customers.delete(customer["id"])  # someone deletes it in the dashboard
        enqueue(conn, "update_stripe_customer", '{"account_id": 1}')
        rows = await eventually(lambda: len(outbox_rows(dsn)) == 2 and all_settled(dsn))
    update = rows[1]
    assert update[2:4] == ("failed", 1)
    assert update[4].startswith(f"Stripe rejected update customer {customer['id']} (404")


async def test_retry_budget_runs_out_with_a_clear_error(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    catalog(conn, price=False)
    emulator.emulator.add_fault("503", "POST /v1/customers", count=100)
    async with outbox_pipeline(dsn, emulator.base_url, max_attempts=3):
        enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
        [row] = await eventually(lambda: all_settled(dsn))
    assert row[2:4] == ("failed", 3)
    assert "Stripe failed with 503 during create customer" in row[4]
    assert row[4].endswith("(gave up after 3 attempts)")
    assert mapping(conn, "customer", "account_id") == (None, "pending")


async def test_price_waits_for_its_product(dsn: str, conn: Conn, emulator: EmulatorServer) -> None:
    catalog(conn)
    emulator.emulator.add_fault("500", "POST /v1/products", count=2)
    async with outbox_pipeline(dsn, emulator.base_url):
        enqueue(conn, "create_stripe_price", '{"price_id": 1}')
        enqueue(conn, "create_stripe_product", '{"product_id": 1}')
        rows = await eventually(lambda: all_settled(dsn))
    assert [r[2] for r in rows] == ["done", "done"]
    [price] = emulator.emulator.objects("prices")
    [product] = emulator.emulator.objects("products")
    assert price["product"] == product["id"]


async def test_failed_row_made_due_by_plain_sql_runs_again(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    async with outbox_pipeline(dsn, emulator.base_url):
        row_id = enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
        await eventually(lambda: all_settled(dsn))
        catalog(conn, price=False)  # the DBA fixes the cause ...
        conn.execute(
            "UPDATE integration.outbox SET status = 'pending', next_attempt_at = now() "
            "WHERE id = %s",
            (row_id,),
        )  # ... and retries by hand
        await eventually(lambda: outbox_rows(dsn)[0][2] == "done")
    assert emulator.emulator.count("customers") == 1


async def test_pacing_keeps_under_an_enforced_limit(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    emulator.emulator.set_rate_limit(20)
    conn.execute(
        "INSERT INTO billing.accounts (email) "
        "SELECT 'u' || g || '@example.com' FROM generate_series(1, 30) g"
    )
    async with outbox_pipeline(dsn, emulator.base_url, rate_limit=20, concurrency=16):
        conn.execute("SELECT integration.seed_outbox()")
        rows = await eventually(lambda: all_settled(dsn), timeout=20)
    assert {r[2] for r in rows} == {"done"}
    assert emulator.emulator.stats()["rate_limited"] == 0
    assert emulator.emulator.count("customers") == 30


async def test_listen_connection_killed_is_restored(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    catalog(conn, price=False)
    async with outbox_pipeline(dsn, emulator.base_url) as p:
        old_pid = p.listener.backend_pid
        conn.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
        await eventually(lambda: p.listener.connects >= 2 and p.listener.connected, timeout=5)
        assert p.listener.backend_pid != old_pid
        # The sweep is an hour away: only a working LISTEN can pick this up.
        enqueue(conn, "create_stripe_customer", '{"account_id": 1}')
        [row] = await eventually(lambda: all_settled(dsn), timeout=5)
    assert row[2] == "done"
