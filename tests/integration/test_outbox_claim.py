"""The outbox's claim (sql/outbox.sql ``claim``) reads what each executor reads
first: a claimed row arrives with its MC row and mapping, exactly as the
executor's own load query would return them, and a create's placeholder is
written. A payload the claim cannot read plainly arrives without, and the
executor loads (and refuses) as before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from psycopg.rows import class_row

from stripe_sync.db import make_pool, queries
from stripe_sync.outbox import customers, prices, products
from stripe_sync.outbox.common import Pushed
from stripe_sync.outbox.queue import OUTBOX
from stripe_sync.queue.jobs import Job
from stripe_sync.queue.store import PostgresStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PostgresStore]:
    async with make_pool(dsn, size=2) as pool:
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO billing.accounts (id, email, name) VALUES "
                "(1, 'ada@example.com', 'Ada'), (2, 'alan@example.com', NULL)"
            )
            await conn.execute("INSERT INTO billing.products (id, name) VALUES (1, 'Gold')")
            await conn.execute(
                "INSERT INTO billing.prices (id, product_id, currency, unit_amount) "
                "VALUES (1, 1, 'eur', 1500)"
            )
            await conn.execute(
                "INSERT INTO stripe.customer_mappings (account_id, stripe_customer_id, "
                "sync_status) VALUES (2, 'cus_2', 'synced')"
            )
            await conn.execute("DELETE FROM integration.outbox")  # what the inserts queued
        yield PostgresStore(OUTBOX, pool)


async def _claim(store: PostgresStore, *rows: tuple[str, str]) -> list[Job]:
    async with store.pool.connection() as conn:
        for action, payload in rows:
            await conn.execute(
                "INSERT INTO integration.outbox (action_type, payload) VALUES (%s, %s)",
                (action, payload),
            )
    return await store.claim(len(rows), "w", 30)


async def _load(store: PostgresStore, query: str, row: type[Any], mc_id: int) -> Any:
    async with store.pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(row))
        await cur.execute(queries("outbox")[query], {"id": mc_id})
        return await cur.fetchone()


async def test_a_claimed_row_arrives_with_what_its_load_query_reads(
    store: PostgresStore,
) -> None:
    pushed: list[tuple[str, str, Pushed[Any], int]] = [
        ("update_stripe_customer", '{"account_id": 2}', customers.PUSHED, 2),
        ("update_stripe_product", '{"product_id": 1}', products.PUSHED, 1),
        ("create_stripe_price", '{"price_id": 1}', prices.PUSHED, 1),
    ]
    jobs = await _claim(store, *((a, p) for a, p, _, _ in pushed))
    assert [j.type for j in jobs] == [a for a, _, _, _ in pushed]
    for job, (_, _, family, mc_id) in zip(jobs, pushed, strict=True):
        assert job.loaded is not None, job.type
        claimed = msgspec.json.decode(job.loaded, type=family.row)
        assert claimed == await _load(store, family.load, family.row, mc_id), job.type


async def test_a_claimed_create_writes_its_placeholder_and_shows_the_mapping_before_it(
    store: PostgresStore,
) -> None:
    [job] = await _claim(store, ("create_stripe_customer", '{"account_id": 1}'))
    assert job.loaded is not None
    account = msgspec.json.decode(job.loaded, type=customers.Account)
    assert (account.email, account.name, account.stripe_id, account.status) == (
        "ada@example.com", "Ada", None, None,
    )  # fmt: skip
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT stripe_customer_id, sync_status FROM stripe.customer_mappings "
            "WHERE account_id = 1"
        )
        assert await cur.fetchone() == (None, "pending")


@pytest.mark.parametrize(
    "payload",
    ['{"account_id": "1"}', '{"account_id": 1.5}', '{"account_id": 0}',
     '{"account_id": 99999999999999999999}', '{"id": 1}', "[]", '{"account_id": 7}'],
)  # fmt: skip
async def test_a_payload_the_claim_cannot_read_arrives_without_a_row(
    store: PostgresStore, payload: str
) -> None:
    [job] = await _claim(store, ("create_stripe_customer", payload))
    assert job.loaded is None
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM stripe.customer_mappings")
        assert await cur.fetchone() == (1,)  # account 2's; no placeholder
