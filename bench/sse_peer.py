"""The T2 peer: supabase's stripe-sync-engine (Node.js) on the same PostgreSQL,
sent T2's very requests (webhook_runs: the same signed customer.updated events,
the same 16 keep-alive clients), and T2 mix's (webhook_mix: its own sample
events). It verifies and applies each event inside the request and keeps no
durable event log, so its "accepted" is also its "applied".
Its npm packages are installed into bench/sse/node_modules on first use; without
`node` the peer is skipped with a note."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import webhook_mix
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

from stripe_sync_demo.devcluster import free_port

HERE = Path(__file__).resolve().parent / "sse"


def available() -> str | None:
    return node_package(HERE, "@supabase/stripe-sync-engine")


def _t2_bodies(n: int, tag: str) -> list[bytes]:
    now = int(time.time())
    return [_event(i, tag, i + 1, f"cus_{tag}{i:012d}", now) for i in range(n)]


def run_sse(
    server_dsn: str, run_dir: Path, *, events: int, clients: int = 16, mix: bool = False
) -> dict[str, Any]:
    """T2's events, or with ``mix`` T2 mix's, on a fresh database of its own."""
    bodies: Callable[[int, str], list[bytes]] = webhook_mix.bodies if mix else _t2_bodies
    dsn = create_database(server_dsn, "bench_sse_mix" if mix else "bench_sse", migrated=False)
    port = free_port()
    env = _clean_env(
        BENCH_PEER_DSN=node_url(dsn), BENCH_WEBHOOK_SECRET=WEBHOOK_SECRET, BENCH_PEER_PORT=str(port)
    )
    log = run_dir / ("sse-mix.log" if mix else "sse.log")
    server = Proc("stripe-sync-engine", ["node", str(HERE / "server.mjs")], log, env).start()
    try:
        wait_for_line(server, "stripe-sync-engine ready")  # it migrates its schema first
        now = int(time.time())
        for n, timed, tag in ((min(events, 500), False, "sw"), (events, True, "st")):
            sent = bodies(n, tag)
            requests = [_request(body, port, now) for body in sent]
            cpu0 = cpu_seconds(server.pid)
            latencies, statuses, start, end = asyncio.run(_post_all(port, requests, clients))
            cpu1 = cpu_seconds(server.pid)
            bad = [json.loads(b)["type"] for b, s in zip(sent, statuses, strict=True) if s != 200]
            if bad:
                raise BenchError(f"stripe-sync-engine: {len(bad)} of {n} refused, of types "
                                 f"{', '.join(sorted(set(bad)))}:\n{server.tail()}")  # fmt: skip
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
