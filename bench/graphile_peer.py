"""The second peer: graphile-worker (Node.js) on the same PostgreSQL, measured
exactly as the procrastinate peer is (peer.measure). Its npm package is installed
into bench/graphile/node_modules on first use; without `node` the peer is skipped
with a note. Jobs are added with graphile-worker's own SQL API
(``graphile_worker.add_job``) inside a transaction, so the clock starts just
before COMMIT as for our outbox rows; its worker (bench/graphile/worker.mjs)
runs concurrency 10, like the procrastinate peer's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from harness import (
    BenchError,
    Proc,
    _clean_env,
    create_database,
    node_package,
    node_url,
    wait_for_line,
)
from peer import Queue, measure

HERE = Path(__file__).resolve().parent / "graphile"

GRAPHILE = Queue(
    enqueue=(
        "SELECT (graphile_worker.add_job(%s, payload => a::json)).id FROM unnest(%s::text[]) AS a"
    ),
    done="SELECT NOT EXISTS (SELECT 1 FROM graphile_worker.jobs WHERE id = %s)",
    idle="SELECT NOT EXISTS (SELECT 1 FROM graphile_worker.jobs)",
)


def available() -> str | None:
    """graphile-worker's version (installing it on first use), or None without node/npm."""
    return node_package(HERE, "graphile-worker")


def run_graphile(
    server_dsn: str, run_dir: Path, *, samples: int, warmup: int, jobs: int, drain_warmup: int
) -> dict[str, Any]:
    dsn = create_database(server_dsn, "bench_graphile", migrated=False)
    probes = run_dir / "graphile-probes.txt"
    env = _clean_env(BENCH_PEER_DSN=node_url(dsn), BENCH_PEER_PROBES=str(probes))
    log = run_dir / "graphile-worker.log"
    worker = Proc("graphile-worker", ["node", str(HERE / "worker.mjs")], log, env).start()
    try:
        wait_for_line(worker, "graphile-worker ready")  # it installs its schema first
        result = measure(dsn, GRAPHILE, worker, probes, samples=samples, warmup=warmup,
                         jobs=jobs, drain_warmup=drain_warmup)  # fmt: skip
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*) FROM graphile_worker.jobs").fetchone()
        if row and row[0]:
            raise BenchError(f"graphile-worker: {row[0]} jobs left (failed?)")
        return result
    finally:
        worker.stop()
