"""stripe-sync endpoint ensure / rotate / upgrade against the emulator, as an operator
runs them: the endpoint tagged as this database's, with exactly the event types the
daemon applies and the pinned API version; re-runs repair drift; rotation and upgrade
run two endpoints side by side under a live daemon, and every event is stored once:
0 lost, 0 applied twice."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import stripe

from stripe_emulator.server import EmulatorServer
from stripe_sync import STRIPE_API_VERSION
from stripe_sync.db import queries
from stripe_sync.webhooks.execute import applied_event_types
from stripe_sync_demo.devcluster import free_port

from daemons import DaemonProcess, cli_env, poll, run_cli

Conn = psycopg.Connection[tuple[Any, ...]]
URL = "https://billing.example.com/webhooks/stripe"
OLDER_VERSION = "2026-09-30.endive"


def endpoint(
    dsn: str, emulator: EmulatorServer, *args: str, json_out: bool = True
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "endpoint", *args, *(["--json"] if json_out else []), env=cli_env(dsn, emulator.base_url)
    )


def answer(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def source(conn: Conn) -> str:
    row = conn.execute(queries("outbox")["source"]).fetchone()
    assert row is not None
    return str(row[0])


def listed(client: stripe.StripeClient) -> list[Any]:
    return list(client.v1.webhook_endpoints.list(params={"limit": 100}).data)


def test_ensure_creates_once_then_up_to_date_then_repairs_drift(
    dsn: str,
    conn: Conn,
    emulator: EmulatorServer,
    stripe_client: stripe.StripeClient,
    tmp_path: Path,
) -> None:
    # Another database's endpoint on the same account is not ours: left alone.
    foreign = stripe_client.v1.webhook_endpoints.create(
        params={"url": URL, "enabled_events": ["*"], "metadata": {"mc_source": "staging/0000"}}
    )
    secret_file = tmp_path / "webhook_secret"
    created = answer(
        endpoint(dsn, emulator, "ensure", "--url", URL, "--secret-file", str(secret_file))
    )
    assert (created["action"], created["secret"]) == ("created", None)  # in the file only
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert secret.startswith("whsec_") and "," not in secret

    ours = [e for e in listed(stripe_client) if e.id != foreign.id]
    assert [e.id for e in ours] == [created["endpoint_id"]]
    (made,) = ours
    assert made.metadata.to_dict() == {"mc_source": source(conn)}
    assert made.url == URL and made.api_version == STRIPE_API_VERSION
    assert set(made.enabled_events) == applied_event_types()
    assert len(made.enabled_events) == len(applied_event_types())

    again = endpoint(dsn, emulator, "ensure", "--url", URL, json_out=False)
    assert again.returncode == 0 and again.stdout.startswith(f"up to date: {made.id}"), again
    assert len(listed(stripe_client)) == 2  # never a second endpoint of ours

    # Drift: someone edits the endpoint in the Dashboard, and Stripe disables it.
    stripe_client.v1.webhook_endpoints.update(
        made.id,
        params={
            "url": "https://old.example.com/hook",
            "enabled_events": ["customer.created", "balance.available"],
            "disabled": True,
        },
    )
    fixed = answer(endpoint(dsn, emulator, "ensure", "--url", URL))
    assert fixed["action"] == "updated" and fixed["endpoint_id"] == made.id
    assert "url: https://old.example.com/hook → " + URL in fixed["changes"]
    assert "no longer enabled: balance.available" in fixed["changes"]
    assert "status: disabled → enabled" in fixed["changes"]
    now = stripe_client.v1.webhook_endpoints.retrieve(made.id)
    assert (now.url, now.status, frozenset(now.enabled_events)) == (
        URL,
        "enabled",
        applied_event_types(),
    )
    assert answer(endpoint(dsn, emulator, "ensure", "--url", URL))["action"] == "up to date"
    assert stripe_client.v1.webhook_endpoints.retrieve(foreign.id).enabled_events == ["*"]


def test_without_a_secret_file_the_secret_is_printed_once(
    dsn: str, emulator: EmulatorServer
) -> None:
    first = endpoint(dsn, emulator, "ensure", "--url", URL, json_out=False)
    assert first.returncode == 0, first.stderr
    assert "signing secret (shown once): whsec_" in first.stdout
    again = endpoint(dsn, emulator, "ensure", "--url", URL, json_out=False)
    assert "whsec_" not in again.stdout


def test_two_at_once_make_one_and_a_deleted_one_is_made_again(
    dsn: str, emulator: EmulatorServer, stripe_client: stripe.StripeClient
) -> None:
    """Two ensures at once share the create's idempotency key: one endpoint. After the
    endpoint is deleted (in the Dashboard), ensure makes a new one, not the replay of
    the old create."""
    env = cli_env(dsn, emulator.base_url)
    command = [sys.executable, "-m", "stripe_sync.cli", "endpoint", "ensure", "--url", URL]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DATABASE_URL"))}
    running = [subprocess.Popen(command, env={**base, **env}, text=True) for _ in range(2)]
    assert [p.wait(60) for p in running] == [0, 0]
    (first,) = listed(stripe_client)
    stripe_client.v1.webhook_endpoints.delete(first.id)
    again = answer(endpoint(dsn, emulator, "ensure", "--url", URL))
    assert again["action"] == "created" and again["endpoint_id"] != first.id
    assert [e.id for e in listed(stripe_client)] == [again["endpoint_id"]]


def test_an_unwritable_secret_file_creates_nothing(
    dsn: str, emulator: EmulatorServer, stripe_client: stripe.StripeClient, tmp_path: Path
) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "secret"
    result = endpoint(dsn, emulator, "ensure", "--url", URL, "--secret-file", str(missing))
    assert result.returncode == 1 and result.stderr.startswith("stripe-sync: --secret-file:")
    assert listed(stripe_client) == []


@pytest.mark.parametrize(
    ("args", "exit_code", "says"),
    [
        (["ensure", "--url", "billing.example.com"], 2, "--url: expected http(s)://"),
        (["ensure", "--url", URL, "--api-version", "newest"], 2, "--api-version: expected"),
        (["rotate"], 1, "no webhook endpoint is tagged as this database's"),
        (["upgrade", "--finish"], 1, "nothing to finish: 0 webhook endpoint(s)"),
    ],
)
def test_errors_are_one_line(
    dsn: str, emulator: EmulatorServer, args: list[str], exit_code: int, says: str
) -> None:
    result = endpoint(dsn, emulator, *args)
    assert result.returncode == exit_code, result
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert says in result.stderr


@pytest.mark.parametrize("action", [[], ["ensure"], ["rotate"], ["upgrade"]])
def test_help(action: list[str]) -> None:
    result = run_cli("endpoint", *action, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


class Producer(threading.Thread):
    """Creates customers through the SDK until stopped: events keep coming throughout."""

    def __init__(self, client: stripe.StripeClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.halt = threading.Event()
        self.made = 0

    def run(self) -> None:
        while not self.halt.wait(0.03):
            self.client.v1.customers.create(params={"email": f"c{self.made}@example.com"})
            self.made += 1

    def stop(self) -> None:
        self.halt.set()
        if self.ident is not None:  # started
            self.join(10)


def sample(metrics: str, name: str, label: str) -> float | None:
    """One sample of the daemon's /metrics (``name{label}``), None when absent."""
    text = httpx.get(f"http://{metrics}/metrics", timeout=5).text
    found = re.search(rf"^{name}\{{{re.escape(label)}\}} (\S+)$", text, re.M)
    return float(found[1]) if found else None


def duplicates(metrics: str) -> float:
    """Webhook requests the daemon answered as an event it had already stored."""
    return sample(metrics, "stripe_sync_webhooks_received_total", 'result="duplicate"') or 0.0


def endpoint_problem(metrics: str, problem: str) -> float | None:
    return sample(metrics, "stripe_sync_webhook_endpoint_problem", f'problem="{problem}"')


def stored(conn: Conn) -> dict[str, tuple[int, str, str | None]]:
    rows = conn.execute(
        "SELECT stripe_event_id, count(*), max(status), max(api_version) "
        "FROM integration.webhook_events GROUP BY 1"
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


@pytest.mark.parametrize(
    ("command", "old_version", "new_version"),
    [
        ("rotate", STRIPE_API_VERSION, STRIPE_API_VERSION),
        ("upgrade", OLDER_VERSION, STRIPE_API_VERSION),
    ],
)
def test_side_by_side_loses_nothing_and_applies_nothing_twice(
    dsn: str,
    conn: Conn,
    emulator: EmulatorServer,
    stripe_client: stripe.StripeClient,
    tmp_path: Path,
    command: str,
    old_version: str,
    new_version: str,
) -> None:
    secret_file = tmp_path / "webhook_secret"
    metrics = f"127.0.0.1:{free_port()}"
    daemon = DaemonProcess(
        dsn,
        emulator.base_url,
        STRIPE_WEBHOOK_SECRET="",
        STRIPE_WEBHOOK_SECRET_FILE=secret_file,
        STRIPE_SYNC_METRICS_BIND=metrics,
    )
    url = f"{daemon.url}/webhooks/stripe"
    first = answer(
        endpoint(
            dsn,
            emulator,
            "ensure",
            "--url",
            url,
            "--api-version",
            old_version,
            "--secret-file",
            str(secret_file),
        )
    )
    producer = Producer(stripe_client)
    daemon.start()
    try:
        # The daemon's own check of its endpoint (at start, then every 10 minutes).
        poll(lambda: endpoint_problem(metrics, "api_version") is not None)
        assert endpoint_problem(metrics, "api_version") == (old_version != STRIPE_API_VERSION)
        assert endpoint_problem(metrics, "untagged") == 0
        producer.start()
        poll(lambda: len(stored(conn)) >= 5)
        started = answer(endpoint(dsn, emulator, command, "--secret-file", str(secret_file)))
        assert started["action"] == "started" and started["old_endpoint_id"] == first["endpoint_id"]
        assert started["api_version"] == new_version
        new_id = started["endpoint_id"]
        secrets = secret_file.read_text().strip().split(",")
        assert len(secrets) == 2 and stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600

        # Before the restart the daemon knows only the old secret: finishing now could
        # strand the new endpoint's deliveries, so it refuses.
        early = endpoint(dsn, emulator, command, "--finish")
        assert early.returncode == 1 and "restart them gracefully first" in early.stderr

        daemon.stop()  # the graceful restart: SIGTERM, then start with both secrets
        daemon.start()
        # Both endpoints deliver: events arrive twice, the second answered as a duplicate.
        poll(lambda: duplicates(metrics) >= 5, timeout=30)
        # ...and since the restart it takes both secrets: nothing rejected (a rejected old
        # endpoint would lose nothing either, but fire StripeSyncWebhooksRejected).
        assert not sample(metrics, "stripe_sync_webhooks_received_total", 'result="rejected"')
        assert endpoint_problem(metrics, "api_version") == 0  # one of the two is pinned

        finished = answer(
            endpoint(dsn, emulator, command, "--finish", "--secret-file", str(secret_file))
        )
        assert (finished["action"], finished["endpoint_id"]) == ("finished", new_id)
        assert secret_file.read_text().strip() == secrets[0]  # only the new one is left
        assert [e.id for e in listed(stripe_client)] == [new_id]
        made = producer.made
        poll(lambda: producer.made >= made + 5)
    finally:
        producer.stop()
        try:
            assert emulator.emulator.wait_webhooks_idle(30)
            sent = {e["id"] for e in emulator.emulator.events_of_type("customer.created")}
            poll(lambda: sent <= set(stored(conn)), timeout=30)
            poll(lambda: all(s in ("processed", "ignored") for _, s, _ in stored(conn).values()))
        finally:
            daemon.stop()

    rows = stored(conn)
    assert sent and not sent - set(rows), "events lost"
    assert all(count == 1 for count, _, _ in rows.values()), "an event stored twice"
    versions = {version for _, _, version in rows.values()}
    assert versions <= {old_version, new_version} and new_version in versions


def status(dsn: str, api_base: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("status", "--json", env=cli_env(dsn, api_base))
    return result.returncode, json.loads(result.stdout)


def test_status_says_what_is_wrong_with_the_endpoint(
    dsn: str, emulator: EmulatorServer, stripe_client: stripe.StripeClient
) -> None:
    code, shown = status(dsn, emulator.base_url)
    assert (code, shown["problems"], shown["stripe_api_version"]) == (0, [], STRIPE_API_VERSION)
    assert any("no webhook endpoint is tagged" in w for w in shown["warnings"])

    made = answer(endpoint(dsn, emulator, "ensure", "--url", URL, "--api-version", OLDER_VERSION))
    stripe_client.v1.webhook_endpoints.update(
        made["endpoint_id"], params={"enabled_events": ["customer.created"], "disabled": True}
    )
    code, shown = status(dsn, emulator.base_url)
    assert code == 1
    problems = " | ".join(shown["problems"])
    assert f"{made['endpoint_id']} is disabled in Stripe" in problems
    assert f"{made['endpoint_id']} does not enable charge.dispute.closed" in problems
    assert f"API version {OLDER_VERSION} is not the pinned {STRIPE_API_VERSION}" in problems

    answer(endpoint(dsn, emulator, "ensure", "--url", URL))  # repairs all but the version
    answer(endpoint(dsn, emulator, "upgrade"))
    answer(endpoint(dsn, emulator, "upgrade", "--finish", "--force"))
    code, shown = status(dsn, emulator.base_url)
    assert (code, shown["problems"], shown["warnings"]) == (0, [], [])


def test_status_without_stripe_is_a_warning(dsn: str) -> None:
    code, shown = status(dsn, f"http://127.0.0.1:{free_port()}")
    assert (code, shown["problems"]) == (0, [])
    assert any("cannot check the webhook endpoint" in w for w in shown["warnings"])
