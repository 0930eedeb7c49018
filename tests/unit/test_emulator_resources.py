"""Resource behaviour of the Stripe emulator, driven only through the official SDK."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import stripe
from stripe.params import InvoicePaymentListParamsPayment

from stripe_emulator import EmulatorServer

# stripe-sync-engine's recorded events (tests/data/events/LICENSES says whose).
SAMPLES = Path(__file__).resolve().parent.parent / "data/events/stripe-sync-engine"

# The SDK hands httpx a pre-encoded form body; httpx prefers content= but works fine.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _client(server: EmulatorServer, key: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        key,
        base_addresses={"api": server.base_url},
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
        max_network_retries=0,
    )


def _recurring_price(client: stripe.StripeClient, amount: int = 1500) -> stripe.Price:
    product = client.v1.products.create(params={"name": "Gold"})
    return client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": amount,
            "recurring": {"interval": "month"},
        }
    )


def test_customer_crud(stripe_client: stripe.StripeClient, emulator: EmulatorServer) -> None:
    cus = stripe_client.v1.customers.create(
        params={"email": "ada@example.com", "name": "Ada", "metadata": {"tier": "gold"}}
    )
    assert cus.id.startswith("cus_") and cus.object == "customer"
    assert cus.metadata is not None
    assert cus.livemode is False and cus.metadata["tier"] == "gold"
    assert stripe_client.v1.customers.retrieve(cus.id).email == "ada@example.com"

    updated = stripe_client.v1.customers.update(
        cus.id, params={"name": "Ada L.", "metadata": {"tier": "", "x": "1"}}
    )
    assert updated.metadata is not None
    assert updated.name == "Ada L." and updated.metadata.to_dict() == {"x": "1"}

    deleted = stripe_client.v1.customers.delete(cus.id)
    assert deleted.deleted is True and deleted.id == cus.id
    assert stripe_client.v1.customers.retrieve(cus.id).to_dict()["deleted"] is True
    assert stripe_client.v1.customers.list().data == []
    assert emulator.emulator.count("customers", include_deleted=True) == 1
    flagged = httpx.get(f"{emulator.base_url}/_emulator/objects/customers").json()
    assert flagged["count"] == 1 and flagged["data"][0]["deleted"] is True


def test_errors(stripe_client: stripe.StripeClient, emulator: EmulatorServer) -> None:
    with pytest.raises(stripe.InvalidRequestError) as missing:
        stripe_client.v1.customers.retrieve("cus_nope")
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as bad:
        stripe_client.v1.prices.create(params={"currency": "usd", "unit_amount": 5})
    assert bad.value.http_status == 400 and bad.value.param == "product"
    assert bad.value.code == "parameter_missing"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        # a deliberate typo: the emulator must refuse an unknown parameter, as Stripe does
        stripe_client.v1.customers.create(params={"emial": "typo"})  # type: ignore[arg-type]
    assert unknown.value.param == "emial"
    with pytest.raises(stripe.AuthenticationError) as auth:
        _client(emulator, "sk_live_nope").v1.customers.list()
    assert auth.value.http_status == 401
    assert auth.value.error is not None and auth.value.error.type == "invalid_request_error"
    with pytest.raises(stripe.AuthenticationError):
        _client(emulator, "pk_test_public").v1.customers.list()
    assert _client(emulator, "rk_test_restricted").v1.customers.list().data == []

    response = httpx.get(
        f"{emulator.base_url}/v1/nothing", headers={"Authorization": "Bearer sk_test_x"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.headers["request-id"].startswith("req_")
    assert httpx.get(f"{emulator.base_url}/v1/customers").status_code == 401


def test_http_basic_auth_as_curl_sends_it(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    # `curl https://api.stripe.com/v1/customers -u sk_test_…:`: the key is the user name.
    url = f"{emulator.base_url}/v1/customers"
    created = httpx.post(url, auth=("sk_test_curl", ""), data={"email": "curl@x.io"})
    assert created.status_code == 200, created.text
    assert [c.id for c in stripe_client.v1.customers.list().data] == [created.json()["id"]]
    # The same key either way: one idempotency scope.
    key = {"Idempotency-Key": "basic-1"}
    first = httpx.post(url, auth=("sk_test_curl", ""), headers=key)
    again = httpx.post(url, headers={"Authorization": "Bearer sk_test_curl", **key})
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    refused = httpx.get(url, auth=("pk_test_public", ""))
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "Invalid API Key provided: pk_test_**blic"
    assert httpx.get(url, headers={"Authorization": "Basic %%%"}).status_code == 401


def test_live_keys_when_allowed(emulator: EmulatorServer) -> None:
    emulator.emulator.config.allow_live = True
    try:
        cus = _client(emulator, "sk_live_abc").v1.customers.create()
        assert cus.livemode is True
    finally:
        emulator.emulator.config.allow_live = False


def test_list_pagination_newest_first(stripe_client: stripe.StripeClient) -> None:
    ids = [stripe_client.v1.customers.create(params={"name": f"c{i}"}).id for i in range(7)]
    newest_first = ids[::-1]
    page = stripe_client.v1.customers.list(params={"limit": 3})
    assert [c.id for c in page.data] == newest_first[:3] and page.has_more
    assert page.url == "/v1/customers"
    page2 = stripe_client.v1.customers.list(params={"limit": 3, "starting_after": page.data[-1].id})
    assert [c.id for c in page2.data] == newest_first[3:6] and page2.has_more
    before = stripe_client.v1.customers.list(params={"limit": 2, "ending_before": newest_first[3]})
    assert [c.id for c in before.data] == newest_first[1:3]
    assert [c.id for c in page.auto_paging_iter()] == newest_first
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.customers.list(params={"limit": 101})
    assert err.value.param == "limit"


def test_search(stripe_client: stripe.StripeClient) -> None:
    a = stripe_client.v1.customers.create(params={"email": "a@x.io", "metadata": {"row": "1"}})
    stripe_client.v1.customers.create(params={"email": "b@x.io", "metadata": {"row": "2"}})
    found = stripe_client.v1.customers.search(params={"query": "metadata['row']:'1'"})
    assert found.to_dict()["object"] == "search_result" and [c.id for c in found.data] == [a.id]
    assert found.next_page is None and found.has_more is False
    both = stripe_client.v1.customers.search(
        params={"query": "email:'a@x.io' AND metadata['row']:'1'"}
    )
    assert [c.id for c in both.data] == [a.id]
    none = stripe_client.v1.customers.search(
        params={"query": "email:'a@x.io' AND metadata['row']:'2'"}
    )
    assert none.data == []
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.customers.search(params={"query": "bogus_field:'1'"})
    assert err.value.param == "query"

    product = stripe_client.v1.products.create(params={"name": "P", "metadata": {"sku": "s1"}})
    assert [
        p.id
        for p in stripe_client.v1.products.search(params={"query": "metadata['sku']:'s1'"}).data
    ] == [product.id]
    price = stripe_client.v1.prices.create(
        params={"product": product.id, "currency": "eur", "unit_amount": 10, "metadata": {"k": "v"}}
    )
    assert [
        p.id for p in stripe_client.v1.prices.search(params={"query": "metadata['k']:'v'"}).data
    ] == [price.id]


def test_search_follows_metadata_updates_and_quoting(stripe_client: stripe.StripeClient) -> None:
    # Searches by metadata read an index: it must follow updates, deletions and
    # Stripe's quoting (a backslash escapes a quote; clauses may be joined by spaces).
    def found(query: str) -> list[str]:
        return [c.id for c in stripe_client.v1.customers.search(params={"query": query}).data]

    old = stripe_client.v1.customers.create(params={"metadata": {"src": "db's", "row": "7"}})
    new = stripe_client.v1.customers.create(params={"metadata": {"src": "db's", "row": "8"}})
    assert found("metadata['src']:'db\\'s'") == [new.id, old.id]
    assert found("metadata[\"src\"]:\"DB'S\" metadata['row']:'7'") == [old.id]
    stripe_client.v1.customers.update(old.id, params={"metadata": {"row": "9"}})
    assert found("metadata['row']:'7'") == []
    assert found("metadata['row']:'9' and metadata['src']:'db\\'s'") == [old.id]
    stripe_client.v1.customers.update(new.id, params={"metadata": {"src": ""}})
    assert found("metadata['src']:'db\\'s'") == [old.id]
    stripe_client.v1.customers.delete(old.id)
    assert found("metadata['row']:'9'") == []
    assert found("metadata['row']:'8' OR metadata['row']:'9'") == [new.id]
    with pytest.raises(stripe.InvalidRequestError) as err:
        found("metadata['row']:'8' AND metadata['row']:'8' OR metadata['row']:'9'")
    assert err.value.param == "query"


def test_search_lags_new_objects_when_asked(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    # Stripe's search index shows new data "in under 1 minute", not at once;
    # Emulator.search_lag (--search-lag) models that, by the created second.
    emu = emulator.emulator
    emu.search_lag = 5.0
    customer = stripe_client.v1.customers.create(params={"metadata": {"row": "1"}})
    product = stripe_client.v1.products.create(params={"name": "Lag", "metadata": {"row": "1"}})
    query = "metadata['row']:'1'"
    assert stripe_client.v1.customers.search(params={"query": query}).data == []
    assert stripe_client.v1.products.search(params={"query": query}).data == []
    assert stripe_client.v1.customers.retrieve(customer.id).id == customer.id  # no lag here
    emu.advance_clock(6)
    found = stripe_client.v1.customers.search(params={"query": query}).data
    assert [c.id for c in found] == [customer.id]
    assert [p.id for p in stripe_client.v1.products.search(params={"query": query}).data] == [
        product.id
    ]
    emu.reset()
    assert emu.search_lag == 0.0


def test_products_and_prices(stripe_client: stripe.StripeClient) -> None:
    product = stripe_client.v1.products.create(params={"name": "Silver", "id": "prod_silver"})
    assert product.id == "prod_silver" and product.active is True
    archived = stripe_client.v1.products.update(product.id, params={"active": False})
    assert archived.active is False
    assert [p.id for p in stripe_client.v1.products.list(params={"active": False}).data] == [
        "prod_silver"
    ]
    assert stripe_client.v1.products.list(params={"active": True}).data == []

    monthly = stripe_client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 999,
            "recurring": {"interval": "month", "interval_count": 3},
            "lookup_key": "silver_q",
        }
    )
    assert monthly.type == "recurring" and monthly.recurring is not None
    assert monthly.recurring.interval_count == 3 and str(monthly.unit_amount_decimal) == "999"
    one_off = stripe_client.v1.prices.create(
        params={"product": product.id, "currency": "usd", "unit_amount": 5}
    )
    assert one_off.type == "one_time" and one_off.recurring is None

    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.prices.update(
            monthly.id,
            params={"unit_amount": 1},  # type: ignore[arg-type]
        )
    assert err.value.http_status == 400 and err.value.param == "unit_amount"
    renamed = stripe_client.v1.prices.update(
        monthly.id, params={"nickname": "Quarterly", "active": False, "metadata": {"a": "b"}}
    )
    assert renamed.nickname == "Quarterly" and renamed.active is False
    assert [p.id for p in stripe_client.v1.prices.list(params={"active": True}).data] == [
        one_off.id
    ]
    assert len(stripe_client.v1.prices.list(params={"product": product.id}).data) == 2
    assert stripe_client.v1.prices.list(params={"product": "prod_other"}).data == []
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.products.delete(product.id)


def test_subscription_lifecycle(stripe_client: stripe.StripeClient) -> None:
    cus = stripe_client.v1.customers.create(params={"email": "s@x.io"})
    price = _recurring_price(stripe_client)
    sub = stripe_client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": price.id, "quantity": 2}]}
    )
    assert sub.status == "active" and sub.customer == cus.id
    item = sub["items"].data[0]
    assert item.price.id == price.id and item.quantity == 2
    assert item.current_period_end > item.current_period_start

    inv = stripe_client.v1.invoices.retrieve(
        str(sub.latest_invoice), params={"expand": ["payments"]}
    )
    assert (
        inv.status == "paid"
        and inv.amount_paid == 3000
        and inv.billing_reason == "subscription_create"
    )
    assert inv.parent is not None and inv.parent.subscription_details is not None
    assert inv.parent.subscription_details.subscription == sub.id
    assert inv.lines.data[0].amount == 3000
    assert inv.payments is not None
    pi_id = inv.payments.data[0].payment.payment_intent
    pi = stripe_client.v1.payment_intents.retrieve(str(pi_id))
    assert pi.status == "succeeded" and pi.amount == 3000
    charge = stripe_client.v1.charges.retrieve(str(pi.latest_charge))
    assert charge.paid and charge.payment_intent == pi.id
    assert [i.id for i in stripe_client.v1.invoices.list(params={"customer": cus.id}).data] == [
        inv.id
    ]
    assert [i.id for i in stripe_client.v1.invoices.list(params={"subscription": sub.id}).data] == [
        inv.id
    ]

    bigger = _recurring_price(stripe_client, 5000)
    updated = stripe_client.v1.subscriptions.update(
        sub.id,
        params={
            "items": [{"id": item.id, "quantity": 1}, {"price": bigger.id}],
            "metadata": {"plan": "x"},
            "pause_collection": {"behavior": "void"},
        },
    )
    assert [i.quantity for i in updated["items"].data] == [1, 1]
    assert updated.pause_collection is not None and updated.pause_collection.behavior == "void"
    ending = stripe_client.v1.subscriptions.update(
        sub.id, params={"cancel_at_period_end": True, "pause_collection": ""}
    )
    assert ending.cancel_at_period_end is True and ending.cancel_at == item.current_period_end
    assert ending.pause_collection is None

    canceled = stripe_client.v1.subscriptions.cancel(sub.id)
    assert canceled.status == "canceled" and canceled.canceled_at is not None
    assert stripe_client.v1.subscriptions.list(params={"customer": cus.id}).data == []
    assert len(stripe_client.v1.subscriptions.list(params={"status": "all"}).data) == 1
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.subscriptions.cancel(sub.id)


def test_subscription_changes_as_stripe_makes_them(stripe_client: stripe.StripeClient) -> None:
    """What the outbox's subscription actions send: a scheduled cancellation and its
    undoing, a price and quantity change of one item, and the refusals."""
    cus = stripe_client.v1.customers.create()
    price, bigger = _recurring_price(stripe_client), _recurring_price(stripe_client, 5000)
    sub = stripe_client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": price.id}]}
    )
    item = sub["items"].data[0]
    ending = stripe_client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    # canceled_at is when the cancellation was asked for, as in Stripe.
    assert ending.canceled_at is not None and ending.status == "active"
    assert ending.cancellation_details is not None
    assert ending.cancellation_details.reason == "cancellation_requested"
    resumed = stripe_client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": False})
    assert (resumed.cancel_at_period_end, resumed.cancel_at, resumed.canceled_at) == (
        False,
        None,
        None,
    )
    assert resumed.cancellation_details is not None
    assert resumed.cancellation_details.reason is None

    changed = stripe_client.v1.subscriptions.update(
        sub.id,
        params={
            "items": [{"id": item.id, "price": bigger.id, "quantity": 3}],
            "proration_behavior": "none",
        },
    )
    [same] = changed["items"].data
    assert (same.id, same.price.id, same.quantity) == (item.id, bigger.id, 3)
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.subscriptions.update(sub.id, params={"proration_behavior": "later"})
    assert err.value.param == "proration_behavior"

    stripe_client.v1.subscriptions.cancel(sub.id)
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": False})


def test_subscription_trial_and_validation(stripe_client: stripe.StripeClient) -> None:
    cus = stripe_client.v1.customers.create()
    price = _recurring_price(stripe_client)
    sub = stripe_client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": price.id}], "trial_period_days": 14}
    )
    assert sub.status == "trialing" and sub.trial_end == sub.trial_start + 14 * 86400  # type: ignore[operator]
    inv = stripe_client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert inv.amount_paid == 0 and inv.status == "paid"
    assert stripe_client.v1.payment_intents.list().data == []

    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.subscriptions.create(params={"customer": cus.id})
    assert err.value.param == "items"
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.subscriptions.create(
            params={"customer": "cus_missing", "items": [{"price": price.id}]}
        )
    assert err.value.http_status == 404 and err.value.param == "customer"
    one_off = stripe_client.v1.prices.create(
        params={"product": str(price.product), "currency": "usd", "unit_amount": 1}
    )
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.subscriptions.create(
            params={"customer": cus.id, "items": [{"price": one_off.id}]}
        )
    assert err.value.param == "items[0][price]"


def test_payment_intents_and_refunds(stripe_client: stripe.StripeClient) -> None:
    cus = stripe_client.v1.customers.create()
    pi = stripe_client.v1.payment_intents.create(
        params={"amount": 2000, "currency": "usd", "customer": cus.id}
    )
    assert pi.status == "requires_payment_method"
    confirmed = stripe_client.v1.payment_intents.confirm(
        pi.id, params={"payment_method": "pm_card_visa"}
    )
    assert confirmed.status == "succeeded" and confirmed.latest_charge is not None
    assert [c.id for c in stripe_client.v1.charges.list(params={"payment_intent": pi.id}).data] == [
        confirmed.latest_charge
    ]
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.payment_intents.cancel(pi.id)

    part = stripe_client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 500})
    assert part.amount == 500 and part.status == "succeeded"
    charge = stripe_client.v1.charges.retrieve(str(confirmed.latest_charge))
    assert charge.amount_refunded == 500 and charge.refunded is False
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.refunds.create(params={"charge": charge.id, "amount": 5000})
    assert err.value.param == "amount"
    rest = stripe_client.v1.refunds.create(params={"charge": charge.id})
    assert rest.amount == 1500
    assert stripe_client.v1.charges.retrieve(charge.id).refunded is True
    assert len(stripe_client.v1.refunds.list(params={"payment_intent": pi.id}).data) == 2

    declined = stripe_client.v1.payment_intents.create(params={"amount": 100, "currency": "usd"})
    with pytest.raises(stripe.CardError) as card:
        stripe_client.v1.payment_intents.confirm(
            declined.id, params={"payment_method": "pm_card_chargeDeclined"}
        )
    assert card.value.http_status == 402 and card.value.code == "card_declined"
    assert (
        stripe_client.v1.payment_intents.retrieve(declined.id).status == "requires_payment_method"
    )
    canceled = stripe_client.v1.payment_intents.cancel(declined.id)
    assert canceled.status == "canceled"


def test_invoice_payments_say_which_invoice_a_payment_pays(
    stripe_client: stripe.StripeClient,
) -> None:
    """API 2025-03-31+: a PaymentIntent no longer names its invoice; its
    InvoicePayment does, found by the payment (or by the invoice)."""
    cus = stripe_client.v1.customers.create()
    sub = stripe_client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": _recurring_price(stripe_client).id}]}
    )
    invoice_payments = stripe_client.v1.invoice_payments
    [link] = invoice_payments.list(params={"invoice": str(sub.latest_invoice)}).data
    pi_id = str(link.payment.payment_intent)
    assert (link.invoice, link.status, link.is_default, link.amount_paid) == (
        sub.latest_invoice,
        "paid",
        True,
        1500,
    )
    by_payment: InvoicePaymentListParamsPayment = {
        "type": "payment_intent",
        "payment_intent": pi_id,
    }
    found = invoice_payments.list(params={"payment": by_payment, "status": "paid"}).data
    assert [p.id for p in found] == [link.id]
    assert not invoice_payments.list(params={"payment": by_payment, "status": "open"}).data
    other = stripe_client.v1.payment_intents.create(params={"amount": 100, "currency": "usd"})
    assert not invoice_payments.list(
        params={"payment": {"type": "payment_intent", "payment_intent": other.id}}
    ).data  # a payment made for no invoice
    assert invoice_payments.retrieve(link.id).invoice == sub.latest_invoice
    with pytest.raises(stripe.InvalidRequestError) as err:
        invoice_payments.list(params={"payment": {"payment_intent": pi_id}})  # type: ignore[arg-type]
    assert err.value.param == "payment[type]"
    with pytest.raises(stripe.InvalidRequestError) as err:
        invoice_payments.retrieve("inpay_missing")
    assert err.value.http_status == 404


def test_account_and_expand(stripe_client: stripe.StripeClient, emulator: EmulatorServer) -> None:
    account = stripe_client.v1.accounts.retrieve_current()
    assert account.id == emulator.emulator.config.account_id and account.object == "account"
    cus = stripe_client.v1.customers.create(params={"email": "e@x.io"})
    sub = stripe_client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": _recurring_price(stripe_client).id}]}
    )
    expanded = stripe_client.v1.subscriptions.retrieve(
        sub.id, params={"expand": ["customer", "latest_invoice"]}
    )
    assert expanded.customer.email == "e@x.io"  # type: ignore[union-attr]
    assert expanded.latest_invoice.status == "paid"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_async_client(stripe_client: stripe.StripeClient) -> None:
    cus = await stripe_client.v1.customers.create_async(params={"email": "async@x.io"})
    got = await stripe_client.v1.customers.retrieve_async(cus.id)
    assert got.email == "async@x.io"
    listed = await stripe_client.v1.customers.list_async()
    assert [c.id for c in listed.data] == [cus.id]
    with pytest.raises(stripe.InvalidRequestError):
        await stripe_client.v1.customers.retrieve_async("cus_missing")


def test_string_limits_and_empty_strings_as_stripe(stripe_client: stripe.StripeClient) -> None:
    """Stripe's maxLength per parameter, and an empty string only where it unsets."""
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.customers.create(params={"email": "a" * 503 + "@example.com"})
    assert err.value.param == "email" and "must be at most 512 characters" in str(err.value)
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.customers.create(params={"name": ""})
    assert err.value.param == "name" and err.value.code == "parameter_invalid_empty"
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.customers.create(params={"metadata": {"k" * 41: "v"}})
    assert err.value.param == "metadata"
    product = stripe_client.v1.products.create(params={"name": "P", "description": "d"})
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.products.create(params={"name": "P", "description": ""})
    assert err.value.param == "description"
    unset = stripe_client.v1.products.update(product.id, params={"description": ""})
    assert unset.description is None
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.products.update(product.id, params={"name": ""})
    assert err.value.param == "name"
    price = stripe_client.v1.prices.create(
        params={"product": product.id, "currency": "eur", "unit_amount": 1, "nickname": "n"}
    )
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.prices.update(price.id, params={"nickname": ""})
    assert err.value.param == "nickname"


def test_objects_made_outside_the_emulator_are_held_and_retrieved_as_stripe_would(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    """POST /_emulator/objects/KIND (the T2 mix bench gives it its recorded events'
    objects, so a same-second tie is answered, not refused with a 404)."""
    sample = SAMPLES / "charge_dispute_created.json"
    dispute = json.loads(sample.read_text())["data"]["object"]
    url = f"{emulator.base_url}/_emulator/objects/disputes"
    assert httpx.post(url, json={"data": [dispute]}).json() == {"kind": "disputes", "count": 1}
    got = stripe_client.v1.disputes.retrieve(dispute["id"])
    assert got.id == dispute["id"] and got.amount == dispute["amount"]

    assert (
        httpx.post(f"{emulator.base_url}/_emulator/objects/nope", json={"data": []}).status_code
        == 404
    )
    refused = httpx.post(url, json={"data": [{"object": "dispute"}]})
    assert refused.status_code == 400 and "string id" in refused.json()["error"]
