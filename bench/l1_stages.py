"""L1 stage by stage: where the time from COMMIT to the request at Stripe goes, per revision.

    .venv/bin/python bench/l1_stages.py main HEAD --samples 300 --rounds 3

L1 as ``outbox_runs.pickup_latency`` runs it (one row at a time), with the daemon's own
stamps (``bench/l1_stamps/sitecustomize.py``, on CLOCK_MONOTONIC like the harness and the
emulator): COMMIT; COMMIT returned → the worker woken by NOTIFY; woken → claim sent; the claim's
round trip; claimed → the executor started; executor → aiohttp writes the request; written →
the emulator has it. Medians per run in ms, interleaved as ``bench/ab.py`` runs revisions. Wall
clock: on a loaded machine, compare stages of one round, not rounds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from ab import export
from harness import DaemonProc, EmulatorProc, create_database, wait_until
from outbox_runs import INSERT_ROW, new_accounts, request_arrivals

from stripe_sync_demo.devcluster import ThrowawayCluster

STAMPS = Path(__file__).resolve().parent / "l1_stamps"
STAGES = ("commit", "commit→woken", "woken→claim", "claim", "claimed→executor",
          "executor→written", "written→arrived", "total")  # fmt: skip


def one_run(
    cluster: ThrowawayCluster, path: Path, name: str, samples: int, warmup: int, work: Path
) -> dict[str, Any]:
    dsn = create_database(cluster.dsn, name)
    stamps = work / f"{name}.jsonl"
    os.environ["PYTHONPATH"] = f"{STAMPS}{os.pathsep}{path}"
    os.environ["L1_STAMPS"] = str(stamps)
    emulator = EmulatorProc(work).start()
    daemon = DaemonProc(work, dsn, emulator.url, STRIPE_SYNC_LOG_LEVEL="warning").start()
    rows: dict[int, tuple[int, float, float]] = {}
    try:
        time.sleep(1.5)
        with psycopg.connect(dsn, autocommit=True) as admin, psycopg.connect(dsn) as conn:
            since = time.monotonic()
            for i, account in enumerate(new_accounts(admin, warmup + samples, "l1")):
                row = conn.execute(INSERT_ROW + " RETURNING id", [account]).fetchone()
                assert row is not None
                t0 = time.monotonic()
                conn.commit()
                if i >= warmup:
                    rows[row[0]] = (account, t0, time.monotonic())
                time.sleep(0.001)
                wait_until(admin, "SELECT status = 'done' FROM integration.outbox WHERE id = %s",
                           [row[0]], timeout=30, interval=0.002)  # fmt: skip
                time.sleep(0.003)
        arrived = request_arrivals(emulator, since)
    finally:
        daemon.stop()
        emulator.stop()
    seen = {s["id"]: s for s in map(json.loads, stamps.read_text().splitlines())}
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for id_, (account, t0, t1) in rows.items():
        if (s := seen.get(id_)) is None or not s["wake"] or account not in arrived:
            continue
        marks = (t0, t1, s["wake"], s["claim0"], s["claim1"], s["exec"], s["write"],
                 arrived[account])  # fmt: skip
        for stage, (a, b) in zip(STAGES, itertools.pairwise(marks), strict=False):
            stages[stage].append(b - a)
        stages["total"].append(arrived[account] - t0)
    out: dict[str, Any] = {k: round(statistics.median(v) * 1000, 3) for k, v in stages.items() if v}
    return {**out, "n": len(stages["total"]), "load": round(os.getloadavg()[0], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/l1_stages.py", description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="+")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stripe-sync-l1-stages-"))
    try:
        paths = {rev: export(rev, work / f"rev{i}") for i, rev in enumerate(args.revs)}
        with ThrowawayCluster(durable=True) as cluster:
            for r in range(args.rounds):
                for i, rev in enumerate(args.revs):
                    out = one_run(cluster, paths[rev], f"stages{r}_{i}", args.samples,
                                  args.warmup, work)  # fmt: skip
                    print(f"{rev} round {r}: {json.dumps(out, ensure_ascii=False)}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
