"""Retention: finished rows older than ``STRIPE_SYNC_RETENTION`` are deleted,
by the daemon (:class:`Pruner`, off the hot path: one small batch at a time on
one pooled connection, a pause between batches) and on demand by
``stripe-sync prune`` (:func:`prune` → :class:`Pruned`).

Finished: outbox ``done``/``dismissed``, webhook events ``processed``/
``ignored``/``dismissed``, by when they finished (``processed_at``). Pending,
processing and failed rows are never deleted. The SQL (sql/retention.sql)
takes its rows with ``FOR UPDATE SKIP LOCKED``, so replicas prune disjoint
rows without waiting for each other.

A pruned webhook event that Stripe (or ``catch-up``) delivers again is stored
as new, and the mapping rows' ordering key (``last_event_created``, rank, id
of the newest applied event) makes it stale against anything newer.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, Literal, TextIO

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from ..db import connect, queries
from .outcome import Record

log = logging.getLogger(__name__)

Queue = Literal["outbox", "webhooks"]
QUEUES: tuple[Queue, ...] = ("outbox", "webhooks")
Acquire = Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]
# Rows per DELETE: each batch holds its row locks and its WAL for a few
# milliseconds, short next to a claim or a completion waiting behind it.
BATCH = 500
# The daemon's pass: a pause between batches leaves the pool, the CPU and the
# disk to the hot path (at 0.05 s pickup latency rose measurably on 2 cores;
# at 0.25 s it did not, and ~1,800 rows/s still clears a year in minutes:
# docs/benchmarks.md, Issue 18); a pass every minute (a quarter of a
# retention shorter than 4 minutes) deletes until nothing is older than it.
PAUSE_SECONDS = 0.25
INTERVAL_SECONDS = 60.0


async def prune_batch(
    conn: psycopg.AsyncConnection[Any], queue: Queue, keep_seconds: float, batch: int = BATCH
) -> Counter[str]:
    """Delete up to ``batch`` finished rows of ``queue``: status → rows deleted."""
    cur = await conn.execute(
        queries("retention")[f"prune_{queue}"], {"keep_seconds": keep_seconds, "batch": batch}
    )
    return Counter({str(status): int(n) for status, n in await cur.fetchall()})


async def prune_queue(
    acquire: Acquire,
    queue: Queue,
    keep_seconds: float,
    *,
    batch: int = BATCH,
    pause: float = 0.0,
) -> Counter[str]:
    """Batches until one comes back short: status → rows deleted. A connection
    is acquired per batch: the daemon's pruner never holds one of the workers'
    pooled connections for a whole pass."""
    removed: Counter[str] = Counter()
    while True:
        async with acquire() as conn:
            gone = await prune_batch(conn, queue, keep_seconds, batch)
        removed += gone
        if gone.total() < batch:
            return removed
        await anyio.sleep(pause)


class Pruned(Record):
    """What ``stripe-sync prune`` removed (or, with ``--dry-run``, would remove)."""

    retention: str
    dry_run: bool
    # queue → status → rows
    removed: dict[str, dict[str, int]]

    @property
    def exit_code(self) -> int:
        return 0

    def render(self, out: TextIO, err: TextIO) -> None:
        if self.retention == "0":
            print("retention is 0 (STRIPE_SYNC_RETENTION): every row is kept", file=out)
            return
        verb = "would remove" if self.dry_run else "removed"
        for queue in QUEUES:
            counts = self.removed.get(queue, {})
            detail = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
            total = sum(counts.values())
            print(
                f"{queue}: {verb} {total} row(s) finished more than {self.retention} ago"
                + (f" ({detail})" if detail else ""),
                file=out,
            )


async def prune(dsn: str, retention: str, keep_seconds: float, *, dry_run: bool) -> Pruned:
    """``stripe-sync prune``: what the daemon does every minute, now, or only counted."""
    removed: dict[str, dict[str, int]] = {}
    if keep_seconds <= 0:
        return Pruned(retention, dry_run, removed)
    async with connect(dsn, "prune") as conn:
        for queue in QUEUES:
            if dry_run:
                cur = await conn.execute(
                    queries("retention")[f"prunable_{queue}"], {"keep_seconds": keep_seconds}
                )
                removed[queue] = {str(s): int(n) for s, n in await cur.fetchall()}
            else:
                removed[queue] = dict(
                    await prune_queue(lambda: nullcontext(conn), queue, keep_seconds)
                )
    return Pruned(retention, dry_run, removed)


class Pruner:
    """The daemon's retention pass, every ``interval`` seconds on one pooled connection."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        keep_seconds: float,
        *,
        interval: float = INTERVAL_SECONDS,
        batch: int = BATCH,
        pause: float = PAUSE_SECONDS,
    ) -> None:
        self.pool = pool
        self.keep_seconds = keep_seconds
        # A short retention (a soak run, a test) is kept to within a quarter of itself.
        self.interval = min(interval, max(keep_seconds / 4, 1.0))
        self.batch = batch
        self.pause = pause

    async def run_once(self) -> Counter[str]:
        """One pass over both queues: ``queue/status`` → rows deleted."""
        removed: Counter[str] = Counter()
        for queue in QUEUES:
            gone = await prune_queue(
                self.pool.connection,
                queue,
                self.keep_seconds,
                batch=self.batch,
                pause=self.pause,
            )
            removed.update({f"{queue}_{status}": n for status, n in gone.items()})
        return removed

    async def run(self) -> None:
        if self.keep_seconds <= 0:
            return
        while True:
            try:
                removed = await self.run_once()
            except psycopg.Error as exc:
                # The next pass tries again; nothing is lost by waiting.
                log.warning("retention: prune failed", extra={"error": str(exc)[:200]})
            else:
                if removed:
                    log.info("retention: pruned finished rows", extra=dict(removed))
            await anyio.sleep(self.interval)
