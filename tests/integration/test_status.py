"""``status`` (and every metrics scrape, which reads the same rows) counts live
rows exactly and finished rows from the statistics counters, never one by one."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest

from stripe_sync.ops.status import collect

from daemons import run_cli

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[tuple[Any, ...]]


def insert(conn: Conn, status: str, rows: int, queue: str = "outbox") -> None:
    lease = "now() + interval '1 hour'" if status == "processing" else "NULL"
    if queue == "outbox":
        conn.execute(
            "INSERT INTO integration.outbox (action_type, status, locked_until) "
            f"SELECT 'create_stripe_customer', %s, {lease} FROM generate_series(1, %s)",
            [status, rows],
        )
    else:
        conn.execute(
            "INSERT INTO integration.webhook_events (stripe_event_id, event_type, livemode, "
            "event_created, payload, status, locked_until) "
            "SELECT 'evt_' || md5(random()::text), 'customer.updated', false, 1, '{}', %s, "
            f"{lease} FROM generate_series(1, %s)",
            [status, rows],
        )


def flush_statistics(conn: Conn) -> None:
    """This session's counters reach the statistics at its next idle moment: now."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


async def counts(dsn: str) -> dict[tuple[str, str], tuple[int, bool]]:
    status = await collect(dsn)
    return {(r.queue, r.status): (r.count, r.estimated) for r in status.queues}


async def test_live_rows_exact_finished_rows_estimated(dsn: str, conn: Conn) -> None:
    for status, n in (("done", 30), ("dismissed", 5), ("pending", 2), ("processing", 1)):
        insert(conn, status, n)
    insert(conn, "failed", 1)
    for status, n in (("processed", 20), ("ignored", 4), ("failed", 3)):
        insert(conn, status, n, queue="webhooks")
    flush_statistics(conn)
    assert await counts(dsn) == {
        ("outbox", "pending"): (2, False),
        ("outbox", "processing"): (1, False),
        ("outbox", "failed"): (1, False),
        ("outbox", "finished"): (35, True),
        ("webhooks", "pending"): (0, False),
        ("webhooks", "processing"): (0, False),
        ("webhooks", "failed"): (3, False),
        ("webhooks", "finished"): (24, True),
    }
    # Pruned (deleted) rows leave the estimate; rows that finish move into it.
    conn.execute("DELETE FROM integration.outbox WHERE id IN (SELECT id FROM integration.outbox "
                 "WHERE status = 'done' LIMIT 10)")  # fmt: skip
    conn.execute("UPDATE integration.outbox SET status = 'done' WHERE status = 'pending'")
    flush_statistics(conn)
    found = await counts(dsn)
    assert found[("outbox", "finished")] == (27, True)
    assert found[("outbox", "pending")] == (0, False)
    # Failed rows are exact: status's verdict never rests on an estimate.
    report = await collect(dsn)
    assert report.problems == [
        "4 failed row(s)",
        "work is waiting and no daemon is listening",
    ]


def waiting_events(conn: Conn, rows: int, *, arrived: str, error: str | None) -> None:
    """Pending webhook events in backoff (not due); an error ending in cus_ names
    another customer for each event."""
    conn.execute(
        "INSERT INTO integration.webhook_events (stripe_event_id, event_type, livemode, "
        "event_created, payload, status, attempts, last_error, received_at, next_attempt_at) "
        "SELECT 'evt_' || md5(random()::text), 'invoice.paid', false, 1, '{}', 'pending', 3, "
        "%(error)s || CASE WHEN %(error)s LIKE '%%cus\\_' THEN substr(md5(g::text), 1, 14) "
        "ELSE '' END, now() - %(arrived)s::interval, now() + interval '1 minute' "
        "FROM generate_series(1, %(rows)s) g",
        {"error": error, "arrived": arrived, "rows": rows},
    )


async def test_why_rows_wait_is_shown_and_waiting_too_long_is_a_problem(
    dsn: str, conn: Conn
) -> None:
    """16 events in backoff on a missing mapping: not due, so no 'oldest due' age;
    the age since they arrived and their reason are shown (#28)."""
    waiting_events(conn, 16, arrived="2 minutes", error="MissingReference: no mapping for cus_")
    waiting_events(conn, 2, arrived="1 minute", error=None)
    report = await collect(dsn, wait_alarm=600)
    [webhooks] = report.waiting
    assert webhooks.queue == "webhooks" and 120 < webhooks.oldest_seconds < 180
    assert [(r.reason, r.count) for r in webhooks.reasons] == [
        ("MissingReference: no mapping for cus_…", 16),  # 16 customers, one reason
        (None, 2),
    ]
    assert report.problems == ["work is waiting and no daemon is listening"]

    # Past STRIPE_SYNC_WAIT_ALARM (10m, as the alert rule StripeSyncQueueStuck): a problem.
    waiting_events(conn, 1, arrived="11 minutes", error="TransientError: Stripe answered 503")
    report = await collect(dsn, wait_alarm=600)
    assert re.fullmatch(
        r"webhooks: a row retried with backoff has waited 11m( \ds)? since it arrived "
        r"\(STRIPE_SYNC_WAIT_ALARM 10m\), on: TransientError: Stripe answered 503",
        report.problems[0],
    ), report.problems
    env = {"DATABASE_URL": dsn}
    text = run_cli("status", env=env)
    assert text.returncode == 1
    shown = text.stdout
    assert re.search(r"^webhooks: why pending rows wait \(the oldest arrived 11m( \ds)? ago\)$",
                     shown, re.M), shown  # fmt: skip
    assert re.search(r"^ +16 +2m( \ds)? +MissingReference: no mapping for cus_…$", shown, re.M)
    assert re.search(r"^ +2 +1m( \ds)? +not tried yet$", shown, re.M), shown
    # The setting moves the line; 0 never calls waiting a problem.
    for alarm in ("1h", "0"):
        relaxed = run_cli("status", "--json", env={**env, "STRIPE_SYNC_WAIT_ALARM": alarm})
        assert json.loads(relaxed.stdout)["problems"] == [
            "work is waiting and no daemon is listening"
        ]


async def test_an_old_failure_made_due_again_waits_from_now(dsn: str, conn: Conn) -> None:
    """`stripe-sync retry` of a row that failed days ago: due now, not in backoff,
    so not a problem until it waits past the alarm as a due row."""
    conn.execute(
        "INSERT INTO integration.outbox (action_type, status, attempts, last_error, created_at) "
        "VALUES ('create_stripe_customer', 'failed', 10, 'Stripe answered 503', "
        "now() - interval '3 days')"
    )
    retried = run_cli("retry", "--all-failed", env={"DATABASE_URL": dsn})
    assert retried.returncode == 0, retried.stderr
    report = await collect(dsn, wait_alarm=600)
    assert report.problems == ["work is waiting and no daemon is listening"]
    [outbox] = report.waiting
    assert outbox.oldest_seconds > 3 * 86400  # shown: it arrived 3 days ago
    assert [(r.reason, r.oldest_tried_seconds) for r in outbox.reasons] == [
        ("Stripe answered 503", None)
    ]


async def test_a_due_row_waiting_past_the_alarm_is_a_problem(dsn: str, conn: Conn) -> None:
    conn.execute(
        "INSERT INTO integration.outbox (action_type, created_at, next_attempt_at) "
        "VALUES ('create_stripe_customer', now() - interval '12 minutes', "
        "now() - interval '11 minutes')"
    )
    report = await collect(dsn, wait_alarm=600)
    # One problem per queue: the due row says no daemon keeps up.
    assert report.problems[0] == "outbox: the oldest due row waits 11m"
    assert len(report.problems) == 2


def finished_events(conn: Conn, rows: int, *, arrived: str, took: str, **row: Any) -> None:
    """Webhook events applied a minute ago, ``took`` after they arrived."""
    attempts, due = row.get("attempts", 1), row.get("due_again", False)
    conn.execute(
        "INSERT INTO integration.webhook_events (stripe_event_id, event_type, livemode, "
        "event_created, payload, status, attempts, received_at, next_attempt_at, processed_at) "
        "SELECT 'evt_' || md5(random()::text), 'invoice.paid', false, 1, '{}', 'processed', "
        "%(attempts)s, a, CASE WHEN %(due)s THEN now() - interval '2 minutes' ELSE a END, "
        "a + %(took)s::interval "
        "FROM (SELECT now() - interval '1 minute' - %(took)s::interval AS a "
        "      FROM generate_series(1, %(rows)s)) g",
        {"attempts": attempts, "due": due, "took": took, "rows": rows, "arrived": arrived},
    )


async def test_apply_lag_is_percentiles_of_first_tries_apart_from_retried_rows(
    dsn: str, conn: Conn
) -> None:
    """After `stripe-sync retry` of a days-old failure, the lag of first tries stays
    what it is (#28): it was an average that included the days the row sat failed."""
    finished_events(conn, 99, arrived="", took="20 milliseconds")
    finished_events(conn, 1, arrived="", took="400 milliseconds")
    # Retried by an operator: attempts back to 0, then 1; next_attempt_at was reset.
    finished_events(conn, 2, arrived="", took="3 days", due_again=True)
    finished_events(conn, 1, arrived="", took="5 seconds", attempts=4)
    # Applied two hours ago: not recent.
    conn.execute(
        "UPDATE integration.webhook_events SET processed_at = now() - interval '2 hours' "
        "WHERE id = (SELECT min(id) FROM integration.webhook_events)"
    )
    report = await collect(dsn)
    first, retried = report.apply_lag
    assert (first.queue, first.retried, first.rows) == ("webhooks", False, 99)
    assert first.p50 == pytest.approx(0.02) and first.max == pytest.approx(0.4)
    assert (retried.retried, retried.rows) == (True, 3)
    assert retried.p50 == pytest.approx(3 * 86400) and retried.max == pytest.approx(3 * 86400)
    text = run_cli("status", env={"DATABASE_URL": dsn}).stdout
    assert re.search(r"^webhooks +first try +99 +20 ms +\d+ ms +\d+ ms +400 ms$", text, re.M)
    assert re.search(r"^webhooks +retried +3 +3d +3d +3d +3d$", text, re.M), text


def test_piped_the_disputes_fit_80_columns_or_one_record_per_line(dsn: str, conn: Conn) -> None:
    """At 80 columns the disputes table wrapped mid-word (`fraudulen` / `t`) (#28)."""
    conn.execute("INSERT INTO billing.accounts (id, email) VALUES (1, 'eve@example.com')")
    conn.execute(
        "INSERT INTO billing.payments (id, account_id, status, currency, amount) "
        "VALUES (1, 1, 'succeeded', 'usd', 900)"
    )
    for stripe_id in ("dp_short", "dp_1QxYzAbCdEfGhIjKlMnOpQrS"):
        conn.execute(
            "WITH d AS (INSERT INTO billing.disputes (payment_id, status, reason, amount, "
            "currency, evidence_due_by) VALUES (1, 'needs_response', 'fraudulent', 900, 'usd', "
            "'2031-05-01') RETURNING id) INSERT INTO stripe.dispute_mappings "
            "(dispute_id, stripe_dispute_id) SELECT id, %s FROM d",
            [stripe_id],
        )
    text = run_cli("status", env={"DATABASE_URL": dsn, "COLUMNS": "80"}).stdout
    lines = text[text.index("disputes needing a response") :].splitlines()
    records = [line for line in lines if "dp_" in line]
    assert len(records) == 2, text
    for line in records:
        assert line.endswith("reason: fraudulent") or (
            len(line) <= 80 and line.endswith(" fraudulent")
        ), line
    assert "│" not in text and all(len(line) <= 80 or "; " in line for line in text.splitlines())
