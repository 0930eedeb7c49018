"""Webhook storm: thousands of realistic events, each delivered three times, shuffled,
by 32 concurrent senders over real HTTP to `stripe-sync run` as deployed.

Promises checked: every delivery is answered 200; exactly one stored row per event
id (and exactly one delivery of each was told ``duplicate: false``); nothing fails;
and the billing tables end up exactly as when the same events are applied once, one
after the other, in Stripe's order, in a second fresh database.

The events tell one story per subscription (created → invoice drafted, finalized →
PaymentIntent → charge → invoice paid → subscription active → sometimes a plan
change, refunds, cancellation), with many events of one object in the same second
(ties broken by rank and event id), plus customer and price updates that tie across
stories. Invoices name their subscription and PaymentIntents their invoice, so a
shuffled delivery also exercises the wait for references.

STRIPE_SYNC_STORM_EVENTS sets the number of events: 2,000 by default (~15-25 s here);
the full 5,000 of the issue take ~35-50 s (a 15-30 s storm, 12-18 s for the in-order
pass). The default keeps the storm well inside the daemon's reference wait (below).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from stripe_emulator.server import EmulatorServer
from stripe_sync.db import make_pool
from stripe_sync.queue.jobs import Job
from stripe_sync.webhooks.execute import WebhookContext, make_handler

from daemons import WEBHOOK_SECRET, DaemonProcess
from webhook_helpers import (
    add_account,
    add_price,
    add_product,
    fresh_database,
    sign,
    snapshot,
    wait_idle,
)

pytestmark = pytest.mark.anyio

EVENTS = int(os.environ.get("STRIPE_SYNC_STORM_EVENTS", "2000"))
COPIES = 3
SENDERS = 32
CUSTOMERS = 150
PRICES = 4
T0 = 1_700_000_000
MONTH = 2_592_000
SEED = 20260311


# -- the events ---------------------------------------------------------------------------


class Story:
    """Events about one subscription and what hangs off it, in causal order."""

    def __init__(self, rng: random.Random, k: int, t: int) -> None:
        self.rng = rng
        self.k = k
        self.customer = f"cus_storm{k % CUSTOMERS:04d}"
        self.sub = f"sub_storm{k:05d}"
        self.invoice = f"in_storm{k:05d}"
        self.pi = f"pi_storm{k:05d}"
        self.charge = f"ch_storm{k:05d}"
        self.price = f"price_storm{rng.randrange(PRICES)}"
        self.quantity = rng.randint(1, 5)
        self.amount = 1000 * self.quantity
        self.t = t
        self.events: list[dict[str, Any]] = []

    def emit(self, event_type: str, obj: dict[str, Any], at: int) -> None:
        # Random ids, as Stripe's: ties in (created, rank) are broken by them arbitrarily.
        self.events.append(
            {
                "id": f"evt_{self.rng.getrandbits(96):024x}",
                "object": "event",
                "type": event_type,
                "created": at,
                "livemode": False,
                "api_version": "2025-03-31.basil",
                "request": {"id": None, "idempotency_key": None},
                "pending_webhooks": 1,
                "data": {"object": obj},
            }
        )

    def subscription(self, status: str, **extra: Any) -> dict[str, Any]:
        price = extra.pop("price", self.price)
        quantity = extra.pop("quantity", self.quantity)
        return {
            "id": self.sub,
            "object": "subscription",
            "customer": self.customer,
            "status": status,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "ended_at": None,
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": f"si_storm{self.k:05d}",
                        "object": "subscription_item",
                        "price": {"id": price, "object": "price", "product": "prod_storm"},
                        "quantity": quantity,
                        "current_period_start": self.t,
                        "current_period_end": self.t + MONTH,
                    }
                ],
            },
            **extra,
        }

    def invoice_obj(self, status: str, **extra: Any) -> dict[str, Any]:
        paid = status == "paid"
        return {
            "id": self.invoice,
            "object": "invoice",
            "customer": self.customer,
            "status": status,
            "number": None if status == "draft" else f"STORM-{self.k:05d}",
            "currency": "usd",
            "amount_due": self.amount,
            "amount_paid": self.amount if paid else 0,
            "amount_remaining": 0 if paid else self.amount,
            "total": self.amount,
            "period_start": self.t,
            "period_end": self.t + MONTH,
            "due_date": None,
            "status_transitions": {"paid_at": self.t + 1 if paid else None},
            "parent": {
                "type": "subscription_details",
                "subscription_details": {"subscription": self.sub},
            },
            **extra,
        }

    def payment_intent(self, status: str) -> dict[str, Any]:
        done = status == "succeeded"
        return {
            "id": self.pi,
            "object": "payment_intent",
            "customer": self.customer,
            "invoice": self.invoice,
            "status": status,
            "currency": "usd",
            "amount": self.amount,
            "amount_received": self.amount if done else 0,
            "latest_charge": self.charge if done else None,
            "last_payment_error": None,
        }

    def refund(self, n: int, amount: int, status: str) -> dict[str, Any]:
        return {
            "id": f"re_storm{self.k:05d}_{n}",
            "object": "refund",
            "amount": amount,
            "charge": self.charge,
            "payment_intent": self.pi,
            "status": status,
        }

    def tell(self) -> list[dict[str, Any]]:
        rng, t = self.rng, self.t
        self.emit(
            "customer.updated",
            {"id": self.customer, "object": "customer", "metadata": {"story": str(self.k)}},
            t,
        )
        # Same second: ranks order incomplete < active, draft < open, created < succeeded.
        self.emit("customer.subscription.created", self.subscription("incomplete"), t)
        self.emit("invoice.created", self.invoice_obj("draft"), t)
        self.emit("invoice.finalized", self.invoice_obj("open"), t)
        # A same-rank tie with different content: the larger event id wins.
        self.emit("invoice.updated", self.invoice_obj("open", due_date=t + 7 * 86400), t)
        self.emit("payment_intent.created", self.payment_intent("requires_payment_method"), t)
        self.emit("payment_intent.processing", self.payment_intent("processing"), t + 1)
        self.emit("payment_intent.succeeded", self.payment_intent("succeeded"), t + 1)
        self.emit(
            "charge.succeeded",
            {
                "id": self.charge,
                "object": "charge",
                "payment_intent": self.pi,
                "status": "succeeded",
                "paid": True,
                "amount_refunded": 0,
            },
            t + 1,
        )
        self.emit("invoice.paid", self.invoice_obj("paid"), t + 1)
        self.emit("invoice.payment_succeeded", self.invoice_obj("paid"), t + 1)
        self.emit("customer.subscription.updated", self.subscription("active"), t + 1)
        if rng.random() < 0.5:
            # Two updates in one second with the same status: a plan change and a
            # quantity change, either may win (by id), in both runs alike.
            other = f"price_storm{rng.randrange(PRICES)}"
            self.emit(
                "customer.subscription.updated", self.subscription("active", price=other), t + 2
            )
            self.emit(
                "customer.subscription.updated",
                self.subscription("active", quantity=self.quantity + 1),
                t + 2,
            )
        if rng.random() < 0.4:
            self.refunds(t + 3)
        roll = rng.random()
        if roll < 0.3:
            ended = {"canceled_at": t + 4, "ended_at": t + 4}
            self.emit(
                "customer.subscription.deleted", self.subscription("canceled", **ended), t + 4
            )
            # A late update of the same second: the deletion outranks it.
            self.emit("customer.subscription.updated", self.subscription("past_due"), t + 4)
        elif roll < 0.5:
            self.emit(
                "customer.subscription.updated",
                self.subscription("active", cancel_at_period_end=True),
                t + 4,
            )
        return self.events

    def refunds(self, at: int) -> None:
        rng = self.rng
        first = rng.randint(1, self.amount // 2)
        self.emit("refund.created", self.refund(1, first, "pending"), at)
        self.emit("refund.updated", self.refund(1, first, "succeeded"), at)
        total = first
        refunds = [self.refund(1, first, "succeeded")]
        if rng.random() < 0.5:
            second = self.amount - first
            self.emit("refund.created", self.refund(2, second, "succeeded"), at)
            total += second
            refunds.append(self.refund(2, second, "succeeded"))
            if rng.random() < 0.3:
                self.emit("refund.failed", self.refund(2, second, "failed"), at + 1)
        self.emit(
            "charge.refunded",
            {
                "id": self.charge,
                "object": "charge",
                "payment_intent": self.pi,
                "status": "succeeded",
                "paid": True,
                "amount_refunded": total,
                "refunds": {"object": "list", "data": refunds},
            },
            at,
        )


def storm_events(n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """``n`` events in Stripe's order (by ``created``; causal within one second)."""
    rng = random.Random(seed)
    stories: list[list[dict[str, Any]]] = []
    count, k = 0, 0
    while count < n:
        # About eight stories start in each second: ties across objects too.
        events = Story(rng, k, T0 + k // 8).tell()
        stories.append(events)
        count += len(events)
        k += 1
        if k % 10 == 0:
            # Prices change now and then, tied within their second.
            price = f"price_storm{rng.randrange(PRICES)}"
            extra = {"id": price, "object": "price", "active": True, "product": "prod_storm"}
            stories[-1].append(
                {**stories[-1][0], "id": f"evt_{rng.getrandbits(96):024x}", "type": "price.updated",
                 "data": {"object": extra}}
            )  # fmt: skip
            count += 1
    flat = [(e["created"], i, e) for i, e in enumerate(e for s in stories for e in s)]
    flat.sort(key=lambda x: (x[0], x[1]))  # stable: causal order kept within a second
    return [e for _, _, e in flat][:n]


def seed_mappings(conn: psycopg.Connection[Any]) -> None:
    """The MC side the events name: customers and prices the outbox made earlier."""
    for c in range(CUSTOMERS):
        add_account(conn, f"cus_storm{c:04d}")
    product = add_product(conn, "prod_storm")
    for p in range(PRICES):
        add_price(conn, f"price_storm{p}", product, amount=1000)


# -- the in-order baseline ----------------------------------------------------------------


async def apply_in_order(dsn: str, events: list[dict[str, Any]]) -> None:
    """Each event once, one after the other, by the daemon's own handlers."""
    async with make_pool(dsn, size=2) as pool:
        handle = make_handler(WebhookContext(pool, mode="test", reference_attempts=1))
        for n, evt in enumerate(events, 1):
            done = await handle(Job(n, evt["type"], 1, json.dumps(evt)))
            assert done.status in (None, "processed"), (evt["id"], done)
            if done.apply is not None:
                async with pool.connection() as conn, conn.transaction():
                    await done.apply(conn)


# -- the storm ------------------------------------------------------------------------------


@pytest.fixture
def baseline_dsn(pg_server: dict[str, Any], db_template: str) -> Iterator[str]:
    with fresh_database(pg_server, db_template, prefix="stripe_sync_storm") as dsn:
        yield dsn


@pytest.fixture
def daemon(dsn: str, emulator: EmulatorServer) -> Iterator[DaemonProcess]:
    # Reference waits back off from 1 s, doubling, for 8 attempts: a cap of 16 s per
    # step gives a shuffled parent at least ~30 s to arrive (the 5,000-event storm
    # takes ~30 s here) and keeps the tail of the drain short.
    # The storm's objects exist only in its events, not in the emulator: the
    # daemon's key may not read them (a restricted key's 403), so an event naming
    # one MC lacks waits for the event that brings it, as before issue 24.
    for resource in ("subscriptions/{id}", "invoices/{id}", "payment_intents/{id}", "charges/{id}"):
        emulator.emulator.add_fault("403", f"GET /v1/{resource}", rate=1.0)
    d = DaemonProcess(
        dsn,
        emulator.base_url,
        STRIPE_SYNC_RETRY_MAX_SECONDS=16,
        STRIPE_SYNC_SWEEP_INTERVAL=1,
        STRIPE_SYNC_LOG_LEVEL="warning",
    )
    try:
        yield d.start()
    finally:
        d.stop()


async def deliver(port: int, bodies: list[bytes], senders: int) -> Counter[str]:
    """POST every body (in list order, ``senders`` keep-alive connections at a time);
    counts of the outcomes. Raw HTTP/1.1, so the client leaves the CPU to the daemon."""
    outcomes: Counter[str] = Counter()
    queue = iter(bodies)

    def request(body: bytes) -> bytes:
        head = (
            f"POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json; charset=utf-8\r\n"
            f"Stripe-Signature: {sign(body, WEBHOOK_SECRET)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def exchange(
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, data: bytes
    ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, int, bytes]:
        for _ in range(5):
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = conn
            writer.write(data)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                # Closed before answering (Hypercorn ends keep-alive connections
                # after a while): send it again, as Stripe would.
                writer.close()
                conn = None
                outcomes["resent"] += 1
                continue
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"connection" and b"close" in value.lower():
                    close = True
            payload = await reader.readexactly(length)
            if close:
                writer.close()
                conn = None
            return conn, int(head.split(b" ", 2)[1]), payload
        raise AssertionError("the daemon stopped answering")

    async def sender() -> None:
        conn = None
        try:
            for body in queue:  # shared: each delivery goes out once
                conn, status, payload = await exchange(conn, request(body))
                if status == 200:
                    outcomes["duplicate" if json.loads(payload)["duplicate"] else "new"] += 1
                else:
                    outcomes[f"{status} {payload[:80]!r}"] += 1
        finally:
            if conn is not None:
                conn[1].close()

    await asyncio.gather(*(sender() for _ in range(senders)))
    return outcomes


@pytest.mark.timeout(240)
async def test_storm_of_redelivered_shuffled_events_equals_one_ordered_pass(
    dsn: str, conn: psycopg.Connection[Any], baseline_dsn: str, daemon: DaemonProcess
) -> None:
    events = storm_events(EVENTS)
    assert len(events) == EVENTS
    ids = [e["id"] for e in events]
    assert len(set(ids)) == EVENTS

    started = time.monotonic()
    with psycopg.connect(baseline_dsn, autocommit=True) as base:
        seed_mappings(base)
        await apply_in_order(baseline_dsn, events)
        expected = snapshot(base)
    baseline_seconds = time.monotonic() - started

    seed_mappings(conn)
    bodies = [json.dumps(e).encode() for e in events for _ in range(COPIES)]
    random.Random(SEED + 1).shuffle(bodies)
    started = time.monotonic()
    outcomes = await deliver(daemon.port, bodies, SENDERS)
    storm_seconds = time.monotonic() - started
    async with make_pool(dsn, size=1) as pool:
        await wait_idle(pool, timeout=120)
    drained_seconds = time.monotonic() - started
    print(
        f"\nstorm: {EVENTS} events x {COPIES} = {len(bodies)} deliveries by {SENDERS} senders "
        f"in {storm_seconds:.1f}s ({len(bodies) / storm_seconds:.0f}/s), drained after "
        f"{drained_seconds:.1f}s; in-order baseline {baseline_seconds:.1f}s; {dict(outcomes)}"
    )

    assert outcomes == {"new": EVENTS, "duplicate": EVENTS * (COPIES - 1)}
    rows = conn.execute(
        "SELECT stripe_event_id, count(*) OVER (PARTITION BY stripe_event_id), status, "
        "last_error FROM integration.webhook_events"
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {r[1] for r in rows} == {1}
    not_processed = [r for r in rows if r[2] != "processed"]
    assert not_processed == [], not_processed[:10]
    waited = conn.execute(
        "SELECT count(*) FROM integration.webhook_events WHERE attempts > 1"
    ).fetchone()
    print(f"storm: {waited[0] if waited else 0} events waited for a reference or a race")
    assert waited is not None and waited[0] > 0, "the shuffle never made an event wait"

    actual = snapshot(conn)
    for table, rows_expected in expected.items():
        assert len(actual[table]) == len(rows_expected), table
        diff = [(a, b) for a, b in zip(actual[table], rows_expected, strict=True) if a != b]
        assert diff == [], (table, diff[:5])
    # The story really has all its parts.
    assert {t: len(r) for t, r in expected.items()} == {
        t: len(r) for t, r in actual.items()
    } and all(expected[t] for t in ("subscriptions", "invoices", "payments", "refunds"))
