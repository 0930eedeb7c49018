"""The README's main command: it plays its whole story, shows one readable summary,
never writes into a database it was not given, and leaves nothing behind however
it is stopped."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from stripe_sync_demo.reaper import start_time

from webhook_helpers import event, sign

DEMO = [sys.executable, "-m", "stripe_sync.cli", "demo"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DATABASE_URL"))}
    return {**env, **extra}


def _made(out: str) -> set[str]:
    """The directories this demo says it made (the cluster's and the logs'): other
    demos may run on the machine at the same time."""
    found = set(re.findall(r"(?:throwaway PostgreSQL in|logs: ) ?(/\S+)", out))
    assert len(found) == 2, out
    return found


def _left(dirs: set[str]) -> set[str]:
    return {d for d in dirs if os.path.exists(d)}


def _demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DEMO, *args], env=env or _env(), capture_output=True, text=True, timeout=120, check=False
    )


def test_demo_runs_the_story_shows_one_summary_and_cleans_up() -> None:
    result = _demo()
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "demo finished" in out and "settled: no outbox row or webhook event is pending" in out
    # What a newcomer wants to see: Stripe ids, amounts, event types, the billing rows.
    # Piped: plain text, aligned within 80 columns, or one record per line when the
    # columns cannot fit; never a word broken.
    assert re.search(r"Ada Lovelace <ada@example.com>; Stripe id: cus_\w+; mapping: synced", out)
    assert re.search(r"what: member monthly: EUR 15.00 / month; Stripe id: price_\w+", out), out
    assert re.search(r"^invoice.paid +processed +14$", out, re.M), out
    # A year in seconds: twelve renewals on a test clock, each paid, all in billing.*.
    assert re.search(
        r"billing.invoices \d+-\d+; what: Katherine Johnson, EUR 15.00, 13 times; status: paid", out
    ), out
    assert re.search(
        r"billing.payments \d+-\d+; what: Katherine Johnson, EUR 15.00, 13 times; "
        r"status: succeeded",
        out,
    ), out
    assert re.search(
        r"Ada Lovelace, EUR 15.00, refunded 15.00; status: succeeded \(refund: full\)", out
    )
    assert re.search(
        r"Alan Turing, EUR 40.00, fraudulent, respond by \d{4}-\d\d-\d\d; status: needs_response",
        out,
    ), out
    # The member console's cancel went out through the outbox and came back by webhook.
    assert re.search(r"Ada Lovelace, member monthly; status: active \(cancels at period end\)", out)
    summary = out[out.index("Outbox → Stripe: each row") : out.index("settled:")].splitlines()
    assert all(len(line) <= 80 or line.startswith("MC row: ") for line in summary), summary
    assert not any("│" in line for line in summary)
    # One summary, not the last live frame again; piped, no line is broken.
    assert out.count("What the webhooks produced in billing.*") == 1
    assert "waiting" not in out and "pending 2" not in out
    assert "failed" not in out and "Traceback" not in result.stderr
    assert _left(_made(out)) == set()


def test_an_exported_database_url_is_not_used(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO billing.accounts (email) VALUES ('real@example.com')")
    result = _demo(env=_env(DATABASE_URL=dsn))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DATABASE_URL is set but not used" in result.stdout
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM billing.accounts").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM integration.outbox").fetchone() == (0,)


def test_a_database_holding_data_is_refused_without_a_traceback(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO billing.accounts (email) VALUES ('real@example.com')")
    result = _demo("--database-url", dsn)
    assert result.returncode == 1
    assert "already holds rows the demo did not create (billing.accounts 1)" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM billing.accounts").fetchone() == (1,)


def test_an_empty_database_runs_the_demo_twice(empty_dsn: str) -> None:
    for _ in range(2):  # the second run empties the first one's rows, which it marked
        result = _demo("--database-url", empty_dsn)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "settled" in result.stdout
    with psycopg.connect(empty_dsn) as conn:
        # The story's three and Katherine's, whose customer is on a test clock.
        assert conn.execute("SELECT count(*) FROM billing.accounts").fetchone() == (4,)


def _family(pid: int) -> dict[int, str]:
    """pid → start time of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        started = start_time(p)
        if started is not None:
            found[p] = started
            todo += children.get(p, [])
    return found


def _keep_running() -> tuple[subprocess.Popen[str], str, dict[int, str]]:
    """A demo with --keep, once it says so: its processes, and its cluster's."""
    proc = subprocess.Popen(
        [*DEMO, "--keep"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    out = ""
    while "kept running" not in out:
        line = proc.stdout.readline()
        assert line, out
        out += line
    for _ in range(9):  # the lines after "kept running"
        out += proc.stdout.readline()
    cluster = re.search(r"throwaway PostgreSQL in (\S+)", out)
    assert cluster, out
    postmaster = int((Path(cluster[1]) / "data" / "postmaster.pid").read_text().split()[0])
    family = {**_family(proc.pid), **_family(postmaster)}
    assert len(family) >= 5, (family, out)  # demo, reaper, emulator, daemon, postgres...
    # The lines a user needs to use what it started.
    for needed in ("DATABASE_URL=postgresql://", "STRIPE_API_KEY=sk_test_", "curl -s -u sk_test_"):
        assert needed in out, out
    return proc, out, family


def _gone(family: dict[int, str], timeout: float = 30.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        alive = {p: s for p, s in family.items() if start_time(p) == s}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name
)
def test_a_kept_demo_leaves_nothing_behind_when_signalled(sig: signal.Signals) -> None:
    proc, out, family = _keep_running()
    ours = _made(out)
    assert _left(ours) == ours  # the cluster and the log directory, while it runs
    # The curl line the demo printed works: the emulator takes the key as basic auth.
    curl = re.search(r"curl -s -u (\S+): (\S+)", out)
    assert curl
    import httpx

    assert httpx.get(curl[2], auth=(curl[1], "")).status_code == 200
    # The webhook secret it printed is the one the daemon verifies (and the emulator signs) with.
    secret = re.search(r"STRIPE_WEBHOOK_SECRET=(whsec_\S+)", out)
    daemon = re.search(r"daemon: +\S+ +(\S+/webhooks/stripe)", out)
    assert secret and daemon, out
    body = json.dumps(event("customer.updated", {"id": "cus_kept", "object": "customer"}))
    signed = {"Stripe-Signature": sign(body, secret[1])}
    assert httpx.post(daemon[1], content=body, headers=signed).status_code == 200

    proc.send_signal(sig)
    rc = proc.wait(60)
    assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + sig)
    assert _gone(family) == {}, out
    deadline = time.monotonic() + 10
    while _left(ours) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _left(ours) == set()
