"""stripe-sync soak: mixed load for N minutes against `stripe-sync run`, then checks
that nothing is stuck and that memory and connections stayed flat.

    ./dev soak                  # 10 minutes
    ./dev soak --quick          # about a minute: a smoke run
    ./dev soak --minutes 60 --sample 30

Starts its own PostgreSQL cluster, the Stripe emulator (delivering its webhooks to
the daemon) and `stripe-sync run`, each as its own process (bench/harness.py), and
keeps up, every second: outbox creates and updates of accounts, products and prices
(SQL inserts, as an app would); subscriptions made through the emulator's API with
the official SDK (which send subscription, invoice, PaymentIntent and charge
webhooks); refunds of some of their payments; and signed customer.updated events
POSTed directly. Every --sample seconds it records the daemon's RSS (VmRSS), its
open file descriptors (/proc/PID/fd), its PostgreSQL connections (pg_stat_activity,
application_name LIKE 'stripe-sync%'), the queue depths and the age of the oldest
due row.

After the load it drains (up to --drain seconds) and fails (exit 1) when:
  - a row is still pending/processing and older than a minute, or any row failed;
  - RSS grew: the last quarter's mean is above the second quarter's mean by more
    than 15 % and more than 5 MiB (it passes if either bound holds);
  - connections or descriptors grew: the last quarter's mean is above the second
    quarter's mean by more than 15 % + 2 (connections) or 15 % + 5 (descriptors);
  - the daemon exited, or the endpoint answered anything but 200 to a valid event.
The first quarter is warm-up and not compared.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import psycopg
import stripe
from harness import (
    API_KEY,
    WEBHOOK_SECRET,
    BenchError,
    DaemonProc,
    EmulatorProc,
    create_database,
    rss_mb,
)

from stripe_sync_demo.devcluster import ThrowawayCluster

Conn = psycopg.Connection[tuple[Any, ...]]
STUCK_AFTER = 60.0  # seconds: a pending/processing row older than this after the drain


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    pg_conns: int
    outbox_pending: int
    outbox_processing: int
    webhooks_pending: int
    webhooks_processing: int
    oldest_due_s: float
    outbox_done: int
    webhooks_done: int
    # Both queue tables with their indexes and TOAST: flat under --retention.
    queue_kb: int = 0


@dataclass
class Load:
    """What the load generator did, and what went wrong on its side."""

    accounts: int = 0
    catalog: int = 0
    updates: int = 0
    subscriptions: int = 0
    refunds: int = 0
    direct_events: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str, exc: BaseException | str) -> None:
        key = f"{what}: {str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__}"
        self.errors[key] = self.errors.get(key, 0) + 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/soak.py",
        description="Run mixed load against stripe-sync for N minutes on a PostgreSQL "
        "cluster of its own; fail if anything is stuck or memory/connections grow.",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke run")
    parser.add_argument(
        "--sample",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between samples (default 15; 5 with --quick)",
    )
    parser.add_argument(
        "--drain", type=float, default=90.0, metavar="SECONDS", help="drain period (default 90)"
    )
    parser.add_argument("--seed", type=int, default=20260311, help="random seed of the load")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    parser.add_argument(
        "--retention",
        metavar="DURATION",
        help="the daemon's STRIPE_SYNC_RETENTION (e.g. 20s); then the queue tables' size "
        "must stay flat too",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes = 1.0
    if args.sample is None:
        args.sample = 5.0 if args.quick else 15.0
    return args


# -- measuring -------------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def one(conn: Conn, query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def sample(conn: Conn, daemon: DaemonProc, started: float) -> Sample:
    depth: dict[tuple[str, str], int] = {}
    for table in ("outbox", "webhook_events"):
        rows = conn.execute(f"SELECT status, count(*) FROM integration.{table} GROUP BY 1")
        for status, n in rows:
            depth[(table, status)] = n
    oldest = one(
        conn,
        "SELECT coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)::float8 FROM ("
        " SELECT next_attempt_at FROM integration.outbox"
        " WHERE status = 'pending' AND next_attempt_at <= now()"
        " UNION ALL SELECT next_attempt_at FROM integration.webhook_events"
        " WHERE status = 'pending' AND next_attempt_at <= now()) due",
    )
    queue_kb = one(
        conn,
        "SELECT (pg_total_relation_size('integration.outbox') "
        "+ pg_total_relation_size('integration.webhook_events')) / 1024",
    )
    conns = one(
        conn,
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name LIKE 'stripe-sync%%' AND datname = current_database()",
    )
    return Sample(
        t=time.monotonic() - started,
        rss_mb=rss_mb(daemon.pid),
        fds=fd_count(daemon.pid),
        pg_conns=conns,
        outbox_pending=depth.get(("outbox", "pending"), 0),
        outbox_processing=depth.get(("outbox", "processing"), 0),
        webhooks_pending=depth.get(("webhook_events", "pending"), 0),
        webhooks_processing=depth.get(("webhook_events", "processing"), 0),
        oldest_due_s=oldest,
        outbox_done=depth.get(("outbox", "done"), 0),
        webhooks_done=depth.get(("webhook_events", "processed"), 0)
        + depth.get(("webhook_events", "ignored"), 0),
        queue_kb=int(queue_kb),
    )


# -- the load ----------------------------------------------------------------------------------


class LoadGenerator:
    def __init__(self, conn: Conn, daemon: DaemonProc, emulator: EmulatorProc, seed: int) -> None:
        self.conn = conn
        self.daemon = daemon
        self.rng = random.Random(seed)
        self.load = Load()
        self.http = httpx.Client(timeout=30)
        self.stripe = stripe.StripeClient(
            API_KEY,
            base_addresses={"api": emulator.url},
            http_client=stripe.HTTPXClient(allow_sync_methods=True),
            max_network_retries=2,
        )
        self.event_ids = itertools.count()
        self.tick_no = 0

    def close(self) -> None:
        self.http.close()

    def synced(self, table: str, stripe_col: str, mc_col: str) -> list[tuple[int, str]]:
        return self.conn.execute(
            f"SELECT {mc_col}, {stripe_col} FROM stripe.{table} "
            f"WHERE sync_status = 'synced' AND {stripe_col} IS NOT NULL"
        ).fetchall()

    def tick(self) -> None:
        """About one second's worth of mixed work."""
        self.tick_no += 1
        rng, c = self.rng, self.conn
        # Outbox creates: two accounts per tick, a product and a price every fifth.
        c.execute(
            "INSERT INTO billing.accounts (email, name) "
            "SELECT 'soak' || g || '-' || floor(random() * 1e9)::bigint || '@example.com', "
            "'Soak ' || g FROM generate_series(1, 2) g"
        )
        self.load.accounts += 2
        if self.tick_no % 5 == 1:
            product = one(c, "INSERT INTO billing.products (name) VALUES ('Soak') RETURNING id")
            c.execute(
                "INSERT INTO billing.prices (product_id, currency, unit_amount, "
                "recurring_interval) VALUES (%s, 'usd', %s, 'month')",
                [product, rng.choice((500, 1000, 2500))],
            )
            self.load.catalog += 2
        c.execute("SELECT integration.seed_outbox()")
        # Outbox updates of synced rows.
        customers = self.synced("customer_mappings", "stripe_customer_id", "account_id")
        prices = self.synced("price_mappings", "stripe_price_id", "price_id")
        for account, _ in rng.sample(customers, min(2, len(customers))):
            c.execute(
                "UPDATE billing.accounts SET name = %s WHERE id = %s", [f"n{rng.random()}", account]
            )
            c.execute(
                "INSERT INTO integration.outbox (action_type, payload) "
                "VALUES ('update_stripe_customer', %s)",
                [json.dumps({"account_id": account})],
            )
            self.load.updates += 1
        if prices and self.tick_no % 3 == 0:
            price, _ = rng.choice(prices)
            c.execute(
                "INSERT INTO integration.outbox (action_type, payload) "
                "VALUES ('update_stripe_price', %s)",
                [json.dumps({"price_id": price})],
            )
            self.load.updates += 1
        # A subscription through the API (webhooks follow), some refunds.
        if customers and prices:
            _, customer = rng.choice(customers)
            _, price_id = rng.choice(prices)
            try:
                self.stripe.v1.subscriptions.create(
                    params={"customer": customer, "items": [{"price": price_id, "quantity": 1}]}
                )
                self.load.subscriptions += 1
            except stripe.StripeError as exc:
                self.load.error("subscription", exc)
        if self.tick_no % 3 == 0:
            rows = c.execute(
                "SELECT m.stripe_payment_intent_id FROM stripe.payment_mappings m "
                "JOIN billing.payments p ON p.id = m.payment_id "
                "WHERE p.status = 'succeeded' AND p.refund_status = 'none' "
                "ORDER BY random() LIMIT 1"
            ).fetchall()
            for (pi,) in rows:
                try:
                    self.stripe.v1.refunds.create(params={"payment_intent": pi, "amount": 100})
                    self.load.refunds += 1
                except stripe.StripeError as exc:
                    self.load.error("refund", exc)
        # Directly POSTed signed events (customer.updated of mapped customers).
        now = int(time.time())
        for _ in range(20 if customers else 0):
            account, customer = rng.choice(customers)
            body = json.dumps(
                {
                    "id": f"evt_soak{next(self.event_ids):012d}",
                    "object": "event",
                    "type": "customer.updated",
                    "created": now,
                    "livemode": False,
                    "api_version": "2025-03-31.basil",
                    "data": {
                        "object": {
                            "id": customer,
                            "object": "customer",
                            "metadata": {"mc_account_id": str(account)},
                        }
                    },
                }
            ).encode()
            mac = hmac.new(WEBHOOK_SECRET.encode(), f"{now}.".encode() + body, hashlib.sha256)
            headers = {
                "content-type": "application/json",
                "stripe-signature": f"t={now},v1={mac.hexdigest()}",
            }
            try:
                r = self.http.post(
                    f"{self.daemon.url}/webhooks/stripe", content=body, headers=headers
                )
                if r.status_code != 200:
                    self.load.error("direct event", f"HTTP {r.status_code} {r.text[:60]}")
                else:
                    self.load.direct_events += 1
            except httpx.HTTPError as exc:
                self.load.error("direct event", exc)


# -- checks -----------------------------------------------------------------------------------


def quarter_means(values: list[float]) -> tuple[float, float]:
    """Means of the second and the last quarter of the samples."""
    n = len(values)
    q = max(1, n // 4)
    second = values[q : 2 * q] or values[:1]
    last = values[n - q :]
    return statistics.fmean(second), statistics.fmean(last)


def flat(
    name: str, values: list[float], pct: float, slack: float, either: bool
) -> tuple[bool, str]:
    second, last = quarter_means(values)
    within_pct = last <= second * (1 + pct)
    within_abs = last <= second + slack
    ok = (within_pct or within_abs) if either else last <= second * (1 + pct) + slack
    rule = f"≤ +{pct:.0%} or ≤ +{slack:g}" if either else f"≤ second * {1 + pct:.2f} + {slack:g}"
    return ok, f"{name}: 2nd quarter {second:.1f} → last quarter {last:.1f} ({rule})"


def final_checks(
    conn: Conn, samples: list[Sample], daemon: DaemonProc, load: Load
) -> list[tuple[bool, str]]:
    checks: list[tuple[bool, str]] = []
    for table in ("outbox", "webhook_events"):
        stamp = "created_at" if table == "outbox" else "received_at"
        stuck = one(
            conn,
            f"SELECT count(*) FROM integration.{table} WHERE status IN ('pending', 'processing') "
            f"AND {stamp} < now() - make_interval(secs => %s)",
            STUCK_AFTER,
        )
        left = one(
            conn,
            f"SELECT count(*) FROM integration.{table} WHERE status IN ('pending', 'processing')",
        )
        checks.append(
            (stuck == 0, f"{table}: {stuck} stuck (older than {STUCK_AFTER:.0f}s), {left} left")
        )
        failed = conn.execute(
            f"SELECT last_error, count(*) FROM integration.{table} WHERE status = 'failed' "
            "GROUP BY 1 ORDER BY 2 DESC LIMIT 3"
        ).fetchall()
        total = sum(n for _, n in failed)
        checks.append((total == 0, f"{table}: {total} failed {failed if failed else ''}".rstrip()))
    checks.append(flat("RSS MiB", [s.rss_mb for s in samples], 0.15, 5.0, either=True))
    checks.append(
        flat("PG connections", [float(s.pg_conns) for s in samples], 0.15, 2.0, either=False)
    )
    checks.append(flat("open fds", [float(s.fds) for s in samples], 0.15, 5.0, either=False))
    checks.append((daemon.alive(), "daemon alive" if daemon.alive() else "daemon EXITED"))
    direct = sum(n for k, n in load.errors.items() if k.startswith("direct event"))
    checks.append((direct == 0, f"direct events: {load.direct_events} accepted, {direct} refused"))
    return checks


def table(samples: list[Sample]) -> str:
    head = (
        f"{'t(s)':>6} {'RSS MiB':>8} {'fds':>5} {'pg':>4} {'ob pend':>8} {'ob proc':>8} "
        f"{'wh pend':>8} {'wh proc':>8} {'oldest due s':>12} {'ob done':>8} {'wh done':>8} "
        f"{'queue kB':>9}"
    )
    lines = [head, "-" * len(head)]
    for s in samples:
        lines.append(
            f"{s.t:6.0f} {s.rss_mb:8.1f} {s.fds:5d} {s.pg_conns:4d} {s.outbox_pending:8d} "
            f"{s.outbox_processing:8d} {s.webhooks_pending:8d} {s.webhooks_processing:8d} "
            f"{s.oldest_due_s:12.2f} {s.outbox_done:8d} {s.webhooks_done:8d} {s.queue_kb:9d}"
        )
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, run_dir: Path) -> bool:
    with ThrowawayCluster() as cluster:
        dsn = create_database(cluster.dsn, "soak")
        emulator = EmulatorProc(run_dir)
        daemon = DaemonProc(
            run_dir,
            dsn,
            emulator.url,
            STRIPE_SYNC_LOG_LEVEL="warning",
            STRIPE_SYNC_RETRY_MAX_SECONDS="10",
            **({"STRIPE_SYNC_RETENTION": args.retention} if args.retention else {}),
        )
        emulator.args += [
            "--webhook-url", f"{daemon.url}/webhooks/stripe", "--webhook-secret", WEBHOOK_SECRET,
        ]  # fmt: skip
        procs = [emulator, daemon]
        try:
            emulator.start()
            daemon.start()
            print(
                f"soak: {args.minutes:g} min of load, a sample every {args.sample:g}s; "
                f"daemon pid {daemon.pid}; logs in {run_dir}",
                flush=True,
            )
            with psycopg.connect(dsn, autocommit=True) as conn:
                gen = LoadGenerator(conn, daemon, emulator, args.seed)
                samples: list[Sample] = []
                started = time.monotonic()
                end = started + args.minutes * 60
                next_sample = started + args.sample
                try:
                    while time.monotonic() < end:
                        tick_start = time.monotonic()
                        for p in procs:
                            p.check()
                        gen.tick()
                        if time.monotonic() >= next_sample:
                            samples.append(sample(conn, daemon, started))
                            s = samples[-1]
                            print(
                                f"  t={s.t:5.0f}s rss={s.rss_mb:.1f}MiB fds={s.fds} "
                                f"pg={s.pg_conns} "
                                f"queued={s.outbox_pending + s.webhooks_pending} "
                                f"oldest_due={s.oldest_due_s:.1f}s",
                                flush=True,
                            )
                            next_sample += args.sample
                        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick_start)))
                finally:
                    gen.close()
                # Drain: the emulator's deliveries and both queues.
                drain_start = time.monotonic()
                while time.monotonic() - drain_start < args.drain:
                    busy = one(
                        conn,
                        "SELECT (SELECT count(*) FROM integration.outbox WHERE status IN "
                        "('pending', 'processing')) + (SELECT count(*) FROM "
                        "integration.webhook_events WHERE status IN ('pending', 'processing'))",
                    )
                    if busy == 0 and time.monotonic() - drain_start > 5:
                        break
                    time.sleep(0.5)
                drained = time.monotonic() - drain_start
                samples.append(sample(conn, daemon, started))
                print()
                print(table(samples))
                print()
                load = gen.load
                print(
                    f"load: {load.accounts} accounts, {load.catalog} products+prices, "
                    f"{load.updates} updates, {load.subscriptions} subscriptions, "
                    f"{load.refunds} refunds, {load.direct_events} direct events; "
                    f"drained in {drained:.1f}s"
                )
                if load.errors:
                    print(f"load-side errors: {load.errors}")
                totals = conn.execute(
                    "SELECT (SELECT count(*) FROM integration.outbox), "
                    "(SELECT count(*) FROM integration.webhook_events), "
                    "(SELECT count(*) FROM billing.subscriptions), "
                    "(SELECT count(*) FROM billing.invoices), "
                    "(SELECT count(*) FROM billing.payments), "
                    "(SELECT count(*) FROM stripe.payment_refunds)"
                ).fetchone()
                print(
                    "rows: outbox {}, webhook_events {}, subscriptions {}, invoices {}, "
                    "payments {}, refunds {}".format(*(totals or ()))
                )
                checks = final_checks(conn, samples[:-1] or samples, daemon, load)
                if args.retention:
                    kept = samples[:-1] or samples
                    # Deleted rows' space is reused once autovacuum has passed
                    # (every minute by default): a run of a few minutes shows it.
                    sizes = [float(s.queue_kb) for s in kept]
                    checks.append(flat("queue tables kB", sizes, 0.15, 256.0, either=True))
        finally:
            for p in reversed(procs):
                p.stop()
    print()
    ok = True
    for passed, text in checks:
        print(f"{'ok  ' if passed else 'FAIL'} {text}")
        ok = ok and passed
    print("soak: PASSED" if ok else "soak: FAILED")
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="stripe-sync-soak-"))
    ok = False
    try:
        ok = run(args, run_dir)
    except BenchError as exc:
        print(f"soak: {exc}", file=sys.stderr)
    finally:
        if ok and not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(f"logs kept in {run_dir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
