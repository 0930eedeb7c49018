"""Promises under stress: crashes, database restarts, Stripe faults, replicas.

Quick versions of each scenario run in CI; `bench/soak.py` runs the long ones.
Every count is checked through the Stripe API (the emulator via the SDK).
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from typing import Any

import httpx
import psycopg
import pytest
import stripe

from stripe_emulator.server import EmulatorServer
from stripe_sync.migrate import migrate
from stripe_sync_demo.devcluster import ThrowawayCluster

from daemons import API_KEY, DaemonProcess, Daemons, poll

Conn = psycopg.Connection[tuple[Any, ...]]
# Short leases so a killed daemon's rows come back soon, but not so short that a
# starved event loop on a busy machine loses its own leases mid-call and churns.
FAST = {"STRIPE_SYNC_LEASE_SECONDS": 3, "STRIPE_SYNC_SWEEP_INTERVAL": 0.3}


def wait_until(check: Any, timeout: float = 60.0, show: Any = None) -> Any:
    try:
        return poll(check, timeout)
    except AssertionError as exc:
        if show is None:
            raise
        raise AssertionError(f"{exc}; now: {show()}") from None


def statuses(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as c:
        return dict(
            c.execute("SELECT status, count(*) FROM integration.outbox GROUP BY 1").fetchall()
        )


def enqueue_accounts(dsn: str, n: int) -> None:
    # Emails carry the database name: a slow request of an earlier test that
    # lands at the (session-wide) emulator late must not count as a duplicate.
    with psycopg.connect(dsn) as c:
        c.execute(
            "INSERT INTO billing.accounts (email) "
            "SELECT 'u' || g || '@' || current_database() || '.example' "
            "FROM generate_series(1, %s) g",
            (n,),
        )
        c.execute("SELECT integration.seed_outbox()")


def stripe_customers_by_account(emulator: EmulatorServer, dsn: str) -> Counter[str]:
    """Count customers through the API, as an auditor would."""
    client = stripe.StripeClient(
        API_KEY,
        base_addresses={"api": emulator.base_url},
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
        max_network_retries=0,
    )
    counts: Counter[str] = Counter()
    domain = f"@{psycopg.conninfo.conninfo_to_dict(dsn)['dbname']}.example"
    for customer in client.v1.customers.list(params={"limit": 100}).auto_paging_iter():
        if str(customer.email).endswith(domain):
            assert customer.metadata is not None
            counts[customer.metadata["mc_account_id"]] += 1
    return counts


def assert_exactly_one_customer_each(dsn: str, emulator: EmulatorServer, n: int) -> None:
    counts = stripe_customers_by_account(emulator, dsn)
    duplicates = {k: v for k, v in counts.items() if v > 1}
    assert duplicates == {}
    assert len(counts) == n
    with psycopg.connect(dsn) as c:
        mapped = c.execute(
            "SELECT sync_status, count(*) FROM stripe.customer_mappings GROUP BY 1"
        ).fetchall()
        orphans = c.execute(
            "SELECT count(*) FROM billing.accounts a WHERE NOT EXISTS "
            "(SELECT 1 FROM stripe.customer_mappings m "
            " WHERE m.account_id = a.id)"
        ).fetchone()
    assert dict(mapped) == {"synced": n}
    assert orphans == (0,)


@pytest.mark.timeout(900)
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    daemons: Daemons, dsn: str, emulator: EmulatorServer
) -> None:
    rows, kills = 5000, 20
    emulator.emulator.add_fault("applied_response_lost", "POST /v1/customers", rate=0.1)
    # Slow enough that the kills land mid-drain, not after it.
    emulator.emulator.add_fault("latency", "POST /v1/customers", rate=1.0, seconds=0.05)
    # Saved 500s (customer made or not): kills also land between recording one,
    # the wait for the search, the new generation's commit and its create.
    for created in (True, False):
        emulator.emulator.add_fault(
            "500", "POST /v1/customers", rate=0.01, stored=True, created=created
        )
    settings = {**FAST, "STRIPE_SYNC_SEARCH_LAG": 0.5}
    enqueue_accounts(dsn, rows)
    rng = random.Random(20261127)
    for _ in range(kills):
        daemon = daemons.spawn(dsn, **settings).start()
        time.sleep(rng.uniform(0.05, 0.6))
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
    assert statuses(dsn).get("done", 0) < rows, "the kills came too late to matter"
    daemons.spawn(dsn, **settings).start()
    # A correctness scenario, not a timed one: the drain after the kills takes
    # ~50 s on an idle 2-core machine and several minutes beside other CPU-bound work.
    wait_until(lambda: statuses(dsn) == {"done": rows}, timeout=600, show=lambda: statuses(dsn))
    assert_exactly_one_customer_each(dsn, emulator, rows)
    with psycopg.connect(dsn) as c:
        renewed = c.execute(
            "SELECT count(*) FROM stripe.customer_mappings WHERE create_generation > 0"
        ).fetchone()
    assert renewed is not None and renewed[0] > 0, "no create took a new key"


def test_stripe_faults_retry_to_exactly_one_each(
    daemons: Daemons, dsn: str, emulator: EmulatorServer
) -> None:
    rows = 300
    emu = emulator.emulator
    for kind in ("rate_limit", "500", "503", "drop", "applied_response_lost"):
        emu.add_fault(kind, "POST /v1/customers", rate=0.04)  # ~20 % of calls in all
    emu.add_fault("latency", "POST /v1/customers", rate=0.02, seconds=3.0)
    # 500s Stripe saved under the key, the customer made or not: the rows wait
    # for the search (1 s here), then adopt or create with a new key.
    for created in (True, False):
        emu.add_fault("500", "POST /v1/customers", rate=0.01, stored=True, created=created)
    daemons.spawn(
        dsn,
        STRIPE_SYNC_STRIPE_TIMEOUT=1,
        STRIPE_SYNC_MAX_ATTEMPTS=30,
        STRIPE_SYNC_SEARCH_LAG=1,
    ).start()
    enqueue_accounts(dsn, rows)
    wait_until(lambda: statuses(dsn) == {"done": rows}, timeout=90)
    assert_exactly_one_customer_each(dsn, emulator, rows)
    assert sum(r.hits for r in emu.faults.rules()) > rows * 0.1


def test_three_replicas_under_faults_execute_each_row_once(
    daemons: Daemons, dsn: str, emulator: EmulatorServer
) -> None:
    rows = 300
    emulator.emulator.add_fault("503", "POST /v1/customers", rate=0.1)
    for _ in range(3):
        daemons.spawn(dsn, STRIPE_SYNC_CONCURRENCY=8, STRIPE_SYNC_MAX_ATTEMPTS=30).start()
    enqueue_accounts(dsn, rows)
    wait_until(lambda: statuses(dsn) == {"done": rows})
    assert_exactly_one_customer_each(dsn, emulator, rows)
    with psycopg.connect(dsn) as c:
        attempts = c.execute("SELECT sum(attempts) FROM integration.outbox").fetchone()
    # Each attempt is one POST: a row run twice at once would show as an extra.
    posts = emulator.emulator.stats()["counts"]["POST /v1/customers"]
    assert attempts == (posts,)


def test_database_restart_and_listen_kill_recover_fast(
    daemons: Daemons, emulator: EmulatorServer
) -> None:
    with ThrowawayCluster() as cluster:
        migrate(cluster.dsn)
        # The sweep is a minute away: only a restored LISTEN explains fast pickup.
        daemon = daemons.spawn(cluster.dsn, STRIPE_SYNC_SWEEP_INTERVAL=60).start()
        enqueue_accounts(cluster.dsn, 200)
        wait_until(lambda: statuses(cluster.dsn).get("done", 0) >= 20)
        cluster.restart()
        restarted = time.monotonic()
        wait_until(lambda: _listen_ready(daemon), timeout=10)
        listen_back = time.monotonic() - restarted
        wait_until(lambda: statuses(cluster.dsn) == {"done": 200})

        with psycopg.connect(cluster.dsn, autocommit=True) as c:
            pid = c.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'stripe-sync/listen'"
            ).fetchone()
            assert pid is not None
            c.execute("SELECT pg_terminate_backend(%s)", pid)
            wait_until(
                lambda: (
                    c.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                        "'stripe-sync/listen' AND pid <> %s",
                        pid,
                    ).fetchone()
                    == (1,)
                ),
                timeout=5,
            )
            c.execute(
                "INSERT INTO billing.accounts (email) "
                "VALUES ('late@' || current_database() || '.example')"
            )
            c.execute("SELECT integration.seed_outbox()")
            t0 = time.monotonic()
            wait_until(lambda: statuses(cluster.dsn) == {"done": 201}, timeout=10)
            pickup = time.monotonic() - t0
        assert_exactly_one_customer_each(cluster.dsn, emulator, 201)
    assert listen_back < 5, f"LISTEN back after {listen_back:.1f}s"
    assert pickup < 5, f"pickup after the LISTEN kill took {pickup:.1f}s: sweep-bound"
    assert "LISTEN connection lost" in daemon.output()


def _listen_ready(daemon: DaemonProcess) -> bool:
    try:
        return bool(httpx.get(f"{daemon.url}/readyz", timeout=1).json().get("listen"))
    except (httpx.HTTPError, ValueError):
        return False


def test_no_secret_in_logs_errors_or_tables(
    daemons: Daemons, dsn: str, emulator: EmulatorServer
) -> None:
    key, secret = "sk_test_CANARYkey0123456789", "whsec_CANARY-secret-0123"
    emulator.emulator.add_fault("500", "POST /v1/customers", count=2)
    daemon = daemons.spawn(
        dsn,
        STRIPE_SYNC_LOG_LEVEL="debug",
        STRIPE_API_KEY=key,
        STRIPE_WEBHOOK_SECRET=secret,
    ).start()
    enqueue_accounts(dsn, 5)
    with psycopg.connect(dsn) as c:
        c.execute(
            "INSERT INTO integration.outbox (action_type, payload) "
            "VALUES ('create_stripe_customer', '{\"account_id\": \"x\"}')"
        )
    wait_until(lambda: statuses(dsn) == {"done": 5, "failed": 1})
    daemon.stop()
    texts = [daemon.output()]
    with psycopg.connect(dsn) as c:
        for table in (
            "integration.outbox",
            "integration.webhook_events",
            "stripe.provider_configs",
            "stripe.customer_mappings",
        ):
            texts.extend(str(r) for r in c.execute(f"SELECT * FROM {table}"))
    blob = "\n".join(texts)
    assert "level=warning" in blob and "failed" in blob  # the log did talk about the faults
    assert "CANARY" not in blob
