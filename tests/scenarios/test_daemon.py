"""`stripe-sync run` as a separate process: health, start-up checks, crashes,
replicas and graceful shutdown, against a real database and the emulator."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import httpx
import psycopg
import pytest

from stripe_emulator.server import EmulatorServer

from daemons import WEBHOOK_SECRET, Daemons
from daemons import poll as wait_until
from webhook_helpers import event, sign

Conn = psycopg.Connection[tuple[Any, ...]]


def statuses(conn: Conn) -> dict[str, int]:
    return dict(
        conn.execute("SELECT status, count(*) FROM integration.outbox GROUP BY 1").fetchall()
    )


def test_http_surface(daemons: Daemons, dsn: str, emulator: EmulatorServer) -> None:
    d = daemons.spawn(
        dsn,
    ).start()
    assert httpx.get(f"{d.url}/healthz").json() == {"status": "alive"}
    ready = httpx.get(f"{d.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "database": True, "listen": True, "workers": True}
    missing = httpx.get(f"{d.url}/nope")
    assert missing.status_code == 404 and "Traceback" not in missing.text
    assert httpx.get(f"{d.url}/webhooks/stripe").status_code == 405


def test_first_start_records_the_provider_config(
    daemons: Daemons, dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    daemons.spawn(
        dsn,
    ).start()
    account_id, mode = conn.execute(
        "SELECT account_id, mode FROM stripe.provider_configs"
    ).fetchone() or (None, None)
    assert mode == "test" and str(account_id).startswith("acct_")


@pytest.mark.parametrize(
    "row,message",
    [
        (
            "(1, NULL, 'live')",
            "STRIPE_API_KEY is a test key but stripe.provider_configs.mode is 'live'",
        ),
        (
            "(1, 'acct_someoneelse', 'test')",
            "but stripe.provider_configs.account_id is acct_someoneelse",
        ),
    ],
)
def test_refuses_a_key_for_another_mode_or_account(
    daemons: Daemons,
    dsn: str,
    conn: Conn,
    emulator: EmulatorServer,
    row: str,
    message: str,
) -> None:
    conn.execute(f"INSERT INTO stripe.provider_configs (id, account_id, mode) VALUES {row}")
    d = daemons.spawn(
        dsn,
    ).start(wait=False)
    assert d.wait(20) == 78
    assert message in d.output()


def test_sigterm_lets_in_flight_work_finish(
    daemons: Daemons, dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    conn.execute("INSERT INTO billing.accounts (id, email) VALUES (1, 'a@example.com')")
    d = daemons.spawn(
        dsn,
    ).start()
    emulator.emulator.add_fault("latency", "POST /v1/customers", count=1, seconds=1.0)
    conn.execute(
        "INSERT INTO integration.outbox (action_type, payload) "
        "VALUES ('create_stripe_customer', '{\"account_id\": 1}')"
    )
    wait_until(lambda: emulator.emulator.stats()["counts"].get("POST /v1/customers"))
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0, d.output()
    assert statuses(conn) == {"done": 1}
    assert "stopping" in d.output() and "stopped" in d.output()


def test_killed_between_stripe_call_and_commit_makes_one_customer(
    daemons: Daemons, dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    conn.execute("INSERT INTO billing.accounts (id, email) VALUES (1, 'a@example.com')")
    emu = emulator.emulator
    first = daemons.spawn(dsn, STRIPE_SYNC_LEASE_SECONDS=1, STRIPE_SYNC_SWEEP_INTERVAL=0.3).start()
    # The request is applied at the emulator, then its answer is slow: the
    # daemon dies holding a created customer it never recorded.
    emu.add_fault("latency", "POST /v1/customers", count=1, seconds=1.5)
    conn.execute(
        "INSERT INTO integration.outbox (action_type, payload) "
        "VALUES ('create_stripe_customer', '{\"account_id\": 1}')"
    )
    wait_until(lambda: emu.stats()["counts"].get("POST /v1/customers"))
    first.signal(signal.SIGKILL)
    first.wait(10)
    assert statuses(conn) == {"processing": 1}
    daemons.spawn(dsn, STRIPE_SYNC_LEASE_SECONDS=1, STRIPE_SYNC_SWEEP_INTERVAL=0.3).start()
    wait_until(lambda: statuses(conn) == {"done": 1})
    assert emu.count("customers") == 1
    cus = conn.execute(
        "SELECT stripe_customer_id, sync_status FROM stripe.customer_mappings"
    ).fetchone()
    assert cus == (emu.objects("customers")[0]["id"], "synced")


def test_three_daemons_execute_each_row_once(
    daemons: Daemons, dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    for _ in range(3):
        daemons.spawn(dsn, STRIPE_SYNC_CONCURRENCY=8).start()
    conn.execute(
        "INSERT INTO billing.accounts (email) "
        "SELECT 'u' || g || '@example.com' FROM generate_series(1, 300) g"
    )
    conn.execute("SELECT integration.seed_outbox()")
    wait_until(lambda: statuses(conn) == {"done": 300}, timeout=60)
    assert emulator.emulator.stats()["counts"]["POST /v1/customers"] == 300
    assert emulator.emulator.count("customers") == 300
    workers = conn.execute(
        "SELECT count(DISTINCT application_name) FROM pg_stat_activity "
        "WHERE application_name = 'stripe-sync/listen'"
    ).fetchone()
    assert workers == (1,)  # one name, three connections
    listening = conn.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = 'stripe-sync/listen' "
        "AND datname = current_database()"
    ).fetchone()
    assert listening == (3,)


def test_refuses_an_unmigrated_database(
    daemons: Daemons, empty_dsn: str, emulator: EmulatorServer
) -> None:
    d = daemons.spawn(
        empty_dsn,
    ).start(wait=False)
    assert d.wait(20) == 78
    assert "stripe-sync: the database has no stripe-sync schema; run `stripe-sync migrate`" in (
        d.output()
    )


def test_refuses_to_start_without_a_webhook_secret(
    daemons: Daemons, dsn: str, emulator: EmulatorServer
) -> None:
    d = daemons.spawn(dsn, STRIPE_WEBHOOK_SECRET="").start(wait=False)
    assert d.wait(20) == 78
    assert d.output() == "stripe-sync: configuration error: STRIPE_WEBHOOK_SECRET is not set\n"


def test_metrics_and_json_logs(
    daemons: Daemons, dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    import json

    from stripe_sync_demo.devcluster import free_port

    port = free_port()
    d = daemons.spawn(
        dsn,
        STRIPE_SYNC_METRICS_BIND=f"127.0.0.1:{port}",
        STRIPE_SYNC_LOG_FORMAT="json",
    ).start()
    conn.execute("INSERT INTO billing.accounts (id, email) VALUES (1, 'a@example.com')")
    conn.execute(
        "INSERT INTO integration.outbox (action_type, payload) "
        "VALUES ('create_stripe_customer', '{\"account_id\": 1}')"
    )
    wait_until(lambda: statuses(conn) == {"done": 1})
    assert httpx.post(f"{d.url}/webhooks/stripe", content=b"{}").status_code == 400
    metrics_url = f"http://127.0.0.1:{port}/metrics"

    # Finished rows are an estimate from the statistics counters, which a
    # backend flushes within seconds of its commits.
    def scrape_once_finished_counted() -> str | None:
        text = httpx.get(metrics_url).text
        return (
            text if 'stripe_sync_queue_rows{queue="outbox",status="finished"} 1.0' in text else None
        )

    text = wait_until(scrape_once_finished_counted)
    # Scrapes read through the daemon's pool: no connection of their own.
    sessions = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
    before = conn.execute(sessions).fetchone()
    for _ in range(5):
        assert httpx.get(metrics_url).status_code == 200
    time.sleep(1.5)  # a closed session's statistics are flushed as it exits
    conn.execute("SELECT pg_stat_clear_snapshot()")
    assert conn.execute(sessions).fetchone() == before
    for line in (
        'stripe_sync_queue_rows{queue="outbox",status="pending"} 0.0',
        'stripe_sync_processed_total{kind="create_stripe_customer",outcome="done",'
        'queue="outbox"} 1.0',
        'stripe_sync_wakeups_total{cause="notify",queue="outbox"}',
        'stripe_sync_stripe_request_seconds_count{call="create customer"} 1.0',
        'stripe_sync_webhooks_received_total{result="rejected"} 1.0',
    ):
        assert line in text, line
    records = [json.loads(line) for line in d.output().splitlines() if line.startswith("{")]
    done = [r for r in records if r.get("msg") == "outbox row done"]
    assert done and done[0]["row_id"] == 1 and done[0]["kind"] == "create_stripe_customer"
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)


def test_the_daemon_applies_its_webhook_tolerance_setting(
    daemons: Daemons, dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    """Issue #17: STRIPE_SYNC_WEBHOOK_TOLERANCE reaches the endpoint of the running daemon
    (a daemon that ignored it, e.g. passing a huge tolerance, would store the old event)."""
    d = daemons.spawn(dsn, STRIPE_SYNC_WEBHOOK_TOLERANCE=60).start()
    now = int(time.time())

    def post(event_id: str, signed_ago: int) -> httpx.Response:
        body = json.dumps(event("customer.updated", {"id": "cus_T"}, event_id=event_id))
        header = sign(body, WEBHOOK_SECRET, timestamp=now - signed_ago)
        return httpx.post(
            f"{d.url}/webhooks/stripe", content=body, headers={"Stripe-Signature": header}
        )

    old = post("evt_signed_120s_ago", 120)
    assert old.status_code == 400
    assert old.json() == {"error": "signature timestamp outside the tolerance"}
    recent = post("evt_signed_30s_ago", 30)
    assert recent.status_code == 200
    stored = conn.execute("SELECT stripe_event_id FROM integration.webhook_events").fetchall()
    assert stored == [("evt_signed_30s_ago",)]
