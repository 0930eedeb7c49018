"""Test helpers for the webhook half: signing like Stripe, serving the endpoint
over real HTTP, the sample events, and running the processor until idle."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool
from pytest_postgresql.janitor import DatabaseJanitor

from stripe_sync.queue.retry import Retry
from stripe_sync.queue.store import PostgresStore
from stripe_sync.queue.worker import Worker
from stripe_sync.runtime.http import bind_socket, create_app, serve_http
from stripe_sync.webhooks.endpoint import WebhookEndpoint
from stripe_sync.webhooks.execute import WebhookContext, make_handler, make_preload, object_of
from stripe_sync.webhooks.ingest import Ingestor
from stripe_sync.webhooks.queue import WEBHOOKS

SECRET = "whsec_test_secret"
EVENTS_DIR = Path(__file__).parent / "data" / "events"


def sign(payload: str | bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    """A Stripe-Signature header: t=<unix>,v1=hex(HMAC-SHA256(secret, "<t>.<payload>"))."""
    t = int(time.time()) if timestamp is None else timestamp
    body = payload if isinstance(payload, bytes) else payload.encode()
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def sample_events() -> Iterator[tuple[str, bytes]]:
    """(relative path, event JSON) for every sample file; array files hold one event each."""
    for path in sorted(EVENTS_DIR.rglob("*.json")):
        data = json.loads(path.read_bytes())
        for event in data if isinstance(data, list) else [data]:
            yield str(path.relative_to(EVENTS_DIR)), json.dumps(event).encode()


def event(
    event_type: str,
    obj: dict[str, Any],
    *,
    created: int = 1_700_000_000,
    event_id: str | None = None,
    livemode: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A minimal Stripe event around ``obj``."""
    return {
        "id": event_id
        or f"evt_{hashlib.sha1(json.dumps([event_type, obj, created]).encode()).hexdigest()[:20]}",
        "object": "event",
        "type": event_type,
        "created": created,
        "livemode": livemode,
        "api_version": "2024-06-20",
        "request": None,
        "pending_webhooks": 1,
        "data": {"object": obj},
        **extra,
    }


@dataclass
class Server:
    url: str
    client: httpx.AsyncClient
    endpoint: WebhookEndpoint

    async def post(
        self,
        body: bytes | str,
        *,
        secret: str = SECRET,
        headers: dict[str, str] | None = None,
        signed: bool = True,
    ) -> httpx.Response:
        raw = body if isinstance(body, bytes) else body.encode()
        hdrs = {"content-type": "application/json", **(headers or {})}
        if signed:
            hdrs.setdefault("stripe-signature", sign(raw, secret))
        return await self.client.post(self.url, content=raw, headers=hdrs)

    async def send(self, evt: dict[str, Any]) -> httpx.Response:
        return await self.post(json.dumps(evt))


@asynccontextmanager
async def serve_endpoint(
    pool: AsyncConnectionPool,
    secrets: list[str] | None = None,
    *,
    ingestor: Ingestor | None = None,
    **kwargs: Any,
) -> AsyncIterator[Server]:
    """The endpoint in the daemon's app, served by Hypercorn on a free port of 127.0.0.1."""
    ingestor = ingestor or Ingestor(pool)
    endpoint = WebhookEndpoint(ingestor, secrets or [SECRET], **kwargs)

    async def ready() -> dict[str, bool]:
        return {"ok": True}

    app = create_app(endpoint, ready)
    sock = bind_socket("127.0.0.1:0")
    stop = anyio.Event()
    port = sock.getsockname()[1]
    try:
        async with anyio.create_task_group() as tg, ingestor.in_background():
            tg.start_soon(serve_http, app, sock, stop)
            async with httpx.AsyncClient(timeout=10) as client:
                url = f"http://127.0.0.1:{port}/webhooks/stripe"
                yield Server(url, client, endpoint)
            stop.set()
    finally:
        with contextlib.suppress(OSError):  # Hypercorn closes the fd itself
            sock.close()


@asynccontextmanager
async def running_worker(
    pool: AsyncConnectionPool,
    ctx: WebhookContext | None = None,
    *,
    # Room for an event to wait for the one that creates its reference (0.01 s
    # doubling to 0.2 s: ~1.5 s in all) even on a loaded machine; tests of
    # giving up pass their own limit.
    max_attempts: int = 10,
    base_seconds: float = 0.01,
) -> AsyncIterator[Worker]:
    ctx = ctx or WebhookContext(pool, reference_backoff=0.01)
    worker = Worker(
        PostgresStore(WEBHOOKS, pool),
        make_handler(ctx),
        preload=make_preload(ctx),  # as the daemon runs it
        serial=object_of,
        worker_id="webhook-test",
        sweep_interval=0.05,
        concurrency=8,
        retry=Retry(max_attempts=max_attempts, base_seconds=base_seconds, max_seconds=0.2),
        shutdown_timeout=5,
    )
    async with worker.in_background():
        yield worker


async def wait_idle(pool: AsyncConnectionPool, timeout: float = 10.0) -> None:
    """Until no webhook row is pending or processing."""
    with anyio.fail_after(timeout):
        while True:
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM integration.webhook_events "
                    "WHERE status IN ('pending', 'processing')"
                )
                row = await cur.fetchone()
            if row is not None and row[0] == 0:
                return
            await anyio.sleep(0.02)


def statuses(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, str | None]]:
    return {
        r[0]: (r[1], r[2])
        for r in conn.execute(
            # the error, else the note of an event that was applied or ignored
            "SELECT stripe_event_id, status, coalesce(last_error, note) "
            "FROM integration.webhook_events"
        )
    }


# The tables the webhooks write, in a form that ignores ids and timestamps of
# our own making, for comparing two runs.
SNAPSHOT_QUERIES = {
    "customers": "SELECT account_id, stripe_customer_id, sync_status, last_event_id, "
    "default_payment_method FROM stripe.customer_mappings ORDER BY 1",
    "products": "SELECT product_id, stripe_product_id, sync_status, last_event_id "
    "FROM stripe.product_mappings ORDER BY 1",
    "prices": "SELECT price_id, stripe_price_id, sync_status, last_event_id "
    "FROM stripe.price_mappings ORDER BY 1",
    "subscriptions": "SELECT m.stripe_subscription_id, m.sync_status, m.last_event_id, "
    "s.account_id, s.status, s.current_period_start, s.current_period_end, "
    "s.cancel_at_period_end, s.canceled_at, s.ended_at, s.trial_start, "
    "s.trial_end, s.paused, "
    "(SELECT array_agg(array[i.price_id, i.quantity] ORDER BY i.price_id) "
    " FROM billing.subscription_items i WHERE i.subscription_id = s.id) "
    "FROM stripe.subscription_mappings m "
    "JOIN billing.subscriptions s ON s.id = m.subscription_id ORDER BY 1",
    "invoices": "SELECT m.stripe_invoice_id, m.sync_status, m.last_event_id, i.account_id, "
    "sm.stripe_subscription_id, i.status, i.number, i.currency, i.amount_due, "
    "i.amount_paid, i.amount_remaining, i.total, i.period_start, i.period_end, "
    "i.due_date, i.paid_at "
    "FROM stripe.invoice_mappings m JOIN billing.invoices i ON i.id = m.invoice_id "
    "LEFT JOIN stripe.subscription_mappings sm ON sm.subscription_id = i.subscription_id "
    "ORDER BY 1",
    "payments": "SELECT m.stripe_payment_intent_id, m.stripe_charge_id, m.last_event_id, "
    "m.charge_amount_refunded, p.account_id, im.stripe_invoice_id, p.status, "
    "p.currency, p.amount, p.amount_received, p.amount_refunded, p.refund_status, "
    "p.failure_message "
    "FROM stripe.payment_mappings m JOIN billing.payments p ON p.id = m.payment_id "
    "LEFT JOIN stripe.invoice_mappings im ON im.invoice_id = p.invoice_id ORDER BY 1",
    "refunds": "SELECT r.stripe_refund_id, m.stripe_payment_intent_id, r.amount, r.status, "
    "r.last_event_id FROM stripe.payment_refunds r "
    "JOIN stripe.payment_mappings m ON m.payment_id = r.payment_id ORDER BY 1",
    "payment_methods": "SELECT m.stripe_payment_method_id, m.sync_status, m.last_event_id, "
    "p.account_id, p.type, p.brand, p.last4, p.exp_month, p.exp_year, p.is_default "
    "FROM stripe.payment_method_mappings m "
    "JOIN billing.payment_methods p ON p.id = m.payment_method_id ORDER BY 1",
    "credit_notes": "SELECT m.stripe_credit_note_id, m.sync_status, m.last_event_id, "
    "im.stripe_invoice_id, c.status, c.amount, c.currency, c.reason, c.memo "
    "FROM stripe.credit_note_mappings m JOIN billing.credit_notes c ON c.id = m.credit_note_id "
    "JOIN stripe.invoice_mappings im ON im.invoice_id = c.invoice_id ORDER BY 1",
    "disputes": "SELECT m.stripe_dispute_id, m.sync_status, m.last_event_id, "
    "pm.stripe_payment_intent_id, d.status, d.reason, d.amount, d.currency, "
    "d.evidence_due_by, d.closed_at "
    "FROM stripe.dispute_mappings m JOIN billing.disputes d ON d.id = m.dispute_id "
    "JOIN stripe.payment_mappings pm ON pm.payment_id = d.payment_id ORDER BY 1",
}


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {name: conn.execute(q).fetchall() for name, q in SNAPSHOT_QUERIES.items()}


def add_account(
    conn: psycopg.Connection[Any],
    stripe_id: str | None,
    *,
    status: str = "synced",
    email: str | None = None,
) -> int:
    """An MC account with a customer mapping (pending without a Stripe id when None)."""
    row = conn.execute(
        "INSERT INTO billing.accounts (email) VALUES (%s) RETURNING id",
        [email or f"{stripe_id or 'pending'}@example.com"],
    ).fetchone()
    assert row is not None
    conn.execute(
        "INSERT INTO stripe.customer_mappings (account_id, stripe_customer_id, sync_status) "
        "VALUES (%s, %s, %s)",
        [row[0], stripe_id, status if stripe_id else "pending"],
    )
    return int(row[0])


def add_product(conn: psycopg.Connection[Any], stripe_id: str | None) -> int:
    row = conn.execute(
        "INSERT INTO billing.products (name) VALUES (%s) RETURNING id", [f"product {stripe_id}"]
    ).fetchone()
    assert row is not None
    conn.execute(
        "INSERT INTO stripe.product_mappings (product_id, stripe_product_id, sync_status) "
        "VALUES (%s, %s, %s)",
        [row[0], stripe_id, "synced" if stripe_id else "pending"],
    )
    return int(row[0])


def add_price(
    conn: psycopg.Connection[Any],
    stripe_id: str | None,
    product_id: int | None = None,
    amount: int = 1000,
) -> int:
    if product_id is None:
        product_id = add_product(conn, None)
    row = conn.execute(
        "INSERT INTO billing.prices (product_id, currency, unit_amount, "
        "recurring_interval) VALUES (%s, 'usd', %s, 'month') RETURNING id",
        [product_id, amount],
    ).fetchone()
    assert row is not None
    conn.execute(
        "INSERT INTO stripe.price_mappings (price_id, stripe_price_id, sync_status) "
        "VALUES (%s, %s, %s)",
        [row[0], stripe_id, "synced" if stripe_id else "pending"],
    )
    return int(row[0])


async def store(pool: AsyncConnectionPool, *events: dict[str, Any]) -> None:
    """Store events as the endpoint would (without HTTP)."""
    import msgspec

    from stripe_sync.webhooks.events import Envelope

    ingestor = Ingestor(pool)
    for evt in events:
        raw = json.dumps(evt).encode()
        await ingestor.store(raw, msgspec.json.decode(raw, type=Envelope))


_fresh_names = itertools.count()


@contextlib.contextmanager
def fresh_database(
    server: dict[str, Any], template: str | None = None, *, prefix: str = "stripe_sync_x"
) -> Iterator[str]:
    """A database of its own on the test server (a clone of ``template`` when given), for
    a test that needs a second database next to ``dsn``, or one shared by a module."""
    name = f"{prefix}{os.getpid()}_{next(_fresh_names)}"
    janitor = DatabaseJanitor(
        user=server.get("user", "postgres"),
        host=server.get("host", "127.0.0.1"),
        port=server.get("port", 5432),
        password=server.get("password"),
        dbname=name,
        template_dbname=template,
    )
    janitor.drop()
    janitor.init()
    try:
        yield make_conninfo(**{**server, "dbname": name})
    finally:
        janitor.drop()
