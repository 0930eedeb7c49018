"""Events and signed webhook delivery, verified with the SDK's own signature check."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import stripe

from stripe_emulator import EmulatorServer
from stripe_emulator.receiver import WebhookReceiver

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

SECRET = "whsec_test_primary"
OLD_SECRET = "whsec_test_old"


def _verified(receiver: WebhookReceiver, count: int, secret: str = SECRET) -> list[stripe.Event]:
    delivered = receiver.wait_for(count)
    assert len(delivered) >= count, f"only {len(delivered)} of {count} webhooks arrived"
    return [stripe.Webhook.construct_event(r.body.decode(), r.signature, secret) for r in delivered]


def _wait(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class _FramingServer(socketserver.ThreadingTCPServer):
    """A webhook receiver that answers in every HTTP/1.1 framing in turn: Content-Length,
    chunked, a body delimited by closing the connection, and a Content-Length response
    after which it silently closes the kept-alive connection (so the next event meets a
    dead connection)."""

    daemon_threads = True
    allow_reuse_address = True
    framings = ("length", "chunked", "close", "length-then-hang-up")

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FramingHandler)
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()


class _FramingHandler(socketserver.StreamRequestHandler):
    server: _FramingServer

    def handle(self) -> None:
        while line := self.rfile.readline():
            assert line.startswith(b"POST /hook HTTP/1.1"), line
            length = 0
            while (header := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = header.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            with self.server.lock:
                self.server.bodies.append(self.rfile.read(length))
                framing = self.server.framings[(len(self.server.bodies) - 1) % 4]
            if framing == "length":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            elif framing == "chunked":
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"1;ext=1\r\n{\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n"
                )
            elif framing == "close":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}")
                return
            else:
                self.wfile.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                return


@pytest.fixture
def framing_server() -> Iterator[_FramingServer]:
    server = _FramingServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_delivery_reads_every_response_framing(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer, framing_server: _FramingServer
) -> None:
    # Deliveries reuse one kept-alive connection: each framing must be read to its end,
    # and a connection the receiver dropped while idle is replaced without a failed
    # attempt (Stripe would not count one either).
    port = framing_server.server_address[1]
    endpoint = emulator.emulator.add_webhook_endpoint(f"http://127.0.0.1:{port}/hook", SECRET)
    ids = [stripe_client.v1.customers.create().id for _ in range(9)]
    assert emulator.emulator.wait_webhooks_idle(10)
    assert [json.loads(b)["data"]["object"]["id"] for b in framing_server.bodies] == ids
    assert endpoint.attempts == endpoint.deliveries == 9


def test_event_recording_and_filters(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    cus = stripe_client.v1.customers.create(
        params={"email": "a@x.io", "metadata": {"a": "1"}}, options={"idempotency_key": "ev-1"}
    )
    stripe_client.v1.customers.update(cus.id, params={"email": "b@x.io"})
    stripe_client.v1.products.create(params={"name": "P"})
    events = stripe_client.v1.events.list()
    assert [e.type for e in events.data] == [
        "product.created",
        "customer.updated",
        "customer.created",
    ]
    created = events.data[2]
    assert created.id.startswith("evt_") and created.object == "event"
    assert created.api_version == emulator.emulator.config.api_version
    assert created.request is not None and created.request.idempotency_key == "ev-1"
    assert str(created.request.id).startswith("req_") and created.pending_webhooks == 0
    assert created.data.object["id"] == cus.id
    updated = events.data[1]
    assert updated.data.previous_attributes is not None
    assert updated.data.previous_attributes.to_dict() == {"email": "a@x.io"}

    assert [e.type for e in stripe_client.v1.events.list(params={"type": "customer.*"}).data] == [
        "customer.updated",
        "customer.created",
    ]
    only = stripe_client.v1.events.list(params={"types": ["product.created", "customer.created"]})
    assert [e.type for e in only.data] == ["product.created", "customer.created"]
    assert stripe_client.v1.events.retrieve(created.id).type == "customer.created"

    emulator.emulator.advance_clock(3600)
    later = stripe_client.v1.customers.create()
    cutoff = created.created + 1800
    recent = stripe_client.v1.events.list(params={"created": {"gte": cutoff}})
    assert [e.data.object["id"] for e in recent.data] == [later.id]
    old = stripe_client.v1.events.list(params={"created": {"lte": cutoff}})
    assert len(old.data) == 3
    page = stripe_client.v1.events.list(params={"limit": 2})
    assert page.has_more and len(page.data) == 2


def test_webhooks_signed_with_each_secret(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer, webhook_receiver: WebhookReceiver
) -> None:
    httpx.post(
        f"{emulator.base_url}/_emulator/webhook_endpoints",
        json={"url": webhook_receiver.url, "secrets": [SECRET, OLD_SECRET]},
    )
    cus = stripe_client.v1.customers.create()
    (event,) = _verified(webhook_receiver, 1, SECRET)
    (again,) = _verified(webhook_receiver, 1, OLD_SECRET)
    assert event.id == again.id and event.type == "customer.created"
    assert event.data.object["id"] == cus.id
    signature = webhook_receiver.requests[0].signature
    assert signature.count("v1=") == 2
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(
            webhook_receiver.requests[0].body.decode(), signature, "whsec_wrong"
        )
    _wait(lambda: stripe_client.v1.events.retrieve(event.id).pending_webhooks == 0)


def test_retry_after_failures_and_delivery_success(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer, webhook_receiver: WebhookReceiver
) -> None:
    emulator.emulator.add_webhook_endpoint(
        webhook_receiver.url, SECRET, backoff_base=0.02, max_attempts=4
    )
    webhook_receiver.fail_next(2)
    cus = stripe_client.v1.customers.create()
    (event,) = _verified(webhook_receiver, 1)
    assert event.data.object["id"] == cus.id
    assert [r.status for r in webhook_receiver.requests] == [500, 500, 200]
    _wait(lambda: stripe_client.v1.events.retrieve(event.id).pending_webhooks == 0)
    ok = stripe_client.v1.events.list(params={"delivery_success": True})
    assert [e.id for e in ok.data] == [event.id]

    webhook_receiver.fail_next(10)
    stripe_client.v1.customers.update(cus.id, params={"name": "never delivered"})
    assert emulator.emulator.wait_webhooks_idle(5)
    failed = stripe_client.v1.events.list(params={"delivery_success": False})
    assert [e.type for e in failed.data] == ["customer.updated"]
    assert failed.data[0].pending_webhooks == 1
    assert len(webhook_receiver.requests) == 3 + 4


def test_delivery_order_duplicates_and_shuffle(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer, webhook_receiver: WebhookReceiver
) -> None:
    emulator.emulator.add_webhook_endpoint(webhook_receiver.url, [SECRET], duplicates=2)
    ids = [stripe_client.v1.customers.create(params={"name": str(i)}).id for i in range(5)]
    events = _verified(webhook_receiver, 10)
    assert [e.data.object["id"] for e in events] == [i for i in ids for _ in range(2)]

    emulator.emulator.reset()
    webhook_receiver.clear()
    emulator.emulator.add_webhook_endpoint(webhook_receiver.url, [SECRET], shuffle_window=0.2)
    ids = [stripe_client.v1.customers.create(params={"name": str(i)}).id for i in range(12)]
    events = _verified(webhook_receiver, 12)
    got = [e.data.object["id"] for e in events]
    assert sorted(got) == sorted(ids) and got != ids


def test_end_to_end_story(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer, webhook_receiver: WebhookReceiver
) -> None:
    emulator.emulator.add_webhook_endpoint(webhook_receiver.url, [SECRET])
    cus = stripe_client.v1.customers.create(params={"email": "story@x.io"})
    product = stripe_client.v1.products.create(params={"name": "Story"})
    price = stripe_client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 1200,
            "recurring": {"interval": "year"},
        }
    )
    sub = stripe_client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": price.id}]}
    )
    invoice = stripe_client.v1.invoices.retrieve(
        str(sub.latest_invoice), params={"expand": ["payments"]}
    )
    assert invoice.status == "paid"
    assert invoice.payments is not None
    pi = stripe_client.v1.payment_intents.retrieve(
        str(invoice.payments.data[0].payment.payment_intent)
    )
    assert pi.status == "succeeded"
    refund = stripe_client.v1.refunds.create(params={"payment_intent": pi.id})
    assert refund.amount == 1200

    expected = [
        "customer.created",
        "product.created",
        "price.created",
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.succeeded",
        "invoice_payment.paid",
        "invoice.paid",
        "invoice.payment_succeeded",
        "charge.refunded",
        "refund.created",
    ]
    events = _verified(webhook_receiver, len(expected))
    assert [e.type for e in events] == expected
    by_type = {e.type: e for e in events}
    assert by_type["invoice.paid"].data.object["subscription"] == sub.id
    assert by_type["charge.refunded"].data.object["refunded"] is True
    assert by_type["charge.refunded"].data.previous_attributes["refunded"] is False  # type: ignore[index]
    assert by_type["customer.subscription.created"].data.object["latest_invoice"] == invoice.id
    stored = [json.loads(r.body)["id"] for r in webhook_receiver.requests]
    listed = [e.id for e in stripe_client.v1.events.list(params={"limit": 100}).data]
    assert stored == listed[::-1]
