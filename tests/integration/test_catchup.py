"""stripe-sync catch-up: events whose webhook delivery failed (the emulator's
endpoint points at a dead port) are listed from GET /v1/events through the
official SDK and stored exactly once, the way the endpoint stores them."""

from __future__ import annotations

import json
import socket
import subprocess
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from stripe_emulator.server import EmulatorServer
from stripe_sync.config import Secret
from stripe_sync.db import make_pool
from stripe_sync.ops.catchup import catch_up, parse_since
from stripe_sync.stripe_api import StripeApi
from stripe_sync.webhooks.ingest import Ingestor

from daemons import cli_env, run_cli

Conn = psycopg.Connection[tuple[Any, ...]]
API_KEY = "sk_test_emulator"
DAY = 86400


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env)


def settings_env(dsn: str, emulator: EmulatorServer) -> dict[str, str]:
    return cli_env(dsn, emulator.base_url)


def dead_endpoint(emulator: EmulatorServer) -> None:
    """A webhook endpoint nobody listens on: every delivery fails at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    emulator.emulator.add_webhook_endpoint(
        f"http://127.0.0.1:{port}/webhooks/stripe", "whsec_test", max_attempts=1, timeout=1.0
    )


def settle(emulator: EmulatorServer) -> None:
    assert emulator.emulator.wait_webhooks_idle(10)


def stored(conn: Conn) -> dict[str, tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT stripe_event_id, event_type, object_id, status, payload->>'id' "
        "FROM integration.webhook_events"
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def event_ids(emulator: EmulatorServer, event_type: str) -> list[str]:
    return [e["id"] for e in emulator.emulator.events_of_type(event_type)]


def test_stores_missing_events_once(
    dsn: str, conn: Conn, emulator: EmulatorServer, stripe_client: Any
) -> None:
    env = settings_env(dsn, emulator)
    # Before any endpoint exists: nothing to deliver, so Stripe counts it delivered.
    early = stripe_client.v1.customers.create(params={"email": "early@example.com"})
    dead_endpoint(emulator)
    a = stripe_client.v1.customers.create(params={"email": "a@example.com"})
    stripe_client.v1.customers.create(params={"email": "b@example.com"})
    stripe_client.v1.products.create(params={"name": "Gold"})
    settle(emulator)
    created = event_ids(emulator, "customer.created")
    early_evt, a_evt, b_evt = created
    (product_evt,) = event_ids(emulator, "product.created")

    # b's event did reach us (say, a retry that succeeded after all).
    conn.execute(
        "INSERT INTO integration.webhook_events (stripe_event_id, event_type, livemode, "
        "event_created, payload, status) VALUES (%s, 'customer.created', false, 1, '{}', "
        "'processed')",
        (b_evt,),
    )

    dry = cli("catch-up", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "listed 3 event(s) with failed deliveries" in dry.stdout
    assert "1 already stored, 2 would be stored (dry run)" in dry.stdout
    assert set(stored(conn)) == {b_evt}

    first = cli("catch-up", env=env)
    assert first.returncode == 0, first.stderr
    assert "listed 3 event(s) with failed deliveries" in first.stdout
    assert "1 already stored, 2 newly stored" in first.stdout
    rows = stored(conn)
    assert set(rows) == {a_evt, b_evt, product_evt}
    # Stored like a delivered event: columns from the envelope, pending for the daemon.
    assert rows[a_evt] == ("customer.created", a.id, "pending", a_evt)
    assert rows[product_evt][0] == "product.created" and rows[product_evt][2] == "pending"

    again = cli("catch-up", "--json", env=env)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert (report["listed"], report["already_stored"], report["newly_stored"]) == (3, 3, 0)

    # --all also lists events Stripe counts as delivered.
    everything = cli("catch-up", "--all", "--json", env=env)
    report = json.loads(everything.stdout)
    assert (report["listed"], report["already_stored"], report["newly_stored"]) == (4, 3, 1)
    assert stored(conn)[early_evt][1] == early.id
    assert len(stored(conn)) == 4


def test_since(dsn: str, conn: Conn, emulator: EmulatorServer, stripe_client: Any) -> None:
    env = settings_env(dsn, emulator)
    dead_endpoint(emulator)
    emulator.emulator.advance_clock(-3 * DAY)
    stripe_client.v1.customers.create(params={"email": "old@example.com"})
    emulator.emulator.advance_clock(3 * DAY)
    stripe_client.v1.customers.create(params={"email": "new@example.com"})
    settle(emulator)
    old_evt, new_evt = event_ids(emulator, "customer.created")

    recent = cli("catch-up", "--since", "1d", "--json", env=env)
    assert recent.returncode == 0, recent.stderr
    assert json.loads(recent.stdout)["newly_stored"] == 1
    assert set(stored(conn)) == {new_evt}

    four_days_ago = datetime.fromtimestamp(datetime.now(UTC).timestamp() - 4 * DAY, UTC).isoformat()
    older = cli("catch-up", "--since", four_days_ago, env=env)
    assert older.returncode == 0, older.stderr
    assert "listed 2 " in older.stdout and "1 already stored, 1 newly stored" in older.stdout
    assert set(stored(conn)) == {old_evt, new_evt}


@pytest.mark.anyio
async def test_pages_and_counts_requests(
    dsn: str, conn: Conn, emulator: EmulatorServer, stripe_client: Any
) -> None:
    dead_endpoint(emulator)
    for i in range(7):
        stripe_client.v1.customers.create(params={"email": f"c{i}@example.com"})
    settle(emulator)
    api = StripeApi(Secret(API_KEY), api_base=emulator.base_url, rate_limit=0)
    pages: list[int] = []
    async with api, make_pool(dsn, size=2) as pool:
        result = await catch_up(
            api,
            Ingestor(pool),
            since=parse_since("1h"),
            page_size=3,
            on_page=lambda r: pages.append(r.listed),
        )
    assert pages == [3, 6, 7]
    assert (result.listed, result.newly_stored, result.already_stored) == (7, 7, 0)
    assert emulator.emulator.stats()["counts"]["GET /v1/events"] == 3
    assert api.calls == 3
    assert set(stored(conn)) == set(event_ids(emulator, "customer.created"))


@pytest.mark.anyio
async def test_a_refused_event_is_named_and_the_rest_stored(
    dsn: str, conn: Conn, emulator: EmulatorServer, stripe_client: Any
) -> None:
    dead_endpoint(emulator)
    for name in ("a", "b\x00c", "d"):  # jsonb cannot hold \u0000
        stripe_client.v1.customers.create(params={"name": name})
    settle(emulator)
    api = StripeApi(Secret(API_KEY), api_base=emulator.base_url, rate_limit=0)
    async with api, make_pool(dsn, size=2) as pool:
        result = await catch_up(api, Ingestor(pool), since=parse_since("1h"))
    assert (result.listed, result.newly_stored, result.refused, result.already_stored) == (
        3, 2, 1, 0,
    )  # fmt: skip
    assert len(stored(conn)) == 2
    refused = set(event_ids(emulator, "customer.created")) - set(stored(conn))
    assert result.errors is not None and result.errors[0].startswith(
        f"{refused.pop()}: Untranslatable"
    )


def test_parse_since() -> None:
    now = 1_750_000_000.0
    assert parse_since("6h", now) == now - 6 * 3600
    assert parse_since("3d", now) == now - 3 * DAY
    assert parse_since("90m", now) == now - 5400
    assert parse_since("2025-05-01", now) == int(datetime(2025, 5, 1, tzinfo=UTC).timestamp())
    assert parse_since("2025-05-01T12:00:00Z") == parse_since("2025-05-01T14:00:00+02:00")
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday", now)


def test_usage_and_config_errors() -> None:
    bad = cli("catch-up", "--since", "soon", env={})
    assert bad.returncode == 2 and "--since" in bad.stderr
    missing = cli("catch-up", env={"DATABASE_URL": "postgresql:///x"})
    assert (missing.returncode, missing.stderr) == (
        78,
        "stripe-sync: configuration error: STRIPE_API_KEY is not set\n",
    )
