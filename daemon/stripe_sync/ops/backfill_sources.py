"""What ``stripe-sync backfill`` lists, and the event each object is applied as.

One :class:`Source` per family, in the order they are imported (a family's
references come before it: customers, then what names them). Each listed
object becomes a synthetic event of the type Stripe would send for its
state (``events_of``), which the webhook handler table applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from ..mappings import (
    CREDIT_NOTES,
    DISPUTES,
    INVOICES,
    PAYMENT_METHODS,
    PAYMENTS,
    SUBSCRIPTIONS,
    Family,
)
from ..mappings import CUSTOMERS as CUSTOMER_FAMILY

JSON = dict[str, Any]
EventType = Callable[[JSON], str]


def _pi_event(pi: JSON) -> str:
    status = pi.get("status")
    if status == "requires_payment_method" and pi.get("last_payment_error"):
        return "payment_intent.payment_failed"
    return {
        "succeeded": "payment_intent.succeeded",
        "canceled": "payment_intent.canceled",
        "processing": "payment_intent.processing",
        "requires_action": "payment_intent.requires_action",
        "requires_capture": "payment_intent.amount_capturable_updated",
    }.get(str(status), "payment_intent.created")


_CLOSED_DISPUTES = {"won", "lost", "warning_closed", "prevented"}


@dataclass(frozen=True)
class Source:
    """One family as the backfill lists it and the event type it applies it as."""

    name: str  # the checkpoint's family, and what the report calls it
    path: str  # the list endpoint
    event_type: EventType
    family: Family | None  # whose fingerprint tells whether a page changed anything
    # Listed per linked customer (payment methods: Stripe lists them only so).
    per_customer: bool = False
    # Belongs to a linked customer by its own `customer` field (else by its
    # PaymentIntent, which must be mapped: refunds, disputes).
    by_customer: bool = True
    params: tuple[tuple[str, Any], ...] = ()
    # The list takes created[gte] (payment methods' and credit notes' do not:
    # --since is applied to what they list).
    created: bool = True


def _by_status(prefix: str, statuses: set[str], then: str, otherwise: str) -> EventType:
    """``prefix + then`` for an object whose status is one of ``statuses``, else
    ``prefix + otherwise`` (a canceled subscription is a deletion, a void credit
    note a voiding, …: the rank of the event as Stripe would have sent it)."""
    return lambda obj: prefix + (then if obj.get("status") in statuses else otherwise)


def _always(event_type: str) -> EventType:
    return lambda _obj: event_type


SOURCES: tuple[Source, ...] = (
    Source("customers", "/v1/customers", _always("customer.updated"), CUSTOMER_FAMILY),
    Source(
        "payment_methods",
        "/v1/payment_methods",
        _always("payment_method.attached"),
        PAYMENT_METHODS,
        per_customer=True,
        created=False,
    ),
    Source(
        "subscriptions",
        "/v1/subscriptions",
        _by_status("customer.subscription.", {"canceled"}, "deleted", "updated"),
        SUBSCRIPTIONS,
        params=(("status", "all"),),
    ),
    # Invoices before payments: an invoice's payments come with it (expanded),
    # so a payment whose invoice cannot be imported is skipped with its reason
    # rather than imported without it, and one whose invoice is imported is
    # linked to it as it is imported (no request per payment).
    Source(
        "invoices",
        "/v1/invoices",
        _always("invoice.updated"),
        INVOICES,
        params=(("expand", ["data.payments"]),),
    ),
    Source("payment_intents", "/v1/payment_intents", _pi_event, PAYMENTS),
    Source(
        "refunds",
        "/v1/refunds",
        _by_status("refund.", {"failed"}, "failed", "updated"),
        None,
        by_customer=False,
    ),
    Source(
        "disputes",
        "/v1/disputes",
        _by_status("charge.dispute.", _CLOSED_DISPUTES, "closed", "updated"),
        DISPUTES,
        by_customer=False,
    ),
    Source(
        "credit_notes",
        "/v1/credit_notes",
        _by_status("credit_note.", {"void"}, "voided", "updated"),
        CREDIT_NOTES,
        created=False,
    ),
)
NAMES = tuple(s.name for s in SOURCES)


def events_of(source: Source, obj: JSON, asked: int) -> list[tuple[str, str]]:
    """The synthetic event of one object (an invoice's payments: ``paid_by``)."""
    event_type = source.event_type(obj)
    return [(event_type, _envelope(event_type, obj, asked))]


def paid_by(invoice: JSON, asked: int) -> list[tuple[str, tuple[str, str]]]:
    """The payments that paid an invoice, from its expanded ``payments`` (taken
    off it): each PaymentIntent's id and the invoice_payment.paid event that
    links it to the invoice, applied after the PaymentIntent's own."""
    payments = invoice.pop("payments", None) or {}
    found = []
    for payment in payments.get("data") or []:
        target = payment.get("payment") or {}
        pi = target.get("payment_intent")
        pi_id = pi.get("id") if isinstance(pi, dict) else pi
        if payment.get("status") == "paid" and isinstance(pi_id, str):
            event = ("invoice_payment.paid", _envelope("invoice_payment.paid", payment, asked))
            found.append((pi_id, event))
    return found


def _envelope(event_type: str, obj: JSON, asked: int) -> str:
    return msgspec.json.encode(
        {
            "id": f"evt_backfill_{asked}",
            "object": "event",
            "type": event_type,
            "created": asked,
            "livemode": bool(obj.get("livemode")),
            "data": {"object": obj},
        }
    ).decode()
