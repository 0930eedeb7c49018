"""Customers, events and the account."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import cards, new_objects, test_clocks
from .errors import no_such
from .forms import (
    assign,
    check_known,
    check_strings,
    get_bool,
    get_dict,
    get_int,
    get_list,
    get_str,
    merge_metadata,
)
from .listing import list_objects, search
from .state import JSON, new_id

if TYPE_CHECKING:
    from .emulator import ApiRequest, Emulator


# -- customers -----------------------------------------------------------------------
_CUSTOMER_FIELDS = ("email", "name", "description", "phone", "address", "shipping")
# maxLength in Stripe's spec; none of these may be unset with an empty string.
_CUSTOMER_LIMITS = {"email": 512, "name": 256, "description": 5000, "phone": 20}
_CUSTOMER_PARAMS = {
    *_CUSTOMER_FIELDS,
    "metadata",
    "preferred_locales",
    "tax_exempt",
    "balance",
    "invoice_settings",
    "payment_method",
    "invoice_prefix",
    "test_clock",
}


def create_customer(emu: Emulator, req: ApiRequest) -> JSON:
    p = req.params
    check_known(p, _CUSTOMER_PARAMS)
    check_strings(p, _CUSTOMER_LIMITS)
    cus = new_objects.customer(new_id("cus", 14), emu.now(), req.livemode)
    method = get_str(p, "payment_method")
    default = get_str(get_dict(p, "invoice_settings") or {}, "default_payment_method")
    if default != method:
        cards.check_default(emu, cus["id"], default)  # nothing is attached to a new customer
    pm = cards.saved(emu, method, req.livemode) if method else None
    _apply_customer(cus, p)
    cus["test_clock"] = test_clocks.for_new_customer(emu, p)
    if pm is not None and default == method:
        # The payment_method given as the default too: its saved copy is.
        cus["invoice_settings"]["default_payment_method"] = pm["id"]
    emu.store.put("customers", cus)
    emu.record_event(req, "customer.created", cus)
    if pm is not None:
        cards.attach(emu, req, pm, cus["id"])
    return cus


def _apply_customer(cus: JSON, p: dict[str, Any]) -> None:
    assign(cus, p, _CUSTOMER_FIELDS)
    cus["metadata"] = merge_metadata(cus["metadata"], p)
    if "preferred_locales" in p:
        cus["preferred_locales"] = get_list(p, "preferred_locales")
    if "tax_exempt" in p:
        cus["tax_exempt"] = get_str(p, "tax_exempt") or "none"
    if "balance" in p:
        cus["balance"] = get_int(p, "balance") or 0
    if "invoice_prefix" in p:
        cus["invoice_prefix"] = get_str(p, "invoice_prefix")
    settings = get_dict(p, "invoice_settings")
    if settings:
        # An empty string unsets a setting (default_payment_method="").
        unset = {k: None if v == "" else v for k, v in settings.items()}
        cus["invoice_settings"] = {**cus["invoice_settings"], **unset}


def retrieve_customer(emu: Emulator, req: ApiRequest) -> JSON:
    cid = req.path_params["id"]
    cus = emu.store.get("customers", cid)
    if cus is None:
        raise no_such("customer", cid)
    if cid in emu.store.deleted:
        return {"id": cid, "object": "customer", "deleted": True}
    return cus


def update_customer(emu: Emulator, req: ApiRequest) -> JSON:
    cus = emu.store.require("customers", req.path_params["id"])
    check_known(
        req.params, _CUSTOMER_PARAMS - {"payment_method", "test_clock"} | {"default_source"}
    )
    check_strings(req.params, _CUSTOMER_LIMITS)
    settings = get_dict(req.params, "invoice_settings") or {}
    cards.check_default(emu, cus["id"], get_str(settings, "default_payment_method"))
    with emu.updating(req, cus, "customer.updated"):
        _apply_customer(cus, req.params)
    return cus


def delete_customer(emu: Emulator, req: ApiRequest) -> JSON:
    cus = emu.store.require("customers", req.path_params["id"])
    emu.store.deleted.add(cus["id"])
    emu.record_event(req, "customer.deleted", cus)
    return {"id": cus["id"], "object": "customer", "deleted": True}


def list_customers(emu: Emulator, req: ApiRequest) -> JSON:
    return list_objects(emu.store, req.params, "customers", equal=("email", "test_clock"))


def search_customers(emu: Emulator, req: ApiRequest) -> JSON:
    fields = {"email", "name", "phone", "created"}
    return search(emu.store, "customers", req.params, fields, emu.searchable_until())


# -- events and account --------------------------------------------------------------
def list_events(emu: Emulator, req: ApiRequest) -> JSON:
    p = req.params
    etype = get_str(p, "type")
    types = set(get_list(p, "types"))
    success = get_bool(p, "delivery_success")

    def type_ok(t: str) -> bool:
        if etype is not None:
            if etype.endswith("*"):
                return t.startswith(etype[:-1])
            return t == etype
        return not types or t in types

    def keep(e: JSON) -> bool:
        if success is not None and (e["pending_webhooks"] == 0) != success:
            return False
        return type_ok(e["type"])

    known = {"type", "types", "delivery_success"}
    return list_objects(emu.store, p, "events", known=known, keep=keep)


def retrieve_event(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("events", req.path_params["id"])


def retrieve_account(emu: Emulator, req: ApiRequest) -> JSON:
    cfg = emu.config
    return new_objects.account(cfg.account_id, emu.created_at, cfg.account_name)


ROUTES = [
    ("POST", "/v1/customers", create_customer),
    ("GET", "/v1/customers", list_customers),
    ("GET", "/v1/customers/search", search_customers),
    ("GET", "/v1/customers/{id}", retrieve_customer),
    ("POST", "/v1/customers/{id}", update_customer),
    ("DELETE", "/v1/customers/{id}", delete_customer),
    ("GET", "/v1/events", list_events),
    ("GET", "/v1/events/{id}", retrieve_event),
    ("GET", "/v1/account", retrieve_account),
]
