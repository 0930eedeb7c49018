"""The README's main command plays its whole story and cleans up after itself."""

from __future__ import annotations

import glob
import os
import subprocess
import sys


def test_demo_runs_the_story_and_cleans_up() -> None:
    before = set(glob.glob("/tmp/stripe-sync-pg-*")) | set(glob.glob("/tmp/stripe-sync-demo-*"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DATABASE_URL"))}
    result = subprocess.run(
        [sys.executable, "-m", "stripe_sync.cli", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "demo finished" in out
    for line in ("succeeded/refund:full", "billing.subscriptions", "billing.invoices"):
        assert line in out
    assert "failed" not in out
    after = set(glob.glob("/tmp/stripe-sync-pg-*")) | set(glob.glob("/tmp/stripe-sync-demo-*"))
    assert after - before == set()
