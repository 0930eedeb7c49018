"""Group commit of verified events into integration.webhook_events."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import psycopg
import pytest

from stripe_sync.db import make_pool
from stripe_sync.webhooks.events import Envelope
from stripe_sync.webhooks.ingest import Ingestor, Unstorable, row_for

from webhook_helpers import event

pytestmark = pytest.mark.anyio


def raw_event(i: int, **obj: Any) -> tuple[bytes, Envelope]:
    raw = json.dumps(
        event("customer.updated", {"id": f"cus_{i}", **obj}, event_id=f"evt_{i:04d}")
    ).encode()
    return raw, msgspec.json.decode(raw, type=Envelope)


def count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM integration.webhook_events").fetchone()
    assert row is not None
    return int(row[0])


async def test_concurrent_stores_share_commits(dsn: str, conn: psycopg.Connection[Any]) -> None:
    results: dict[int, bool] = {}
    async with make_pool(dsn, size=4) as pool, Ingestor(pool).in_background() as ingestor:

        async def one(i: int) -> None:
            results[i] = await ingestor.store(*raw_event(i))

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
    assert results == {i: True for i in range(200)}
    assert count(conn) == 200
    # The first request goes alone; the rest queue up behind its commit.
    assert ingestor.batches <= 10, ingestor.batches


async def test_a_lone_store_is_not_delayed(dsn: str, conn: psycopg.Connection[Any]) -> None:
    timings = []
    async with make_pool(dsn, size=2) as pool, Ingestor(pool).in_background() as ingestor:
        await ingestor.store(*raw_event(0))  # warm the connection
        for i in range(1, 6):
            started = time.monotonic()
            assert await ingestor.store(*raw_event(i)) is True
            timings.append(time.monotonic() - started)
            # Committed when store returns: another session sees it.
            assert count(conn) == i + 1
    # No waiting for company: a lone event costs one round trip and commit.
    assert min(timings) < 0.05, timings
    assert ingestor.batches == 6


async def test_duplicates_in_one_batch(dsn: str, conn: psycopg.Connection[Any]) -> None:
    async with make_pool(dsn, size=2) as pool, Ingestor(pool).in_background() as ingestor:
        results: list[bool] = []

        async def one(i: int) -> None:
            results.append(await ingestor.store(*raw_event(i % 3)))

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, i)
    assert sorted(results) == [False] * 27 + [True] * 3
    assert count(conn) == 3


async def test_one_unstorable_event_does_not_fail_its_batch(
    dsn: str,
    conn: psycopg.Connection[Any],
) -> None:
    outcomes: dict[int, object] = {}
    async with make_pool(dsn, size=2) as pool, Ingestor(pool).in_background() as ingestor:

        async def one(i: int) -> None:
            # jsonb cannot hold \u0000.
            raw, env = raw_event(i, name="a\x00b") if i == 5 else raw_event(i)
            try:
                outcomes[i] = await ingestor.store(raw, env)
            except Unstorable as exc:
                outcomes[i] = exc

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)
    assert isinstance(outcomes.pop(5), Unstorable)
    assert set(outcomes.values()) == {True}
    assert count(conn) == 19


async def test_store_rows_answers_per_row(dsn: str, conn: psycopg.Connection[Any]) -> None:
    raws = [raw_event(1), raw_event(2, name="a\x00b"), raw_event(3), raw_event(1)]
    async with make_pool(dsn, size=2) as pool:
        outcome = await Ingestor(pool).store_rows([row_for(*r) for r in raws])
    assert outcome[0] is True and outcome[2] is True and outcome[3] is False
    assert isinstance(outcome[1], Unstorable) and str(outcome[1]).startswith(
        "evt_0002: UntranslatableCharacter"
    )
    assert count(conn) == 2


async def test_without_collector_stores_directly(dsn: str, conn: psycopg.Connection[Any]) -> None:
    async with make_pool(dsn, size=2) as pool:
        ingestor = Ingestor(pool)
        assert not ingestor.is_running
        assert await ingestor.store(*raw_event(1)) is True
        assert await ingestor.store(*raw_event(1)) is False
    assert count(conn) == 1


async def test_stop_answers_everything_queued(dsn: str, conn: psycopg.Connection[Any]) -> None:
    results: list[bool] = []
    async with make_pool(dsn, size=2) as pool:
        ingestor = Ingestor(pool)
        async with anyio.create_task_group() as tg:
            await tg.start(ingestor.run)

            async def one(i: int) -> None:
                results.append(await ingestor.store(*raw_event(i)))

            async with anyio.create_task_group() as requests:
                for i in range(50):
                    requests.start_soon(one, i)
                await anyio.lowlevel.checkpoint()
                ingestor.stop()
    assert results == [True] * 50
    assert count(conn) == 50
    assert not ingestor.is_running


async def test_stored_columns(dsn: str, conn: psycopg.Connection[Any]) -> None:
    raw = json.dumps(
        event(
            "invoice.upcoming",
            {"object": "invoice", "customer": "cus_1"},
            event_id="evt_up",
            livemode=True,
            account="acct_1",
        )
    ).encode()
    async with make_pool(dsn, size=2) as pool:
        await Ingestor(pool).store(raw, msgspec.json.decode(raw, type=Envelope))
    row = conn.execute(
        "SELECT stripe_event_id, event_type, livemode, object_id, account, "
        "payload = %s::jsonb FROM integration.webhook_events",
        [raw.decode()],
    ).fetchone()
    assert row == ("evt_up", "invoice.upcoming", True, None, "acct_1", True)
