"""New invoices, payment intents, charges and refunds, as Stripe creates them (see
new_objects.py)."""

from __future__ import annotations

from .new_objects import list_object
from .state import JSON


def _address() -> JSON:
    keys = ("city", "country", "line1", "line2", "postal_code", "state")
    return dict.fromkeys(keys)


def invoice(iid: str, created: int, livemode: bool, account_name: str | None) -> JSON:
    return {
        "id": iid,
        "object": "invoice",
        "account_country": "US",
        "account_name": account_name,
        "account_tax_ids": None,
        "amount_due": 0,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_remaining": 0,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": False,
        "automatic_tax": {
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        "automatically_finalizes_at": None,
        "billing_reason": "manual",
        "collection_method": "charge_automatically",
        "created": created,
        "currency": "usd",
        "custom_fields": None,
        "customer": None,
        "customer_account": None,
        "customer_address": None,
        "customer_email": None,
        "customer_name": None,
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": list_object(f"/v1/invoices/{iid}/lines"),
        "livemode": livemode,
        "metadata": {},
        "next_payment_attempt": None,
        "number": None,
        "on_behalf_of": None,
        "parent": None,
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        "payments": list_object(f"/v1/invoice_payments?invoice={iid}"),
        "period_end": created,
        "period_start": created,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subscription": None,
        "subtotal": 0,
        "subtotal_excluding_tax": 0,
        "test_clock": None,
        "total": 0,
        "total_discount_amounts": [],
        "total_excluding_tax": 0,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": None,
    }


def payment_intent(pid: str, created: int, livemode: bool) -> JSON:
    return {
        "id": pid,
        "object": "payment_intent",
        "amount": 0,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "client_secret": f"{pid}_secret_{pid[3:]}",
        "confirmation_method": "automatic",
        "created": created,
        "currency": None,
        "customer": None,
        "customer_account": None,
        "description": None,
        "excluded_payment_method_types": None,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": livemode,
        "managed_payments": None,
        "metadata": {},
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": None,
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "requires_payment_method",
        "transfer_data": None,
        "transfer_group": None,
    }


def charge(cid: str, created: int, livemode: bool) -> JSON:
    return {
        "id": cid,
        "object": "charge",
        "amount": 0,
        "amount_captured": 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": None,
        "billing_details": {
            "address": _address(),
            "email": None,
            "name": None,
            "phone": None,
            "tax_id": None,
        },
        "calculated_statement_descriptor": "STRIPE-SYNC EMULATOR",
        "captured": True,
        "created": created,
        "currency": None,
        "customer": None,
        "description": None,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "fraud_details": {},
        "livemode": livemode,
        "metadata": {},
        "on_behalf_of": None,
        "outcome": {
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
        "paid": True,
        "payment_intent": None,
        "payment_method": None,
        "payment_method_details": {
            "card": {
                "brand": "visa",
                "country": "US",
                "exp_month": 12,
                "exp_year": 2034,
                "funding": "credit",
                "last4": "4242",
            },
            "type": "card",
        },
        "receipt_email": None,
        "receipt_number": None,
        "receipt_url": None,
        "refunded": False,
        "refunds": list_object(f"/v1/charges/{cid}/refunds"),
        "review": None,
        "shipping": None,
        "source": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded",
        "transfer_data": None,
        "transfer_group": None,
    }


def payment_method(pmid: str, created: int, livemode: bool) -> JSON:
    """The test card's payment method, as a declined payment's error carries it."""
    return {
        "id": pmid,
        "object": "payment_method",
        "billing_details": {"address": _address(), "email": None, "name": None, "phone": None},
        "card": {
            "brand": "visa",
            "country": "US",
            "exp_month": 12,
            "exp_year": 2034,
            "funding": "credit",
            "last4": "0002",
        },
        "created": created,
        "customer": None,
        "livemode": livemode,
        "metadata": {},
        "type": "card",
    }


def dispute(did: str, created: int, livemode: bool, evidence_due_by: int) -> JSON:
    evidence = (
        "access_activity_log billing_address cancellation_policy cancellation_policy_disclosure "
        "cancellation_rebuttal customer_communication customer_email_address customer_name "
        "customer_purchase_ip customer_signature duplicate_charge_documentation "
        "duplicate_charge_explanation duplicate_charge_id product_description receipt "
        "refund_policy refund_policy_disclosure refund_refusal_explanation service_date "
        "service_documentation shipping_address shipping_carrier shipping_date "
        "shipping_documentation shipping_tracking_number uncategorized_file uncategorized_text"
    )
    return {
        "id": did,
        "object": "dispute",
        "amount": 0,
        "balance_transactions": [],
        "charge": None,
        "created": created,
        "currency": None,
        "evidence": dict.fromkeys(evidence.split()),
        "evidence_details": {
            "due_by": evidence_due_by,
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "is_charge_refundable": False,
        "livemode": livemode,
        "metadata": {},
        "payment_intent": None,
        "payment_method_details": {
            "card": {"brand": "visa", "network_reason_code": "10.4"},
            "type": "card",
        },
        "reason": "fraudulent",
        "status": "needs_response",
    }


def refund(rid: str, created: int) -> JSON:
    return {
        "id": rid,
        "object": "refund",
        "amount": 0,
        "balance_transaction": None,
        "charge": None,
        "created": created,
        "currency": None,
        "customer": None,
        "customer_account": None,
        "destination_details": {"card": {"type": "refund"}, "type": "card"},
        "metadata": {},
        "payment_intent": None,
        "payment_method": None,
        "reason": None,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }
