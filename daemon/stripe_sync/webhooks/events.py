"""Stripe events and the objects they carry, as the webhook half reads them (msgspec Structs).

``Envelope`` is what the endpoint checks and stores; ``decode_event`` gives
a handler the event with its ``data.object`` decoded as one of the object
Structs below (``Customer``, ``Subscription``, ``Invoice``, …).

Real events come in every API version since 2015, so every field has a
default and unknown fields are ignored: the handlers read whichever of the
alternative places holds a value (``invoice.subscription`` or
``invoice.parent.subscription_details.subscription``, and so on). One thing
no field can say is read from ``api_version``: whether a PaymentIntent's
missing invoice means it pays none, or that its version (2025-03-31 and later)
no longer names it (``invoice_unnamed``, payments.py).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from ..errors import PermanentError, validation_parts


class Lenient(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Base: tolerate unknown and missing fields."""


class Ref(Lenient):
    """An expanded object where an id was expected; only its id matters here."""

    id: str | None = None


# A reference to another object: its id, the object itself (expanded), or null.
Expandable = str | Ref | None


def ref_id(value: Expandable) -> str | None:
    if isinstance(value, Ref):
        return value.id or None
    return value or None


# -- the envelope ---------------------------------------------------------------


class ObjectHead(Lenient):
    id: str | None = None
    object: str | None = None


class EnvelopeData(Lenient):
    # Raw: the endpoint only checks that it is a JSON object and reads its id.
    # Empty when absent (Raw cannot be part of a union with None).
    object: msgspec.Raw = msgspec.Raw()


class Envelope(Lenient):
    """The part of an event the endpoint checks and stores in its own columns."""

    id: str | None = None
    type: str | None = None
    created: int | None = None
    livemode: bool = False
    api_version: str | None = None
    # Connect: the connected account the event is about.
    account: str | None = None
    # An object, a string (old API versions) or null; never used, just tolerated.
    request: Any = None
    data: EnvelopeData | None = None


T = TypeVar("T")


class EventData(Lenient, Generic[T], kw_only=True):
    object: T
    previous_attributes: dict[str, Any] | None = None


class Event(Lenient, Generic[T], kw_only=True):
    """A stored event with its data.object decoded as ``T``."""

    id: str = ""
    type: str = ""
    created: int = 0
    livemode: bool = False
    account: str | None = None
    # The version that shaped data.object; none on the events the daemon makes
    # itself (a backfill's), except those of an object it fetched (execute.py).
    api_version: str | None = None
    data: EventData[T]


# -- objects ---------------------------------------------------------------------


class InvoiceSettings(Lenient):
    default_payment_method: Expandable = None


class Customer(Lenient):
    id: str = ""
    # customer.deleted carries either the full object or a stub {id, object, deleted}.
    deleted: bool = False
    metadata: dict[str, Any] | None = None
    invoice_settings: InvoiceSettings | None = None

    @property
    def default_payment_method(self) -> str | None:
        settings = self.invoice_settings
        return ref_id(settings.default_payment_method) if settings else None


class CatalogObject(Lenient):
    """A product, a price or a legacy plan: only identity and liveness are read."""

    id: str = ""
    deleted: bool = False
    active: bool | None = None
    metadata: dict[str, Any] | None = None


class Plan(Lenient):
    id: str = ""


class SubscriptionItem(Lenient):
    id: str | None = None
    price: Expandable = None
    plan: Plan | None = None  # versions before prices existed
    quantity: int | None = None
    # Newer API versions moved the billing period from the subscription to its items.
    current_period_start: int | None = None
    current_period_end: int | None = None


class SubscriptionItems(Lenient):
    data: list[SubscriptionItem] = []


class PauseCollection(Lenient):
    behavior: str | None = None


class Subscription(Lenient):
    id: str = ""
    customer: Expandable = None
    status: str | None = None
    current_period_start: int | None = None
    current_period_end: int | None = None
    cancel_at_period_end: bool | None = None
    canceled_at: int | None = None
    ended_at: int | None = None
    trial_start: int | None = None
    trial_end: int | None = None
    pause_collection: PauseCollection | None = None
    items: SubscriptionItems | None = None
    # 2015-era subscriptions have one plan and a quantity, no items.
    plan: Plan | None = None
    quantity: int | None = None


class SubscriptionDetails(Lenient):
    subscription: Expandable = None


class InvoiceParent(Lenient):
    subscription_details: SubscriptionDetails | None = None


class StatusTransitions(Lenient):
    paid_at: int | None = None


class Invoice(Lenient):
    id: str = ""
    customer: Expandable = None
    subscription: Expandable = None
    parent: InvoiceParent | None = None
    status: str | None = None
    paid: bool | None = None  # old versions have paid/closed instead of status
    number: str | None = None
    currency: str | None = None
    amount_due: int | None = None
    amount_paid: int | None = None
    amount_remaining: int | None = None
    total: int | None = None
    period_start: int | None = None
    period_end: int | None = None
    due_date: int | None = None
    status_transitions: StatusTransitions | None = None
    # Its payment, in versions before 2025-03-31 (since: invoice_payment events).
    payment_intent: Expandable = None
    # Real 2015 events hold a number here: only an id (or object) is a link.
    charge: Expandable | int = None

    @property
    def charge_id(self) -> str | None:
        return None if isinstance(self.charge, int) else ref_id(self.charge)

    @property
    def subscription_id(self) -> str | None:
        if found := ref_id(self.subscription):
            return found
        details = self.parent.subscription_details if self.parent else None
        return ref_id(details.subscription) if details else None


class Refund(Lenient):
    id: str = ""
    amount: int | None = None
    charge: Expandable = None
    payment_intent: Expandable = None
    status: str | None = None


class RefundList(Lenient):
    data: list[Refund] = []


class Charge(Lenient):
    id: str = ""
    payment_intent: Expandable = None
    invoice: Expandable = None  # before API 2025-03-31
    status: str | None = None
    paid: bool | None = None
    amount_refunded: int | None = None
    refunds: RefundList | None = None


class ChargeList(Lenient):
    data: list[Charge] = []


class PaymentError(Lenient):
    message: str | None = None


class PaymentIntent(Lenient):
    id: str = ""
    customer: Expandable = None
    invoice: Expandable = None  # before API 2025-03-31 (since: invoice_unnamed)
    status: str | None = None
    currency: str | None = None
    amount: int | None = None
    amount_received: int | None = None
    # The charge: latest_charge (id or expanded) in newer versions,
    # charges.data in older ones.
    latest_charge: Expandable = None
    charges: ChargeList | None = None
    last_payment_error: PaymentError | None = None

    @property
    def charge_id(self) -> str | None:
        """The charge that carried the money: latest_charge, else the succeeded one."""
        if found := ref_id(self.latest_charge):
            return found
        charges = self.charges.data if self.charges else []
        for charge in charges:
            if charge.status == "succeeded" or charge.paid:
                return charge.id or None
        return None

    @property
    def charge_amount_refunded(self) -> int:
        charges = self.charges.data if self.charges else []
        return max((c.amount_refunded or 0 for c in charges), default=0)


class InvoicePaymentTarget(Lenient):
    type: str | None = None
    payment_intent: Expandable = None
    charge: Expandable = None


class InvoicePayment(Lenient):
    """API 2025-03-31 and later: the link between an invoice and its payment."""

    id: str = ""
    invoice: Expandable = None
    payment: InvoicePaymentTarget | None = None
    status: str | None = None


class EvidenceDetails(Lenient):
    due_by: int | None = None


class Dispute(Lenient):
    """A charge dispute (chargeback or inquiry); ``payment_intent`` since 2019."""

    id: str = ""
    charge: Expandable = None
    payment_intent: Expandable = None
    status: str | None = None
    reason: str | None = None
    amount: int | None = None
    currency: str | None = None
    evidence_details: EvidenceDetails | None = None


class Card(Lenient):
    """What a card payment method shows: never a number, and MC keeps no fingerprint."""

    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None


class PaymentMethod(Lenient):
    id: str = ""
    type: str | None = None
    customer: Expandable = None  # null once detached
    card: Card | None = None


class SetupIntent(Lenient):
    id: str = ""
    customer: Expandable = None
    # An id, or the payment method itself when the event was made with it expanded.
    payment_method: str | PaymentMethod | None = None
    status: str | None = None


class CreditNote(Lenient):
    id: str = ""
    invoice: Expandable = None
    status: str | None = None  # issued or void
    amount: int | None = None
    total: int | None = None
    currency: str | None = None
    reason: str | None = None
    memo: str | None = None


class CheckoutSession(Lenient):
    id: str = ""
    customer: Expandable = None
    client_reference_id: str | None = None
    metadata: dict[str, Any] | None = None
    subscription: Expandable = None
    payment_intent: Expandable = None


S = TypeVar("S")


def decode_event(raw: str | bytes, obj_type: type[S]) -> Event[S]:
    """Decode a stored event with its data.object as ``obj_type``; an event we
    cannot read that way is a PermanentError naming the field."""
    try:
        return msgspec.json.decode(raw, type=Event[obj_type])  # type: ignore[valid-type]
    except msgspec.ValidationError as exc:
        text, where = validation_parts(exc)
        raise PermanentError(f"event{where}: {text}") from None
    except msgspec.DecodeError as exc:
        raise PermanentError(f"event is not valid JSON ({exc})") from None
    except RecursionError:
        raise PermanentError("event is nested too deeply to read") from None


# The API version from which a PaymentIntent (and a charge) no longer names its
# invoice: only an InvoicePayment links the two (Stripe's changelog, 2025-03-31.basil).
INVOICE_UNNAMED_SINCE = "2025-03-31"


def invoice_unnamed(api_version: str | None) -> bool:
    """Objects of this API version ("2025-03-31.basil", "2024-06-20") do not name
    a payment's invoice; False when the version is unknown."""
    return api_version is not None and api_version[:10] >= INVOICE_UNNAMED_SINCE


def metadata_id(metadata: dict[str, Any] | None, key: str) -> int | None:
    """An MC row id written into Stripe metadata by the outbox, if it is one."""
    value = (metadata or {}).get(key)
    if isinstance(value, str) and value.isdigit() and len(value) < 19:
        return int(value)
    return None
