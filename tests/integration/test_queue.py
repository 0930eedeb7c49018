"""The shared claim → execute → record mechanism against PostgreSQL, with handlers of the
test's own. The loop's rules in isolation: tests/unit/test_worker.py (in-memory store)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
import pytest

from stripe_sync.db import make_pool
from stripe_sync.errors import PermanentError, TransientError
from stripe_sync.outbox.queue import OUTBOX
from stripe_sync.queue.jobs import Done, Job
from stripe_sync.queue.listen import Listener
from stripe_sync.queue.retry import Retry
from stripe_sync.queue.store import PostgresStore
from stripe_sync.queue.worker import Worker

from pipeline import eventually

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[tuple[Any, ...]]


@asynccontextmanager
async def workers(
    dsn: str,
    handler: Callable[[Job], Awaitable[Done]],
    n: int = 1,
    name: str = "w",
    **kwargs: Any,
) -> AsyncIterator[list[Worker]]:
    options: dict[str, Any] = {
        "sweep_interval": 3600.0,
        "concurrency": 4,
        "retry": Retry(5, 0.02, 0.2),
        "shutdown_timeout": 5.0,
    }
    options.update(kwargs)
    pool = make_pool(dsn, size=12)
    async with pool, anyio.create_task_group() as tg:
        store = PostgresStore(OUTBOX, pool)
        ws = [Worker(store, handler, worker_id=f"{name}{i}", **options) for i in range(n)]

        def wake_all() -> None:
            for w in ws:
                w.wake()

        listener = Listener(dsn, {OUTBOX.channel: wake_all})
        await tg.start(listener.run)
        for w in ws:
            await tg.start(w.run)
        try:
            yield ws
        finally:
            for w in ws:
                w.stop()
            await eventually(lambda: not any(w.running for w in ws), timeout=10)
            tg.cancel_scope.cancel()


def insert(conn: Conn, n: int = 1) -> None:
    conn.execute(
        "INSERT INTO integration.outbox (action_type, payload) "
        "SELECT 'create_stripe_customer', jsonb_build_object('account_id', g) "
        "FROM generate_series(1, %s) g",
        (n,),
    )


def statuses(conn: Conn) -> Counter[str]:
    return Counter(r[0] for r in conn.execute("SELECT status FROM integration.outbox"))


def row(conn: Conn, id_: int = 1) -> tuple[Any, ...]:
    r = conn.execute(
        "SELECT status, attempts, last_error, locked_by FROM integration.outbox WHERE id = %s",
        (id_,),
    ).fetchone()
    assert r is not None
    return tuple(r)


async def test_three_workers_execute_each_row_once(dsn: str, conn: Conn) -> None:
    seen: Counter[int] = Counter()

    async def handler(job: Job) -> Done:
        seen[job.id] += 1
        await anyio.sleep(0.001)
        return Done()

    async with workers(dsn, handler, n=3):
        insert(conn, 300)
        await eventually(lambda: statuses(conn) == {"done": 300})
    assert len(seen) == 300 and set(seen.values()) == {1}


async def test_concurrency_is_bounded(dsn: str, conn: Conn) -> None:
    running = peak = 0

    async def handler(job: Job) -> Done:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1
        return Done()

    async with workers(dsn, handler, concurrency=3):
        insert(conn, 30)
        await eventually(lambda: statuses(conn) == {"done": 30})
    assert peak == 3


async def test_expired_lease_of_a_crashed_daemon_is_taken_back(dsn: str, conn: Conn) -> None:
    insert(conn)
    # What a daemon killed mid-call leaves behind.
    conn.execute(
        "UPDATE integration.outbox SET status = 'processing', attempts = 1, "
        "locked_by = 'dead:1', locked_until = now() + interval '300 ms'"
    )

    async def handler(job: Job) -> Done:
        return Done()

    async with workers(dsn, handler, sweep_interval=0.2):
        await eventually(lambda: row(conn)[0] == "done", timeout=5)
    assert row(conn)[1] == 2


async def test_long_work_keeps_its_lease(dsn: str, conn: Conn) -> None:
    started = anyio.Event()

    async def slow(job: Job) -> Done:
        started.set()
        await anyio.sleep(1.0)
        return Done()

    async def thief(job: Job) -> Done:
        raise AssertionError("the row was stolen while its owner was working")

    async with workers(dsn, slow, name="slow", lease_seconds=0.3, sweep_interval=0.1):
        insert(conn)
        await started.wait()
        async with workers(dsn, thief, name="thief", sweep_interval=0.1):
            await eventually(lambda: row(conn)[0] == "done", timeout=5)
    assert row(conn)[1] == 1


async def test_shutdown_finishes_in_flight_work(dsn: str, conn: Conn) -> None:
    started = anyio.Event()

    async def handler(job: Job) -> Done:
        started.set()
        await anyio.sleep(0.3)
        return Done()

    async with workers(dsn, handler):
        insert(conn)
        await started.wait()
    assert row(conn)[:2] == ("done", 1)


async def test_shutdown_hands_back_what_does_not_finish(dsn: str, conn: Conn) -> None:
    started = anyio.Event()

    async def handler(job: Job) -> Done:
        started.set()
        await anyio.sleep(100)
        return Done()

    async with workers(dsn, handler, shutdown_timeout=0.2):
        insert(conn)
        await started.wait()
    assert row(conn) == ("pending", 0, None, None)


async def test_backoff_retry_runs_when_due_without_a_sweep(dsn: str, conn: Conn) -> None:
    calls = 0

    async def handler(job: Job) -> Done:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("not yet")
        return Done()

    async with workers(dsn, handler):
        insert(conn)
        await eventually(lambda: row(conn)[0] == "done", timeout=5)
    assert row(conn)[1] == 3


async def test_permanent_error_fails_at_once_and_keeps_going(dsn: str, conn: Conn) -> None:
    async def handler(job: Job) -> Done:
        if job.id == 1:
            raise PermanentError("payload.account_id: expected int, got str")
        return Done()

    async with workers(dsn, handler):
        insert(conn, 2)
        await eventually(lambda: statuses(conn) == {"failed": 1, "done": 1})
    assert row(conn, 1)[:3] == ("failed", 1, "payload.account_id: expected int, got str")


async def test_unexpected_error_is_retried_then_failed_with_its_name(dsn: str, conn: Conn) -> None:
    async def handler(job: Job) -> Done:
        raise ValueError("boom")

    async with workers(dsn, handler, retry=Retry(3, 0.01, 0.05)):
        insert(conn)
        await eventually(lambda: row(conn)[0] == "failed")
    assert row(conn)[1:3] == (3, "unexpected ValueError: boom (gave up after 3 attempts)")


async def test_apply_rolls_back_when_the_lease_was_lost(dsn: str, conn: Conn) -> None:
    conn.execute("CREATE TABLE public.side_effects (id int)")

    async def handler(job: Job) -> Done:
        # Another daemon took the row over while we were working.
        conn.execute("UPDATE integration.outbox SET locked_by = 'other' WHERE id = %s", (job.id,))

        async def apply(c: psycopg.AsyncConnection[Any]) -> None:
            await c.execute("INSERT INTO public.side_effects VALUES (1)")

        return Done(apply=apply)

    async with workers(dsn, handler):
        insert(conn)
        await eventually(lambda: row(conn)[3] == "other")
        await anyio.sleep(0.1)
    assert conn.execute("SELECT count(*) FROM public.side_effects").fetchone() == (0,)
    assert row(conn)[0] == "processing"
