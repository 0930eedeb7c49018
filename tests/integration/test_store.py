"""The Store contract, run against PostgreSQL (``PostgresStore`` on a real
database) and against the in-memory fake that the worker's unit tests use, so
the fake cannot drift from ``sql/queue.sql``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import pytest

from stripe_sync.db import make_pool
from stripe_sync.errors import LeaseLost
from stripe_sync.outbox.queue import OUTBOX
from stripe_sync.queue.jobs import Apply
from stripe_sync.queue.store import PostgresStore, Store

from fake_store import LEASE_EXPIRED, FakeStore

pytestmark = pytest.mark.anyio

RowView = tuple[str, int, str | None, str | None]  # status, attempts, locked_by, last_error


class Table(Protocol):
    """A store plus what a test needs to set up and inspect its rows."""

    store: Store

    async def insert(self, n: int) -> list[int]: ...

    async def row(self, id_: int) -> RowView: ...

    async def note(self, id_: int) -> str | None: ...


class FakeTable:
    def __init__(self) -> None:
        self.fake = FakeStore()
        self.store: Store = self.fake

    async def insert(self, n: int) -> list[int]:
        return self.fake.insert(n)

    async def row(self, id_: int) -> RowView:
        r = self.fake.rows[id_]
        return r.status, r.attempts, r.locked_by, r.last_error

    async def note(self, id_: int) -> str | None:
        return self.fake.rows[id_].note


class PostgresTable:
    def __init__(self, store: PostgresStore) -> None:
        self.store: Store = store
        self.pool = store.pool

    async def insert(self, n: int) -> list[int]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO integration.outbox (action_type, payload) "
                "SELECT 'create_stripe_customer', jsonb_build_object('account_id', g) "
                "FROM generate_series(1, %s) g RETURNING id",
                (n,),
            )
            return sorted(r[0] for r in await cur.fetchall())

    async def row(self, id_: int) -> RowView:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT status, attempts, locked_by, last_error FROM integration.outbox "
                "WHERE id = %s",
                (id_,),
            )
            r = await cur.fetchone()
            assert r is not None
            return r[0], r[1], r[2], r[3]

    async def note(self, id_: int) -> str | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT note FROM integration.outbox WHERE id = %s", (id_,))
            r = await cur.fetchone()
            assert r is not None
            return None if r[0] is None else str(r[0])


@pytest.fixture(params=["fake", "postgres"])
async def table(request: pytest.FixtureRequest) -> AsyncIterator[Table]:
    if request.param == "fake":
        yield FakeTable()
        return
    pool = make_pool(request.getfixturevalue("dsn"), size=2)
    async with pool:
        yield PostgresTable(PostgresStore(OUTBOX, pool))


async def test_claim_takes_due_rows_oldest_first_and_each_once(table: Table) -> None:
    store = table.store
    ids = await table.insert(3)
    first = await store.claim(2, "a", 30)
    assert [(j.id, j.type, j.attempts) for j in first] == [
        (ids[0], "create_stripe_customer", 1),
        (ids[1], "create_stripe_customer", 1),
    ]
    assert isinstance(json.loads(first[0].payload), dict)
    assert await table.row(ids[0]) == ("processing", 1, "a", None)
    assert [j.id for j in await store.claim(5, "b", 30)] == [ids[2]]
    assert await store.claim(5, "c", 30) == []


async def test_next_due(table: Table) -> None:
    store = table.store
    assert await store.next_due() is None
    [id_] = await table.insert(1)
    due = await store.next_due()
    assert due is not None and due <= 0
    await store.claim(1, "a", 30)
    assert await store.next_due() is None  # processing is not pending
    await store.retry(id_, "a", "later", 60)
    due = await store.next_due()
    assert due is not None and 55 < due <= 60


async def test_finish_records_only_for_the_lease_holder(table: Table) -> None:
    store = table.store
    [id_] = await table.insert(1)
    await store.claim(1, "a", 30)
    with pytest.raises(LeaseLost):
        await store.finish(id_, "b", "done", None, None)
    assert await table.row(id_) == ("processing", 1, "a", None)

    async def broken(conn: Any) -> None:
        raise RuntimeError("apply failed")

    apply: Apply = broken
    with pytest.raises(RuntimeError):
        await store.finish(id_, "a", "done", None, apply)
    assert await table.row(id_) == ("processing", 1, "a", None)

    await store.finish(id_, "a", "done", "a note", None)
    # A note is not an error: last_error is cleared, the note kept apart.
    assert await table.row(id_) == ("done", 1, None, None)
    assert await table.note(id_) == "a note"
    with pytest.raises(LeaseLost):  # finished: no second record
        await store.finish(id_, "a", "done", None, None)


async def test_fail_and_retry_change_only_the_holders_rows(table: Table) -> None:
    store = table.store
    ids = await table.insert(2)
    await store.claim(2, "a", 30)
    await store.fail(ids[0], "b", "not mine")
    await store.retry(ids[1], "b", "not mine", 0)
    assert await table.row(ids[0]) == ("processing", 1, "a", None)
    assert await table.row(ids[1]) == ("processing", 1, "a", None)

    reason = "payload.account_id: expected int, got str"
    await store.fail(ids[0], "a", reason)
    assert await table.row(ids[0]) == ("failed", 1, None, reason)
    await store.retry(ids[1], "a", "Stripe 503", 60)
    assert await table.row(ids[1]) == ("pending", 1, None, "Stripe 503")
    assert await store.claim(5, "a", 30) == []  # not due for a minute


async def test_release_hands_claims_back_without_counting_the_attempt(table: Table) -> None:
    store = table.store
    ids = await table.insert(2)
    await store.claim(2, "a", 30)
    await store.release(ids, "b")
    assert await table.row(ids[0]) == ("processing", 1, "a", None)
    await store.release([ids[0]], "a")
    assert await table.row(ids[0]) == ("pending", 0, None, None)
    assert [(j.id, j.attempts) for j in await store.claim(5, "c", 30)] == [(ids[0], 1)]


async def test_renewed_leases_hold_and_lapsed_ones_are_reclaimed(table: Table) -> None:
    store = table.store
    ids = await table.insert(2)
    await store.claim(2, "a", 0.2)
    await store.renew(ids[:1], "a", 30)
    await store.renew(ids[1:], "b", 30)  # not b's: no effect
    assert await store.reclaim_expired() == 0
    await anyio.sleep(0.3)
    assert await store.reclaim_expired() == 1
    assert await table.row(ids[0]) == ("processing", 1, "a", None)
    assert await table.row(ids[1]) == ("pending", 1, None, LEASE_EXPIRED)
    assert [j.id for j in await store.claim(5, "c", 30)] == [ids[1]]
