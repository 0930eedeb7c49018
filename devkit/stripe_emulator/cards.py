"""Cards on file: Stripe's test cards, payment methods (attach, detach, update) and
setup intents.

A test token such as `pm_card_visa` is not an object: each use that saves it
(attach, a setup intent, a payment with `setup_future_usage`) makes a new
`pm_…` payment method, as Stripe does. What a charge on a card does (pay,
decline, be disputed) follows from its number, so a saved card behaves as its
token does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import new_objects_cards
from .errors import StripeError, card_declined, declined_error, invalid, missing, no_such
from .forms import check_known, get_bool, get_dict, get_int, get_list, get_str, merge_metadata
from .listing import list_objects
from .state import JSON, new_id

if TYPE_CHECKING:
    from .emulator import ApiRequest, Emulator


@dataclass(frozen=True)
class TestCard:
    brand: str
    last4: str
    funding: str = "credit"
    decline: str | None = None  # the decline_code of a charge on it
    # Saving it works (attach, a setup intent) even though its charges decline.
    saves: bool = False
    dispute: bool = False  # charges succeed, then are disputed as fraudulent


# Stripe's test payment methods (https://docs.stripe.com/testing#cards).
TEST_CARDS = {
    "pm_card_visa": TestCard("visa", "4242"),
    "pm_card_visa_debit": TestCard("visa", "5556", "debit"),
    "pm_card_mastercard": TestCard("mastercard", "4444"),
    "pm_card_amex": TestCard("amex", "8431"),
    "pm_card_discover": TestCard("discover", "1117"),
    "pm_card_chargeDeclined": TestCard("visa", "0002", decline="generic_decline"),
    "pm_card_visa_chargeDeclined": TestCard("visa", "0002", decline="generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": TestCard(
        "visa", "9995", decline="insufficient_funds"
    ),
    "pm_card_chargeDeclinedExpiredCard": TestCard("visa", "0069", decline="expired_card"),
    "pm_card_createDispute": TestCard("visa", "0259", dispute=True),
    # 4000000000000341: attaches to a customer, but every charge on it fails.
    "pm_card_chargeCustomerFail": TestCard("visa", "0341", decline="generic_decline", saves=True),
}
_BY_NUMBER = {(c.brand, c.last4): c for c in TEST_CARDS.values()}
DEFAULT_PAYMENT_METHOD = "pm_card_visa"
# The expiry of the emulator's test cards (Stripe takes any future date).
EXP_MONTH, EXP_YEAR = 12, 2034


def card_of(emu: Emulator, method: str, param: str = "payment_method") -> TestCard:
    """How a charge on `method` (a test token or a stored payment method) behaves."""
    if method in TEST_CARDS:
        return TEST_CARDS[method]
    card = emu.store.require("payment_methods", method, param)["card"]
    found = _BY_NUMBER.get((card["brand"], card["last4"]))
    return found or TestCard(card["brand"], card["last4"], card["funding"])


def expiry(emu: Emulator, method: str) -> tuple[int, int]:
    pm = emu.store.get("payment_methods", method)
    return (pm["card"]["exp_month"], pm["card"]["exp_year"]) if pm else (EXP_MONTH, EXP_YEAR)


def payment_method_object(emu: Emulator, method: str, livemode: bool) -> JSON:
    """The payment method `method` names: the stored one, or for a test token a
    new one (stored only by `saved`)."""
    pm = emu.store.get("payment_methods", method)
    if pm is not None:
        return pm
    card = card_of(emu, method)
    return new_objects_cards.payment_method(
        new_id("pm"),
        emu.now(),
        livemode,
        brand=card.brand,
        last4=card.last4,
        funding=card.funding,
        exp_month=EXP_MONTH,
        exp_year=EXP_YEAR,
    )


def saved(emu: Emulator, method: str, livemode: bool, param: str = "payment_method") -> JSON:
    """The stored payment method `method` names; a test token becomes a new one."""
    card_of(emu, method, param)  # 404 for an unknown id
    pm = payment_method_object(emu, method, livemode)
    if emu.store.get("payment_methods", pm["id"]) is None:
        emu.store.put("payment_methods", pm)
    return pm


def attach(emu: Emulator, req: ApiRequest, pm: JSON, customer_id: str) -> None:
    """Save `pm` to the customer: payment_method.attached."""
    if pm["id"] in emu.store.spent:
        raise invalid(
            "payment_method",
            "This PaymentMethod was previously used without being attached to a Customer "
            "or was detached from a Customer, and may not be used again.",
            "payment_method_unexpected_state",
        )
    if pm["customer"] == customer_id:
        return
    if pm["customer"] is not None:
        raise invalid(
            "payment_method",
            "The payment method you provided has already been attached to a customer.",
            "payment_method_unexpected_state",
        )
    pm["customer"] = customer_id
    emu.record_event(req, "payment_method.attached", pm)


def check_default(emu: Emulator, customer_id: str, method: str | None) -> None:
    """invoice_settings.default_payment_method must be attached to the customer."""
    param = "invoice_settings[default_payment_method]"
    if method is None:
        return
    pm = emu.store.get("payment_methods", method)
    if pm is None:
        raise no_such("PaymentMethod", method, param)
    if pm["customer"] != customer_id:
        raise invalid(
            param,
            f"The customer does not have a payment method with the ID {method}. "
            "The payment method must be attached to the customer.",
            "resource_missing",
        )


# -- payment methods -----------------------------------------------------------------
def retrieve_payment_method(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("payment_methods", req.path_params["payment_method"])


def list_payment_methods(emu: Emulator, req: ApiRequest) -> JSON:
    return list_objects(emu.store, req.params, "payment_methods", equal=("customer", "type"))


def attach_payment_method(emu: Emulator, req: ApiRequest) -> JSON:
    check_known(req.params, {"customer"})
    customer_id = get_str(req.params, "customer", required=True) or ""
    emu.store.require("customers", customer_id, "customer")
    pm = saved(emu, req.path_params["payment_method"], req.livemode, "payment_method")
    attach(emu, req, pm, customer_id)
    return pm


def detach_payment_method(emu: Emulator, req: ApiRequest) -> JSON:
    """payment_method.detached (previous_attributes: the customer); a detached
    method cannot be used again, and stops being its customer's default."""
    check_known(req.params, set())
    pm = emu.store.require("payment_methods", req.path_params["payment_method"])
    customer_id = pm["customer"]
    if customer_id is None:
        raise invalid(
            "payment_method",
            "The payment method you provided is not attached to a customer so detachment "
            "is impossible.",
            "payment_method_unexpected_state",
        )
    pm["customer"] = None
    emu.store.spent.add(pm["id"])
    emu.record_event(req, "payment_method.detached", pm, {"customer": customer_id})
    cus = emu.store.get("customers", customer_id)
    if cus is not None and cus["invoice_settings"]["default_payment_method"] == pm["id"]:
        with emu.updating(req, cus, "customer.updated"):
            cus["invoice_settings"] = {**cus["invoice_settings"], "default_payment_method": None}
    return pm


def update_payment_method(emu: Emulator, req: ApiRequest) -> JSON:
    """A new expiry (card[exp_month], card[exp_year]), billing details, metadata:
    payment_method.updated. Only a saved card can be updated."""
    pm = emu.store.require("payment_methods", req.path_params["payment_method"])
    p = req.params
    check_known(p, {"card", "billing_details", "metadata", "allow_redisplay"})
    if pm["customer"] is None:
        raise invalid(
            "payment_method",
            "You must save this PaymentMethod to a customer before you can update it.",
            "payment_method_unexpected_state",
        )
    card = get_dict(p, "card") or {}
    check_known(card, {"exp_month", "exp_year", "networks"})
    with emu.updating(req, pm, "payment_method.updated"):
        updated = dict(pm["card"])
        for name in ("exp_month", "exp_year"):
            value = get_int(card, name)
            if value is not None:
                updated[name] = value
        pm["card"] = updated
        details = get_dict(p, "billing_details")
        if details:
            pm["billing_details"] = {**pm["billing_details"], **details}
        if "allow_redisplay" in p:
            pm["allow_redisplay"] = get_str(p, "allow_redisplay")
        pm["metadata"] = merge_metadata(pm["metadata"], p)
    return pm


# -- setup intents -------------------------------------------------------------------
_SI_CREATE = {
    "customer",
    "payment_method",
    "confirm",
    "usage",
    "payment_method_types",
    "description",
    "metadata",
    "automatic_payment_methods",
    "return_url",
}


def create_setup_intent(emu: Emulator, req: ApiRequest) -> JSON:
    p = req.params
    check_known(p, _SI_CREATE)
    si = new_objects_cards.setup_intent(new_id("seti"), emu.now(), req.livemode)
    customer_id = get_str(p, "customer")
    if customer_id is not None:
        emu.store.require("customers", customer_id, "customer")
    method = get_str(p, "payment_method")
    if method is not None:
        card_of(emu, method)
    si.update(
        customer=customer_id,
        payment_method=method,
        description=get_str(p, "description"),
        metadata=merge_metadata({}, p),
        usage=get_str(p, "usage") or "off_session",
        status="requires_confirmation" if method else "requires_payment_method",
    )
    if "payment_method_types" in p:
        si["payment_method_types"] = get_list(p, "payment_method_types")
    emu.store.put("setup_intents", si)
    emu.record_event(req, "setup_intent.created", si)
    if get_bool(p, "confirm"):
        _confirm_setup(emu, req, si, None)
    return si


def confirm_setup_intent(emu: Emulator, req: ApiRequest) -> JSON:
    si = emu.store.require("setup_intents", req.path_params["intent"], "intent")
    check_known(req.params, {"payment_method", "return_url", "use_stripe_sdk"})
    _confirm_setup(emu, req, si, get_str(req.params, "payment_method"))
    return si


def retrieve_setup_intent(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("setup_intents", req.path_params["intent"], "intent")


def _confirm_setup(emu: Emulator, req: ApiRequest, si: JSON, method: str | None) -> None:
    """Save the card: a declining one fails (setup_intent.setup_failed, 402);
    otherwise it is attached to the intent's customer (payment_method.attached)
    and setup_intent.succeeded names it by id."""
    if si["status"] not in ("requires_payment_method", "requires_confirmation"):
        raise StripeError(
            400,
            f"You cannot confirm this SetupIntent because it has a status of {si['status']}.",
            code="setup_intent_unexpected_state",
        )
    method = method or si["payment_method"]
    if method is None:
        raise missing("payment_method")
    card = card_of(emu, method)
    if card.decline is not None and not card.saves:
        si.update(
            status="requires_payment_method",
            payment_method=None,
            last_setup_error=declined_error(card.decline),
        )
        emu.record_event(req, "setup_intent.setup_failed", si)
        raise card_declined(card.decline, setup_intent=dict(si))
    pm = saved(emu, method, si["livemode"])
    if si["customer"] is not None:
        attach(emu, req, pm, si["customer"])
    si.update(status="succeeded", payment_method=pm["id"], last_setup_error=None)
    emu.record_event(req, "setup_intent.succeeded", si)


ROUTES = [
    ("GET", "/v1/payment_methods", list_payment_methods),
    ("GET", "/v1/payment_methods/{payment_method}", retrieve_payment_method),
    ("POST", "/v1/payment_methods/{payment_method}", update_payment_method),
    ("POST", "/v1/payment_methods/{payment_method}/attach", attach_payment_method),
    ("POST", "/v1/payment_methods/{payment_method}/detach", detach_payment_method),
    ("POST", "/v1/setup_intents", create_setup_intent),
    ("GET", "/v1/setup_intents/{intent}", retrieve_setup_intent),
    ("POST", "/v1/setup_intents/{intent}/confirm", confirm_setup_intent),
]
