"""The schema's promises: constraints, the Stripe-free billing schema, wake-ups, the seed."""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg
import pytest
from psycopg.errors import CheckViolation, ForeignKeyViolation, UniqueViolation

from stripe_sync.outbox.execute import EXECUTORS

Conn = psycopg.Connection[tuple[Any, ...]]


def seed_catalog(conn: Conn) -> None:
    conn.execute("INSERT INTO billing.accounts (id, email, name) VALUES (1, 'a@example.com', 'A')")
    conn.execute("INSERT INTO billing.products (id, name) VALUES (1, 'Gold')")
    conn.execute(
        "INSERT INTO billing.prices (id, product_id, currency, unit_amount, recurring_interval) "
        "VALUES (1, 1, 'eur', 1000, 'month')"
    )


# -- constraints ------------------------------------------------------------------


def test_provider_config_is_a_singleton(conn: Conn) -> None:
    conn.execute("INSERT INTO stripe.provider_configs (mode) VALUES ('test')")
    with pytest.raises(CheckViolation):
        conn.execute("INSERT INTO stripe.provider_configs (id, mode) VALUES (2, 'test')")
    with pytest.raises(UniqueViolation):
        conn.execute("INSERT INTO stripe.provider_configs (id, mode) VALUES (1, 'live')")


@pytest.mark.parametrize("mode", ["sandbox", "TEST", ""])
def test_provider_config_mode_is_test_or_live(conn: Conn, mode: str) -> None:
    with pytest.raises(CheckViolation):
        conn.execute("INSERT INTO stripe.provider_configs (mode) VALUES (%s)", (mode,))


def test_provider_config_has_no_credential_column(conn: Conn) -> None:
    cols = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'stripe' AND table_name = 'provider_configs'"
        )
    }
    assert cols == {"id", "account_id", "mode", "created_at", "updated_at"}


@pytest.mark.parametrize(
    "table,fk,stripe_col,stripe_id",
    [
        ("customer_mappings", "account_id", "stripe_customer_id", "cus_1"),
        ("product_mappings", "product_id", "stripe_product_id", "prod_1"),
        ("price_mappings", "price_id", "stripe_price_id", "price_1"),
    ],
)
def test_mapping_sync_status_and_uniqueness(
    conn: Conn, table: str, fk: str, stripe_col: str, stripe_id: str
) -> None:
    seed_catalog(conn)
    insert = f"INSERT INTO stripe.{table} ({fk}, {stripe_col}, sync_status) VALUES (%s, %s, %s)"
    with pytest.raises(CheckViolation):
        conn.execute(insert, (1, stripe_id, "done"))
    # synced/deleted need the Stripe id; pending may not have it yet
    with pytest.raises(CheckViolation):
        conn.execute(insert, (1, None, "synced"))
    conn.execute(insert, (1, stripe_id, "synced"))
    with pytest.raises(UniqueViolation):
        conn.execute(insert, (1, stripe_id + "x", "synced"))
    with pytest.raises(ForeignKeyViolation):
        conn.execute(insert, (999, stripe_id + "y", "pending"))


def test_outbox_action_type_is_checked(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO integration.outbox (action_type, payload) "
        "VALUES ('create_stripe_customer', '{\"account_id\": 1}')"
    )
    with pytest.raises(CheckViolation):
        conn.execute("INSERT INTO integration.outbox (action_type) VALUES ('drop_tables')")
    with pytest.raises(CheckViolation):
        conn.execute(
            "INSERT INTO integration.outbox (action_type, status) "
            "VALUES ('create_stripe_customer', 'weird')"
        )


def test_an_unknown_action_type_is_refused_naming_the_valid_ones(conn: Conn) -> None:
    with pytest.raises(CheckViolation) as raised:
        conn.execute(
            "INSERT INTO integration.outbox (action_type, payload) "
            "VALUES ('archive_stripe_customer', '{\"account_id\": 1}')"
        )
    message = str(raised.value).splitlines()[0]
    assert message == (
        "integration.outbox: unknown action_type 'archive_stripe_customer'; valid: "
        + ", ".join(EXECUTORS)
    )
    assert raised.value.diag.constraint_name == "outbox_action_type_check"
    conn.execute("INSERT INTO integration.outbox (action_type) VALUES ('create_stripe_customer')")
    with pytest.raises(CheckViolation, match="unknown action_type 'update'; valid: create_"):
        conn.execute("UPDATE integration.outbox SET action_type = 'update'")


def test_webhook_event_id_is_unique(conn: Conn) -> None:
    insert = (
        "INSERT INTO integration.webhook_events "
        "(stripe_event_id, event_type, livemode, event_created, payload) "
        "VALUES (%s, 'customer.created', false, 1700000000, '{}')"
    )
    conn.execute(insert, ("evt_1",))
    with pytest.raises(UniqueViolation):
        conn.execute(insert, ("evt_1",))
    with pytest.raises(CheckViolation):
        conn.execute("UPDATE integration.webhook_events SET status = 'done'")


def test_billing_has_no_stripe_ids(conn: Conn) -> None:
    """The mapping tables are the only join point: no Stripe id column in billing."""
    cols = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'billing'"
    ).fetchall()
    assert cols, "billing schema has no columns?"
    suspicious = [c for c in cols if re.search(r"stripe|external|provider|_ref$", c[1])]
    assert suspicious == []
    # Every Stripe object id column lives in schema stripe (events are not objects).
    stripe_cols = conn.execute(
        "SELECT table_schema, column_name FROM information_schema.columns "
        "WHERE column_name LIKE 'stripe\\_%\\_id'"
    ).fetchall()
    assert {s for s, c in stripe_cols if c != "stripe_event_id"} == {"stripe"}


# -- wake-ups ---------------------------------------------------------------------


def notifications(listener: Conn, wait: float = 0.5) -> list[str]:
    return [n.channel for n in listener.notifies(timeout=wait)]


@pytest.fixture
def listener(dsn: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("LISTEN stripe_sync_outbox")
        c.execute("LISTEN stripe_sync_webhooks")
        yield c


def test_dba_insert_wakes_the_listener(conn: Conn, listener: Conn) -> None:
    conn.execute(
        "INSERT INTO integration.outbox (action_type, payload) "
        "VALUES ('create_stripe_customer', '{\"account_id\": 1}')"
    )
    assert notifications(listener) == ["stripe_sync_outbox"]
    conn.execute(
        "INSERT INTO integration.webhook_events "
        "(stripe_event_id, event_type, livemode, event_created, payload) "
        "VALUES ('evt_1', 'customer.created', false, 1, '{}')"
    )
    assert notifications(listener) == ["stripe_sync_webhooks"]


def test_rolled_back_insert_sends_nothing(conn: Conn, listener: Conn) -> None:
    with conn.transaction(force_rollback=True):
        conn.execute(
            "INSERT INTO integration.outbox (action_type) VALUES ('create_stripe_customer')"
        )
    assert notifications(listener) == []


def test_bulk_insert_sends_one_notification(conn: Conn, listener: Conn) -> None:
    conn.execute(
        "INSERT INTO integration.outbox (action_type, payload) "
        "SELECT 'create_stripe_customer', jsonb_build_object('account_id', g) "
        "FROM generate_series(1, 10000) g"
    )
    assert notifications(listener) == ["stripe_sync_outbox"]


def test_insert_trigger_is_per_statement(conn: Conn) -> None:
    """Keeps a 10,000-row INSERT cheap; bench/trigger_cost.py measures it."""
    rows = conn.execute(
        "SELECT tgname, (tgtype & 1) = 1 AS per_row FROM pg_trigger "
        "WHERE tgrelid = 'integration.outbox'::regclass AND NOT tgisinternal"
    ).fetchall()
    # outbox_unknown_action is per row, but its WHEN calls nothing for a valid row
    # (10,000 rows: no difference measurable, issue 28).
    assert dict(rows) == {
        "outbox_insert_notify": False,
        "outbox_due_again_notify": True,
        "outbox_unknown_action": True,
    }


def test_update_that_makes_a_row_due_again_wakes(conn: Conn, listener: Conn) -> None:
    conn.execute(
        "INSERT INTO integration.outbox (action_type, status, last_error) "
        "VALUES ('create_stripe_customer', 'failed', 'boom')"
    )
    notifications(listener, 0.2)
    conn.execute(
        "UPDATE integration.outbox SET status = 'pending', next_attempt_at = now() "
        "WHERE status = 'failed'"
    )
    assert notifications(listener) == ["stripe_sync_outbox"]


def test_daemon_own_updates_and_future_retries_stay_quiet(conn: Conn, listener: Conn) -> None:
    conn.execute("INSERT INTO integration.outbox (action_type) VALUES ('create_stripe_customer')")
    notifications(listener, 0.2)
    conn.execute(
        "UPDATE integration.outbox SET status = 'processing', "
        "locked_until = now() + interval '10 s'"
    )
    conn.execute(
        "UPDATE integration.outbox SET status = 'pending', "
        "next_attempt_at = now() + interval '1 hour'"
    )
    conn.execute("UPDATE integration.outbox SET status = 'done'")
    assert notifications(listener) == []


# -- seed -------------------------------------------------------------------------


def test_seed_enqueues_missing_and_is_safe_to_rerun(conn: Conn) -> None:
    seed_catalog(conn)
    conn.execute("INSERT INTO billing.accounts (id, email) VALUES (2, 'b@example.com')")
    conn.execute(
        "INSERT INTO stripe.customer_mappings (account_id, stripe_customer_id, "
        "sync_status) VALUES (2, 'cus_b', 'synced')"
    )
    assert conn.execute("SELECT integration.seed_outbox()").fetchone() == (3,)
    assert conn.execute("SELECT integration.seed_outbox()").fetchone() == (0,)
    rows = conn.execute(
        "SELECT action_type, payload FROM integration.outbox ORDER BY id"
    ).fetchall()
    assert rows == [
        ("create_stripe_customer", {"account_id": 1}),
        ("create_stripe_product", {"product_id": 1}),
        ("create_stripe_price", {"price_id": 1}),
    ]


def test_seed_of_ten_thousand_accounts_is_one_statement(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO billing.accounts (email) "
        "SELECT 'u' || g || '@example.com' FROM generate_series(1, 10000) g"
    )
    started = time.monotonic()
    assert conn.execute("SELECT integration.seed_outbox()").fetchone() == (10000,)
    assert conn.execute("SELECT integration.seed_outbox()").fetchone() == (0,)
    # Not a timing assertion: recorded so a quadratic plan shows up in -ra output.
    print(f"seed 10k: {time.monotonic() - started:.3f}s")


def test_resetting_a_mapping_starts_a_new_create_generation(conn: Conn) -> None:
    seed_catalog(conn)
    conn.execute(
        "INSERT INTO stripe.customer_mappings (account_id, stripe_customer_id, "
        "sync_status) VALUES (1, 'cus_old', 'synced')"
    )
    conn.execute("UPDATE stripe.customer_mappings SET sync_status = 'synced'")  # no reset
    assert conn.execute("SELECT create_generation FROM stripe.customer_mappings").fetchone() == (0,)
    conn.execute(
        "UPDATE stripe.customer_mappings SET stripe_customer_id = NULL, sync_status = 'pending'"
    )
    assert conn.execute("SELECT create_generation FROM stripe.customer_mappings").fetchone() == (1,)
