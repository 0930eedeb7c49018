"""Payment intents, charges and refunds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import billing, cards, new_objects_billing
from .errors import StripeError, invalid
from .forms import check_known, get_bool, get_dict, get_int, get_list, get_str, merge_metadata
from .listing import list_objects
from .state import JSON, new_id

if TYPE_CHECKING:
    from .emulator import ApiRequest, Emulator


def _unexpected_state(message: str) -> StripeError:
    return StripeError(400, message, code="payment_intent_unexpected_state")


# -- payment intents -----------------------------------------------------------------
_PI_UPDATE = {
    "amount",
    "currency",
    "customer",
    "description",
    "metadata",
    "payment_method",
    "receipt_email",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "setup_future_usage",
    "shipping",
    "payment_method_types",
}
_PI_CREATE = _PI_UPDATE | {
    "confirm",
    "automatic_payment_methods",
    "capture_method",
    "off_session",
    "return_url",
    "confirmation_method",
}


def _apply_pi(emu: Emulator, pi: JSON, p: dict[str, Any]) -> None:
    for name in (
        "description",
        "receipt_email",
        "statement_descriptor",
        "statement_descriptor_suffix",
        "setup_future_usage",
        "payment_method",
    ):
        if name in p:
            pi[name] = get_str(p, name)
    if pi["payment_method"] is not None:
        cards.card_of(emu, pi["payment_method"])  # Stripe's 404 for an unknown one
    if "customer" in p:
        customer = get_str(p, "customer")
        if customer is not None:
            emu.store.require("customers", customer, "customer")
        pi["customer"] = customer
    if "amount" in p:
        amount = get_int(p, "amount", required=True) or 0
        if amount < 1:
            raise invalid(
                "amount",
                "This value must be greater than or equal to 1.",
                "parameter_invalid_integer",
            )
        pi["amount"] = amount
    if "currency" in p:
        pi["currency"] = (get_str(p, "currency", required=True) or "").lower()
    if "payment_method_types" in p:
        pi["payment_method_types"] = get_list(p, "payment_method_types")
    auto = get_dict(p, "automatic_payment_methods")
    if auto:
        pi["automatic_payment_methods"] = {
            "allow_redirects": "always",
            "enabled": get_bool(auto, "enabled"),
        }
    pi["metadata"] = merge_metadata(pi["metadata"], p)


def create_payment_intent(emu: Emulator, req: ApiRequest) -> JSON:
    p = req.params
    check_known(p, _PI_CREATE)
    get_int(p, "amount", required=True)
    get_str(p, "currency", required=True)
    pi = new_objects_billing.payment_intent(new_id("pi"), emu.now(), req.livemode)
    _apply_pi(emu, pi, p)
    pi["capture_method"] = get_str(p, "capture_method") or "automatic"
    if pi["payment_method"]:
        pi["status"] = "requires_confirmation"
    emu.store.put("payment_intents", pi)
    emu.record_event(req, "payment_intent.created", pi)
    if get_bool(p, "confirm"):
        _confirm(emu, req, pi, pi["payment_method"])
    return pi


def _confirm(emu: Emulator, req: ApiRequest, pi: JSON, method: str | None) -> None:
    if pi["status"] not in ("requires_payment_method", "requires_confirmation"):
        raise _unexpected_state(
            f"This PaymentIntent's status is {pi['status']}, so it cannot be confirmed."
        )
    method = method or pi["payment_method"] or cards.DEFAULT_PAYMENT_METHOD
    if cards.card_of(emu, method).decline is not None:
        raise billing.fail_payment(emu, req, pi, method)
    if pi["setup_future_usage"] and pi["customer"]:
        # Saving the card for later: it becomes a payment method of the customer.
        pm = cards.saved(emu, method, pi["livemode"])
        cards.attach(emu, req, pm, pi["customer"])
        method = pm["id"]
    pi["payment_method"] = method
    billing.succeed_payment(emu, req, pi)


def confirm_payment_intent(emu: Emulator, req: ApiRequest) -> JSON:
    pi = emu.store.require("payment_intents", req.path_params["id"])
    check_known(req.params, {"payment_method", "return_url", "off_session", "receipt_email"})
    _confirm(emu, req, pi, get_str(req.params, "payment_method"))
    return pi


def update_payment_intent(emu: Emulator, req: ApiRequest) -> JSON:
    pi = emu.store.require("payment_intents", req.path_params["id"])
    check_known(req.params, _PI_UPDATE)
    if pi["status"] in ("succeeded", "canceled") and set(req.params) - {
        "metadata",
        "description",
        "expand",
    }:
        raise _unexpected_state(
            f"This PaymentIntent's status is {pi['status']}; it cannot be updated."
        )
    with emu.updating(req, pi, "payment_intent.updated"):
        _apply_pi(emu, pi, req.params)
    return pi


def cancel_payment_intent(emu: Emulator, req: ApiRequest) -> JSON:
    pi = emu.store.require("payment_intents", req.path_params["id"])
    check_known(req.params, {"cancellation_reason"})
    if pi["status"] in ("succeeded", "canceled"):
        raise _unexpected_state(
            f"You cannot cancel this PaymentIntent because it has a status of {pi['status']}."
        )
    pi.update(
        status="canceled",
        canceled_at=emu.now(),
        cancellation_reason=get_str(req.params, "cancellation_reason") or "requested_by_customer",
    )
    emu.record_event(req, "payment_intent.canceled", pi)
    return pi


def retrieve_payment_intent(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("payment_intents", req.path_params["id"])


def list_payment_intents(emu: Emulator, req: ApiRequest) -> JSON:
    return list_objects(emu.store, req.params, "payment_intents", equal=("customer",))


# -- charges and refunds -------------------------------------------------------------
def retrieve_charge(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("charges", req.path_params["id"])


def list_charges(emu: Emulator, req: ApiRequest) -> JSON:
    return list_objects(emu.store, req.params, "charges", equal=("customer", "payment_intent"))


def create_refund(emu: Emulator, req: ApiRequest) -> JSON:
    p = req.params
    check_known(
        p,
        {
            "charge",
            "payment_intent",
            "amount",
            "reason",
            "metadata",
            "refund_application_fee",
            "reverse_transfer",
        },
    )
    charge_id, pi_id = get_str(p, "charge"), get_str(p, "payment_intent")
    if charge_id is None and pi_id is None:
        raise StripeError(
            400,
            "One of `charge` or `payment_intent` is required.",
            code="parameter_missing",
            param="charge",
        )
    if pi_id is not None:
        pi = emu.store.require("payment_intents", pi_id, "payment_intent")
        if pi["status"] != "succeeded" or not pi["latest_charge"]:
            raise _unexpected_state(
                f"This PaymentIntent ({pi_id}) does not have a successful charge to refund."
            )
        charge_id = pi["latest_charge"]
    ch = emu.store.require("charges", charge_id or "", "charge")
    if ch["status"] != "succeeded":
        raise invalid(
            "charge",
            f"Charge {ch['id']} has not succeeded and cannot be refunded.",
            "charge_not_refundable",
        )
    remaining = ch["amount"] - ch["amount_refunded"]
    if remaining <= 0:
        raise StripeError(
            400,
            f"Charge {ch['id']} has already been refunded.",
            code="charge_already_refunded",
            param="charge",
        )
    amount = get_int(p, "amount")
    amount = remaining if amount is None else amount
    if amount <= 0 or amount > remaining:
        raise invalid(
            "amount",
            f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining}).",
            "amount_too_large",
        )
    reason = get_str(p, "reason")
    if reason not in (None, "duplicate", "fraudulent", "requested_by_customer"):
        raise invalid("reason", "Invalid reason", "parameter_invalid_string")
    return refund_charge(emu, req, ch, amount, reason, merge_metadata({}, p))


def refund_charge(
    emu: Emulator,
    req: ApiRequest,
    ch: JSON,
    amount: int,
    reason: str | None,
    metadata: dict[str, str] | None = None,
) -> JSON:
    """Refund `amount` (checked by the caller) of a succeeded charge: charge.refunded
    and refund.created."""
    refund = new_objects_billing.refund(new_id("re"), emu.now())
    refund.update(
        amount=amount,
        charge=ch["id"],
        currency=ch["currency"],
        payment_intent=ch["payment_intent"],
        reason=reason,
        metadata=metadata or {},
        balance_transaction=new_id("txn"),
    )
    emu.store.put("refunds", refund)
    with emu.updating(req, ch, "charge.refunded"):
        ch["amount_refunded"] += amount
        ch["refunded"] = ch["amount_refunded"] >= ch["amount"]
        ch["refunds"]["data"].insert(0, refund)
    emu.record_event(req, "refund.created", refund)
    return refund


def retrieve_refund(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("refunds", req.path_params["id"])


def list_refunds(emu: Emulator, req: ApiRequest) -> JSON:
    return list_objects(emu.store, req.params, "refunds", equal=("charge", "payment_intent"))


# -- invoice payments (API 2025-03-31+: which invoice a payment pays) -----------------
_PAYMENT_TYPES = ("payment_intent", "payment_record")
_INVOICE_PAYMENT_STATUSES = ("canceled", "open", "paid")


def retrieve_invoice_payment(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("invoice_payments", req.path_params["invoice_payment"])


def list_invoice_payments(emu: Emulator, req: ApiRequest) -> JSON:
    """By invoice, by payment (``payment[type]`` required, then the id of that
    type), by status; newest first, paginated."""
    p = req.params
    status = get_str(p, "status")
    if status is not None and status not in _INVOICE_PAYMENT_STATUSES:
        raise invalid(
            "status",
            f"Invalid status: must be one of {', '.join(_INVOICE_PAYMENT_STATUSES)}",
            "parameter_invalid_string",
        )
    payment = get_dict(p, "payment")
    wanted: dict[str, str] = {}
    if payment is not None:
        check_known(payment, {"type", *_PAYMENT_TYPES})
        kind = get_str(payment, "type")
        if kind is None:
            raise invalid(
                "payment[type]", "Missing required param: payment[type].", "parameter_missing"
            )
        if kind not in _PAYMENT_TYPES:
            raise invalid(
                "payment[type]",
                f"Invalid payment[type]: must be one of {', '.join(_PAYMENT_TYPES)}",
                "parameter_invalid_string",
            )
        wanted["type"] = kind
        if (named := get_str(payment, kind)) is not None:
            wanted[kind] = named

    def keep(obj: JSON) -> bool:
        return all(obj["payment"].get(name) == value for name, value in wanted.items())

    return list_objects(
        emu.store,
        req.params,
        "invoice_payments",
        equal=("invoice", "status"),
        known=("payment",),
        keep=keep,
    )


# -- disputes -------------------------------------------------------------------------
def retrieve_dispute(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("disputes", req.path_params["dispute"], "dispute")


def list_disputes(emu: Emulator, req: ApiRequest) -> JSON:
    return list_objects(emu.store, req.params, "disputes", equal=("charge", "payment_intent"))


def close_dispute(emu: Emulator, req: ApiRequest) -> JSON:
    """Accept the dispute: it is lost (Stripe: closing is conceding)."""
    dp = emu.store.require("disputes", req.path_params["dispute"], "dispute")
    check_known(req.params, set())
    if dp["status"] not in ("needs_response", "warning_needs_response"):
        raise StripeError(400, f"This dispute is already {dp['status']}.")
    dp.update(
        status="warning_closed" if dp["status"].startswith("warning") else "lost",
        is_charge_refundable=False,
    )
    emu.record_event(req, "charge.dispute.closed", dp)
    return dp


ROUTES = [
    ("POST", "/v1/payment_intents", create_payment_intent),
    ("GET", "/v1/payment_intents", list_payment_intents),
    ("GET", "/v1/payment_intents/{id}", retrieve_payment_intent),
    ("POST", "/v1/payment_intents/{id}", update_payment_intent),
    ("POST", "/v1/payment_intents/{id}/confirm", confirm_payment_intent),
    ("POST", "/v1/payment_intents/{id}/cancel", cancel_payment_intent),
    ("GET", "/v1/charges", list_charges),
    ("GET", "/v1/charges/{id}", retrieve_charge),
    ("POST", "/v1/refunds", create_refund),
    ("GET", "/v1/refunds", list_refunds),
    ("GET", "/v1/refunds/{id}", retrieve_refund),
    ("GET", "/v1/invoice_payments", list_invoice_payments),
    ("GET", "/v1/invoice_payments/{invoice_payment}", retrieve_invoice_payment),
    ("GET", "/v1/disputes", list_disputes),
    ("GET", "/v1/disputes/{dispute}", retrieve_dispute),
    ("POST", "/v1/disputes/{dispute}/close", close_dispute),
]
