"""stripe-sync benchmarks: one command, its own PostgreSQL, one table.

    ./dev bench                 # the full run (~8 minutes on a quiet 2-core machine)
    ./dev bench --quick         # small counts: a smoke run (~1 minute)
    ./dev bench --only L1,T1 --json results.json
    ./dev bench --only T1,T2 --pin --processes 2   # what a core buys

Starts a durable throwaway PostgreSQL cluster (fsync on), the Stripe emulator
(no added latency unless a measurement asks) and ``stripe-sync run``, each as
its own process, runs every measurement after a warm-up, and prints one
table. docs/benchmarks.md says what each measurement does.

Per core: T1's and T2's CPU lines give the daemon's CPU per row/event, the
cores it kept busy (its CPU seconds over the wall seconds of the run) and its
rate per busy core (rows or events per second of its CPU). With ``--processes
N`` both are summed over its N processes: per core is what one core of them buys.

``--pin`` puts the daemon (every process of it, ``--processes N`` included) on
CPU 1 and everything else on CPU 0: this process pins itself first, so
PostgreSQL and its backends, the emulators, the peers and the load generators
(T2's clients run in this process) inherit CPU 0, and each daemon is started on
CPU 1. The run prints each one's ``Cpus_allowed_list`` read back from /proc.
Other work on the machine is not pinned: it still shares both cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backfill import measure as backfill_measure
from graphile_peer import available as graphile_version
from graphile_peer import run_graphile
from harness import (
    BenchError,
    DaemonProc,
    EmulatorProc,
    affinity,
    create_database,
    pin,
    rss_mb,
    server_version,
)
from outbox_runs import drain, pacing, pickup_latency, sweep_latency
from peer import available as peer_version
from peer import run_peer
from report import machine, table
from sse_peer import available as sse_version
from sse_peer import run_sse
from webhook_runs import webhooks, webhooks_mix

from stripe_sync_demo.devcluster import ThrowawayCluster

MEASUREMENTS = ("L1", "T1", "T2", "P", "M", "B1", "PEER")


@dataclass(frozen=True)
class Counts:
    l1_samples: int
    l1_warmup: int
    sweep_samples: int
    sweep_window: float  # seconds over which the sweep-only rows are spread
    t1_rows: int
    t1_warmup: int
    t2_events: int
    t2_warmup: int
    pacing_seconds: float
    # T2 mix: stripe-sync-engine's 69 sample events, in turn; warm-up: one round of them.
    t2_mix_events: int
    t2_mix_warmup: int
    # B1: the emulator's history of this many customers over this many months.
    b1_customers: int
    b1_months: int


FULL = Counts(1000, 200, 40, 30.0, 20_000, 1_000, 20_000, 1_000, 30.0, 10_350, 69, 500, 24)
QUICK = Counts(50, 10, 4, 4.0, 500, 50, 500, 50, 5.0, 138, 69, 20, 3)
SWEEP_INTERVAL = 5.0  # the daemon's default STRIPE_SYNC_SWEEP_INTERVAL
# --pin: the daemon's core, and everything else's.
PIN_DAEMON = {1}
PIN_OTHERS = {0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark stripe-sync against its targets and procrastinate, on a "
        "PostgreSQL cluster of its own.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        metavar="LIST",
        help=f"comma-separated subset of {','.join(MEASUREMENTS)} (default: all)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--latency-concurrency",
        type=int,
        default=64,
        metavar="N",
        help="STRIPE_SYNC_CONCURRENCY for the T1 run with 50 ms of emulator latency (default 64)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="STRIPE_SYNC_LOG_LEVEL of the daemons (default warning: see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="STRIPE_SYNC_PROCESSES of the daemons (default 1); CPU is then summed over all N",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the daemon process(es) on CPU 1, everything else (PostgreSQL, the emulator, "
        "the peers, this process and its load generators) on CPU 0: what a core buys",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the run directory with every process's log"
    )
    args = parser.parse_args(argv)
    only = {part.strip().upper() for part in args.only.split(",") if part.strip()}
    unknown = only - set(MEASUREMENTS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {MEASUREMENTS}")
    args.only = only
    return args


class Results(dict[str, Any]):
    """Prints each measurement as it lands, so an interrupted run still shows its numbers."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        if key in ("L1", "L1_sweep", "T1", "T1_latency", "T2", "T2_mix", "P", "peer"):
            shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in value.items()}
            print(f"    {key}: {json.dumps(shown, default=_nan_safe)}", flush=True)


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C: the daemons, emulators and cluster are stopped.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    counts = QUICK if args.quick else FULL
    only: set[str] = args.only
    run_dir = Path(tempfile.mkdtemp(prefix="stripe-sync-bench-"))
    results = Results(counts=asdict(counts), quick=args.quick, notes=[])
    notes: list[str] = results["notes"]
    daemon_env = {"STRIPE_SYNC_LOG_LEVEL": args.log_level}
    if args.processes != 1:
        daemon_env["STRIPE_SYNC_PROCESSES"] = str(args.processes)
        notes.append(f"each daemon ran as {args.processes} processes (STRIPE_SYNC_PROCESSES); "
                     "CPU per row/event and cores busy are their sum")  # fmt: skip
    ok = False
    started = time.monotonic()
    try:
        if args.pin:
            # Before anything starts: everything started from here inherits CPU 0.
            pin(daemon=PIN_DAEMON, others=PIN_OTHERS)
            notes.append("pinned (--pin): the daemon's processes on CPU 1; PostgreSQL, the "
                         "emulator, the peers and the load generators on CPU 0")  # fmt: skip
        with ThrowawayCluster(durable=True) as cluster:
            results["machine"] = {**machine(), "postgresql": server_version(cluster.dsn)}
            dsn = create_database(cluster.dsn, "bench")
            print(f"PostgreSQL {results['machine']['postgresql']} on port {cluster.port}; "
                  f"logs in {run_dir}", flush=True)  # fmt: skip

            if only & {"L1", "T1", "T2", "M"}:
                _main_stack(dsn, run_dir, counts, only, daemon_env, results)
            if "T1" in only:
                step("T1 with 50 ms emulator latency")
                emulator = EmulatorProc(run_dir, latency=0.05, tag="-latency").start()
                conc = str(args.latency_concurrency)
                daemon = DaemonProc(run_dir, dsn, emulator.url, tag="-latency",
                                    STRIPE_SYNC_CONCURRENCY=conc, **daemon_env).start()  # fmt: skip
                try:
                    rows = counts.t1_rows
                    results["T1_latency"] = {
                        **drain(dsn, emulator, daemon, rows=rows, warmup=counts.t1_warmup),
                        "latency_ms": 50,
                        "concurrency": args.latency_concurrency,
                    }
                finally:
                    daemon.stop()
                    emulator.stop()
            if "P" in only:
                step("P pacing at 25 req/s")
                emulator = EmulatorProc(run_dir, rate_limit=25, tag="-paced").start()
                daemon = DaemonProc(run_dir, dsn, emulator.url, tag="-paced",
                                    STRIPE_SYNC_RATE_LIMIT="25", **daemon_env).start()  # fmt: skip
                try:
                    results["P"] = pacing(
                        dsn, emulator, daemon, limit=25, seconds=counts.pacing_seconds
                    )
                finally:
                    daemon.stop()
                    emulator.stop()
            if "B1" in only:
                step(f"B1 backfill: {counts.b1_customers} customers, {counts.b1_months} months")
                results["B1"] = backfill_measure(
                    cluster.dsn, run_dir, customers=counts.b1_customers, months=counts.b1_months
                )
            if "PEER" in only:
                peers = [
                    ("peer", "procrastinate", peer_version, run_peer,
                     "procrastinate is not installed (pip install -e '.[bench]')"),
                    ("peer_graphile", "graphile-worker", graphile_version, run_graphile,
                     "graphile-worker needs node and npm (and the npm registry, once)"),
                ]  # fmt: skip
                for key, name, version_of, run, missing in peers:
                    version = version_of()
                    if version is None:
                        notes.append(f"peer skipped: {missing}")
                        continue
                    step(f"peer: {name} {version}")
                    results[key] = {
                        "name": f"{name} {version}",
                        **run(
                            cluster.dsn, run_dir, samples=counts.l1_samples,
                            warmup=counts.l1_warmup, jobs=counts.t1_rows,
                            drain_warmup=counts.t1_warmup,
                        ),
                    }  # fmt: skip
                # T2's peer: sent T2's own requests.
                sse = sse_version()
                if sse is None:
                    notes.append("peer skipped: stripe-sync-engine needs node and npm "
                                 "(and the npm registry, once)")  # fmt: skip
                else:
                    step(f"peer: stripe-sync-engine {sse}, {counts.t2_events} events")
                    results["peer_sse"] = {
                        "name": f"stripe-sync-engine {sse}",
                        **run_sse(cluster.dsn, run_dir, events=counts.t2_events),
                    }
                    step(f"peer: stripe-sync-engine {sse}, T2 mix, {counts.t2_mix_events} events")
                    results["peer_sse_mix"] = {
                        "name": f"stripe-sync-engine {sse}",
                        **run_sse(cluster.dsn, run_dir, events=counts.t2_mix_events, mix=True),
                    }
        ok = True
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
    finally:
        results["wall_seconds"] = time.monotonic() - started
        if ok and not args.keep_logs:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(f"logs kept in {run_dir}", file=sys.stderr)
    print()
    print(table(results, only))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=_nan_safe) + "\n")
    return 0 if ok else 1


def _main_stack(
    dsn: str,
    run_dir: Path,
    counts: Counts,
    only: set[str],
    daemon_env: dict[str, str],
    results: dict[str, Any],
) -> None:
    """One emulator and one long-lived daemon for L1, T1, T2 and the memory readings."""
    step("starting the emulator and the daemon")
    emulator = EmulatorProc(run_dir).start()
    daemon = DaemonProc(run_dir, dsn, emulator.url, **daemon_env).start()
    memory: dict[str, float] = {}
    results["M"] = memory
    try:
        time.sleep(2.0)  # settle: pool connections opened, first sweep done
        memory["idle_mb"] = rss_mb(daemon.pid)
        if DaemonProc.cpus is not None:  # --pin: what the kernel was told, read back
            pinned = affinity(dsn, {"daemon": daemon.pid, "emulator": emulator.pid})
            results["affinity"] = pinned
            shown = "; ".join(f"{k}: {v}" for k, v in pinned.items())
            print(f"    affinity (Cpus_allowed_list): {shown}", flush=True)
        if "L1" in only:
            step(f"L1 pickup latency, {counts.l1_samples} samples")
            results["L1"] = pickup_latency(
                dsn, emulator, daemon, samples=counts.l1_samples, warmup=counts.l1_warmup
            )
            step(f"L1 sweep only (NOTIFY trigger disabled), {counts.sweep_samples} samples")
            results["L1_sweep"] = sweep_latency(
                dsn, emulator, daemon, samples=counts.sweep_samples,
                window=counts.sweep_window, sweep_interval=SWEEP_INTERVAL,
            )  # fmt: skip
        if "T1" in only:
            step(f"T1 outbox drain, {counts.t1_rows} rows")
            results["T1"] = drain(
                dsn, emulator, daemon, rows=counts.t1_rows, warmup=counts.t1_warmup
            )
            memory["after_t1_mb"] = rss_mb(daemon.pid)
        if "T2" in only:
            step(f"T2 webhooks, {counts.t2_events} events, 16 clients")
            results["T2"] = webhooks(dsn, daemon, events=counts.t2_events, warmup=counts.t2_warmup)
            memory["after_t2_mb"] = rss_mb(daemon.pid)
            step(f"T2 mix: stripe-sync-engine's sample events, {counts.t2_mix_events} events")
            before = emulator.stats()["counts"]
            results["T2_mix"] = webhooks_mix(
                dsn, daemon, events=counts.t2_mix_events, warmup=counts.t2_mix_warmup,
                emulator=emulator,
            )  # fmt: skip
            # What the daemon asked Stripe during the mix (warm-up included): same-second
            # ties and references it fetched, answered from the objects the mix gave it.
            after = emulator.stats()["counts"]
            results["T2_mix"]["stripe_requests"] = {
                k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)
            }
    finally:
        daemon.stop()
        emulator.stop()


def step(text: str) -> None:
    print(f"==> {text} ({time.strftime('%H:%M:%S')})", flush=True)


def _nan_safe(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else str(value)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
