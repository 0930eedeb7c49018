"""The Grafana dashboard and the Prometheus alert rules in monitoring/: every
metric they query exists in a running daemon's /metrics, the dashboard shows
every metric the daemon exports, and the rules pass promtool (check and unit
tests) where promtool is installed (Debian: the prometheus package). On CI
(CI=true) a missing promtool fails: .ci/run installs it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from stripe_emulator.server import EmulatorServer
from stripe_sync.config import DEFAULTS
from stripe_sync_demo.devcluster import free_port

from daemons import WEBHOOK_SECRET, DaemonProcess, poll
from webhook_helpers import event, sign

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULES = MONITORING / "prometheus-alerts.yml"
RULE_TESTS = MONITORING / "prometheus-alerts.test.yml"
METRIC = re.compile(r"\bstripe_sync_[a-z0-9_]+")
# The series a `# TYPE name kind` line stands for (prometheus_client names a counter
# family with its _total already).
SUFFIXES = {"counter": ("",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


@pytest.fixture
def metrics_text(dsn: str, emulator: EmulatorServer) -> Iterator[str]:
    """/metrics of a running daemon after one outbox row, one stored and one rejected webhook:
    labelled metrics show only once something was counted under a label."""
    port = free_port()
    daemon = DaemonProcess(dsn, emulator.base_url, STRIPE_SYNC_METRICS_BIND=f"127.0.0.1:{port}")
    try:
        daemon.start()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO billing.accounts (id, email) VALUES (1, 'a@example.com')")
            conn.execute(
                "INSERT INTO integration.outbox (action_type, payload) "
                "VALUES ('create_stripe_customer', '{\"account_id\": 1}')"
            )
            body = json.dumps(event("customer.updated", {"id": "cus_x", "object": "customer"}))
            signed = {"Stripe-Signature": sign(body, WEBHOOK_SECRET)}
            url = f"{daemon.url}/webhooks/stripe"
            assert httpx.post(url, content=body, headers=signed).status_code == 200
            assert httpx.post(url, content=b"{}").status_code == 400
            query = (
                "SELECT (SELECT count(*) FROM integration.outbox WHERE status = 'done') "
                "+ (SELECT count(*) FROM integration.webhook_events WHERE status <> 'pending'"
                " AND status <> 'processing')"
            )
            poll(lambda: conn.execute(query).fetchone() == (2,))
        yield httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        daemon.stop()


def test_every_metric_used_exists_and_every_metric_is_shown(metrics_text: str) -> None:
    lines = metrics_text.splitlines()
    series = {re.split(r"[{ ]", line)[0] for line in lines if line and not line.startswith("#")}
    families = {
        name: kind
        for name, kind in re.findall(r"^# TYPE (stripe_sync_\w+) (\w+)$", metrics_text, re.M)
        if not name.endswith("_created")  # prometheus_client's creation-time companions
    }
    in_dashboard = {m for expr in dashboard_exprs() for m in METRIC.findall(expr)}
    in_rules = set(METRIC.findall(RULES.read_text()))
    assert in_dashboard and in_rules
    assert sorted(in_dashboard - series) == [], "the dashboard queries metrics nobody exports"
    assert sorted(in_rules - series) == [], "the alert rules query metrics nobody exports"
    shown = {
        name for name, kind in families.items() for s in SUFFIXES[kind] if name + s in in_dashboard
    }
    assert sorted(families.keys() - shown) == [], "exported metrics missing from the dashboard"


def test_dashboard_panels_use_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert 'job="$job"' in target["expr"], (panel["title"], target["expr"])


PROMTOOL = shutil.which("promtool")


# CI (.ci/run installs promtool) must run the rules' tests: there, no promtool fails.
ON_CI = os.environ.get("CI", "").lower() in ("true", "1")


@pytest.mark.skipif(
    PROMTOOL is None and not ON_CI, reason="promtool is not installed (Debian: prometheus)"
)
@pytest.mark.parametrize(
    "check", [["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]]
)
def test_rules_pass_promtool(check: list[str]) -> None:
    assert PROMTOOL is not None, "promtool is not installed: .ci/run installs it (prometheus)"
    out = subprocess.run(
        [PROMTOOL, *check], cwd=MONITORING, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_status_calls_waiting_a_problem_when_the_alert_pages() -> None:
    """`stripe-sync status` exits 1 for a row waiting longer than STRIPE_SYNC_WAIT_ALARM;
    by default that is the age at which StripeSyncQueueStuck pages (#28)."""
    rule = RULES.read_text().split("- alert: StripeSyncQueueStuck", 1)[1]
    threshold = re.search(r"expr: .*stripe_sync_queue_oldest_due_seconds.*> (\d+)\n", rule)
    assert threshold is not None
    assert float(threshold[1]) == DEFAULTS.wait_alarm_seconds
