"""Subscription changes initiated in MC (#14.5), end to end: an outbox row →
the executor → the official SDK over HTTP → the emulator → its signed
customer.subscription.* webhooks → the endpoint and the webhook worker →
billing.subscriptions. The outbox never writes billing.subscriptions itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from test_outbox import catalog, enqueue

from stripe_emulator.server import EmulatorServer
from stripe_sync.db import make_pool
from stripe_sync.webhooks.execute import WebhookContext

from pipeline import Pipeline, eventually, outbox_pipeline, outbox_rows
from webhook_helpers import SECRET, running_worker, serve_endpoint

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[tuple[Any, ...]]


Sent = list[tuple[str, str, dict[str, Any]]]


@pytest.fixture
def executed(emulator: EmulatorServer) -> Iterator[Sent]:
    """(method, path template, params) of each request the emulator executed; not
    replays of a saved answer. The spec check still sees every one."""
    emu = emulator.emulator
    seen: Sent = []
    spec = emu.observer

    def observe(method: str, template: str, params: dict[str, Any], body: bytes) -> None:
        seen.append((method, template, params))
        if spec is not None:
            spec(method, template, params, body)

    emu.observer = observe
    yield seen
    emu.observer = spec


def writes(sent: Sent) -> list[tuple[str, str]]:
    return [(m, t) for m, t, _ in sent if m != "GET"]


@dataclass
class Loop:
    pipeline: Pipeline
    subscription_id: int  # billing.subscriptions id
    stripe_id: str


def sub_row(conn: Conn, subscription_id: int) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT s.status, s.cancel_at_period_end, s.canceled_at IS NOT NULL, "
        "s.ended_at IS NOT NULL, m.sync_status FROM billing.subscriptions s "
        "JOIN stripe.subscription_mappings m ON m.subscription_id = s.id WHERE s.id = %s",
        [subscription_id],
    ).fetchone()
    assert row is not None
    return row


def items(conn: Conn, subscription_id: int) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT price_id, quantity FROM billing.subscription_items WHERE subscription_id = %s",
        [subscription_id],
    ).fetchall()


def row_of(dsn: str, row_id: int) -> tuple[Any, ...] | None:
    """The outbox row once it settled: (id, action, status, attempts, error or note)."""
    row = next(r for r in outbox_rows(dsn) if r[0] == row_id)
    return row if row[2] in ("done", "failed") else None


async def settle(dsn: str, conn: Conn, action: str, payload: str) -> tuple[Any, ...]:
    row_id = enqueue(conn, action, payload)
    row: tuple[Any, ...] = await eventually(lambda: row_of(dsn, row_id), timeout=20)
    return row


@asynccontextmanager
async def subscribed(dsn: str, conn: Conn, emulator: EmulatorServer) -> AsyncIterator[Loop]:
    """The outbox and the webhooks running, and a subscription (price 1, quantity 2)
    that Stripe made and the webhooks brought into MC."""
    catalog(conn)
    emu = emulator.emulator
    async with (
        make_pool(dsn, size=4) as pool,
        serve_endpoint(pool) as server,
        outbox_pipeline(dsn, emulator.base_url) as pipeline,
        # With a client, as the daemon's: same-second ties ask Stripe.
        running_worker(pool, WebhookContext(pool, api=pipeline.api, reference_backoff=0.01)),
    ):
        emu.add_webhook_endpoint(server.url, [SECRET])
        for action, payload in (
            ("create_stripe_customer", '{"account_id": 1}'),
            ("create_stripe_product", '{"product_id": 1}'),
            ("create_stripe_price", '{"price_id": 1}'),
        ):
            enqueue(conn, action, payload)
        [customer] = await eventually(lambda: emu.objects("customers"))
        [price] = await eventually(lambda: emu.objects("prices"))
        sub = await pipeline.api.client.v1.subscriptions.create_async(
            params={"customer": customer["id"], "items": [{"price": price["id"], "quantity": 2}]}
        )
        found = await eventually(
            lambda: conn.execute(
                "SELECT subscription_id FROM stripe.subscription_mappings "
                "WHERE stripe_subscription_id = %s",
                [sub.id],
            ).fetchone(),
            timeout=20,
        )
        loop = Loop(pipeline, found[0], sub.id)
        await eventually(lambda: items(conn, loop.subscription_id) == [(1, 2)])
        # No clock steps between changes: same-second events of one status are
        # ordered by asking Stripe (webhooks/common.py), which these tests rely on.
        yield loop


async def webhooks_applied(conn: Conn, emulator: EmulatorServer) -> None:
    # Polled, not blocked on: the endpoint that takes the deliveries runs in this loop.
    await eventually(lambda: emulator.emulator.wait_webhooks_idle(0), timeout=20)
    await eventually(
        lambda: (
            not conn.execute(
                # ignored: an event type not synced (invoiceitem.created), with its note
                "SELECT 1 FROM integration.webhook_events "
                "WHERE status NOT IN ('processed', 'ignored')"
            ).fetchone()
        ),
        timeout=20,
    )


async def test_cancel_at_period_end_then_resume(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    emu = emulator.emulator
    async with subscribed(dsn, conn, emulator) as loop:
        payload = f'{{"subscription_id": {loop.subscription_id}, "at_period_end": true}}'
        row = await settle(dsn, conn, "cancel_stripe_subscription", payload)
        assert row[2:] == (
            "done",
            1,
            f"{loop.stripe_id}: Stripe will cancel it at the end of its period",
        )
        await eventually(lambda: sub_row(conn, loop.subscription_id)[1])
        assert sub_row(conn, loop.subscription_id) == ("active", True, True, False, "synced")
        assert emu.objects("subscriptions")[0]["cancel_at_period_end"] is True

        row = await settle(
            dsn,
            conn,
            "resume_stripe_subscription",
            f'{{"subscription_id": {loop.subscription_id}}}',
        )
        assert row[2:4] == ("done", 1)
        await eventually(lambda: not sub_row(conn, loop.subscription_id)[1])
        assert sub_row(conn, loop.subscription_id) == ("active", False, False, False, "synced")
        await webhooks_applied(conn, emulator)
    [sub] = emu.objects("subscriptions")
    assert (sub["status"], sub["cancel_at_period_end"], sub["cancel_at"]) == ("active", False, None)


async def test_cancel_now(dsn: str, conn: Conn, emulator: EmulatorServer) -> None:
    async with subscribed(dsn, conn, emulator) as loop:
        payload = f'{{"subscription_id": {loop.subscription_id}, "at_period_end": false}}'
        row = await settle(dsn, conn, "cancel_stripe_subscription", payload)
        assert row[2:] == ("done", 1, f"{loop.stripe_id}: canceled in Stripe")
        await eventually(lambda: sub_row(conn, loop.subscription_id)[0] == "canceled")
        assert sub_row(conn, loop.subscription_id) == ("canceled", False, True, True, "deleted")
        await webhooks_applied(conn, emulator)
    assert emulator.emulator.objects("subscriptions")[0]["status"] == "canceled"


async def test_update_price_and_quantity(
    dsn: str, conn: Conn, emulator: EmulatorServer, executed: Sent
) -> None:
    emu = emulator.emulator
    async with subscribed(dsn, conn, emulator) as loop:
        conn.execute(
            "INSERT INTO billing.prices (id, product_id, currency, unit_amount, "
            "recurring_interval) VALUES (2, 1, 'eur', 3000, 'month')"
        )
        assert (await settle(dsn, conn, "create_stripe_price", '{"price_id": 2}'))[2] == "done"
        payload = (
            f'{{"subscription_id": {loop.subscription_id}, "price_id": 2, "quantity": 3, '
            '"proration_behavior": "none"}'
        )
        row = await settle(dsn, conn, "update_stripe_subscription", payload)
        assert row[2:4] == ("done", 1), row
        await eventually(lambda: items(conn, loop.subscription_id) == [(2, 3)])

        # Quantity alone: the item already on price 2.
        payload = f'{{"subscription_id": {loop.subscription_id}, "quantity": 1}}'
        row = await settle(dsn, conn, "update_stripe_subscription", payload)
        assert row[2:4] == ("done", 1), row
        await eventually(lambda: items(conn, loop.subscription_id) == [(2, 1)])
        await webhooks_applied(conn, emulator)
    sent = [p for m, t, p in executed if (m, t) == ("POST", "/v1/subscriptions/{id}")]
    assert [p["proration_behavior"] for p in sent] == ["none", "create_prorations"]
    [item] = emu.objects("subscriptions")[0]["items"]["data"]
    # The same Stripe item throughout: its price changed, it was not replaced.
    assert [p["items"][0]["id"] for p in sent] == [item["id"], item["id"]]
    assert sub_row(conn, loop.subscription_id)[0] == "active"


async def test_always_invoice_bills_the_proration_at_once(
    dsn: str, conn: Conn, emulator: EmulatorServer
) -> None:
    """A quantity change ten days into the period with always_invoice: Stripe
    invoices the prorations at once, and the webhooks bring that invoice (and
    its payment) into billing.invoices beside the first one."""
    emu = emulator.emulator
    async with subscribed(dsn, conn, emulator) as loop:
        emu.advance_clock(10 * 86400)
        payload = (
            f'{{"subscription_id": {loop.subscription_id}, "quantity": 3, '
            '"proration_behavior": "always_invoice"}'
        )
        row = await settle(dsn, conn, "update_stripe_subscription", payload)
        assert row[2:4] == ("done", 1), row
        [proration] = [
            i for i in emu.objects("invoices") if i["billing_reason"] != "subscription_create"
        ]
        assert proration["billing_reason"] == "subscription_update"
        unused, remaining = proration["lines"]["data"]
        # The rest of the period (about two thirds): 2 units of 15.00 credited, 3 charged.
        [item] = emu.objects("subscriptions")[0]["items"]["data"]
        start, end = item["current_period_start"], item["current_period_end"]
        left = (end - remaining["period"]["start"]) / (end - start)
        assert 0.6 < left < 0.7
        assert (unused["amount"], remaining["amount"]) == (
            -round(2 * 1500 * left),
            round(3 * 1500 * left),
        )
        total = proration["total"]
        assert total == unused["amount"] + remaining["amount"] > 0
        query = (
            "SELECT i.account_id, i.subscription_id, i.status, i.total, i.amount_paid, "
            "p.amount_received FROM billing.invoices i "
            "JOIN stripe.invoice_mappings m ON m.invoice_id = i.id "
            "LEFT JOIN billing.payments p ON p.invoice_id = i.id "
            "WHERE m.stripe_invoice_id = %s AND i.status = 'paid' AND p.amount_received > 0"
        )
        found = await eventually(
            lambda: conn.execute(query, [proration["id"]]).fetchone(), timeout=20
        )
        assert found == (1, loop.subscription_id, "paid", total, total, total)
        await eventually(lambda: items(conn, loop.subscription_id) == [(1, 3)])
        await webhooks_applied(conn, emulator)
    invoices = conn.execute(
        "SELECT count(*) FROM billing.invoices WHERE subscription_id = %s",
        [loop.subscription_id],
    ).fetchone()
    assert invoices == (2,)


@pytest.mark.parametrize(
    "action,payload,error",
    [
        (
            "cancel_stripe_subscription",
            '{"subscription_id": 999, "at_period_end": true}',
            "billing.subscriptions id=999 (payload.subscription_id) does not exist",
        ),
        (
            "cancel_stripe_subscription",
            '{"subscription_id": {sub}}',
            'payload.at_period_end: missing (expected {"at_period_end": …})',
        ),
        (
            "resume_stripe_subscription",
            '{"subscription_id": {sub}, "at_period_end": false}',
            "payload: unknown key at_period_end (expected subscription_id)",
        ),
        (
            "update_stripe_subscription",
            '{"subscription_id": {sub}, "price_id": 3}',
            "billing.prices id=3 (payload.price_id) is not synced to Stripe",
        ),
        (
            "update_stripe_subscription",
            '{"subscription_id": {sub}, "price_id": 404}',
            "billing.prices id=404 (payload.price_id) does not exist",
        ),
        (
            "update_stripe_subscription",
            '{"subscription_id": {sub}}',
            "payload: names neither price_id nor quantity; nothing to change",
        ),
        (
            "update_stripe_subscription",
            '{"subscription_id": {sub}, "quantity": 2, "proration_behavior": "later"}',
            "payload.proration_behavior: invalid enum value 'later'",
        ),
        (
            "update_stripe_subscription",
            '{"subscription_id": {sub}, "quantity": -1}',
            "payload.quantity: expected int >= 0",
        ),
    ],
)
async def test_bad_payloads_fail_at_once_without_a_change(
    dsn: str,
    conn: Conn,
    emulator: EmulatorServer,
    executed: Sent,
    action: str,
    payload: str,
    error: str,
) -> None:
    async with subscribed(dsn, conn, emulator) as loop:
        # A price MC has and Stripe has not.
        conn.execute(
            "INSERT INTO billing.prices (id, product_id, currency, unit_amount, "
            "recurring_interval) VALUES (3, 1, 'eur', 900, 'month')"
        )
        before = len(executed)
        payload = payload.replace("{sub}", str(loop.subscription_id))
        row = await settle(dsn, conn, action, payload)
    assert row[2:4] == ("failed", 1), row
    assert error in row[4], row
    assert writes(executed[before:]) == []


async def test_an_ended_subscription_fails_at_once(
    dsn: str, conn: Conn, emulator: EmulatorServer, executed: Sent
) -> None:
    async with subscribed(dsn, conn, emulator) as loop:
        await loop.pipeline.api.client.v1.subscriptions.cancel_async(loop.stripe_id)
        await eventually(lambda: sub_row(conn, loop.subscription_id)[0] == "canceled")
        before = len(executed)
        for action, extra in (
            ("cancel_stripe_subscription", ', "at_period_end": false'),
            ("resume_stripe_subscription", ""),
            ("update_stripe_subscription", ', "quantity": 5'),
        ):
            payload = f'{{"subscription_id": {loop.subscription_id}{extra}}}'
            row = await settle(dsn, conn, action, payload)
            assert row[2:] == (
                "failed",
                1,
                f"billing.subscriptions id={loop.subscription_id} (payload.subscription_id) "
                f"is canceled ({loop.stripe_id}); Stripe does not change an ended subscription",
            )
        # Nothing written (the webhooks may read: a same-second tie asks Stripe).
        assert writes(executed[before:]) == []


async def test_a_subscription_not_from_stripe_fails_at_once(
    dsn: str, conn: Conn, emulator: EmulatorServer, executed: Sent
) -> None:
    catalog(conn)
    conn.execute(
        "INSERT INTO billing.subscriptions (id, account_id, status) VALUES (7, 1, 'active')"
    )
    async with outbox_pipeline(dsn, emulator.base_url):
        row = await settle(dsn, conn, "resume_stripe_subscription", '{"subscription_id": 7}')
    assert row[2:4] == ("failed", 1)
    assert "id=7 (payload.subscription_id) has no row in stripe.subscription_mappings" in row[4]
    assert executed == []


@pytest.mark.parametrize(
    "action,extra,endpoint,event,attempts",
    [
        # The retry looks first and finds it canceled: no second DELETE at all.
        (
            "cancel_stripe_subscription",
            '"at_period_end": false',
            "DELETE /v1/subscriptions/*",
            "customer.subscription.deleted",
            2,
        ),
        (
            "cancel_stripe_subscription",
            '"at_period_end": true',
            "POST /v1/subscriptions/*",
            "customer.subscription.updated",
            3,
        ),
        (
            "update_stripe_subscription",
            '"quantity": 5',
            "POST /v1/subscriptions/*",
            "customer.subscription.updated",
            3,
        ),
    ],
)
async def test_a_lost_answer_never_applies_a_change_twice(
    dsn: str,
    conn: Conn,
    emulator: EmulatorServer,
    executed: Sent,
    action: str,
    extra: str,
    endpoint: str,
    event: str,
    attempts: int,
) -> None:
    """Stripe applies the change and the answer is lost, twice: the retries carry
    the row's key and get the first answer replayed; one change, one event."""
    emu = emulator.emulator
    method = endpoint.split()[0]
    async with subscribed(dsn, conn, emulator) as loop:
        events = len(emu.events_of_type(event))
        before = len(executed)
        emu.add_fault("applied_response_lost", endpoint, count=2)
        payload = f'{{"subscription_id": {loop.subscription_id}, {extra}}}'
        row = await settle(dsn, conn, action, payload)
        assert row[2:4] == ("done", attempts), row
        await webhooks_applied(conn, emulator)
        final = sub_row(conn, loop.subscription_id)
    assert len(emu.events_of_type(event)) == events + 1
    assert writes(executed[before:]) == [(method, "/v1/subscriptions/{id}")]
    assert emu.stats()["counts"][f"{method} /v1/subscriptions/{{id}}"] == attempts - (
        method == "DELETE"
    )
    if method == "DELETE":
        assert final == ("canceled", False, True, True, "deleted")
        assert row[4] == f"{loop.stripe_id}: already canceled in Stripe"
    elif "quantity" in extra:
        assert items(conn, loop.subscription_id) == [(1, 5)]
    else:
        assert final[:2] == ("active", True)
