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
    Source("payment_intents", "/v1/payment_intents", _pi_event, PAYMENTS),
    Source(
        "invoices",
        "/v1/invoices",
        _always("invoice.updated"),
        INVOICES,
        params=(("expand", ["data.payments"]),),
    ),
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
    """The synthetic events of one object: its own, and for an invoice the
    invoice_payment.paid of each payment that paid it (after it)."""
    payments = obj.pop("payments", None) if source.name == "invoices" else None
    event_type = source.event_type(obj)
    found = [(event_type, _envelope(event_type, obj, asked))]
    for payment in (payments or {}).get("data") or []:
        if payment.get("status") == "paid":
            found.append(
                ("invoice_payment.paid", _envelope("invoice_payment.paid", payment, asked))
            )
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
