"""The stripe-sync command as an operator runs it: a real process, a real database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stripe_sync.migrate import available

from daemons import run_cli

Conn = psycopg.Connection[tuple[Any, ...]]
COMMANDS = [
    "migrate",
    "seed",
    "run",
    "status",
    "retry",
    "dismiss",
    "prune",
    "replay",
    "catch-up",
    "reconcile",
    "link",
    "backfill",
    "emulator",
    "demo",
]


stripe_sync = run_cli


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_everywhere(command: list[str]) -> None:
    result = stripe_sync(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout.lower()


def test_every_setting_is_in_some_commands_help() -> None:
    from stripe_sync.config import ENV_NAMES

    out = "".join(stripe_sync(c, "--help").stdout for c in ("run", "status", "prune", "backfill"))
    missing = [name for name in ENV_NAMES if name not in out]
    assert missing == []


def test_bad_config_is_one_clear_line() -> None:
    result = stripe_sync(
        "run",
        env={
            "DATABASE_URL": "postgresql:///x",
            "STRIPE_API_KEY": "sk_test_x",
            "STRIPE_SYNC_CONCURRENCY": "lots",
        },
    )
    assert result.returncode == 78
    assert result.stderr == (
        "stripe-sync: configuration error: STRIPE_SYNC_CONCURRENCY=lots: expected an integer\n"
    )
    missing = stripe_sync("migrate")
    assert (missing.returncode, missing.stderr) == (
        78,
        "stripe-sync: configuration error: DATABASE_URL is not set\n",
    )


def test_unreachable_database_is_one_line_without_password() -> None:
    result = stripe_sync(
        "migrate",
        env={"DATABASE_URL": "postgresql://u:hunter2secret@127.0.0.1:1/db?connect_timeout=2"},
    )
    assert result.returncode == 1
    assert result.stderr.startswith("stripe-sync: ") and "hunter2secret" not in result.stderr


def test_migrate_then_noop(empty_dsn: str) -> None:
    first = stripe_sync("migrate", "--database-url", empty_dsn)
    assert first.returncode == 0 and first.stdout.startswith("applied "), first.stderr
    again = stripe_sync("migrate", env={"DATABASE_URL": empty_dsn})
    assert (again.returncode, again.stdout) == (0, "schema is up to date\n")


def test_seed(dsn: str, conn: Conn) -> None:
    conn.execute("INSERT INTO billing.accounts (email) VALUES ('a@example.com'), ('b@example.com')")
    assert stripe_sync("seed", "--database-url", dsn).stdout.startswith("enqueued 2 ")
    assert stripe_sync("seed", "--database-url", dsn).stdout.startswith("enqueued 0 ")


def test_every_operator_command_answers_json_with_its_exit_code(
    empty_dsn: str, dsn: str, conn: Conn
) -> None:
    """One shape: each command's outcome prints as one JSON object with --json."""
    migrated = stripe_sync("migrate", "--json", "--database-url", empty_dsn)
    every_file = [m.filename for m in available()]
    assert (migrated.returncode, json.loads(migrated.stdout)) == (0, {"applied": every_file})
    conn.execute("INSERT INTO billing.accounts (email) VALUES ('a@example.com')")
    seeded = stripe_sync("seed", "--json", "--database-url", dsn)
    # Without STRIPE_API_KEY seed does not look in Stripe first, and says so.
    assert (seeded.returncode, json.loads(seeded.stdout)) == (0, {"enqueued": 1, "looked": False})
    outbox_id = conn.execute("SELECT id FROM integration.outbox").fetchone()
    assert outbox_id is not None
    conn.execute("UPDATE integration.outbox SET status = 'failed'")
    retried = stripe_sync("retry", "--json", str(outbox_id[0]), "999", "--database-url", dsn)
    assert (retried.returncode, retried.stderr) == (1, "")
    assert json.loads(retried.stdout) == {
        "table": "outbox",
        "done": [outbox_id[0]],
        "not_done": [999],
    }
    replayed = stripe_sync("replay", "--json", "evt_missing", "--database-url", dsn)
    assert replayed.returncode == 1
    assert json.loads(replayed.stdout) == {"asked": ["evt_missing"], "queued": []}


def test_status_retry_replay(dsn: str, conn: Conn) -> None:
    healthy = stripe_sync("status", "--json", "--database-url", dsn)
    assert healthy.returncode == 0, healthy.stderr
    assert json.loads(healthy.stdout)["healthy"] is True

    conn.execute(
        "INSERT INTO integration.outbox (action_type, status, attempts, last_error) "
        "VALUES ('create_stripe_customer', 'failed', 3, "
        "'billing.accounts id=42 does not exist')"
    )
    conn.execute(
        "INSERT INTO integration.webhook_events (stripe_event_id, event_type, livemode, "
        "event_created, payload, status) "
        "VALUES ('evt_1', 'customer.created', false, 1, '{}', 'processed')"
    )
    failed = stripe_sync("status", "--json", "--database-url", dsn)
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["problems"] == ["1 failed row(s)"]
    assert report["recent_failures"][0]["last_error"] == "billing.accounts id=42 does not exist"
    text = stripe_sync("status", "--database-url", dsn)
    assert text.returncode == 1 and "does not exist" in text.stdout

    retried = stripe_sync("retry", "--all-failed", "--database-url", dsn)
    assert retried.returncode == 0 and retried.stdout.startswith("1 outbox row(s) due again")
    assert conn.execute("SELECT status, attempts FROM integration.outbox").fetchone() == (
        "pending",
        0,
    )
    unknown = stripe_sync("retry", "999", "--database-url", dsn)
    assert unknown.returncode == 1 and "999" in unknown.stderr

    replay = stripe_sync("replay", "evt_1", "evt_missing", "--database-url", dsn)
    assert replay.returncode == 1
    assert "evt_1: queued for replay" in replay.stdout
    assert "evt_missing: not stored" in replay.stdout
    assert conn.execute("SELECT status FROM integration.webhook_events").fetchone() == ("pending",)


def _failed_event(conn: Conn, event_id: str) -> None:
    conn.execute(
        "INSERT INTO integration.webhook_events (stripe_event_id, event_type, livemode, "
        "event_created, payload, status, attempts, last_error) "
        "VALUES (%s, 'customer.created', false, 1, '{}', 'failed', 10, 'no mapping for cus_1')",
        [event_id],
    )


def test_every_command_takes_the_ids_status_prints(dsn: str, conn: Conn) -> None:
    _failed_event(conn, "evt_A")
    _failed_event(conn, "evt_B")
    shown = json.loads(stripe_sync("status", "--json", "--database-url", dsn).stdout)
    printed = [f["id"] for f in shown["recent_failures"]]
    assert sorted(printed) == ["evt_A", "evt_B"]
    retried = stripe_sync("retry", "--json", printed[0], "evt_nope", "--database-url", dsn)
    assert retried.returncode == 1, retried.stderr
    assert json.loads(retried.stdout) == {
        "table": "webhooks",
        "done": [printed[0]],
        "not_done": ["evt_nope"],
    }
    wrong = stripe_sync("retry", "--table", "outbox", "evt_A", "--database-url", dsn)
    assert wrong.returncode == 2 and "evt_ ids name webhook events" in wrong.stderr
    typo = stripe_sync("retry", "evt-A", "--database-url", dsn)
    assert typo.returncode == 2 and "not a row id or an evt_ id: evt-A" in typo.stderr


def test_dismiss_sets_a_row_aside_and_status_stops_counting_it(dsn: str, conn: Conn) -> None:
    _failed_event(conn, "evt_A")
    assert stripe_sync("status", "--database-url", dsn).returncode == 1
    dismissed = stripe_sync(
        "dismiss", "evt_A", "--reason", "a test customer, deleted", "--database-url", dsn
    )
    assert dismissed.returncode == 0, dismissed.stderr
    assert dismissed.stdout.startswith("1 webhooks row(s) dismissed: evt_A")
    healthy = stripe_sync("status", "--json", "--database-url", dsn)
    assert healthy.returncode == 0, healthy.stdout
    assert conn.execute(
        "SELECT status, last_error, note FROM integration.webhook_events"
    ).fetchone() == ("dismissed", "no mapping for cus_1", "dismissed: a test customer, deleted")
    again = stripe_sync("dismiss", "evt_A", "--reason", "x", "--database-url", dsn)
    assert again.returncode == 1 and "not dismissed" in again.stderr
    back = stripe_sync("retry", "evt_A", "--database-url", dsn)
    assert back.returncode == 0
    assert conn.execute("SELECT status FROM integration.webhook_events").fetchone() == ("pending",)
    missing = stripe_sync("dismiss", "evt_A", "--database-url", dsn)
    assert missing.returncode == 2 and "--reason" in missing.stderr


def test_database_url_from_a_systemd_credential(dsn: str, tmp_path: Path) -> None:
    (tmp_path / "database_url").write_text(dsn + "\n")
    result = stripe_sync("migrate", env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert (result.returncode, result.stdout) == (0, "schema is up to date\n"), result.stderr


def test_secret_sources_that_disagree_exit_78_naming_both(tmp_path: Path) -> None:
    (tmp_path / "db").write_text("postgresql:///other\n")
    result = stripe_sync(
        "migrate",
        env={"DATABASE_URL": "postgresql:///billing", "DATABASE_URL_FILE": str(tmp_path / "db")},
    )
    assert (result.returncode, result.stderr) == (
        78,
        "stripe-sync: configuration error: DATABASE_URL: the variable DATABASE_URL and "
        "DATABASE_URL_FILE disagree; set it in one place\n",
    )


def test_status_lists_disputes_needing_a_response_soonest_first(dsn: str, conn: Conn) -> None:
    account = conn.execute(
        "INSERT INTO billing.accounts (email) VALUES ('eve@example.com') RETURNING id"
    ).fetchone()
    payment = conn.execute(
        "INSERT INTO billing.payments (account_id, status, currency, amount) "
        "VALUES (%s, 'succeeded', 'usd', 900) RETURNING id",
        [account[0] if account else None],
    ).fetchone()
    assert account is not None and payment is not None
    disputes = [
        ("dp_later", "needs_response", "2031-05-02T00:00:00Z"),
        ("dp_closed", "lost", "2031-04-01T00:00:00Z"),
        ("dp_soon", "warning_needs_response", "2031-05-01T00:00:00Z"),
        ("dp_reviewed", "under_review", "2031-03-01T00:00:00Z"),
        ("dp_undated", "needs_response", None),
    ]
    for stripe_id, status, due in disputes:
        conn.execute(
            "WITH d AS (INSERT INTO billing.disputes (payment_id, status, reason, amount, "
            "currency, evidence_due_by) VALUES (%s, %s, 'fraudulent', 900, 'usd', %s) "
            "RETURNING id) INSERT INTO stripe.dispute_mappings (dispute_id, stripe_dispute_id) "
            "SELECT id, %s FROM d",
            [payment[0], status, due, stripe_id],
        )
    shown = stripe_sync("status", "--json", "--database-url", dsn)
    # Work for people, not a sync problem.
    assert shown.returncode == 0, shown.stdout
    report = json.loads(shown.stdout)
    assert [(d["stripe_dispute_id"], d["evidence_due_by"]) for d in report["open_disputes"]] == [
        ("dp_soon", "2031-05-01T00:00:00Z"),
        ("dp_later", "2031-05-02T00:00:00Z"),
        ("dp_undated", None),
    ]
    assert report["open_disputes"][0]["account_id"] == account[0]
    assert report["open_disputes"][0]["payment_id"] == payment[0]
    text = stripe_sync("status", "--database-url", dsn).stdout
    assert "disputes needing a response" in text
    assert text.index("dp_soon") < text.index("dp_later") < text.index("dp_undated")
    assert "dp_closed" not in text and "dp_reviewed" not in text
