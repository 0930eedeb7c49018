"""The client CPU of one outbox create, from a claimed row to Stripe's parsed answer, per git
revision: what the SDK and aiohttp cost on L1's path, measured where load hardly moves it.

    .venv/bin/python bench/sdk_calls.py main HEAD --calls 2000 --rounds 5
    .venv/bin/python bench/sdk_calls.py main HEAD --callgrind     # instructions per call

Each revision's ``daemon/stripe_sync`` is exported as ``bench/ab.py`` does; a child process
per (revision, round), interleaved, runs the outbox's own executor
(``customers.PUSHED.create``) on rows as the claim hands them over (``Job.loaded``: no
database), against one emulator process, sequentially, after a warm-up, and reports its
``time.process_time()`` per call: the executor, the SDK and aiohttp up to the request, and the
answer back to the ``Done``. The emulator's share is not counted. ``--callgrind`` runs each
child under ``valgrind --tool=callgrind`` twice (``--calls`` and 3 x ``--calls`` calls) and
reports the difference of their instruction counts per call (the interpreter's start-up and
imports cancel out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ab import export
from harness import API_KEY, EmulatorProc


def child(url: str, calls: int, warmup: int) -> None:
    """In the exported revision's process: time ``calls`` creates, print µs per call."""
    import time

    import anyio

    from stripe_sync.config import Secret
    from stripe_sync.outbox import customers
    from stripe_sync.outbox.common import Context
    from stripe_sync.queue.jobs import Job
    from stripe_sync.stripe_api import StripeApi

    loaded = json.dumps({"email": "bench@example.com", "name": "Bench Account", "stripe_id": None,
                         "status": None, "generation": 0, "unknown_for": None})  # fmt: skip

    async def main() -> float:
        async with StripeApi(Secret(API_KEY), api_base=url, rate_limit=0) as api:
            ctx = Context(pool=None, api=api, source="bench/00000000")  # type: ignore[arg-type]
            n = 0

            async def one() -> None:
                nonlocal n
                n += 1
                job = Job(n, "create_stripe_customer", 1, f'{{"account_id": {n}}}', loaded)
                done = await customers.PUSHED.create(ctx, job)
                assert done.written is not None

            for _ in range(warmup):
                await one()
            cpu0 = time.process_time()
            for _ in range(calls):
                await one()
            return (time.process_time() - cpu0) / calls * 1e6

    print(json.dumps({"cpu_us_per_call": anyio.run(main, backend_options={"use_uvloop": True})}))


def _instructions(out: Path) -> int:
    for line in out.read_text().splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def run_child(
    path: Path, url: str, calls: int, warmup: int, callgrind: Path | None = None
) -> float:
    env = {**os.environ, "PYTHONPATH": str(path)}
    args = [sys.executable, __file__, "--child", url, "--calls", str(calls), "--warmup",
            str(warmup)]  # fmt: skip
    if callgrind is not None:
        args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind}", *args]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    if callgrind is not None:
        return float(_instructions(callgrind))
    return float(json.loads(out.stdout.splitlines()[-1])["cpu_us_per_call"])


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/sdk_calls.py", description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="*", help="git revisions to compare")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--callgrind", action="store_true", help="instructions per call")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.calls, args.warmup)
        return 0
    if len(args.revs) < 1:
        parser.error("name at least one revision")
    work = Path(tempfile.mkdtemp(prefix="stripe-sync-sdk-"))
    results: dict[str, list[float]] = {rev: [] for rev in args.revs}
    emulator = EmulatorProc(work).start()
    try:
        paths = {rev: export(rev, work / f"rev{i}") for i, rev in enumerate(args.revs)}
        for r in range(args.rounds):
            for rev in args.revs:
                if args.callgrind:
                    cg = work / "cg.out"
                    few = run_child(paths[rev], emulator.url, args.calls, 20, cg)
                    many = run_child(paths[rev], emulator.url, 3 * args.calls, 20, cg)
                    value = (many - few) / (2 * args.calls)
                    unit = "instructions per call"
                else:
                    value = run_child(paths[rev], emulator.url, args.calls, args.warmup)
                    unit = "µs CPU per call"
                results[rev].append(value)
                print(f"{rev} round {r}: {value:,.1f} {unit}", flush=True)
    finally:
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("medians:")
    for rev, values in results.items():
        each = ", ".join(f"{v:,.1f}" for v in values)
        print(f"  {rev}: {statistics.median(values):,.1f} ({each})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
