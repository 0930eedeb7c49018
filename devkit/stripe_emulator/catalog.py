"""Products and prices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import new_objects
from .errors import StripeError, invalid, missing
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


# -- products ------------------------------------------------------------------------
_PRODUCT_FIELDS = ("name", "description", "statement_descriptor", "tax_code", "unit_label", "url")
# maxLength in Stripe's spec; an update may unset the description (not the name).
_PRODUCT_LIMITS = {"name": 5000, "description": 40000}
_PRICE_LIMITS = {"nickname": 5000}
_PRODUCT_PARAMS = {
    *_PRODUCT_FIELDS,
    "id",
    "active",
    "metadata",
    "images",
    "shippable",
    "package_dimensions",
    "marketing_features",
    "default_price",
    "type",
}


def _apply_product(prod: JSON, p: dict[str, Any]) -> None:
    assign(prod, p, _PRODUCT_FIELDS)
    prod["metadata"] = merge_metadata(prod["metadata"], p)
    for flag in ("active", "shippable"):
        value = get_bool(p, flag)
        if value is not None:
            prod[flag] = value
    if "images" in p:
        prod["images"] = get_list(p, "images")
    if "package_dimensions" in p:
        prod["package_dimensions"] = get_dict(p, "package_dimensions") or None


def create_product(emu: Emulator, req: ApiRequest) -> JSON:
    p = req.params
    check_known(p, _PRODUCT_PARAMS - {"default_price"})
    check_strings(p, _PRODUCT_LIMITS)
    get_str(p, "name", required=True)
    pid = get_str(p, "id") or new_id("prod", 14)
    if emu.store.get("products", pid) is not None:
        raise StripeError(
            400, f"Product already exists: {pid}", code="resource_already_exists", param="id"
        )
    prod = new_objects.product(pid, emu.now(), req.livemode)
    prod["type"] = get_str(p, "type") or "service"
    _apply_product(prod, p)
    emu.store.put("products", prod)
    emu.record_event(req, "product.created", prod)
    return prod


def retrieve_product(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("products", req.path_params["id"])


def update_product(emu: Emulator, req: ApiRequest) -> JSON:
    prod = emu.store.require("products", req.path_params["id"])
    p = req.params
    check_known(p, _PRODUCT_PARAMS - {"id", "type"})
    check_strings(p, _PRODUCT_LIMITS, unsettable={"description"})
    with emu.updating(req, prod, "product.updated"):
        _apply_product(prod, p)
        default_price = get_str(p, "default_price")
        if default_price is not None:
            price = emu.store.require("prices", default_price, "default_price")
            if price["product"] != prod["id"]:
                raise invalid(
                    "default_price",
                    "The price does not belong to this product.",
                    "parameter_invalid",
                )
            prod["default_price"] = default_price
    return prod


def delete_product(emu: Emulator, req: ApiRequest) -> JSON:
    prod = emu.store.require("products", req.path_params["id"])
    if any(pr["product"] == prod["id"] for pr in emu.store.all("prices")):
        raise StripeError(
            400,
            "This product cannot be deleted because it has one or more user-created prices.",
            param="id",
        )
    emu.store.deleted.add(prod["id"])
    emu.record_event(req, "product.deleted", prod)
    return {"id": prod["id"], "object": "product", "deleted": True}


def list_products(emu: Emulator, req: ApiRequest) -> JSON:
    ids = set(get_list(req.params, "ids"))
    return list_objects(
        emu.store,
        req.params,
        "products",
        equal=("url",),
        flags=("active", "shippable"),
        known={"ids"},
        keep=lambda x: not ids or x["id"] in ids,
    )


def search_products(emu: Emulator, req: ApiRequest) -> JSON:
    fields = {"active", "name", "description", "created", "shippable", "url"}
    return search(emu.store, "products", req.params, fields, emu.searchable_until())


# -- prices --------------------------------------------------------------------------
_PRICE_UPDATABLE = {
    "active",
    "metadata",
    "nickname",
    "lookup_key",
    "tax_behavior",
    "transfer_lookup_key",
}
_PRICE_CREATE = {
    "product",
    "product_data",
    "currency",
    "unit_amount",
    "unit_amount_decimal",
    "recurring",
    "billing_scheme",
    *_PRICE_UPDATABLE,
}


def create_price(emu: Emulator, req: ApiRequest) -> JSON:
    p = req.params
    check_known(p, _PRICE_CREATE)
    check_strings(p, _PRICE_LIMITS)
    product_data = get_dict(p, "product_data")
    product_id = get_str(p, "product")
    if product_id is None and not product_data:
        raise missing("product")
    currency = (get_str(p, "currency", required=True) or "").lower()
    amount = get_int(p, "unit_amount")
    if amount is None and get_str(p, "unit_amount_decimal") is not None:
        amount = int(float(str(p["unit_amount_decimal"])))
    if amount is None:
        raise missing("unit_amount")
    if amount < 0:
        raise invalid("unit_amount", "Invalid non-negative integer", "parameter_invalid_integer")
    if product_id is not None:
        emu.store.require("products", product_id, "product")
    price = new_objects.price(new_id("price", 24), emu.now(), req.livemode)
    recurring = get_dict(p, "recurring")
    if recurring:
        interval = get_str(recurring, "interval")
        if interval not in ("day", "week", "month", "year"):
            raise invalid(
                "recurring[interval]", "Invalid recurring[interval]", "parameter_invalid_string"
            )
        price["type"] = "recurring"
        price["recurring"] = {
            "interval": interval,
            "interval_count": get_int(recurring, "interval_count") or 1,
            "meter": None,
            "trial_period_days": get_int(recurring, "trial_period_days"),
            "usage_type": get_str(recurring, "usage_type") or "licensed",
        }
    price.update(currency=currency, unit_amount=amount, unit_amount_decimal=str(amount))
    if product_data:
        if not product_data.get("name"):
            raise missing("product_data[name]")
        prod = new_objects.product(new_id("prod", 14), emu.now(), req.livemode)
        _apply_product(prod, product_data)
        emu.store.put("products", prod)
        emu.record_event(req, "product.created", prod)
        product_id = prod["id"]
    price["product"] = product_id
    _apply_price(emu, price, p)
    emu.store.put("prices", price)
    emu.record_event(req, "price.created", price)
    return price


def _apply_price(emu: Emulator, price: JSON, p: dict[str, Any]) -> None:
    assign(price, p, ("nickname", "tax_behavior"))
    price["metadata"] = merge_metadata(price["metadata"], p)
    active = get_bool(p, "active")
    if active is not None:
        price["active"] = active
    if "lookup_key" in p:
        key = get_str(p, "lookup_key")
        taken = [
            x for x in emu.store.all("prices") if key and x["lookup_key"] == key and x is not price
        ]
        if taken and get_bool(p, "transfer_lookup_key") is not True:
            raise invalid(
                "lookup_key",
                f"A price (`{taken[0]['id']}`) already uses that lookup key.",
                "parameter_invalid_string",
            )
        for other in taken:
            other["lookup_key"] = None
        price["lookup_key"] = key


def retrieve_price(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("prices", req.path_params["id"])


def update_price(emu: Emulator, req: ApiRequest) -> JSON:
    price = emu.store.require("prices", req.path_params["id"])
    # Amounts, currency and interval are immutable: Stripe does not even know them here.
    check_known(req.params, _PRICE_UPDATABLE)
    check_strings(req.params, _PRICE_LIMITS)
    with emu.updating(req, price, "price.updated"):
        _apply_price(emu, price, req.params)
    return price


def list_prices(emu: Emulator, req: ApiRequest) -> JSON:
    keys = set(get_list(req.params, "lookup_keys"))
    return list_objects(
        emu.store,
        req.params,
        "prices",
        equal=("product", "type", "currency"),
        flags=("active",),
        known={"lookup_keys", "recurring"},
        keep=lambda x: not keys or x["lookup_key"] in keys,
    )


def search_prices(emu: Emulator, req: ApiRequest) -> JSON:
    fields = {"active", "currency", "lookup_key", "product", "type", "created"}
    return search(emu.store, "prices", req.params, fields, emu.searchable_until())


ROUTES = [
    ("POST", "/v1/products", create_product),
    ("GET", "/v1/products", list_products),
    ("GET", "/v1/products/search", search_products),
    ("GET", "/v1/products/{id}", retrieve_product),
    ("POST", "/v1/products/{id}", update_product),
    ("DELETE", "/v1/products/{id}", delete_product),
    ("POST", "/v1/prices", create_price),
    ("GET", "/v1/prices", list_prices),
    ("GET", "/v1/prices/search", search_prices),
    ("GET", "/v1/prices/{id}", retrieve_price),
    ("POST", "/v1/prices/{id}", update_price),
]
