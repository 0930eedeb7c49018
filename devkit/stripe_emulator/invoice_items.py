"""Invoice items a developer adds (POST /v1/invoiceitems): pending until an
invoice takes them, as Stripe does. One that names a `subscription` lands on
that subscription's next invoice; one without, on the customer's next
subscription invoice. Prorations are invoice items too (prorations.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import new_objects_billing
from .errors import invalid, missing
from .forms import check_known, get_int, get_str, merge_metadata
from .listing import list_objects
from .state import JSON, new_id

if TYPE_CHECKING:
    from .emulator import ApiRequest, Emulator

_CREATE = {
    "customer",
    "subscription",
    "price",
    "quantity",
    "amount",
    "currency",
    "description",
    "metadata",
}


def create_invoice_item(emu: Emulator, req: ApiRequest) -> JSON:
    p = req.params
    check_known(p, _CREATE)
    customer_id = get_str(p, "customer", required=True) or ""
    cus = emu.store.require("customers", customer_id, "customer")
    sub_id = get_str(p, "subscription")
    if sub_id is not None:
        sub = emu.store.require("subscriptions", sub_id, "subscription")
        if sub["customer"] != customer_id:
            raise invalid(
                "subscription",
                f"The subscription {sub_id} does not belong to the customer {customer_id}.",
                "parameter_invalid_string",
            )
    quantity = get_int(p, "quantity")
    price_id = get_str(p, "price")
    if price_id is not None:
        price = emu.store.require("prices", price_id, "price")
        quantity = 1 if quantity is None else quantity
        amount, currency = (price["unit_amount"] or 0) * quantity, price["currency"]
        details: JSON | None = {"price": price["id"], "product": price["product"]}
        unit = price["unit_amount_decimal"]
    else:
        if "amount" not in p:
            raise missing("amount")
        amount = get_int(p, "amount", required=True) or 0
        currency = (get_str(p, "currency") or "").lower()
        if not currency:
            raise missing("currency")
        quantity, details, unit = 1, None, str(amount)
    ii = new_objects_billing.invoice_item(new_id("ii"), emu.now(), req.livemode)
    ii.update(
        amount=amount,
        net_amount=amount,
        currency=currency,
        customer=customer_id,
        description=get_str(p, "description"),
        discountable=True,
        metadata=merge_metadata({}, p),
        parent=None
        if sub_id is None
        else {"subscription_details": {"subscription": sub_id}, "type": "subscription_details"},
        pricing={"price_details": details, "type": "price_details", "unit_amount_decimal": unit},
        quantity=quantity,
        quantity_decimal=str(quantity),
        test_clock=cus["test_clock"],
    )
    emu.store.put("invoiceitems", ii)
    emu.record_event(req, "invoiceitem.created", ii)
    return ii


def retrieve_invoice_item(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("invoiceitems", req.path_params["invoiceitem"], "invoiceitem")


def list_invoice_items(emu: Emulator, req: ApiRequest) -> JSON:
    pending = req.params.get("pending")

    def keep(ii: JSON) -> bool:
        return pending is None or (ii["invoice"] is None) == (str(pending).lower() == "true")

    return list_objects(
        emu.store,
        req.params,
        "invoiceitems",
        equal=("customer", "invoice"),
        known={"pending"},
        keep=keep,
    )


def for_customer(emu: Emulator, customer_id: str) -> list[JSON]:
    """The customer's pending invoice items that name no subscription, oldest first."""
    return [
        ii
        for ii in emu.store.all("invoiceitems")
        if ii["invoice"] is None and ii["parent"] is None and ii["customer"] == customer_id
    ]


ROUTES = [
    ("POST", "/v1/invoiceitems", create_invoice_item),
    ("GET", "/v1/invoiceitems", list_invoice_items),
    ("GET", "/v1/invoiceitems/{invoiceitem}", retrieve_invoice_item),
]
