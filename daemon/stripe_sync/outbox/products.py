"""billing.products → Stripe products."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..mappings import PRODUCTS
from .common import MappedRow, Pushed


@dataclass(frozen=True, kw_only=True)
class Product(MappedRow):
    name: str
    description: str | None
    active: bool


def _fields(product: Product) -> dict[str, Any]:
    return {
        "name": product.name,
        "active": product.active,
        "description": product.description,
    }


PUSHED = Pushed(
    PRODUCTS,
    Product,
    load="load_product",
    fields=_fields,
    limits={"name": 5000, "description": 40000},
    unsettable=frozenset({"description"}),
)
