"""/v1/webhook_endpoints through the official SDK: Stripe's shapes (the secret in the
create answer only), and delivery to each enabled endpoint that enabled the event's
type, signed with its own secret and carrying its own api_version."""

from __future__ import annotations

import json
import socket

import pytest
import stripe

from stripe_emulator import EmulatorServer
from stripe_emulator.receiver import WebhookReceiver
from stripe_emulator.webhook_endpoints import disable

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def test_create_retrieve_update_list_delete(stripe_client: stripe.StripeClient) -> None:
    endpoints = stripe_client.v1.webhook_endpoints
    created = endpoints.create(
        params={
            "url": "https://example.com/webhooks/stripe",
            "enabled_events": ["customer.created", "invoice.paid"],
            "api_version": "2024-06-20",
            "metadata": {"mc_source": "billing/1"},
        }
    )
    assert created.id.startswith("we_") and created.object == "webhook_endpoint"
    assert created.secret is not None and created.secret.startswith("whsec_")
    assert (created.status, created.api_version) == ("enabled", "2024-06-20")
    fetched = endpoints.retrieve(created.id)
    assert "secret" not in fetched  # only the create answer shows it
    assert fetched.enabled_events == ["customer.created", "invoice.paid"]

    updated = endpoints.update(
        created.id,
        params={"url": "https://example.com/v2", "enabled_events": ["*"], "disabled": True},
    )
    assert (updated.url, updated.enabled_events, updated.status) == (
        "https://example.com/v2",
        ["*"],
        "disabled",
    )
    assert updated.metadata.to_dict() == {"mc_source": "billing/1"}
    other = endpoints.create(params={"url": "https://example.com/b", "enabled_events": ["*"]})
    assert other.api_version is None  # not pinned: the account's
    assert [e.id for e in endpoints.list().data] == [other.id, created.id]

    assert endpoints.delete(created.id).deleted is True
    with pytest.raises(stripe.InvalidRequestError, match="No such webhook_endpoint"):
        endpoints.retrieve(created.id)
    assert [e.id for e in endpoints.list().data] == [other.id]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"url": "https://example.com/a"}, "enabled_events"),
        ({"enabled_events": ["*"]}, "url"),
        ({"url": "example.com", "enabled_events": ["*"]}, "url"),
        ({"url": "https://example.com/a", "enabled_events": ["Customer Created"]}, None),
        ({"url": "https://e.com", "enabled_events": ["*"], "api_version": "latest"}, None),
    ],
)
def test_bad_input_names_the_param(
    stripe_client: stripe.StripeClient, params: dict[str, object], param: str | None
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        stripe_client.v1.webhook_endpoints.create(params=params)  # type: ignore[arg-type]
    if param is not None:
        assert raised.value.param == param


def test_delivery_per_endpoint(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer, webhook_receiver: WebhookReceiver
) -> None:
    endpoints = stripe_client.v1.webhook_endpoints
    pinned = endpoints.create(
        params={
            "url": webhook_receiver.url,
            "enabled_events": ["customer.created"],
            "api_version": "2026-09-30.endive",
        }
    )
    everything = endpoints.create(params={"url": webhook_receiver.url, "enabled_events": ["*"]})
    products = endpoints.create(
        params={"url": webhook_receiver.url, "enabled_events": ["product.created"]}
    )
    off = endpoints.create(params={"url": webhook_receiver.url, "enabled_events": ["*"]})
    endpoints.update(off.id, params={"disabled": True})
    disabled_by_stripe = endpoints.create(
        params={"url": webhook_receiver.url, "enabled_events": ["*"]}
    )
    disable(emulator.emulator, disabled_by_stripe.id)
    assert endpoints.retrieve(disabled_by_stripe.id).status == "disabled"

    stripe_client.v1.customers.create(params={"email": "a@example.com"})
    assert emulator.emulator.wait_webhooks_idle(10)
    received = webhook_receiver.delivered()
    assert len(received) == 2  # the pinned and the '*' endpoint; not products, not disabled
    by_secret: dict[str, stripe.Event] = {}
    for r in received:
        for endpoint in (pinned, everything, products, off, disabled_by_stripe):
            assert endpoint.secret is not None
            try:
                event = stripe.Webhook.construct_event(
                    r.body.decode(), r.signature, endpoint.secret
                )
            except stripe.SignatureVerificationError:
                continue
            by_secret[endpoint.id] = event
    assert set(by_secret) == {pinned.id, everything.id}
    assert by_secret[pinned.id].api_version == "2026-09-30.endive"
    assert by_secret[everything.id].api_version == emulator.emulator.config.api_version
    assert by_secret[pinned.id].id == by_secret[everything.id].id
    bodies = [json.loads(r.body) for r in received]
    assert bodies[0]["data"] == bodies[1]["data"]  # the same shape, whatever the version
    (event,) = emulator.emulator.events_of_type("customer.created")
    assert event["pending_webhooks"] == 0


def test_a_deleted_endpoint_leaves_no_event_pending(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    """Deleting an endpoint drops its retries, as on Stripe: its events no longer count as
    waiting (pending_webhooks), so catch-up's delivery_success=false does not list them."""
    with socket.socket() as s:  # a port nobody listens on: every delivery fails
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    made = stripe_client.v1.webhook_endpoints.create(params={"url": dead, "enabled_events": ["*"]})
    stripe_client.v1.customers.create(params={"email": "a@example.com"})
    (event,) = emulator.emulator.events_of_type("customer.created")
    assert event["pending_webhooks"] == 1
    stripe_client.v1.webhook_endpoints.delete(made.id)
    assert emulator.emulator.wait_webhooks_idle(10)
    (event,) = emulator.emulator.events_of_type("customer.created")
    assert event["pending_webhooks"] == 0
    assert stripe_client.v1.events.list(params={"delivery_success": False}).data == []
