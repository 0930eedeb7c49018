"""Which statements wait for their WAL flush (synchronous_commit), statement by
statement, as sql/queue.sql and sql/outbox.sql decide it.

The relaxed ones (claim, renew, the finishes, the pending-mapping placeholder) may be
lost in a server crash, which only runs a row again with the same idempotency
key; the webhook event INSERT must stay durable, because its 200 promises the
event is on disk. Each statement runs inside a transaction here, so the test
can read the setting it left for that transaction's COMMIT; in the daemon it
runs alone (autocommit) or in the finish transaction, where the same holds.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from stripe_sync.db import make_pool, queries
from stripe_sync.mappings import CUSTOMERS, PRICES
from stripe_sync.outbox.queue import OUTBOX
from stripe_sync.queue.store import PostgresStore
from stripe_sync.webhooks.queue import WEBHOOKS

Conn = psycopg.Connection[tuple[Any, ...]]

RELAXED = ["claim", "outbox_claim", "renew", "finish", "finish_rows", "finish_mapped",
           "mark_pending"]  # fmt: skip
DURABLE = ["retry", "release", "reclaim_expired", "insert_events"]


def _setup(conn: Conn) -> int:
    """An account, a product with a price, and one outbox row claimed by worker w."""
    conn.execute("INSERT INTO billing.accounts (id, email) VALUES (1, 'ada@example.com')")
    conn.execute("INSERT INTO billing.products (id, name) VALUES (1, 'Gold')")
    conn.execute(
        "INSERT INTO billing.prices (id, product_id, currency, unit_amount) "
        "VALUES (1, 1, 'eur', 1500)"
    )
    conn.execute("DELETE FROM integration.outbox")  # rows the inserts above queued
    row = conn.execute(
        "INSERT INTO integration.outbox (action_type, payload) "
        "VALUES ('create_stripe_customer', '{\"account_id\": 1}') RETURNING id"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _statement(name: str, row_id: int) -> tuple[sql.SQL | bytes, dict[str, Any]]:
    worker = {"worker": "w", "lease": 30.0}
    match name:
        case "claim":
            return OUTBOX.query("claim"), {"limit": 1, **worker}
        case "outbox_claim":  # queue.sql's claim with the loads and placeholders
            return OUTBOX.claim_query(), {"limit": 1, **worker}
        case "renew" | "release":
            return OUTBOX.query(name), {"ids": [row_id], **worker}
        case "finish":
            return OUTBOX.query(name), {"id": row_id, "worker": "w", "status": "done",
                                        "note": None, "error": None}  # fmt: skip
        case "finish_rows":
            return OUTBOX.query(name), {"ids": [row_id], "workers": ["w"], "statuses": ["done"],
                                        "notes": [None]}  # fmt: skip
        case "finish_mapped":
            return CUSTOMERS.query("outbox", name), {
                "ids": [row_id], "workers": ["w"], "statuses": ["done"], "notes": [None],
                "mc_ids": [1], "stripe_ids": ["cus_1"], "map_statuses": ["synced"],
            }  # fmt: skip
        case "retry":
            return OUTBOX.query(name), {"id": row_id, "worker": "w", "error": "x", "delay": 1.0}
        case "reclaim_expired":
            return OUTBOX.query(name), {}
        case "mark_pending":
            return PRICES.query("outbox", name), {"mc_id": 1}
        case "insert_events":
            return sql.SQL(queries("webhooks")[name]), {
                "ids": ["evt_1"], "types": ["customer.updated"], "versions": ["2025-03-31.basil"],
                "livemodes": [False], "created": [1], "objects": ["cus_1"], "accounts": [None],
                "payloads": ['{"id": "evt_1"}'],
            }  # fmt: skip
        case _:
            return sql.SQL(queries("outbox")[name]), {"id": 1}


@pytest.mark.parametrize("name", RELAXED + DURABLE)
def test_each_statement_commits_as_durably_as_it_must(conn: Conn, name: str) -> None:
    row_id = _setup(conn)
    if name not in ("claim", "outbox_claim", "insert_events"):  # the others act on a claimed row
        conn.execute(OUTBOX.query("claim"), {"limit": 1, "worker": "w", "lease": 30.0})
    if name == "reclaim_expired":
        conn.execute("UPDATE integration.outbox SET locked_until = now() - interval '1 s'")
    query, params = _statement(name, row_id)
    with conn.transaction(force_rollback=True):
        cur = conn.execute(query, params)
        assert cur.rowcount == 1, f"{name} changed no row: the test would prove nothing"
        row = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()
    assert row is not None
    assert row[0] == ("off" if name in RELAXED else "on"), name


@pytest.mark.anyio
async def test_relaxing_a_statement_never_changes_the_session(dsn: str) -> None:
    """One pooled connection serves the claim and finish, then the webhook INSERT:
    the relaxation must have ended with each statement's own transaction."""
    async with make_pool(dsn, size=1) as pool:
        async with pool.connection() as c:
            await c.execute(
                "INSERT INTO integration.outbox (action_type, payload) "
                "VALUES ('create_stripe_customer', '{\"account_id\": 1}')"
            )
        store = PostgresStore(OUTBOX, pool)
        [job] = await store.claim(1, "w", 30)
        await store.renew([job.id], "w", 30)
        await store.finish(job.id, "w", "done", None, None)
        assert (await PostgresStore(WEBHOOKS, pool).claim(1, "w", 30)) == []
        async with pool.connection() as c:
            cur = await c.execute("SHOW synchronous_commit")
            assert await cur.fetchone() == ("on",)
