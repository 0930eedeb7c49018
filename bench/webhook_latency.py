"""Webhook commit-to-applied latency: signed events POSTed one at a time to a
running daemon; for each, the time from the ingest commit (received_at) to
the processor's commit (processed_at), as recorded in integration.webhook_events.

    .venv/bin/python bench/webhook_latency.py [--events 500]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
from harness import WEBHOOK_SECRET, DaemonProc, EmulatorProc, create_database, latency_summary
from webhook_runs import _event, mapped_customers

from stripe_sync_demo.devcluster import ThrowawayCluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="stripe-sync-whlat-"))
    with ThrowawayCluster(durable=True) as cluster:
        dsn = create_database(cluster.dsn, "whlat")
        emulator = EmulatorProc(run_dir).start()
        daemon = DaemonProc(run_dir, dsn, emulator.url, STRIPE_SYNC_LOG_LEVEL="warning").start()
        try:
            with psycopg.connect(dsn, autocommit=True) as conn, httpx.Client() as client:
                customers = mapped_customers(conn, args.events, "lat")
                for i, (account, customer) in enumerate(customers):
                    now = int(time.time())
                    body = _event(i, "lat", account, customer, now)
                    mac = hmac.new(
                        WEBHOOK_SECRET.encode(), f"{now}.".encode() + body, hashlib.sha256
                    ).hexdigest()
                    response = client.post(
                        f"{daemon.url}/webhooks/stripe",
                        content=body,
                        headers={"Stripe-Signature": f"t={now},v1={mac}"},
                    )
                    response.raise_for_status()
                    time.sleep(0.005)
                deadline = time.monotonic() + 60
                while conn.execute(
                    "SELECT count(*) FROM integration.webhook_events WHERE status <> 'processed'"
                ).fetchone() != (0,):
                    if time.monotonic() > deadline:
                        raise SystemExit("events not applied within 60 s")
                    time.sleep(0.05)
                lags = [
                    r[0]
                    for r in conn.execute(
                        "SELECT extract(epoch FROM processed_at - received_at)::float8 "
                        "FROM integration.webhook_events"
                    )
                ]
        finally:
            daemon.stop()
            emulator.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
    s = latency_summary(lags)
    print(f"{len(lags)} customer.updated events, one at a time: ingest commit → applied")
    print(f"  p50 {s['p50_ms']:.2f} / p99 {s['p99_ms']:.2f} / max {s['max_ms']:.2f} ms")


if __name__ == "__main__":
    main()
