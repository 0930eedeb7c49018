"""Retention: which finished rows are pruned and which never are, in batches,
on demand (``stripe-sync prune``), by replicas at once, and what a pruned
webhook event delivered again does."""

from __future__ import annotations

import json
from typing import Any

import anyio
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from stripe_sync.ops.retention import Pruner, prune, prune_batch

from daemons import run_cli
from webhook_helpers import add_account, add_price, event, running_worker, store, wait_idle

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[tuple[Any, ...]]
DAY = 86400.0
OUTBOX = "INSERT INTO integration.outbox (action_type, status, processed_at, locked_until) "
WEBHOOKS = (
    "INSERT INTO integration.webhook_events (stripe_event_id, event_type, livemode, "
    "event_created, payload, status, processed_at, locked_until) "
)


def fill(conn: Conn, status: str, *, days_ago: float, rows: int = 1, queue: str = "outbox") -> None:
    """``rows`` rows of ``status`` that finished (or were last touched) ``days_ago``."""
    at = f"now() - make_interval(secs => {days_ago * DAY})"
    lease = "now() + interval '1 hour'" if status == "processing" else "NULL"
    if queue == "outbox":
        conn.execute(
            OUTBOX + f"SELECT 'create_stripe_customer', %s, {at}, {lease} "
            "FROM generate_series(1, %s)",
            [status, rows],
        )
    else:
        conn.execute(
            WEBHOOKS + f"SELECT 'evt_' || md5(random()::text), 'customer.updated', false, 1, "
            f"'{{}}', %s, {at}, {lease} FROM generate_series(1, %s)",
            [status, rows],
        )


def left(conn: Conn) -> dict[tuple[str, str], int]:
    rows = conn.execute(
        "SELECT 'outbox', status, count(*) FROM integration.outbox GROUP BY status "
        "UNION ALL SELECT 'webhooks', status, count(*) FROM integration.webhook_events "
        "GROUP BY status"
    ).fetchall()
    return {(q, s): n for q, s, n in rows}


def every_status(conn: Conn, *, days_ago: float) -> None:
    for status in ("pending", "processing", "done", "failed", "dismissed"):
        fill(conn, status, days_ago=days_ago)
    for status in ("pending", "processing", "processed", "ignored", "failed", "dismissed"):
        fill(conn, status, days_ago=days_ago, queue="webhooks")


async def test_only_finished_rows_older_than_retention_are_pruned(dsn: str, conn: Conn) -> None:
    every_status(conn, days_ago=3)  # older than the 2 days kept
    every_status(conn, days_ago=1)  # recent
    result = await prune(dsn, "2d", 2 * DAY, dry_run=False)
    assert result.removed == {
        "outbox": {"done": 1, "dismissed": 1},
        "webhooks": {"processed": 1, "ignored": 1, "dismissed": 1},
    }
    assert left(conn) == {
        **{("outbox", s): 2 for s in ("pending", "processing", "failed")},
        **{("outbox", s): 1 for s in ("done", "dismissed")},
        **{("webhooks", s): 2 for s in ("pending", "processing", "failed")},
        **{("webhooks", s): 1 for s in ("processed", "ignored", "dismissed")},
    }
    # 0 keeps everything.
    assert (await prune(dsn, "0", 0, dry_run=False)).removed == {}
    assert sum(left(conn).values()) == 17


async def test_a_batch_deletes_at_most_its_size_oldest_first(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    fill(conn, "done", days_ago=5, rows=3)
    fill(conn, "done", days_ago=4, rows=3)
    async with pool.connection() as c:
        assert (await prune_batch(c, "outbox", DAY, batch=3)).total() == 3
    # The oldest went first: what is left finished 4 days ago.
    assert conn.execute(
        "SELECT count(*) FROM integration.outbox WHERE processed_at > now() - interval '4.5 days'"
    ).fetchone() == (3,)
    pruner = Pruner(pool, DAY, batch=2, pause=0)
    assert await pruner.run_once() == {"outbox_done": 3}
    assert left(conn) == {}


def test_prune_command_dry_run_then_for_real(dsn: str, conn: Conn) -> None:
    every_status(conn, days_ago=100)
    env = {"STRIPE_SYNC_RETENTION": "90d"}
    dry = run_cli("prune", "--dry-run", "--json", "--database-url", dsn, env=env)
    assert dry.returncode == 0, dry.stderr
    counted = {
        "outbox": {"done": 1, "dismissed": 1},
        "webhooks": {"processed": 1, "ignored": 1, "dismissed": 1},
    }
    assert json.loads(dry.stdout) == {"retention": "90d", "dry_run": True, "removed": counted}
    assert sum(left(conn).values()) == 11
    text = run_cli("prune", "--retention", "30d", "--database-url", dsn)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [
        "outbox: removed 2 row(s) finished more than 30d ago (dismissed 1, done 1)",
        "webhooks: removed 3 row(s) finished more than 30d ago (dismissed 1, ignored 1, "
        "processed 1)",
    ]
    assert sum(left(conn).values()) == 6
    bad = run_cli("prune", "--retention", "forever", "--database-url", dsn)
    assert bad.returncode == 78 and "STRIPE_SYNC_RETENTION" in bad.stderr


async def test_replicas_prune_disjoint_rows_without_waiting(
    pool: AsyncConnectionPool, dsn: str, conn: Conn
) -> None:
    fill(conn, "done", days_ago=3, rows=2000)
    # Another replica's batch (or a retry) holds one row: skipped, not waited for.
    with psycopg.connect(dsn) as holder:
        held = holder.execute(
            "SELECT id FROM integration.outbox ORDER BY processed_at LIMIT 1 FOR UPDATE"
        ).fetchone()
        removed: list[int] = []

        async def replica() -> None:
            gone = await Pruner(pool, DAY, batch=50, pause=0).run_once()
            removed.append(gone.total())

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(replica)
        holder.rollback()
    # Every row deleted exactly once across the replicas, the held one kept.
    assert sum(removed) == 1999
    assert conn.execute("SELECT id FROM integration.outbox").fetchall() == [held]


async def test_a_pruned_event_delivered_again_does_not_undo_newer_state(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """The event rows are gone, so the redelivery is stored as new; the mapping
    still holds the newest applied event, which makes it stale."""
    add_account(conn, "cus_A")
    add_price(conn, "price_A")

    def subscription(status: str) -> dict[str, Any]:
        item = {"id": "si_1", "object": "subscription_item", "quantity": 1}
        item["price"] = {"id": "price_A", "object": "price", "product": "prod_A"}
        items = {"object": "list", "data": [item]}
        return {"id": "sub_1", "object": "subscription", "customer": "cus_A", "status": status,
                "cancel_at_period_end": False, "items": items}  # fmt: skip

    old = event("customer.subscription.created", subscription("active"), created=1_700_000_000)
    new = event("customer.subscription.updated", subscription("past_due"), created=1_700_000_100)
    for evt in (old, new):
        await store(pool, evt)
        async with running_worker(pool) as worker:
            worker.wake()
            await wait_idle(pool)
    conn.execute("UPDATE integration.webhook_events SET processed_at = now() - interval '3 days'")
    assert await Pruner(pool, DAY).run_once() == {"webhooks_processed": 2}

    await store(pool, old)  # Stripe retries, or catch-up reaches back further than retention
    async with running_worker(pool) as worker:
        worker.wake()
        await wait_idle(pool)
    assert conn.execute("SELECT status FROM billing.subscriptions").fetchall() == [("past_due",)]
    assert conn.execute("SELECT last_event_id FROM stripe.subscription_mappings").fetchall() == [
        (new["id"],)
    ]
    assert conn.execute(
        "SELECT stripe_event_id, status FROM integration.webhook_events"
    ).fetchall() == [(old["id"], "processed")]
