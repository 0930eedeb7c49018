"""Smoke run of the benchmark suite: it starts, measures everything, prints its table.

No timing assertions: a loaded CI box must not fail this. It starts its own
PostgreSQL cluster (from the demo extra's wheel, as the demo does).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stripe_sync_demo.devcluster import ClusterError, find_bindir

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_bench_runs_and_names_every_measurement(tmp_path: Path) -> None:
    try:
        find_bindir()
    except ClusterError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=280, cwd=ROOT, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout
    for name in ("L1", "T1", "T2", "P", "M", "pickup, NOTIFY", "sweep only", "outbox drain",
                 "50 ms Stripe latency", "webhooks accepted", "stored and applied",
                 "mix: stripe-sync-engine's", "pacing", "daemon RSS", "B1", "backfill",
                 "idempotent", "paced, no daemon", "paced beside a daemon"):  # fmt: skip
        assert name in table, f"{name!r} missing from:\n{table}"
    results = json.loads(out.read_text())
    assert {"L1", "L1_sweep", "T1", "T1_latency", "T2", "T2_mix", "P", "M", "B1"} <= results.keys()
    assert results["P"]["rate_limited"] >= 0
    b1 = results["B1"]
    # The same objects each run; the second run into the same database changes nothing.
    runs = ("paced", "again", "beside", "unpaced")
    assert len({b1[run]["objects"] for run in runs}) == 1 and b1["paced"]["objects"] > 0
    assert b1["paced"]["changed"] == b1["beside"]["changed"] == b1["unpaced"]["changed"] > 0
    assert b1["again"]["changed"] == 0
    # STRIPE_SYNC_BACKFILL_SHARE unset: the whole limit alone, half beside a daemon.
    assert (b1["paced"]["share"], b1["beside"]["share"]) == (1.0, 0.5)
    if "peer" in results:  # only when the bench extra is installed
        assert "procrastinate" in table
