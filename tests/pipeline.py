"""Test helpers: run the real outbox pipeline (listener + worker + executors)
in the test's event loop against a real database and the emulator."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import psycopg

from stripe_sync.config import DEFAULTS, Secret
from stripe_sync.db import make_pool
from stripe_sync.outbox.common import Context, source_of
from stripe_sync.outbox.execute import make_handler
from stripe_sync.outbox.queue import OUTBOX
from stripe_sync.queue.listen import Listener
from stripe_sync.queue.retry import Retry
from stripe_sync.queue.store import PostgresStore
from stripe_sync.queue.worker import Worker
from stripe_sync.stripe_api import StripeApi

API_KEY = "sk_test_emulator"


@dataclass
class Pipeline:
    worker: Worker
    listener: Listener
    api: StripeApi


@asynccontextmanager
async def outbox_pipeline(
    dsn: str,
    api_base: str,
    *,
    sweep_interval: float = 3600.0,  # tests prove NOTIFY alone suffices unless they say otherwise
    max_attempts: int = 6,
    rate_limit: float = 0.0,
    concurrency: int = 8,
    lease_seconds: float = 15.0,
    worker_id: str = "test-worker",
    stripe_timeout: float = 10.0,
    search_lag: float = DEFAULTS.search_lag,
) -> AsyncIterator[Pipeline]:
    pool = make_pool(dsn, size=concurrency + 2)
    api = StripeApi(
        Secret(API_KEY), api_base=api_base, rate_limit=rate_limit, timeout=stripe_timeout
    )
    async with pool, api:
        worker = Worker(
            PostgresStore(OUTBOX, pool),
            make_handler(Context(pool, api, await source_of(pool), search_lag)),
            worker_id=worker_id,
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            sweep_interval=sweep_interval,
            retry=Retry(max_attempts=max_attempts, base_seconds=0.02, max_seconds=0.3),
            shutdown_timeout=5,
        )
        listener = Listener(dsn, {OUTBOX.channel: worker.wake}, check_interval=0.5)
        async with anyio.create_task_group() as tg:
            await tg.start(listener.run)
            await tg.start(worker.run)
            try:
                yield Pipeline(worker, listener, api)
            finally:
                worker.stop()
                with anyio.move_on_after(10):
                    while worker.running:
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01
) -> Any:
    """Poll until ``check()`` returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        await anyio.sleep(interval)


def outbox_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as c:
        return c.execute(
            # the error, else the note of a row that succeeded
            "SELECT id, action_type, status, attempts, coalesce(last_error, note) "
            "FROM integration.outbox "
            "ORDER BY id"
        ).fetchall()


def all_settled(dsn: str) -> list[tuple[Any, ...]] | None:
    rows = outbox_rows(dsn)
    return rows if rows and all(r[2] in ("done", "failed") for r in rows) else None
