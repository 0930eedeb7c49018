"""Money movement shared by subscriptions and payment intents: invoices, charges,
payment success/failure. Kept apart from the HTTP handlers that drive them."""

from __future__ import annotations

import calendar
import datetime as dt
from typing import TYPE_CHECKING, Any

from . import cards, invoice_items, new_objects_billing, prorations
from .errors import StripeError, card_declined, declined_error
from .state import JSON, new_id

if TYPE_CHECKING:
    from .emulator import ApiRequest, Emulator

# How long Stripe gives to respond to a dispute in the emulator (card networks vary).
EVIDENCE_DAYS = 7


def add_interval(ts: int, interval: str, count: int) -> int:
    if interval == "day":
        return ts + 86400 * count
    if interval == "week":
        return ts + 7 * 86400 * count
    start = dt.datetime.fromtimestamp(ts, dt.UTC)
    months = count * (12 if interval == "year" else 1)
    month_index = start.month - 1 + months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return int(start.replace(year=year, month=month, day=day).timestamp())


def line_item(emu: Emulator, inv: JSON, item: JSON, start: int, end: int, amount: int) -> JSON:
    """The line of a subscription item for a period."""
    price = item["price"]
    product = emu.store.get("products", price["product"]) or {}
    # Stripe's own line descriptions use the multiplication sign.
    description = f"{item['quantity']} × {product.get('name') or price['product']}"  # noqa: RUF001
    details = _item_details(item["subscription"], item["id"], None)
    return _line(inv, price, item["quantity"], details, start, end, amount, description)


def proration_line(emu: Emulator, inv: JSON, ii: JSON) -> JSON:
    """The line of a pending proration invoice item, which it now belongs to."""
    ii["invoice"] = inv["id"]
    price = emu.store.get("prices", ii["pricing"]["price_details"]["price"]) or {}
    sub = ii["parent"]["subscription_details"]
    details = _item_details(sub["subscription"], sub["subscription_item"], ii["id"])
    period = ii["period"]
    line = _line(
        inv, price, ii["quantity"], details, period["start"], period["end"], ii["amount"], ""
    )
    line["description"] = ii["description"]
    return line


def invoice_item_line(emu: Emulator, inv: JSON, ii: JSON) -> JSON:
    """The line of any pending invoice item: a proration's, or one a developer added
    (POST /v1/invoiceitems), which it now belongs to."""
    sub = ((ii["parent"] or {}).get("subscription_details")) or {}
    if sub.get("subscription_item"):
        return proration_line(emu, inv, ii)
    ii["invoice"] = inv["id"]
    price = {"currency": ii["currency"], "id": None, "product": None, "unit_amount_decimal": None}
    details = _item_details(sub.get("subscription") or "", "", ii["id"])
    period = ii["period"]
    line = _line(
        inv, price, ii["quantity"], details, period["start"], period["end"], ii["amount"], ""
    )
    details = {key: details[key] for key in ("invoice_item", "proration_details", "subscription")}
    line.update(
        description=ii["description"],
        discountable=ii["discountable"],
        pricing=dict(ii["pricing"]),
        parent={
            "invoice_item_details": {**details, "proration": False},
            "subscription_item_details": None,
            "type": "invoice_item_details",
        },
    )
    return line


def _item_details(subscription: str, item: str, invoice_item: str | None) -> JSON:
    return {
        "invoice_item": invoice_item,
        "proration": invoice_item is not None,
        "proration_details": {"credited_items": None},
        "subscription": subscription,
        "subscription_item": item,
    }


def _line(
    inv: JSON,
    price: JSON,
    quantity: int,
    details: JSON,
    start: int,
    end: int,
    amount: int,
    description: str,
) -> JSON:
    return {
        "id": new_id("il"),
        "object": "line_item",
        "amount": amount,
        "currency": price["currency"],
        "description": description,
        "discount_amounts": [],
        "discountable": details["invoice_item"] is None,
        "discounts": [],
        "invoice": inv["id"],
        "livemode": inv["livemode"],
        "metadata": {},
        "parent": {
            "invoice_item_details": None,
            "subscription_item_details": details,
            "type": "subscription_item_details",
        },
        "period": {"end": end, "start": start},
        "pretax_credit_amounts": [],
        "pricing": {
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
        "quantity": quantity,
        "subtotal": amount,
        "taxes": [],
    }


def subscription_invoice(
    emu: Emulator, req: ApiRequest, sub: JSON, reason: str, charge_amount: bool
) -> JSON:
    """A subscription's first invoice: a line per item for its first period."""
    inv = _draft(emu, sub)
    lines = []
    for item in sub["items"]["data"]:
        amount = (item["price"]["unit_amount"] or 0) * item["quantity"] if charge_amount else 0
        start = item["current_period_start"]
        lines.append(line_item(emu, inv, item, start, item["current_period_end"], amount))
    return _issue(emu, req, sub, inv, lines, reason)


def renewal_invoice(emu: Emulator, req: ApiRequest, sub: JSON) -> JSON:
    """A subscription's next period (billing_reason subscription_cycle): its items
    move on one interval (customer.subscription.updated) and the period is invoiced
    and, for charge_automatically, paid, as Stripe does at each period's end."""
    with emu.updating(req, sub, "customer.subscription.updated"):
        for item in sub["items"]["data"]:
            recurring = item["price"]["recurring"]
            start = item["current_period_end"]
            end = add_interval(start, recurring["interval"], recurring["interval_count"])
            item.update(current_period_start=start, current_period_end=end)
        sub["latest_invoice"] = new_id("in")
    inv = _draft(emu, sub)
    lines = []
    for item in sub["items"]["data"]:
        amount = (item["price"]["unit_amount"] or 0) * item["quantity"]
        start, end = item["current_period_start"], item["current_period_end"]
        lines.append(line_item(emu, inv, item, start, end, amount))
    return _issue(emu, req, sub, inv, lines, "subscription_cycle")


def proration_invoice(emu: Emulator, req: ApiRequest, sub: JSON) -> JSON:
    """proration_behavior=always_invoice: the subscription's pending invoice items
    (this change's prorations and any earlier change's) invoiced now."""
    inv = _draft(emu, sub)
    lines = [invoice_item_line(emu, inv, ii) for ii in prorations.pending(emu, sub)]
    return _issue(emu, req, sub, inv, lines, "subscription_update")


def _draft(emu: Emulator, sub: JSON) -> JSON:
    return new_objects_billing.invoice(
        sub["latest_invoice"] or new_id("in"), emu.now(), sub["livemode"], emu.config.account_name
    )


def cycle_invoice(emu: Emulator, sub: JSON, previous: tuple[int, int], finalizes_at: int) -> JSON:
    """A renewal's draft invoice (billing_reason subscription_cycle): a line per item
    for its new period, then the subscription's pending invoice items. Its
    period is the period that just ended, as on Stripe."""
    inv = _draft(emu, sub)
    lines = [
        line_item(
            emu,
            inv,
            item,
            item["current_period_start"],
            item["current_period_end"],
            (item["price"]["unit_amount"] or 0) * item["quantity"],
        )
        for item in sub["items"]["data"]
    ]
    pending = prorations.pending(emu, sub) + invoice_items.for_customer(emu, sub["customer"])
    lines += [invoice_item_line(emu, inv, ii) for ii in pending]
    open_invoice(
        emu,
        None,
        sub,
        inv,
        lines,
        "subscription_cycle",
        period_start=previous[0],
        period_end=previous[1],
        automatically_finalizes_at=finalizes_at,
    )
    return inv


def _issue(
    emu: Emulator, req: ApiRequest, sub: JSON, inv: JSON, lines: list[JSON], reason: str
) -> JSON:
    """Create, finalize and (for charge_automatically) pay a subscription's invoice."""
    open_invoice(emu, req, sub, inv, lines, reason)
    finalize(emu, req, inv)
    collect(emu, req, sub, inv)
    return inv


def open_invoice(
    emu: Emulator,
    req: ApiRequest | None,
    sub: JSON,
    inv: JSON,
    lines: list[JSON],
    reason: str,
    **fields: Any,
) -> None:
    """Store the draft with its lines and amounts (and `fields`): invoice.created."""
    now = emu.now()
    cus = emu.store.get("customers", sub["customer"]) or {}
    total = sum(line["amount"] for line in lines)
    due = max(total, 0)
    inv["lines"]["data"] = lines
    inv.update(
        customer=sub["customer"],
        customer_email=cus.get("email"),
        customer_name=cus.get("name"),
        customer_phone=cus.get("phone"),
        customer_address=cus.get("address"),
        customer_shipping=cus.get("shipping"),
        currency=sub["currency"],
        billing_reason=reason,
        collection_method=sub["collection_method"],
        subscription=sub["id"],
        parent={
            "quote_details": None,
            "subscription_details": {"metadata": dict(sub["metadata"]), "subscription": sub["id"]},
            "type": "subscription_details",
        },
        amount_due=due,
        amount_remaining=due,
        subtotal=total,
        subtotal_excluding_tax=total,
        total=total,
        total_excluding_tax=total,
        period_start=now,
        period_end=now,
        auto_advance=True,
        test_clock=cus.get("test_clock"),
    )
    inv.update(fields)
    emu.store.put("invoices", inv)
    emu.record_event(req, "invoice.created", inv)


def finalize(emu: Emulator, req: ApiRequest | None, inv: JSON) -> None:
    """Number the invoice and open it: invoice.finalized. A negative total (more
    credited than charged) is due as 0 and credited to the customer's balance,
    as Stripe does."""
    now = emu.now()
    cus = emu.store.get("customers", inv["customer"]) or {}
    total = inv["total"]
    seq = cus.get("next_invoice_sequence", 1)
    if cus:
        cus["next_invoice_sequence"] = seq + 1
    inv.update(
        status="open",
        number=f"{cus.get('invoice_prefix') or 'EMU'}-{seq:04d}",
        effective_at=now,
        automatically_finalizes_at=None,
        # The customer's balance is not applied to invoices here (starting_balance
        # stays 0); what a negative total credits to it is.
        ending_balance=min(total, 0),
        hosted_invoice_url=f"https://invoice.stripe.com/i/emulator/{inv['id']}",
        invoice_pdf=f"https://pay.stripe.com/invoice/emulator/{inv['id']}/pdf",
    )
    inv["status_transitions"]["finalized_at"] = now
    emu.record_event(req, "invoice.finalized", inv)
    if total < 0 and cus:
        with emu.updating(req, cus, "customer.updated"):
            cus["balance"] += total


_DESCRIPTIONS = {"subscription_create": "Subscription creation"}


def collect(
    emu: Emulator, req: ApiRequest | None, sub: JSON, inv: JSON, *, may_fail: bool = False
) -> bool:
    """Charge what the open invoice still owes to the default payment method: True
    when it is paid (invoice.paid). With `may_fail` (a renewal or its retry) a
    declining card fails the attempt, which counts in attempt_count; every attempt
    on an invoice reuses its payment intent, as Stripe's do. The first invoice
    of a new subscription is always paid here."""
    now = emu.now()
    cus = emu.store.get("customers", sub["customer"]) or {}
    due = inv["amount_remaining"]
    if due > 0:
        method = _invoice_method(emu, sub, cus)
        pi = _invoice_intent(emu, req, sub, inv, due, method)
        inv.update(attempted=True, attempt_count=inv["attempt_count"] + 1)
        if may_fail and cards.card_of(emu, method).decline is not None:
            fail_payment(emu, req, pi, method)
            return False
        pi["payment_method"] = method
        succeed_payment(emu, req, pi)
        paid_by(emu, req, inv, pi)
    inv.update(
        status="paid",
        amount_paid=due,
        amount_remaining=0,
        auto_advance=False,
        next_payment_attempt=None,
    )
    inv["status_transitions"]["paid_at"] = now
    emu.record_event(req, "invoice.paid", inv)
    emu.record_event(req, "invoice.payment_succeeded", inv)
    return True


def _invoice_intent(
    emu: Emulator, req: ApiRequest | None, sub: JSON, inv: JSON, due: int, method: str
) -> JSON:
    """The invoice's payment intent: made on the first attempt, reused by retries."""
    known = emu.time.invoice_intents.get(inv["id"])
    pi = emu.store.get("payment_intents", known) if known else None
    if pi is not None:
        return pi
    pi = new_objects_billing.payment_intent(new_id("pi"), emu.now(), sub["livemode"])
    pi.update(
        amount=due,
        currency=sub["currency"],
        customer=sub["customer"],
        description=_DESCRIPTIONS.get(inv["billing_reason"], "Subscription update"),
        payment_method=method,
        status="requires_confirmation",
    )
    emu.store.put("payment_intents", pi)
    emu.time.invoice_intents[inv["id"]] = pi["id"]
    emu.record_event(req, "payment_intent.created", pi)
    inv["payments"]["data"] = [_invoice_payment(emu, inv, pi)]
    return pi


def _invoice_method(emu: Emulator, sub: JSON, cus: JSON) -> str:
    """The card a subscription's invoice charges, as Stripe picks it: the
    subscription's default payment method, else the customer's
    invoice_settings.default_payment_method; the emulator falls back to the visa
    test card (a real Stripe would leave the invoice open)."""
    settings = cus.get("invoice_settings") or {}
    return str(
        sub["default_payment_method"]
        or settings.get("default_payment_method")
        or cards.DEFAULT_PAYMENT_METHOD
    )


def _invoice_payment(emu: Emulator, inv: JSON, pi: JSON) -> JSON:
    """The invoice's default InvoicePayment (API 2025-03-31+), made with the
    payment intent that is to pay it: ``open`` until it is paid, and what
    ``GET /v1/invoice_payments?payment[payment_intent]=`` finds from the start
    (no event announces it)."""
    payment = {
        "id": new_id("inpay"),
        "object": "invoice_payment",
        "amount_paid": None,  # Stripe: null until paid
        "amount_requested": pi["amount"],
        "created": emu.now(),
        "currency": pi["currency"],
        "invoice": inv["id"],
        "is_default": True,
        "livemode": inv["livemode"],
        "payment": {"payment_intent": pi["id"], "type": "payment_intent"},
        "status": "open",
        "status_transitions": {"canceled_at": None, "paid_at": None},
    }
    emu.store.put("invoice_payments", payment)
    return payment


def paid_by(emu: Emulator, req: ApiRequest | None, inv: JSON, pi: JSON) -> JSON:
    """The invoice's payment by `pi` is paid, announced by invoice_payment.paid:
    since API 2025-03-31 the only event that links a payment to its invoice."""
    payment: JSON = next(
        p for p in inv["payments"]["data"] if p["payment"].get("payment_intent") == pi["id"]
    )
    payment.update(amount_paid=pi["amount_received"], status="paid")
    payment["status_transitions"]["paid_at"] = emu.now()
    emu.record_event(req, "invoice_payment.paid", payment)
    return payment


def _charge_for(emu: Emulator, pi: JSON, payment_method: str) -> JSON:
    ch = new_objects_billing.charge(new_id("ch"), emu.now(), pi["livemode"])
    card = cards.card_of(emu, payment_method)
    exp_month, exp_year = cards.expiry(emu, payment_method)
    ch["payment_method_details"]["card"].update(
        brand=card.brand,
        last4=card.last4,
        funding=card.funding,
        exp_month=exp_month,
        exp_year=exp_year,
    )
    ch.update(
        amount=pi["amount"],
        amount_captured=pi["amount"],
        currency=pi["currency"],
        customer=pi["customer"],
        description=pi["description"],
        metadata=dict(pi["metadata"]),
        payment_intent=pi["id"],
        payment_method=payment_method,
        receipt_email=pi["receipt_email"],
        balance_transaction=new_id("txn"),
        receipt_url=f"https://pay.stripe.com/receipts/emulator/{ch['id']}",
    )
    emu.store.put("charges", ch)
    return ch


def succeed_payment(emu: Emulator, req: ApiRequest | None, pi: JSON) -> None:
    method = pi["payment_method"] or cards.DEFAULT_PAYMENT_METHOD
    ch = _charge_for(emu, pi, method)
    emu.record_event(req, "charge.succeeded", ch)
    pi.update(
        status="succeeded",
        amount_received=pi["amount"],
        latest_charge=ch["id"],
        payment_method=method,
        last_payment_error=None,
    )
    emu.record_event(req, "payment_intent.succeeded", pi)
    if cards.card_of(emu, method).dispute:
        open_dispute(emu, req, ch)


def open_dispute(emu: Emulator, req: ApiRequest | None, ch: JSON) -> JSON:
    """The cardholder disputes the charge: its full amount is withdrawn until the
    dispute is won, and the evidence is due in EVIDENCE_DAYS."""
    now = emu.now()
    dp = new_objects_billing.dispute(new_id("dp"), now, ch["livemode"], now + EVIDENCE_DAYS * 86400)
    dp.update(
        amount=ch["amount"],
        charge=ch["id"],
        currency=ch["currency"],
        payment_intent=ch["payment_intent"],
    )
    emu.store.put("disputes", dp)
    ch["disputed"] = True
    emu.record_event(req, "charge.dispute.created", dp)
    emu.record_event(req, "charge.dispute.funds_withdrawn", dp)
    return dp


def fail_payment(emu: Emulator, req: ApiRequest | None, pi: JSON, method: str) -> StripeError:
    """Declined test card: a failed charge, the intent back to requires_payment_method,
    and the 402 card_error the caller should raise."""
    decline = cards.card_of(emu, method).decline or "generic_decline"
    ch = _charge_for(emu, pi, method)
    ch.update(
        status="failed",
        paid=False,
        captured=False,
        amount_captured=0,
        failure_code="card_declined",
        failure_message="Your card was declined.",
        balance_transaction=None,
    )
    ch["outcome"].update(
        network_status="declined_by_network",
        reason=decline,
        seller_message="The bank did not return any further details with this decline.",
        type="issuer_declined",
    )
    emu.record_event(req, "charge.failed", ch)
    error: dict[str, Any] = {
        **declined_error(decline),
        "charge": ch["id"],
        "payment_method": cards.payment_method_object(emu, method, pi["livemode"]),
    }
    pi.update(
        status="requires_payment_method",
        latest_charge=ch["id"],
        payment_method=None,
        last_payment_error=error,
    )
    emu.record_event(req, "payment_intent.payment_failed", pi)
    return card_declined(decline, charge=ch["id"], payment_intent=dict(pi))
