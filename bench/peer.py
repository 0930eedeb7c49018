"""The peer: procrastinate on the same PostgreSQL, measured the same way as we are.

Jobs are deferred with the very statement procrastinate's ``defer`` runs
(``procrastinate_defer_jobs_v1``), inside a transaction, so the clock starts
just before COMMIT exactly as for our outbox rows. The worker is procrastinate's
own CLI in its own process, concurrency 10 as its docs suggest.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from harness import BenchError, Proc, _clean_env, create_database, latency_summary, wait_until

DEFER = (
    "SELECT unnest(procrastinate_defer_jobs_v1(array_agg(ROW('default', %s, 0, NULL, NULL, "
    "a, NULL)::procrastinate_job_to_defer_v1))) FROM unnest(%s::jsonb[]) a"
)
IDLE = "SELECT NOT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))"
CONCURRENCY = 10


def available() -> str | None:
    """procrastinate's version, or None when the bench extra is not installed."""
    try:
        from importlib.metadata import version

        import procrastinate  # noqa: F401
    except ImportError:
        return None
    return version("procrastinate")


class Queue(NamedTuple):
    """How the harness drives one peer's queue through plain SQL."""

    enqueue: str  # %s: task name, then a list of JSON args; returns the job ids
    done: str  # %s: a job id; true once that job has run
    idle: str  # true once no job is left to run


PROCRASTINATE = Queue(
    enqueue=DEFER,
    done="SELECT status = 'succeeded' FROM procrastinate_jobs WHERE id = %s",
    idle=IDLE,
)


def measure(
    dsn: str, queue: Queue, worker: Proc, probes: Path, *, samples: int, warmup: int,
    jobs: int, drain_warmup: int,
) -> dict[str, Any]:  # fmt: skip
    """Pickup (one job at a time, like L1: COMMIT → the task starts) and drain
    (all jobs committed in one transaction, then worked off), as for our outbox."""
    with psycopg.connect(dsn, autocommit=True) as admin, psycopg.connect(dsn) as conn:
        committed: dict[int, float] = {}
        for i in range(warmup + samples):
            [job_id] = _enqueue(conn, queue, "probe", [{"i": i}])
            t0 = time.monotonic()
            conn.commit()
            if i >= warmup:
                committed[i] = t0
            time.sleep(0.001)
            wait_until(admin, queue.done, [job_id], timeout=30, interval=0.002, watch=[worker])
            time.sleep(0.003)
        started = {}
        for line in probes.read_text().splitlines():
            i_text, t_text = line.split()
            started.setdefault(int(i_text), float(t_text))
        pickup = latency_summary([started[i] - t0 for i, t0 in committed.items()])
        for n in (drain_warmup, jobs):  # the last one is timed
            if n == 0:
                continue
            _enqueue(conn, queue, "noop", [{} for _ in range(n)])
            t0 = time.monotonic()
            conn.commit()
            t_end = wait_until(admin, queue.idle, timeout=900, interval=0.02, watch=[worker])
    seconds = t_end - t0
    return {
        "concurrency": CONCURRENCY,
        "pickup": pickup,
        "drain": {"rows": jobs, "seconds": seconds, "rows_per_s": jobs / seconds},
    }


def _enqueue(
    conn: psycopg.Connection[Any], queue: Queue, task: str, args: list[dict[str, Any]]
) -> list[int]:
    rows = conn.execute(queue.enqueue, [task, [json.dumps(a) for a in args]]).fetchall()
    return [int(r[0]) for r in rows]


def run_peer(
    server_dsn: str, run_dir: Path, *, samples: int, warmup: int, jobs: int, drain_warmup: int
) -> dict[str, Any]:
    dsn = create_database(server_dsn, "bench_peer", migrated=False)
    probes = run_dir / "peer-probes.txt"
    bench_dir = str(Path(__file__).resolve().parent)
    env = _clean_env(BENCH_PEER_DSN=dsn, BENCH_PEER_PROBES=str(probes), PYTHONPATH=bench_dir)
    app = ["--app=peer_tasks.app"]
    schema = Proc("procrastinate-schema", [sys.executable, "-m", "procrastinate", *app, "schema",
                  "--apply"], run_dir / "peer-schema.log", env).start()  # fmt: skip
    assert schema.proc is not None
    if schema.proc.wait(60) != 0:
        raise BenchError(f"procrastinate schema --apply failed:\n{schema.tail()}")
    worker = Proc("procrastinate worker", [sys.executable, "-m", "procrastinate", *app, "worker",
                  f"--concurrency={CONCURRENCY}"], run_dir / "peer-worker.log", env)  # fmt: skip
    worker.start()
    try:
        result = measure(dsn, PROCRASTINATE, worker, probes, samples=samples, warmup=warmup,
                         jobs=jobs, drain_warmup=drain_warmup)  # fmt: skip
        with psycopg.connect(dsn) as admin:
            row = admin.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'"
            ).fetchone()
        if row and row[0]:
            raise BenchError(f"procrastinate: {row[0]} jobs did not succeed")
        return result
    finally:
        worker.stop()
