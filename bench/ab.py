"""Interleaved A/B of the daemon at two (or more) git revisions, on a loaded machine.

    .venv/bin/python bench/ab.py main HEAD --rounds 3
    .venv/bin/python bench/ab.py main HEAD --l1 300 --rows 3000 --profile /tmp/prof

Each revision's ``daemon/stripe_sync`` and ``schema`` are exported (``git archive``)
into a directory of their own, and its daemon runs with ``PYTHONPATH`` pointing there;
the harness (bench/harness.py, bench/outbox_runs.py) is this checkout's. Runs are
interleaved (A B A B ...), each on a fresh database of one durable throwaway cluster
with a fresh emulator and daemon: L1 (``--l1`` samples), then T1 (``--rows``), then T2
(``--events``, webhooks; none by default); 0 skips one. Prints each run and the
medians; the daemon's CPU per row or event (utime+stime from /proc) is the figure that
load moves least. ``--profile P`` records py-spy (if installed) during each T1 drain,
or each T2 run when T1 is skipped, or (at 1,000 Hz) each L1 run when both are, into
``P-<name>.txt`` (raw, collapsed stacks).

    .venv/bin/python bench/ab.py main HEAD --l1 0 --rows 0 --events 8000  # webhooks only
    .venv/bin/python bench/ab.py main HEAD --l1 0 --rows 0 --mix 2070     # T2 mix only
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import DaemonProc, EmulatorProc, create_database, rss_mb
from outbox_runs import drain, pickup_latency
from webhook_runs import webhooks, webhooks_mix

from stripe_sync_demo.devcluster import ThrowawayCluster

ROOT = Path(__file__).resolve().parent.parent


def export(rev: str, into: Path) -> Path:
    """The package of ``rev`` laid out as an installed one (schema inside it)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "daemon/stripe_sync", "schema"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    shutil.move(into / "schema", into / "daemon" / "stripe_sync" / "schema")
    return into / "daemon"


def one_run(
    cluster: ThrowawayCluster, path: Path, name: str, args: argparse.Namespace, run_dir: Path
) -> dict[str, Any]:
    dsn = create_database(cluster.dsn, name)
    os.environ["PYTHONPATH"] = str(path)  # the daemon and the migration both come from it
    emulator = EmulatorProc(run_dir).start()
    daemon = DaemonProc(run_dir, dsn, emulator.url, STRIPE_SYNC_LOG_LEVEL="warning").start()
    try:
        time.sleep(1.5)
        out: dict[str, Any] = {"idle_mb": rss_mb(daemon.pid)}
        spy = None
        if args.profile and args.l1 and not (args.rows or args.events):
            spy = _spy(daemon.pid, f"{args.profile}-{name}.txt", rate=1000)  # L1 alone
        if args.l1:
            lat = pickup_latency(dsn, emulator, daemon, samples=args.l1, warmup=30)
            out.update(l1_p50=lat["p50_ms"], l1_p99=lat["p99_ms"],
                       l1_mapping_p50=lat["mapping_p50_ms"],
                       l1_cpu_ms_per_row=lat["daemon_cpu_ms_per_row"],
                       load=os.getloadavg()[0])  # fmt: skip
            spy = _stop(spy)
        if args.profile and (args.rows or args.events):
            spy = _spy(daemon.pid, f"{args.profile}-{name}.txt", rate=200)
        if args.rows:
            t1 = drain(dsn, emulator, daemon, rows=args.rows, warmup=200)
            spy = _stop(spy)
            out.update(t1=t1["rows_per_s"], cpu_ms_per_row=t1["daemon_cpu_ms_per_row"],
                       emulator_cpu_ms_per_row=t1["emulator_cpu_ms_per_row"])  # fmt: skip
        if args.events:
            t2 = webhooks(dsn, daemon, events=args.events, warmup=1000)
            _stop(spy)
            out.update(t2_p99=t2["p99_ms"], t2_applied=t2["applied_per_s"],
                       cpu_ms_per_event=t2["daemon_cpu_ms_per_event"])  # fmt: skip
        if args.mix:
            mix = webhooks_mix(dsn, daemon, events=args.mix, warmup=69)
            out.update(mix_p99=mix["p99_ms"], mix_applied=mix["applied_per_s"],
                       mix_cpu_ms_per_event=mix["daemon_cpu_ms_per_event"])  # fmt: skip
        return out
    finally:
        daemon.stop()
        emulator.stop()


def _spy(pid: int, out: str, *, rate: int) -> subprocess.Popen[bytes] | None:
    """py-spy (if installed) recording ``pid`` into ``out`` (raw, collapsed stacks)."""
    if not shutil.which("py-spy"):
        return None
    spy = subprocess.Popen(
        ["py-spy", "record", "-p", str(pid), "-o", out, "-f", "raw", "-r", str(rate),
         "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)
    return spy


def _stop(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(2)
        spy.wait()


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/ab.py", description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="+", help="git revisions to compare (at least two)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--l1", type=int, default=150, help="L1 samples per run (0: none)")
    parser.add_argument("--rows", type=int, default=3000, help="T1 rows per run (0: none)")
    parser.add_argument("--events", type=int, default=0, help="T2 events per run (0: none)")
    parser.add_argument("--mix", type=int, default=0, help="T2 mix events per run (0: none)")
    parser.add_argument("--profile", metavar="PREFIX", help="py-spy: T1, else T2, else L1")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stripe-sync-ab-"))
    paths = {rev: export(rev, work / f"rev{i}") for i, rev in enumerate(args.revs)}
    results: dict[str, list[dict[str, Any]]] = {rev: [] for rev in args.revs}
    try:
        with ThrowawayCluster(durable=True) as cluster:
            for r in range(args.rounds):
                for i, rev in enumerate(args.revs):
                    out = one_run(cluster, paths[rev], f"ab{r}_{i}", args, work)
                    results[rev].append(out)
                    shown = {k: round(v, 3) for k, v in out.items()}
                    print(f"{rev} round {r}: {json.dumps(shown)}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("medians:")
    for rev, outs in results.items():
        if outs:
            med = {k: round(statistics.median(o[k] for o in outs), 3) for k in outs[0]}
            print(f"  {rev}: {json.dumps(med)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
