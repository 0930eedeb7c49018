"""Issue 18: status, a metrics scrape and the pruner on 10 million finished rows.

    N=5000000 PRUNE=1 PRUNE_SECONDS=250 .venv/bin/python bench/retention_scale.py

A durable throwaway cluster gets N ``done`` outbox rows and N ``processed``
webhook events with ``'{}'`` payloads (processed 200 days ago, 1 ms apart), 20
failed and 50 pending rows; then the queries of ``status`` are timed as they
were at f73d0bb (``git show f73d0bb:daemon/stripe_sync/sql/ops.sql`` into
OLD_OPS, default /tmp/r18/old_ops.sql) and as they are, then the whole
``stripe-sync status``, a metrics body, and with PRUNE=1 one pruner pass over
the rows older than 200 days minus PRUNE_SECONDS.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import psycopg
from prometheus_client import generate_latest

from stripe_sync.db import make_pool, queries
from stripe_sync.migrate import migrate
from stripe_sync.ops.queue_counts import QueueRow, queue_rows
from stripe_sync.ops.retention import Pruner
from stripe_sync.ops.status import collect
from stripe_sync.runtime.metrics import REGISTRY, QueueCollector
from stripe_sync_demo.devcluster import ThrowawayCluster

N = int(os.environ.get("N", "5000000"))  # rows per table
AGE = "now() - interval '200 days' + g * interval '1 ms'"


def old_queries() -> dict[str, str]:
    text = open(os.environ.get("OLD_OPS", "/tmp/r18/old_ops.sql")).read()
    parts = re.compile(r"^--\s*name:\s*(\S+)\s*$", re.M).split(text)
    return {n: b.strip() for n, b in zip(parts[1::2], parts[2::2], strict=True)}


def timed(f: Callable[[], Any], n: int = 7) -> str:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t) * 1000)
    return f"median {statistics.median(ts):.1f} ms (min {min(ts):.1f}, max {max(ts):.1f}, n={n})"


def fill(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        t = time.time()
        conn.execute(
            "INSERT INTO integration.outbox (action_type, status, processed_at) "
            f"SELECT 'create_stripe_customer', 'done', {AGE} FROM generate_series(1, %s) g",
            [N],
        )
        conn.execute(
            "INSERT INTO integration.webhook_events (stripe_event_id, event_type, livemode, "
            "event_created, payload, status, processed_at) SELECT 'evt_' || g, "
            f"'customer.updated', false, 1, '{{}}', 'processed', {AGE} "
            "FROM generate_series(1, %s) g",
            [N],
        )
        conn.execute(
            "INSERT INTO integration.outbox (action_type, status, attempts) "
            "SELECT 'create_stripe_customer', 'failed', 10 FROM generate_series(1, 20)"
        )
        conn.execute(
            "INSERT INTO integration.webhook_events (stripe_event_id, event_type, livemode, "
            "event_created, payload, next_attempt_at) SELECT 'evt_p' || g, 'customer.updated', "
            "false, 1, '{}', now() + interval '1 day' FROM generate_series(1, 50) g"
        )
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")
        time.sleep(2)  # the counters flushed before VACUUM sets them
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE integration.outbox")
        conn.execute("VACUUM ANALYZE integration.webhook_events")
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        print(f"filled {2 * N} finished rows in {time.time() - t:.0f}s; {size.fetchone()}")


def run_query(conn: psycopg.Connection[Any], query: str) -> None:
    conn.execute(query, {"limit": 10}).fetchall()


def compare_queries(dsn: str) -> None:
    old = old_queries()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in ("queue_counts", "webhook_lag", "stuck", "recent_failures"):
            before = timed(partial(run_query, conn, old[name]), 3)
            after = timed(partial(run_query, conn, queries("ops")[name]))
            print(f"{name}: before {before}; after {after}", flush=True)


def command_times(dsn: str) -> None:
    env = {**os.environ, "DATABASE_URL": dsn}
    exe = os.path.join(os.path.dirname(sys.executable), "stripe-sync")
    for args in (["status"], ["--version"]):
        took = timed(partial(subprocess.run, [exe, *args], env=env, capture_output=True), 5)
        print(f"stripe-sync {' '.join(args)} (whole process): {took}", flush=True)


async def in_process(dsn: str) -> None:
    ts = []
    for _ in range(7):
        t = time.perf_counter()
        status = await collect(dsn)
        ts.append((time.perf_counter() - t) * 1000)
    print(f"status collect(): median {statistics.median(ts):.1f} ms (min {min(ts):.1f})")
    print("  rows:", [(r.queue, r.status, r.count, r.estimated) for r in status.queues])
    async with make_pool(dsn, size=4) as pool:
        loop = asyncio.get_running_loop()

        async def rows() -> list[QueueRow]:
            async with pool.connection() as conn:
                return await queue_rows(conn)

        REGISTRY.register(
            QueueCollector(lambda: asyncio.run_coroutine_threadsafe(rows(), loop).result())
        )
        ts = []
        for _ in range(15):
            t = time.perf_counter()
            await asyncio.to_thread(generate_latest, REGISTRY)
            ts.append((time.perf_counter() - t) * 1000)
        print(f"/metrics body: median {statistics.median(ts):.1f} ms (max {max(ts):.1f}, n=15)")
        if os.environ.get("PRUNE"):
            keep = 200 * 86400.0 - float(os.environ.get("PRUNE_SECONDS", "500"))
            t0 = time.time()
            removed = await Pruner(pool, keep).run_once()
            took = time.time() - t0
            rate = sum(removed.values()) / took
            print(f"pruned {dict(removed)} in {took:.0f}s = {rate:.0f} rows/s", flush=True)


def main() -> None:
    with ThrowawayCluster(durable=True) as cluster:
        migrate(cluster.dsn)
        fill(cluster.dsn)
        compare_queries(cluster.dsn)
        command_times(cluster.dsn)
        asyncio.run(in_process(cluster.dsn))


if __name__ == "__main__":
    main()
