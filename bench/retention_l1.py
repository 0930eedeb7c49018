"""Issue 18: pickup latency (L1) while the daemon prunes, against a run that keeps everything.

    .venv/bin/python bench/retention_l1.py --rows 1000000 --rounds 2 --samples 150

Each run: a fresh database of one durable throwaway cluster gets ``--rows`` finished
rows processed 200 days ago (half outbox ``done``, half ``processed`` webhook events,
``'{}'`` payloads), then a fresh emulator and ``stripe-sync run`` with
STRIPE_SYNC_RETENTION=90d (its pruner starts deleting at once) or 0 (keeps all), and
L1 as ``./dev bench`` measures it. Runs are interleaved (0, 90d, 0, 90d, ...); each
prints L1 and how many old rows the pruner deleted while L1 ran.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from harness import DaemonProc, EmulatorProc, create_database
from outbox_runs import pickup_latency

from stripe_sync_demo.devcluster import ThrowawayCluster

AGE = "now() - interval '200 days' + g * interval '1 ms'"


def fill(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO integration.outbox (action_type, status, processed_at) "
            f"SELECT 'create_stripe_customer', 'done', {AGE} FROM generate_series(1, %s) g",
            [rows // 2],
        )
        conn.execute(
            "INSERT INTO integration.webhook_events (stripe_event_id, event_type, livemode, "
            "event_created, payload, status, processed_at) SELECT 'evt_old_' || g, "
            f"'customer.updated', false, 1, '{{}}', 'processed', {AGE} "
            "FROM generate_series(1, %s) g",
            [rows // 2],
        )
        conn.execute("VACUUM ANALYZE integration.outbox")
        conn.execute("VACUUM ANALYZE integration.webhook_events")


def old_rows(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM integration.outbox WHERE processed_at < now() - "
            "interval '100 days') + (SELECT count(*) FROM integration.webhook_events "
            "WHERE processed_at < now() - interval '100 days')"
        ).fetchone()
        assert row is not None
        return int(row[0])


def one_run(
    cluster_dsn: str, run_dir: Path, retention: str, i: int, args: argparse.Namespace
) -> dict[str, Any]:
    dsn = create_database(cluster_dsn, f"l1_{i}")
    fill(dsn, args.rows)
    emulator = EmulatorProc(run_dir).start()
    daemon = DaemonProc(
        run_dir, dsn, emulator.url, STRIPE_SYNC_RETENTION=retention, STRIPE_SYNC_LOG_LEVEL="warning"
    ).start()
    try:
        time.sleep(2.0)
        before = old_rows(dsn)
        l1 = pickup_latency(dsn, emulator, daemon, samples=args.samples, warmup=20)
        after = old_rows(dsn)
    finally:
        daemon.stop()
        emulator.stop()
    result = {"retention": retention, "pruned_during_l1": before - after, **l1}
    print(
        f"retention={retention:>4}: L1 p50 {l1['p50_ms']:.2f} ms, p99 {l1['p99_ms']:.2f} ms, "
        f"mean {l1['mean_ms']:.2f} ms; old rows deleted while L1 ran: {before - after}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=150)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="stripe-sync-retention-l1-"))
    results: list[dict[str, Any]] = []
    with ThrowawayCluster(durable=True) as cluster:
        for i in range(args.rounds * 2):
            retention = "0" if i % 2 == 0 else "90d"
            results.append(one_run(cluster.dsn, run_dir, retention, i, args))
    for retention in ("0", "90d"):
        runs = [r for r in results if r["retention"] == retention]
        p50 = statistics.median(r["p50_ms"] for r in runs)
        mean = statistics.median(r["mean_ms"] for r in runs)
        print(f"retention={retention:>4}: median of runs: L1 p50 {p50:.2f} ms, mean {mean:.2f} ms")


if __name__ == "__main__":
    main()
