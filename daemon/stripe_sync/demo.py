"""``stripe-sync demo``: the whole loop on this machine, no account, no network.

A throwaway PostgreSQL (or ``DATABASE_URL``), the Stripe emulator and the
daemon run as separate processes, as deployed. Then a DBA and a customer play
their parts: accounts, products and prices go in by plain SQL with their
outbox rows; a customer subscribes through the (emulated) Stripe API; a
payment is refunded. What flows is shown live.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import psycopg
import stripe
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .devcluster import ThrowawayCluster, free_port
from .migrate import migrate

API_KEY = "sk_test_demo_0000000000000000"
WEBHOOK_SECRET = "whsec_demo_0000000000000000"
console = Console(stderr=False, highlight=False)

COUNTS = """
SELECT 'integration.outbox' AS t, status, count(*) FROM integration.outbox GROUP BY status
UNION ALL SELECT 'integration.webhook_events', status, count(*)
          FROM integration.webhook_events GROUP BY status
UNION ALL SELECT 'stripe.customer_mappings', sync_status, count(*)
          FROM stripe.customer_mappings GROUP BY sync_status
UNION ALL SELECT 'stripe.product_mappings', sync_status, count(*)
          FROM stripe.product_mappings GROUP BY sync_status
UNION ALL SELECT 'stripe.price_mappings', sync_status, count(*)
          FROM stripe.price_mappings GROUP BY sync_status
UNION ALL SELECT 'stripe.subscription_mappings', sync_status, count(*)
          FROM stripe.subscription_mappings GROUP BY sync_status
UNION ALL SELECT 'billing.subscriptions', status, count(*)
          FROM billing.subscriptions GROUP BY status
UNION ALL SELECT 'billing.invoices', status, count(*) FROM billing.invoices GROUP BY status
UNION ALL SELECT 'billing.payments', status || '/refund:' || refund_status, count(*)
          FROM billing.payments GROUP BY 2
ORDER BY 1, 2
"""

STORY_SQL = """
INSERT INTO billing.accounts (email, name) VALUES
  ('ada@example.com', 'Ada Lovelace'), ('alan@example.com', 'Alan Turing'),
  ('grace@example.com', 'Grace Hopper');
INSERT INTO billing.products (name, description) VALUES
  ('Member', 'Monthly membership'), ('Workshop', 'One-off workshop seat');
INSERT INTO billing.prices (product_id, currency, unit_amount, recurring_interval, nickname)
  SELECT id, 'eur', 1500, 'month', 'member monthly' FROM billing.products WHERE name = 'Member';
INSERT INTO billing.prices (product_id, currency, unit_amount, recurring_interval, nickname)
  SELECT id, 'eur', 15000, 'year', 'member yearly' FROM billing.products WHERE name = 'Member';
INSERT INTO billing.prices (product_id, currency, unit_amount, nickname)
  SELECT id, 'eur', 4000, 'workshop seat' FROM billing.products WHERE name = 'Workshop';
SELECT integration.seed_outbox();
"""


def counts_table(dsn: str, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("table")
    table.add_column("status")
    table.add_column("rows", justify="right")
    with psycopg.connect(dsn) as conn:
        for name, status, n in conn.execute(COUNTS):
            table.add_row(name, str(status), str(n))
    return table


def wait(what: str, check: Callable[[], bool], dsn: str, live: Live, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        live.update(counts_table(dsn, f"waiting: {what}"))
        if time.monotonic() > deadline:
            raise TimeoutError(f"demo step timed out: {what}")
        time.sleep(0.05)
    live.update(counts_table(dsn, f"done: {what}"))


def scalar(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    return row[0] if row else None


@contextmanager
def process(name: str, argv: list[str], env: dict[str, str], log_path: str) -> Iterator[None]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not come up")
        time.sleep(0.05)


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with ExitStack() as stack:
        dsn = os.environ.get("DATABASE_URL")
        if dsn:
            console.print("[bold]database[/]: DATABASE_URL (yours; the demo adds rows to it)")
        else:
            cluster = stack.enter_context(ThrowawayCluster())
            dsn = cluster.dsn
            console.print(f"[bold]database[/]: throwaway PostgreSQL in {cluster.dir}")
        applied = migrate(dsn)
        console.print(f"[bold]migrate[/]: {len(applied)} migration(s) applied")

        emu_port, daemon_port = free_port(), free_port()
        emulator_url = f"http://127.0.0.1:{emu_port}"
        daemon_url = f"http://127.0.0.1:{daemon_port}"
        logdir = stack.enter_context(_tempdir())
        python = sys.executable
        stack.enter_context(
            process(
                "emulator",
                [
                    python,
                    "-m",
                    "stripe_sync.emulator",
                    "--bind",
                    f"127.0.0.1:{emu_port}",
                    "--api-key",
                    API_KEY,
                    "--webhook-url",
                    f"{daemon_url}/webhooks/stripe",
                    "--webhook-secret",
                    WEBHOOK_SECRET,
                ],
                dict(os.environ),
                f"{logdir}/emulator.log",
            )
        )
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": emulator_url,
            "STRIPE_SYNC_BIND": f"127.0.0.1:{daemon_port}",
            "STRIPE_SYNC_RATE_LIMIT": "0",
        }
        stack.enter_context(
            process("daemon", [python, "-m", "stripe_sync.cli", "run"], env, f"{logdir}/daemon.log")
        )
        wait_http(f"{emulator_url}/_emulator/requests")
        wait_http(f"{daemon_url}/readyz")
        console.print(
            f"[bold]emulator[/]: {emulator_url}   [bold]daemon[/]: {daemon_url} (logs in {logdir})"
        )

        client = stripe.StripeClient(
            API_KEY, base_addresses={"api": emulator_url}, max_network_retries=0
        )
        with Live(counts_table(dsn, "starting"), console=console, refresh_per_second=12) as live:
            live.console.print(
                "[bold cyan]1. A DBA inserts 3 accounts, 2 products, 3 prices "
                "and their outbox rows with plain SQL[/]"
            )
            with psycopg.connect(dsn) as conn:
                conn.execute(STORY_SQL.encode())
            wait(
                "outbox rows → Stripe objects → mappings",
                lambda: (
                    scalar(dsn, "SELECT count(*) FROM integration.outbox WHERE status = 'done'")
                    == 8
                ),
                dsn,
                live,
            )

            live.console.print(
                "[bold cyan]2. Ada subscribes to the monthly membership (through the Stripe API)[/]"
            )
            cus = scalar(
                dsn,
                "SELECT stripe_customer_id FROM stripe.customer_mappings m "
                "JOIN billing.accounts a ON a.id = m.account_id "
                "WHERE a.email = 'ada@example.com'",
            )
            price = scalar(
                dsn,
                "SELECT stripe_price_id FROM stripe.price_mappings m "
                "JOIN billing.prices p ON p.id = m.price_id "
                "WHERE p.nickname = 'member monthly'",
            )
            sub = client.v1.subscriptions.create(
                params={"customer": cus, "items": [{"price": price}]}
            )
            wait(
                "webhooks → subscription, invoice, payment",
                lambda: (
                    scalar(dsn, "SELECT count(*) FROM billing.payments WHERE status = 'succeeded'")
                    == 1
                ),
                dsn,
                live,
            )

            live.console.print("[bold cyan]3. Support refunds Ada's first payment[/]")
            invoice = client.v1.invoices.list(params={"subscription": sub.id}).data[0]
            pi = client.v1.payment_intents.list(params={"customer": cus}).data[0]
            client.v1.refunds.create(params={"payment_intent": pi.id})
            wait(
                "refund webhook → payment refunded",
                lambda: scalar(dsn, "SELECT refund_status FROM billing.payments") == "full",
                dsn,
                live,
            )
            del invoice

        console.print(counts_table(dsn, "summary"))
        console.print(f"[bold green]demo finished in {time.monotonic() - started:.1f}s[/]")
        if args.keep:
            console.print(
                f"\n[bold]kept running[/] (Ctrl-C stops and cleans up)\n"
                f"  DATABASE_URL={dsn}\n  emulator: {emulator_url}\n"
                f"  daemon:   {daemon_url}/readyz\n  logs:     {logdir}"
            )
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
    return 0


@contextmanager
def _tempdir() -> Iterator[str]:
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="stripe-sync-demo-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
