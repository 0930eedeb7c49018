"""The second peer: graphile-worker (Node.js) on the same PostgreSQL, measured
exactly as the procrastinate peer is (peer.measure). Its npm package is installed
into bench/graphile/node_modules on first use; without `node` the peer is skipped
with a note. Jobs are added with graphile-worker's own SQL API
(``graphile_worker.add_job``) inside a transaction, so the clock starts just
before COMMIT as for our outbox rows; its worker (bench/graphile/worker.mjs)
runs concurrency 10, like the procrastinate peer's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
from harness import BenchError, Proc, _clean_env, create_database
from peer import Queue, measure
from psycopg.conninfo import conninfo_to_dict

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
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    package = HERE / "node_modules" / "graphile-worker" / "package.json"
    if not package.exists():
        try:
            subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--silent"],
                cwd=HERE, check=True, capture_output=True, timeout=300,
            )  # fmt: skip
        except (subprocess.SubprocessError, OSError):
            return None  # no registry: skipped with the same note as without node
    return str(json.loads(package.read_text())["version"])


def run_graphile(
    server_dsn: str, run_dir: Path, *, samples: int, warmup: int, jobs: int, drain_warmup: int
) -> dict[str, Any]:
    dsn = create_database(server_dsn, "bench_graphile", migrated=False)
    probes = run_dir / "graphile-probes.txt"
    # node-postgres reads URLs, not libpq's key=value strings.
    parts = conninfo_to_dict(dsn)
    url = (f"postgresql://{parts.get('user', 'postgres')}@{parts.get('host', '127.0.0.1')}:"
           f"{parts.get('port', 5432)}/{parts['dbname']}")  # fmt: skip
    env = _clean_env(BENCH_PEER_DSN=url, BENCH_PEER_PROBES=str(probes))
    log = run_dir / "graphile-worker.log"
    worker = Proc("graphile-worker", ["node", str(HERE / "worker.mjs")], log, env).start()
    try:
        deadline = time.monotonic() + 60  # it installs its schema first
        while "graphile-worker ready" not in worker.tail():
            worker.check()
            if time.monotonic() > deadline:
                raise BenchError(f"graphile-worker did not start:\n{worker.tail()}")
            time.sleep(0.05)
        result = measure(dsn, GRAPHILE, worker, probes, samples=samples, warmup=warmup,
                         jobs=jobs, drain_warmup=drain_warmup)  # fmt: skip
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*) FROM graphile_worker.jobs").fetchone()
        if row and row[0]:
            raise BenchError(f"graphile-worker: {row[0]} jobs left (failed?)")
        return result
    finally:
        worker.stop()
