"""``status`` (and every metrics scrape, which reads the same rows) counts live
rows exactly and finished rows from the statistics counters, never one by one."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from stripe_sync.ops.status import collect

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[tuple[Any, ...]]


def insert(conn: Conn, status: str, rows: int, queue: str = "outbox") -> None:
    lease = "now() + interval '1 hour'" if status == "processing" else "NULL"
    if queue == "outbox":
        conn.execute(
            "INSERT INTO integration.outbox (action_type, status, locked_until) "
            f"SELECT 'create_stripe_customer', %s, {lease} FROM generate_series(1, %s)",
            [status, rows],
        )
    else:
        conn.execute(
            "INSERT INTO integration.webhook_events (stripe_event_id, event_type, livemode, "
            "event_created, payload, status, locked_until) "
            "SELECT 'evt_' || md5(random()::text), 'customer.updated', false, 1, '{}', %s, "
            f"{lease} FROM generate_series(1, %s)",
            [status, rows],
        )


def flush_statistics(conn: Conn) -> None:
    """This session's counters reach the statistics at its next idle moment: now."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


async def counts(dsn: str) -> dict[tuple[str, str], tuple[int, bool]]:
    status = await collect(dsn)
    return {(r.queue, r.status): (r.count, r.estimated) for r in status.queues}


async def test_live_rows_exact_finished_rows_estimated(dsn: str, conn: Conn) -> None:
    for status, n in (("done", 30), ("dismissed", 5), ("pending", 2), ("processing", 1)):
        insert(conn, status, n)
    insert(conn, "failed", 1)
    for status, n in (("processed", 20), ("ignored", 4), ("failed", 3)):
        insert(conn, status, n, queue="webhooks")
    flush_statistics(conn)
    assert await counts(dsn) == {
        ("outbox", "pending"): (2, False),
        ("outbox", "processing"): (1, False),
        ("outbox", "failed"): (1, False),
        ("outbox", "finished"): (35, True),
        ("webhooks", "pending"): (0, False),
        ("webhooks", "processing"): (0, False),
        ("webhooks", "failed"): (3, False),
        ("webhooks", "finished"): (24, True),
    }
    # Pruned (deleted) rows leave the estimate; rows that finish move into it.
    conn.execute("DELETE FROM integration.outbox WHERE id IN (SELECT id FROM integration.outbox "
                 "WHERE status = 'done' LIMIT 10)")  # fmt: skip
    conn.execute("UPDATE integration.outbox SET status = 'done' WHERE status = 'pending'")
    flush_statistics(conn)
    found = await counts(dsn)
    assert found[("outbox", "finished")] == (27, True)
    assert found[("outbox", "pending")] == (0, False)
    # Failed rows are exact: status's verdict never rests on an estimate.
    report = await collect(dsn)
    assert report.problems == [
        "4 failed row(s)",
        "work is waiting and no daemon is listening",
    ]
