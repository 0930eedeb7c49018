"""The T2 peer: supabase's stripe-sync-engine (Node.js) on the same PostgreSQL,
sent T2's very requests (webhook_runs: the same signed customer.updated events,
the same 16 keep-alive clients). It verifies and applies each event inside the
request and keeps no durable event log, so its "accepted" is also its "applied".
Its npm packages are installed into bench/sse/node_modules on first use; without
`node` the peer is skipped with a note."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from harness import (
    WEBHOOK_SECRET,
    BenchError,
    Proc,
    _clean_env,
    cpu_seconds,
    create_database,
    latency_summary,
    node_package,
    node_url,
    wait_for_line,
)
from webhook_runs import _event, _post_all, _request

from stripe_sync.devcluster import free_port

HERE = Path(__file__).resolve().parent / "sse"


def available() -> str | None:
    return node_package(HERE, "@supabase/stripe-sync-engine")


def run_sse(server_dsn: str, run_dir: Path, *, events: int, clients: int = 16) -> dict[str, Any]:
    dsn = create_database(server_dsn, "bench_sse", migrated=False)
    port = free_port()
    env = _clean_env(
        BENCH_PEER_DSN=node_url(dsn), BENCH_WEBHOOK_SECRET=WEBHOOK_SECRET, BENCH_PEER_PORT=str(port)
    )
    server = Proc("stripe-sync-engine", ["node", str(HERE / "server.mjs")],
                  run_dir / "sse.log", env).start()  # fmt: skip
    try:
        wait_for_line(server, "stripe-sync-engine ready")  # it migrates its schema first
        now = int(time.time())
        for n, timed, tag in ((min(events, 500), False, "sw"), (events, True, "st")):
            requests = [
                _request(_event(i, tag, i + 1, f"cus_{tag}{i:012d}", now), port, now)
                for i in range(n)
            ]
            cpu0 = cpu_seconds(server.pid)
            latencies, statuses, start, end = asyncio.run(_post_all(port, requests, clients))
            cpu1 = cpu_seconds(server.pid)
            bad = [s for s in statuses if s != 200]
            if bad:
                raise BenchError(f"stripe-sync-engine: {len(bad)} of {n} refused:\n{server.tail()}")
            if timed:
                result = latency_summary(latencies, stall_ms=15.0)
                result.update(
                    events=n,
                    clients=clients,
                    applied_per_s=n / (end - start),
                    cpu_ms_per_event=(cpu1 - cpu0) * 1000 / n,
                )
                return result
    finally:
        server.stop()
    raise BenchError("stripe-sync-engine: no events")
