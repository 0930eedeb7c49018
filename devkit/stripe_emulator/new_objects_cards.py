"""New payment methods and setup intents, as Stripe creates them (see new_objects.py)."""

from __future__ import annotations

from .new_objects_billing import empty_address
from .state import JSON


def payment_method(
    pmid: str,
    created: int,
    livemode: bool,
    *,
    brand: str,
    last4: str,
    funding: str,
    exp_month: int,
    exp_year: int,
) -> JSON:
    """A card payment method. Stripe shows a card's fingerprint; the emulator
    derives one from the number's last digits, as the same number gives the same one."""
    return {
        "id": pmid,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {
            "address": empty_address(),
            "email": None,
            "name": None,
            "phone": None,
            "tax_id": None,
        },
        "card": {
            "brand": brand,
            "checks": {
                "address_line1_check": None,
                "address_postal_code_check": None,
                "cvc_check": None,
            },
            "country": "US",
            "display_brand": brand,
            "exp_month": exp_month,
            "exp_year": exp_year,
            "fingerprint": f"emu{brand[:4]}{last4}",
            "funding": funding,
            "generated_from": None,
            "last4": last4,
            "networks": {"available": [brand], "preferred": None},
            "regulated_status": "unregulated",
            "three_d_secure_usage": {"supported": True},
            "wallet": None,
        },
        "created": created,
        "customer": None,
        "customer_account": None,
        "livemode": livemode,
        "metadata": {},
        "type": "card",
    }


def setup_intent(sid: str, created: int, livemode: bool) -> JSON:
    return {
        "id": sid,
        "object": "setup_intent",
        "application": None,
        "automatic_payment_methods": None,
        "cancellation_reason": None,
        "client_secret": f"{sid}_secret_{sid[5:]}",
        "created": created,
        "customer": None,
        "description": None,
        "excluded_payment_method_types": None,
        "flow_directions": None,
        "last_setup_error": None,
        "latest_attempt": None,
        "livemode": livemode,
        "mandate": None,
        "metadata": {},
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": None,
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "single_use_mandate": None,
        "status": "requires_payment_method",
        "usage": "off_session",
    }
