"""``stripe-sync demo``: the whole loop on this machine, no account, no network.

A throwaway PostgreSQL (or, with ``--database-url``, an empty database of
yours), the Stripe emulator and the daemon run as separate processes, as
deployed. Then a DBA and a customer play their parts: accounts, products and
prices go in by plain SQL with their outbox rows; a customer subscribes through
the (emulated) Stripe API; a payment is refunded; another member's payment is
disputed (Stripe's dispute test card) and the deadline to answer shows; the first
member cancels at the period's end through the outbox; a year in seconds: a member on
a Stripe test clock lives through twelve monthly renewals. Once everything has settled,
one summary shows what went to Stripe, which events came back and which billing
rows they produced.

Nothing outlives the demo: SIGINT, SIGTERM and SIGHUP unwind it in order, and a
reaper process (reaper.py) stops and deletes what is left if it is SIGKILLed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from calendar import monthrange
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psycopg
import stripe
from psycopg import sql
from rich.console import Console
from rich.live import Live
from rich.text import Text

from stripe_sync.db import queries, redact_dsn
from stripe_sync.migrate import migrate
from stripe_sync.ops.tables import show_table

from .devcluster import ThrowawayCluster, free_port
from .reaper import Reaper

API_KEY = "sk_test_demo_0000000000000000"
WEBHOOK_SECRET = "whsec_demo_0000000000000000"
# Piped into a file, rich would wrap at 80 columns; a log reads better unwrapped
# (the summary's tables fit 80 columns there: stripe_sync.ops.tables).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
Q = queries("demo", "stripe_sync_demo")


class DemoError(Exception):
    """A reason the demo cannot go on, told in one line (never a traceback)."""


class Stopped(Exception):
    """SIGTERM or SIGHUP: unwind like Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    # Once: a second signal during the clean-up must not cut it short.
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


def rows(dsn: str, name: str, **params: Any) -> list[tuple[Any, ...]]:
    return rows_of(dsn, Q[name], **params)


def rows_of(dsn: str, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query.encode(), params or None).fetchall()


@contextmanager
def process(
    argv: list[str], env: dict[str, str], log_path: Path, reaper: Reaper
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    reaper.pid(proc.pid)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise DemoError(f"{log.stem} exited with {proc.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise DemoError(f"{url} did not answer within {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "  (no log)"
    return "\n".join(f"  | {line}" for line in text[-lines:])


# The columns of sql/demo.sql's progress query.
PROGRESS = (
    "outbox_done",
    "events",
    "payments",
    "refunded",
    "disputes",
    "cancelling",
    "year_paid",
)


def progress(dsn: str) -> dict[str, int]:
    return dict(zip(PROGRESS, rows(dsn, "progress")[0], strict=True))


def wait(what: str, column: str, want: int, dsn: str, live: Live, timeout: float = 30.0) -> None:
    """Until the progress query's ``column`` reaches ``want``, showing the counts meanwhile."""
    deadline = time.monotonic() + timeout
    while (now := progress(dsn))[column] != want:
        live.update(
            Text(
                f"  … {what}: outbox rows done {now['outbox_done']}, webhook events "
                f"{now['events']}, payments {now['payments']}, refunded {now['refunded']}, "
                f"disputes {now['disputes']}",
                style="dim",
            )
        )
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for: {what}")
        time.sleep(0.05)
    live.console.print(f"  ✓ {what}")


def settle(dsn: str, quiet_for: float = 1.0, timeout: float = 15.0) -> list[tuple[Any, ...]]:
    """Wait until no row is pending and no new event arrived for ``quiet_for`` s.

    Returns what is still moving at the timeout (empty when settled): Stripe
    sends some events a moment after the request that caused them.
    """
    deadline = time.monotonic() + timeout
    last, quiet_since = -1, time.monotonic()
    while True:
        moving = rows(dsn, "moving")
        events = progress(dsn)["events"]
        if events != last or moving:
            last, quiet_since = events, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_for:
            return []
        if time.monotonic() > deadline:
            return moving
        time.sleep(0.1)


def use_database(url: str) -> str:
    """An empty database of the user's, or one an earlier demo marked as its own."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            ours = conn.execute(Q["has_schema"].encode()).fetchone()
            others = conn.execute(Q["other_tables"].encode()).fetchall()
            present = (
                conn.execute(Q["rows_present"].encode()).fetchall() if ours and ours[0] else []
            )
            marked = conn.execute(Q["marked"].encode()).fetchone()
    except psycopg.Error as e:
        raise DemoError(f"cannot use {redact_dsn(url)}: {str(e).strip()}") from None
    if others:
        names = ", ".join(r[0] for r in others)
        raise DemoError(
            f"{redact_dsn(url)} holds tables of another application ({names}, …): the demo "
            "writes test data and fake Stripe ids, so it only uses an empty database "
            "(createdb stripe_sync_demo) or, without --database-url, a throwaway one"
        )
    if present and not (marked and marked[0]):
        held = ", ".join(f"{t} {n}" for t, n in present)
        raise DemoError(
            f"{redact_dsn(url)} already holds rows the demo did not create ({held}): it only "
            "uses an empty database (createdb stripe_sync_demo) or, without --database-url, "
            "a throwaway one"
        )
    return url


def claim_database(dsn: str) -> None:
    """Empty an earlier demo's rows and mark the database as the demo's own."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        marked = conn.execute(Q["marked"].encode()).fetchone()
        if marked and marked[0]:
            conn.execute(Q["wipe"].encode())
        db = conn.execute(Q["database_name"].encode()).fetchone()
        try:
            conn.execute(sql.SQL(Q["mark"]).format(db=sql.Identifier(str(db and db[0]))))
        except psycopg.errors.InsufficientPrivilege:
            pass  # not the owner: a second run will ask for an empty database again


def summary(dsn: str) -> None:
    """Three tables: boxes on a terminal; piped, plain text within 80 columns
    (or one record per line), never a word broken (stripe_sync.ops.tables)."""
    show_table(
        console,
        "Outbox → Stripe: each row of the member console and its Stripe object",
        ("MC row", "what", "Stripe id", "mapping"),
        [_cells(row[2:]) for row in rows(dsn, "created_in_stripe")],
    )
    show_table(
        console,
        "Stripe → webhooks: the events received",
        ("event type", "status", "count"),
        [_cells(row) for row in rows(dsn, "events_received")],
        right=(2,),
    )
    show_table(
        console,
        "What the webhooks produced in billing.*",
        ("MC row", "what", "status"),
        [_cells(row[2:]) for row in rows(dsn, "billing_rows")],
    )


def _cells(row: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(v) for v in row)


def main(args: argparse.Namespace) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    logdir: Path | None = None
    try:
        with ExitStack() as stack:
            # First in, last out: it is told of each thing as it is made.
            reaper = stack.enter_context(Reaper())
            logdir = Path(tempfile.mkdtemp(prefix="stripe-sync-demo-"))
            reaper.dir(logdir)
            stack.callback(_remove, logdir)
            return _play(args, stack, reaper, logdir)
    except KeyboardInterrupt:
        console.print("stopped (Ctrl-C); everything it started is stopped and deleted")
        return 130
    except Stopped as e:
        console.print(f"stopped ({e}); everything it started is stopped and deleted")
        return 128 + e.signum
    except (DemoError, stripe.StripeError, psycopg.Error, OSError) as e:
        console.print(f"[bold red]demo failed[/]: {e}", soft_wrap=True)
        return 1


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _play(args: argparse.Namespace, stack: ExitStack, reaper: Reaper, logdir: Path) -> int:
    started = time.monotonic()
    if args.database_url:
        dsn = use_database(args.database_url)
        console.print(f"[bold]database[/]: {redact_dsn(dsn)} (--database-url; empty or the demo's)")
    else:
        if os.environ.get("DATABASE_URL"):
            console.print(
                "DATABASE_URL is set but not used: the demo never writes into a database "
                "unless given --database-url"
            )
        cluster = stack.enter_context(ThrowawayCluster(reaper=reaper))
        dsn = cluster.dsn
        console.print(f"[bold]database[/]: throwaway PostgreSQL in {cluster.dir}")
    applied = migrate(dsn)
    claim_database(dsn)
    console.print(f"[bold]migrate[/]: {len(applied)} migration(s) applied")

    emu_port, daemon_port = free_port(), free_port()
    emulator_url = f"http://127.0.0.1:{emu_port}"
    daemon_url = f"http://127.0.0.1:{daemon_port}"
    python = sys.executable
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DATABASE_"))}
    emulator_argv = ["--bind", f"127.0.0.1:{emu_port}", "--api-key", API_KEY]
    emulator_argv += ["--webhook-url", f"{daemon_url}/webhooks/stripe"]
    emulator_argv += ["--webhook-secret", WEBHOOK_SECRET]
    emulator = stack.enter_context(
        process(
            [python, "-m", "stripe_emulator", *emulator_argv],
            base_env,
            logdir / "emulator.log",
            reaper,
        )
    )
    env = {
        **base_env,
        "DATABASE_URL": dsn,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": emulator_url,
        "STRIPE_SYNC_BIND": f"127.0.0.1:{daemon_port}",
        "STRIPE_SYNC_RATE_LIMIT": "0",
    }
    daemon = stack.enter_context(
        process([python, "-m", "stripe_sync.cli", "run"], env, logdir / "daemon.log", reaper)
    )
    wait_http(f"{emulator_url}/_emulator/requests", emulator, logdir / "emulator.log")
    wait_http(f"{daemon_url}/readyz", daemon, logdir / "daemon.log")
    console.print(f"[bold]emulator[/]: {emulator_url}   [bold]daemon[/]: {daemon_url}")
    console.print(f"[bold]logs[/]: {logdir}")

    client = stripe.StripeClient(
        API_KEY, base_addresses={"api": emulator_url}, max_network_retries=0
    )
    try:
        _story(dsn, client)
    except DemoError as e:
        raise DemoError(
            f"{e}\ndaemon log (end):\n{_tail(logdir / 'daemon.log')}\n"
            f"emulator log (end):\n{_tail(logdir / 'emulator.log')}"
        ) from None

    moving = settle(dsn)
    console.print()
    summary(dsn)
    if moving:
        still = ", ".join(f"{t} {status} {n}" for t, status, n in moving)
        console.print(f"still moving after 15 s: {still}")
    else:
        console.print("settled: no outbox row or webhook event is pending")
    console.print(f"[bold green]demo finished in {time.monotonic() - started:.1f}s[/]")
    if args.keep:
        _keep(dsn, emulator_url, daemon_url, logdir, python)
    return 0


def _story(dsn: str, client: stripe.StripeClient) -> None:
    # transient: the progress line disappears; the step lines stay.
    with Live(Text(""), console=console, transient=True, refresh_per_second=12) as live:
        live.console.print(
            "[bold cyan]1. A DBA inserts 3 accounts, 2 products, 3 prices and their outbox rows "
            "with plain SQL[/]"
        )
        with psycopg.connect(dsn) as conn:
            conn.execute(Q["story"].encode())
        wait(
            "8 outbox rows → 8 Stripe objects → 8 mappings",
            "outbox_done",
            8,
            dsn,
            live,
        )
        live.console.print(
            "[bold cyan]2. Ada subscribes to the monthly membership (through the Stripe API)[/]"
        )
        (customer, price), *_ = rows(dsn, "ada")
        sub = client.v1.subscriptions.create(
            params={"customer": customer, "items": [{"price": price}]}
        )
        live.console.print(f"  Stripe made {sub.id} and sends its events to the daemon")
        wait(
            "webhooks → billing.subscriptions, billing.invoices, billing.payments",
            "payments",
            1,
            dsn,
            live,
        )
        live.console.print("[bold cyan]3. Support refunds Ada's first payment[/]")
        pi = client.v1.payment_intents.list(params={"customer": customer}).data[0]
        refund = client.v1.refunds.create(params={"payment_intent": pi.id})
        live.console.print(f"  Stripe made {refund.id} for {pi.id}")
        wait(
            "refund webhook → the payment is marked refunded",
            "refunded",
            1,
            dsn,
            live,
        )
        live.console.print(
            "[bold cyan]4. Alan pays a workshop seat with Stripe's dispute test card; "
            "his bank disputes it[/]"
        )
        ((alan,),) = rows(dsn, "customer", email="alan@example.com")
        seat = client.v1.payment_intents.create(
            params={
                "amount": 4000,
                "currency": "eur",
                "customer": alan,
                "payment_method": "pm_card_createDispute",
                "confirm": True,
            }
        )
        live.console.print(f"  Stripe disputes {seat.latest_charge}")
        wait(
            "dispute webhooks → billing.disputes, with the date to respond by "
            "(stripe-sync status lists it)",
            "disputes",
            1,
            dsn,
            live,
        )
        live.console.print(
            "[bold cyan]5. Ada cancels at the period's end in the member console (an outbox row)[/]"
        )
        with psycopg.connect(dsn) as conn:
            conn.execute(Q["cancel_ada"])
        wait(
            "outbox → Stripe → webhook → billing.subscriptions cancels at period end",
            "cancelling",
            1,
            dsn,
            live,
        )
        _a_year(dsn, client, live)


MONTHS = 12


def _a_year(dsn: str, client: stripe.StripeClient, live: Live) -> None:
    live.console.print(
        "[bold cyan]6. A year in seconds: Katherine subscribes on a Stripe test clock, "
        f"which then advances {MONTHS} months[/]"
    )
    start = int(time.time())
    clocks = client.v1.test_helpers.test_clocks
    clock = clocks.create(params={"frozen_time": start, "name": "a year in seconds"})
    ((account,),) = rows(dsn, "clock_member")
    ((source,),) = rows_of(dsn, queries("outbox")["source"])
    customer = client.v1.customers.create(
        params={
            "email": "katherine@example.com",
            "name": "Katherine Johnson",
            "test_clock": clock.id,
            "payment_method": "pm_card_visa",
            "invoice_settings": {"default_payment_method": "pm_card_visa"},
            "metadata": {"mc_account_id": str(account), "mc_source": source},
        }
    )
    rows(dsn, "map_customer", account=account, customer=customer.id)
    ((price,),) = rows(dsn, "monthly_price")
    client.v1.subscriptions.create(params={"customer": customer.id, "items": [{"price": price}]})
    anchor = dt.datetime.fromtimestamp(start, dt.UTC)
    for month in range(1, MONTHS + 1):
        # Past each renewal by two hours: its invoice is finalized and paid an hour in.
        at = _months_after(anchor, month) + dt.timedelta(hours=2)
        clocks.advance(clock.id, params={"frozen_time": int(at.timestamp())})
    wait(
        f"{MONTHS} renewals → {MONTHS + 1} paid invoices for Katherine in billing.invoices",
        "year_paid",
        MONTHS + 1,
        dsn,
        live,
    )


def _months_after(start: dt.datetime, months: int) -> dt.datetime:
    """The renewal `months` after `start`, as Stripe dates it (Jan 31 + 1: Feb 28)."""
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    return start.replace(year=year, month=month, day=min(start.day, monthrange(year, month)[1]))


def _keep(dsn: str, emulator_url: str, daemon_url: str, logdir: Path, python: str) -> None:
    bindir = Path(python).parent
    console.print(
        "\n[bold]kept running[/] (Ctrl-C, SIGTERM or a closed terminal stops and deletes it all)\n"
        f"  DATABASE_URL={dsn}\n"
        f"  STRIPE_API_KEY={API_KEY}   (the emulator's; it takes no other key)\n"
        f"  STRIPE_API_BASE={emulator_url}\n"
        f"  STRIPE_WEBHOOK_SECRET={WEBHOOK_SECRET}   (the emulator signs its webhooks with it)\n"
        f"  daemon:   {daemon_url}/readyz   {daemon_url}/webhooks/stripe\n"
        f"  logs:     {logdir}\n"
        f"  stripe-sync is {bindir / 'stripe-sync'}\n"
        "try:\n"
        f"  curl -s -u {API_KEY}: {emulator_url}/v1/customers\n"
        f"  psql '{dsn}' -c 'SELECT * FROM stripe.customer_mappings'\n"
        f"  DATABASE_URL='{dsn}' {bindir / 'stripe-sync'} status",
        soft_wrap=True,
    )
    while True:
        signal.pause()
