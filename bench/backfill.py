"""B1: adopting an existing Stripe account, measured (#24).

    .venv/bin/python bench/backfill.py                 # 500 customers, 24 months (~21,000 objects)
    .venv/bin/python bench/backfill.py --customers 100 --months 6 --json b1.json

Starts a durable throwaway PostgreSQL cluster and the Stripe emulator (its
own process), seeds the emulator with an account's past (POST
/_emulator/history), gives MC an account per customer (same email) and the
same catalog, links them (`stripe-sync link --product/--price`, then
`--by-email`), and runs `stripe-sync backfill --json` as an operator would:

- paced: the test-mode default rate limit (25 req/s) with STRIPE_SYNC_BACKFILL_SHARE
  unset and no daemon running: the whole limit (the runbook's link -> backfill -> run);
- again: the idempotent second run (nothing to change);
- beside: the same default into a second, fresh database while a daemon runs on
  it (its LISTEN connection, application_name 'stripe-sync/listen', held open
  for the run): half the limit;
- unpaced (STRIPE_SYNC_RATE_LIMIT=0) into a third, fresh database: what the
  database side and the CPU allow.

Each run's objects/s, requests/s, the share it took (its --json's) and the
backfill process's CPU per object (its own process_time, as its --json
reports it) go in one table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import API_KEY, BenchError, EmulatorProc, _clean_env, create_database

from stripe_sync_demo.devcluster import ThrowawayCluster


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "stripe_sync.cli", *args],
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if done.returncode != 0:
        raise BenchError(f"stripe-sync {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def mc_rows(dsn: str, history: dict[str, Any]) -> str:
    """MC's accounts (one per customer, same email) and catalog; this database's mc_source."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO billing.accounts (id, email) VALUES (%s, %s)",
                [(i + 1, email) for i, email in enumerate(history["emails"])],
            )
        for i, amount in enumerate((900, 2900, 9900), start=1):
            conn.execute("INSERT INTO billing.products (id, name) VALUES (%s, %s)", (i, f"P{i}"))
            conn.execute(
                "INSERT INTO billing.prices (id, product_id, currency, unit_amount, "
                "recurring_interval) VALUES (%s, %s, 'usd', %s, 'month')",
                (i, i, amount),
            )
    return dsn


def link(env: dict[str, str], history: dict[str, Any]) -> float:
    started = time.monotonic()
    catalog: list[str] = []
    for i, product in enumerate(history["products"], start=1):
        catalog += ["--product", str(i), product]
    for i, price in enumerate(history["prices"], start=1):
        catalog += ["--price", str(i), price]
    cli("link", *catalog, env=env)
    linked = json.loads(cli("link", "--by-email", "--json", env=env).stdout)
    if linked["refused"] or linked["ambiguous"]:
        raise BenchError(f"link --by-email: {linked['refused'] or linked['ambiguous']}")
    return time.monotonic() - started


def postmaster_pid(server_dsn: str) -> int:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    return int((Path(row[0]) / "postmaster.pid").read_text().split()[0])


def exited_children_cpu(pid: int) -> float:
    """CPU seconds of a process's children that have exited (cutime + cstime,
    /proc/<pid>/stat): for the postmaster, its backends that have ended."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def backfill(env: dict[str, str], postmaster: int) -> dict[str, Any]:
    started = time.monotonic()
    pg_before = exited_children_cpu(postmaster)
    report: dict[str, Any] = json.loads(cli("backfill", "--json", env=env).stdout)
    wall = time.monotonic() - started
    # The backfill's connections have closed with it: their backends' CPU is the
    # postmaster's children's now (the WAL writer and checkpointer are not in it).
    pg_cpu = exited_children_cpu(postmaster) - pg_before
    objects, seconds = report["objects"], report["seconds"]
    return {
        "share": report["share"],
        "shares": report["shares"],
        "objects": objects,
        "changed": report["changed"],
        "requests": report["requests"],
        "seconds": seconds,
        "wall_seconds": wall,  # with the process's start-up
        "objects_per_s": objects / seconds if seconds else 0.0,
        "requests_per_s": report["requests"] / seconds if seconds else 0.0,
        "cpu_ms_per_object": 1000 * report["cpu_seconds"] / objects if objects else 0.0,
        "pg_cpu_ms_per_object": 1000 * pg_cpu / objects if objects else 0.0,
        "load_average": os.getloadavg()[0],  # the last minute's, as the run ends
    }


RUNS = ("paced", "again", "beside", "unpaced")


def measure(server_dsn: str, run_dir: Path, *, customers: int, months: int) -> dict[str, Any]:
    """The whole of B1 on a cluster of the caller's (``./dev bench`` or ``main``):
    an emulator of its own seeded with the history, then the three runs, each
    with the load average beside it (wall-clock rates move with it; CPU per
    object and the request count hardly do)."""
    results: dict[str, Any] = {"customers": customers, "months": months}
    postmaster = postmaster_pid(server_dsn)
    emulator = EmulatorProc(run_dir, tag="-b1").start()
    try:
        started = time.monotonic()
        history = httpx.post(
            f"{emulator.url}/_emulator/history",
            json={"customers": customers, "months": months, "seed": 1},
            timeout=600,
        ).json()
        results["history"] = {
            "objects": history["objects"],
            "counts": history["counts"],
            "seconds": time.monotonic() - started,
        }
        print(f"    B1 history: {history['objects']} objects {history['counts']}", flush=True)
        for name, rate in (("paced", None), ("beside", None), ("unpaced", "0")):
            dsn = mc_rows(create_database(server_dsn, f"b1_{name}"), history)
            env = {
                "DATABASE_URL": dsn,
                "STRIPE_API_KEY": API_KEY,
                "STRIPE_API_BASE": emulator.url,
                "STRIPE_SYNC_RATE_LIMIT": "0",
            }
            results[f"link_{name}_seconds"] = link(env, history)
            if rate is None:
                del env["STRIPE_SYNC_RATE_LIMIT"]  # the test-mode default, 25 req/s
            with contextlib.ExitStack() as stack:
                if name == "beside":
                    # A daemon as the backfill sees one: its LISTEN connection.
                    stack.enter_context(psycopg.connect(dsn, application_name="stripe-sync/listen"))
                results[name] = backfill(env, postmaster)
            print(f"    B1 {name}: {json.dumps(results[name])}", flush=True)
            if name == "paced":
                results["again"] = backfill(env, postmaster)
                print(f"    B1 again: {json.dumps(results['again'])}", flush=True)
    finally:
        emulator.stop()
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"B1 backfill, {results['customers']} customers, {results['months']} months of history",
        f"{'run':<10}{'objects':>9}{'changed':>9}{'requests':>10}{'s':>8}{'share':>7}"
        f"{'objects/s':>11}{'req/s':>8}{'CPU ms/object':>15}{'PG CPU ms/obj':>15}{'load':>7}",
    ]
    for name in RUNS:
        r = results[name]
        lines.append(
            f"{name:<10}{r['objects']:>9}{r['changed']:>9}{r['requests']:>10}{r['seconds']:>8.1f}"
            f"{r['share']:>7g}"
            f"{r['objects_per_s']:>11.0f}{r['requests_per_s']:>8.1f}"
            f"{r['cpu_ms_per_object']:>15.3f}{r['pg_cpu_ms_per_object']:>15.3f}"
            f"{r['load_average']:>7.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/backfill.py", description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="stripe-sync-b1-"))
    try:
        with ThrowawayCluster(durable=True) as cluster:
            results = measure(cluster.dsn, run_dir, customers=args.customers, months=args.months)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    print()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
