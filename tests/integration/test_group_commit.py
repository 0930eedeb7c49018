"""Group commit of the outbox's completions (group_commit.py), on PostgreSQL:
completions that queue up behind a running one share one transaction, and a
row that is refused in a group gets its own answer without costing the others
theirs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from psycopg import AsyncConnection

from stripe_sync.db import make_pool
from stripe_sync.errors import LeaseLost, PermanentError
from stripe_sync.mappings import CUSTOMERS, MappingWrite
from stripe_sync.outbox.queue import OUTBOX
from stripe_sync.queue.jobs import Apply
from stripe_sync.queue.store import PostgresStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PostgresStore]:
    async with make_pool(dsn, size=4) as pool:
        s = PostgresStore(OUTBOX, pool)
        s.completions.max_leaders = 1  # one transaction at a time: the others queue
        yield s


async def _claimed(store: PostgresStore, n: int) -> list[int]:
    async with store.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO integration.outbox (action_type, payload) "
            "SELECT 'create_stripe_customer', jsonb_build_object('account_id', g) "
            "FROM generate_series(1, %s) g",
            (n,),
        )
    return [job.id for job in await store.claim(n, "w", 30)]


async def _rows(store: PostgresStore) -> dict[int, tuple[str, int]]:
    """id → (status, xmin): rows written by one transaction share its xmin."""
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT id, status, xmin::text::bigint FROM integration.outbox")
        return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}


async def _behind_a_held_leader(store: PostgresStore, first: int, *rest: Any) -> dict[int, Any]:
    """Finish ``first`` with an apply that holds its transaction open until every
    one of ``rest`` ((id, worker, apply or mapping) triples) has queued; each
    one's outcome."""
    release = anyio.Event()

    async def hold(conn: AsyncConnection[Any]) -> None:
        await release.wait()

    outcomes: dict[int, Any] = {}

    async def finish(id_: int, worker: str, writes: Apply | MappingWrite | None) -> None:
        try:
            if isinstance(writes, MappingWrite):
                await store.finish(id_, worker, "done", None, None, writes)
            else:
                await store.finish(id_, worker, "done", None, writes)
            outcomes[id_] = "done"
        except Exception as exc:
            outcomes[id_] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(finish, first, "w", hold)
        await anyio.wait_all_tasks_blocked()
        for id_, worker, apply in rest:
            tg.start_soon(finish, id_, worker, apply)
        await anyio.wait_all_tasks_blocked()
        assert len(store.completions._queue) == len(rest), "the others did not queue"
        release.set()
    return outcomes


async def test_completions_that_queue_up_commit_in_one_transaction(
    store: PostgresStore,
) -> None:
    a, b, c, d = await _claimed(store, 4)
    outcomes = await _behind_a_held_leader(store, a, (b, "w", None), (c, "w", None),
                                           (d, "w", None))  # fmt: skip
    assert outcomes == {a: "done", b: "done", c: "done", d: "done"}
    rows = await _rows(store)
    assert {rows[x][0] for x in (a, b, c, d)} == {"done"}
    assert rows[b][1] == rows[c][1] == rows[d][1] != rows[a][1]
    assert store.completions.groups == 1


async def test_a_refused_callback_leaves_the_rest_of_its_group_recorded(
    store: PostgresStore,
) -> None:
    """Completions with writes (webhook handlers') share a transaction; one refused
    rolls it back, and each row is then recorded alone."""
    a, b, c, d = await _claimed(store, 4)

    async def refused(conn: AsyncConnection[Any]) -> None:
        await conn.execute("UPDATE integration.outbox SET last_error = 'half-written'")
        raise PermanentError("mapping refused")

    async def nothing(conn: AsyncConnection[Any]) -> None:
        pass

    outcomes = await _behind_a_held_leader(
        store, a, (b, "someone else", nothing), (c, "w", refused), (d, "w", nothing)
    )
    assert outcomes[a] == outcomes[d] == "done"
    assert isinstance(outcomes[b], LeaseLost)
    assert isinstance(outcomes[c], PermanentError)
    rows = await _rows(store)
    assert [rows[x][0] for x in (a, b, c, d)] == ["done", "processing", "processing", "done"]
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM integration.outbox WHERE last_error = 'half-written'"
        )
        assert await cur.fetchone() == (0,)  # the refused row's writes were rolled back
    assert store.completions.groups == 0  # the group fell back to one row per transaction


async def _accounts(store: PostgresStore, n: int, mapped: dict[int, str]) -> None:
    """Accounts 1..n (without the create rows their trigger queues), ``mapped`` ones
    already mapped to those customers."""
    async with store.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO billing.accounts (id, email) "
            "SELECT g, 'a' || g || '@example.com' FROM generate_series(1, %s) g",
            (n,),
        )
        await conn.execute("DELETE FROM integration.outbox")
        for account, customer in mapped.items():
            await conn.execute(
                "INSERT INTO stripe.customer_mappings (account_id, stripe_customer_id, "
                "sync_status) VALUES (%s, %s, 'synced')",
                (account, customer),
            )


async def _mappings(store: PostgresStore) -> dict[int, tuple[str | None, str]]:
    """Mappings naming a customer (not the placeholders the claim of a create writes)."""
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT account_id, stripe_customer_id, sync_status FROM stripe.customer_mappings "
            "WHERE stripe_customer_id IS NOT NULL"
        )
        return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}


def _write(account: int, customer: str) -> MappingWrite:
    return MappingWrite(CUSTOMERS, account, customer)


async def test_data_completions_answer_row_by_row_in_one_statement(
    store: PostgresStore,
) -> None:
    """Completions that are data (the outbox's: a mapping, or nothing) are one
    statement per kind, which answers each row: a lost lease or a refused mapping
    costs the others nothing."""
    await _accounts(store, 4, {3: "cus_other"})
    a, b, c, d, e = await _claimed(store, 5)

    outcomes = await _behind_a_held_leader(
        store,
        a,
        (b, "someone else", _write(2, "cus_2")),  # lease lost: its mapping is not written
        (c, "w", _write(3, "cus_3")),  # refused: account 3 is mapped to cus_other
        (d, "w", _write(4, "cus_4")),
        (e, "w", None),
    )
    assert outcomes[a] == outcomes[d] == outcomes[e] == "done"
    assert isinstance(outcomes[b], LeaseLost)
    assert isinstance(outcomes[c], PermanentError)
    assert "billing.accounts id=3 is already mapped" in str(outcomes[c])
    rows = await _rows(store)
    assert [rows[x][0] for x in (b, c, d, e)] == ["processing", "processing", "done", "done"]
    assert await _mappings(store) == {3: ("cus_other", "synced"), 4: ("cus_4", "synced")}
    assert store.completions.groups == 1  # b, c, d: one statement; e (no mapping) its own


async def test_two_rows_of_one_mc_row_in_a_group_are_recorded_alone(
    store: PostgresStore,
) -> None:
    """One statement cannot write one mapping row twice: the group falls back."""
    await _accounts(store, 1, {})
    a, b, c = await _claimed(store, 3)
    outcomes = await _behind_a_held_leader(
        store, a, (b, "w", _write(1, "cus_1")), (c, "w", _write(1, "cus_1"))
    )
    assert outcomes == {a: "done", b: "done", c: "done"}
    assert await _mappings(store) == {1: ("cus_1", "synced")}
    assert store.completions.groups == 0


async def test_a_group_waits_for_row_locks_briefly(store: PostgresStore) -> None:
    """Two groups locking two rows in opposite orders must not wait for the
    deadlock check: in a group the lock timeout is short; a row alone, and any
    later use of the pooled connection, keeps the server's."""
    a, b, c = await _claimed(store, 3)
    seen: dict[int, str] = {}

    def noting(id_: int) -> Apply:
        async def apply(conn: AsyncConnection[Any]) -> None:
            cur = await conn.execute("SELECT current_setting('lock_timeout')")
            row = await cur.fetchone()
            assert row is not None
            seen[id_] = row[0]

        return apply

    await _behind_a_held_leader(store, a, (b, "w", noting(b)), (c, "w", noting(c)))
    [d] = await _claimed(store, 1)
    await store.finish(d, "w", "done", None, noting(d))
    assert seen == {b: "200ms", c: "200ms", d: "0"}
    async with store.pool.connection() as c1, store.pool.connection() as c2:
        for conn in (c1, c2):
            cur = await conn.execute("SHOW lock_timeout")
            assert await cur.fetchone() == ("0",)


def _marking(account: int) -> Apply:
    """An apply that leaves a trace: account ``account``'s email."""

    async def apply(conn: AsyncConnection[Any]) -> None:
        await conn.execute(
            "UPDATE billing.accounts SET email = 'applied@example.com' WHERE id = %s", (account,)
        )

    return apply


async def _applied(store: PostgresStore) -> set[int]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id FROM billing.accounts WHERE email = 'applied@example.com'"
        )
        return {r[0] for r in await cur.fetchall()}


async def test_a_group_of_callbacks_records_its_rows_in_one_statement(
    store: PostgresStore,
) -> None:
    """The callbacks' rows are recorded together after their writes: one
    finish_rows for the group, in its transaction."""
    await _accounts(store, 4, {})
    a, b, c, d = await _claimed(store, 4)
    calls: list[list[int]] = []
    finish_rows = store.completions.finish_rows

    async def counting(conn: AsyncConnection[Any], rows: Any) -> list[Exception | None]:
        calls.append([r.id for r in rows])
        return await finish_rows(conn, rows)

    store.completions.finish_rows = counting
    outcomes = await _behind_a_held_leader(
        store, a, (b, "w", _marking(2)), (c, "w", _marking(3)), (d, "w", _marking(4))
    )
    assert outcomes == {a: "done", b: "done", c: "done", d: "done"}
    assert calls == [[a], [b, c, d]]
    assert await _applied(store) == {2, 3, 4}
    rows = await _rows(store)
    assert rows[b][1] == rows[c][1] == rows[d][1]
    assert store.completions.groups == 1


async def test_a_lost_lease_in_a_group_rolls_back_that_rows_writes_only(
    store: PostgresStore,
) -> None:
    """A row no longer ours, found by the group's one finish statement after
    every callback ran: the group is redone row by row, so that row's writes are
    rolled back (LeaseLost) and the others' are kept."""
    await _accounts(store, 4, {})
    a, b, c, d = await _claimed(store, 4)
    outcomes = await _behind_a_held_leader(
        store, a, (b, "w", _marking(2)), (c, "someone else", _marking(3)), (d, "w", _marking(4))
    )
    assert outcomes[a] == outcomes[b] == outcomes[d] == "done"
    assert isinstance(outcomes[c], LeaseLost)
    assert await _applied(store) == {2, 4}
    rows = await _rows(store)
    assert [rows[x][0] for x in (a, b, c, d)] == ["done", "done", "processing", "done"]
    assert store.completions.groups == 0
