"""Subscriptions and their invoices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import billing, new_objects, prorations, renewals
from .errors import StripeError, invalid, missing, no_such
from .forms import check_known, get_bool, get_dict, get_int, get_list, get_str, merge_metadata
from .listing import PAGE_PARAMS, list_objects, paginate
from .state import JSON, new_id

if TYPE_CHECKING:
    from .emulator import ApiRequest, Emulator


# -- subscriptions -------------------------------------------------------------------
_SUB_UPDATE = {
    "items",
    "metadata",
    "cancel_at_period_end",
    "cancel_at",
    "pause_collection",
    "description",
    "default_payment_method",
    "proration_behavior",
    "payment_behavior",
    "collection_method",
    "days_until_due",
    "cancellation_details",
}
_SUB_CREATE = (_SUB_UPDATE - {"pause_collection"}) | {
    "customer",
    "trial_period_days",
    "currency",
    "off_session",
    "billing_cycle_anchor",
}


def _price_for_item(emu: Emulator, spec: dict[str, Any], index: int, currency: str | None) -> JSON:
    param = f"items[{index}][price]"
    price_id = get_str(spec, "price")
    if price_id is None:
        raise missing(param)
    price = emu.store.require("prices", price_id, param)
    if price["type"] != "recurring":
        raise invalid(
            param,
            "The price specified is set to `type=one_time` but this field only accepts "
            "prices with `type=recurring`.",
            "parameter_invalid_string",
        )
    if not price["active"]:
        raise invalid(
            param, f"The price specified is inactive: {price_id}", "parameter_invalid_string"
        )
    if currency is not None and price["currency"] != currency:
        raise invalid(
            param,
            "All prices on a subscription must have the same currency.",
            "parameter_invalid_string",
        )
    return price


def _quantity(spec: dict[str, Any], index: int) -> int | None:
    qty = get_int(spec, "quantity")
    if qty is not None and qty < 0:
        raise invalid(
            f"items[{index}][quantity]", "Invalid non-negative integer", "parameter_invalid_integer"
        )
    return qty


def _new_item(
    emu: Emulator, sub: JSON, price: JSON, qty: int, spec: dict[str, Any], start: int, end: int
) -> JSON:
    item = new_objects.subscription_item(new_id("si", 14), emu.now(), sub["id"], price, qty)
    item["metadata"] = merge_metadata({}, spec)
    item.update(current_period_start=start, current_period_end=end)
    emu.store.put("subscription_items", item)
    return item


def create_subscription(emu: Emulator, req: ApiRequest) -> JSON:
    p = req.params
    check_known(p, _SUB_CREATE)
    customer_id = get_str(p, "customer", required=True) or ""
    cus = emu.store.require("customers", customer_id, "customer")
    specs = get_list(p, "items")
    if not specs:
        raise missing("items")
    now = emu.now()
    currency: str | None = None
    prices = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise invalid(f"items[{i}]", "Invalid object", "parameter_invalid_object")
        price = _price_for_item(emu, spec, i, currency)
        currency = price["currency"]
        prices.append(price)
    sub = new_objects.subscription(new_id("sub"), now, req.livemode)
    trial_days = get_int(p, "trial_period_days")
    first = prices[0]["recurring"]
    if trial_days:
        end = now + trial_days * 86400
        sub.update(status="trialing", trial_start=now, trial_end=end)
    else:
        end = billing.add_interval(now, first["interval"], first["interval_count"])
        sub["status"] = "active"
    for i, (spec, price) in enumerate(zip(specs, prices, strict=True)):
        qty = _quantity(spec, i)
        sub["items"]["data"].append(
            _new_item(emu, sub, price, 1 if qty is None else qty, spec, now, end)
        )
    sub.update(
        customer=customer_id,
        currency=currency,
        metadata=merge_metadata({}, p),
        description=get_str(p, "description"),
        default_payment_method=get_str(p, "default_payment_method"),
        collection_method=get_str(p, "collection_method") or "charge_automatically",
        billing_cycle_anchor=end if trial_days else now,
        test_clock=cus["test_clock"],
    )
    renewals.periods_on_subscription(emu, sub)
    if get_bool(p, "cancel_at_period_end"):
        sub.update(cancel_at_period_end=True, cancel_at=end)
    # Stripe's subscription.created already names the first invoice.
    sub["latest_invoice"] = new_id("in")
    emu.store.put("subscriptions", sub)
    emu.record_event(req, "customer.subscription.created", sub)
    billing.subscription_invoice(emu, req, sub, "subscription_create", not trial_days)
    return sub


def retrieve_subscription(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("subscriptions", req.path_params["id"])


def _update_items(emu: Emulator, sub: JSON, specs: list[Any]) -> None:
    items: list[JSON] = sub["items"]["data"]
    start = items[0]["current_period_start"] if items else emu.now()
    end = items[0]["current_period_end"] if items else emu.now()
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise invalid(f"items[{i}]", "Invalid object", "parameter_invalid_object")
        item_id = get_str(spec, "id")
        if item_id is None:
            price = _price_for_item(emu, spec, i, sub["currency"])
            qty = _quantity(spec, i)
            items.append(_new_item(emu, sub, price, 1 if qty is None else qty, spec, start, end))
            continue
        matches = [it for it in items if it["id"] == item_id]
        if not matches:
            raise no_such("subscription_item", item_id, f"items[{i}][id]")
        item = matches[0]
        if get_bool(spec, "deleted"):
            items.remove(item)
            emu.store.deleted.add(item_id)
            continue
        if "price" in spec:
            item["price"] = _price_for_item(emu, spec, i, sub["currency"])
            item["plan"] = new_objects.plan_from_price(item["price"])
        qty = _quantity(spec, i)
        if qty is not None:
            item["quantity"] = qty
        item["metadata"] = merge_metadata(item["metadata"], spec)
    if not items:
        raise invalid(
            "items", "A subscription must have at least one active item.", "parameter_invalid_empty"
        )


def update_subscription(emu: Emulator, req: ApiRequest) -> JSON:
    sub = emu.store.require("subscriptions", req.path_params["id"])
    p = req.params
    check_known(p, _SUB_UPDATE)
    if sub["status"] == "canceled" and set(p) - {"metadata", "cancellation_details", "expand"}:
        raise StripeError(
            400,
            "A canceled subscription can only update its cancellation_details and metadata.",
        )
    behavior = get_str(p, "proration_behavior") or "create_prorations"
    if behavior not in prorations.BEHAVIORS:
        raise invalid(
            "proration_behavior",
            f"Invalid proration_behavior: must be one of {', '.join(prorations.BEHAVIORS)}",
            "parameter_invalid_string",
        )
    before = prorations.billed(sub)
    pending: list[JSON] = []
    with emu.updating(req, sub, "customer.subscription.updated"):
        _apply_update(emu, sub, p)
        if behavior != "none":
            pending = prorations.prorate(emu, sub, before)
        if behavior == "always_invoice" and pending:
            sub["latest_invoice"] = new_id("in")
    prorations.announce(emu, req, pending)
    if behavior == "always_invoice" and pending:
        billing.proration_invoice(emu, req, sub)
    return sub


def _apply_update(emu: Emulator, sub: JSON, p: dict[str, Any]) -> None:
    if "items" in p:
        _update_items(emu, sub, get_list(p, "items"))
    sub["metadata"] = merge_metadata(sub["metadata"], p)
    for name in ("description", "default_payment_method", "collection_method"):
        if name in p:
            sub[name] = get_str(p, name)
    if "days_until_due" in p:
        sub["days_until_due"] = get_int(p, "days_until_due")
    at_period_end = get_bool(p, "cancel_at_period_end")
    if at_period_end is not None and at_period_end != sub["cancel_at_period_end"]:
        # Like Stripe: canceled_at is when the cancellation was asked for, not when it
        # takes effect; resuming (false) takes the scheduled cancellation back.
        period_end = sub["items"]["data"][0]["current_period_end"]
        sub.update(
            cancel_at_period_end=at_period_end,
            cancel_at=period_end if at_period_end else None,
            canceled_at=emu.now() if at_period_end else None,
        )
        reason = "cancellation_requested" if at_period_end else None
        sub["cancellation_details"] = {**sub["cancellation_details"], "reason": reason}
    if "cancel_at" in p:
        sub.update(cancel_at=get_int(p, "cancel_at"), cancel_at_period_end=False)
    if "pause_collection" in p:
        pause = get_dict(p, "pause_collection")
        if pause:
            behavior = get_str(pause, "behavior", required=False)
            if behavior not in ("keep_as_draft", "mark_uncollectible", "void"):
                raise invalid(
                    "pause_collection[behavior]",
                    "Invalid pause_collection[behavior]",
                    "parameter_invalid_string",
                )
            sub["pause_collection"] = {
                "behavior": behavior,
                "resumes_at": get_int(pause, "resumes_at"),
            }
        else:
            sub["pause_collection"] = None
    details = get_dict(p, "cancellation_details")
    if details:
        sub["cancellation_details"] = {**sub["cancellation_details"], **details}


def cancel_subscription(emu: Emulator, req: ApiRequest) -> JSON:
    sub = emu.store.require("subscriptions", req.path_params["id"])
    check_known(req.params, {"invoice_now", "prorate", "cancellation_details"})
    if sub["status"] == "canceled":
        raise StripeError(400, f"This subscription is already canceled: {sub['id']}", param="id")
    now = emu.now()
    sub.update(status="canceled", canceled_at=now, ended_at=now)
    sub["cancellation_details"]["reason"] = "cancellation_requested"
    details = get_dict(req.params, "cancellation_details")
    if details:
        sub["cancellation_details"].update(details)
    emu.record_event(req, "customer.subscription.deleted", sub)
    return sub


def list_subscriptions(emu: Emulator, req: ApiRequest) -> JSON:
    price, status = get_str(req.params, "price"), get_str(req.params, "status")

    def keep(s: JSON) -> bool:
        # Like Stripe, canceled subscriptions only show up when asked for.
        if status is None and s["status"] == "canceled":
            return False
        if status not in (None, "all") and s["status"] != status:
            return False
        return price is None or any(it["price"]["id"] == price for it in s["items"]["data"])

    return list_objects(
        emu.store,
        req.params,
        "subscriptions",
        equal=("customer", "collection_method", "test_clock"),
        known={"price", "status"},
        keep=keep,
    )


# -- invoices ------------------------------------------------------------------------
def retrieve_invoice(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("invoices", req.path_params["id"])


def list_invoices(emu: Emulator, req: ApiRequest) -> JSON:
    return list_objects(
        emu.store,
        req.params,
        "invoices",
        equal=("customer", "subscription", "status", "collection_method"),
        known={"due_date"},
    )


def list_invoice_lines(emu: Emulator, req: ApiRequest) -> JSON:
    inv = emu.store.require("invoices", req.path_params["id"])
    check_known(req.params, PAGE_PARAMS)
    lines = list(inv["lines"]["data"])
    return paginate(lines, req.params, f"/v1/invoices/{inv['id']}/lines", "line_item")


ROUTES = [
    ("POST", "/v1/subscriptions", create_subscription),
    ("GET", "/v1/subscriptions", list_subscriptions),
    ("GET", "/v1/subscriptions/{id}", retrieve_subscription),
    ("POST", "/v1/subscriptions/{id}", update_subscription),
    ("DELETE", "/v1/subscriptions/{id}", cancel_subscription),
    ("GET", "/v1/invoices", list_invoices),
    ("GET", "/v1/invoices/{id}", retrieve_invoice),
    ("GET", "/v1/invoices/{id}/lines", list_invoice_lines),
]
