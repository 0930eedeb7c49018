"""billing.prices → Stripe prices. Amounts are immutable in Stripe: a new
amount is a new MC price (and an archive of the old one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import PermanentError, TransientError
from ..mappings import PRICES
from .common import Context, MappedRow, Pushed


@dataclass(frozen=True, kw_only=True)
class Price(MappedRow):
    product_id: int
    currency: str
    unit_amount: int
    recurring_interval: str | None
    recurring_interval_count: int
    nickname: str | None
    active: bool
    # The product's mapping: a price can only be created under a synced product.
    stripe_product_id: str | None
    product_status: str | None


def _fields(price: Price) -> dict[str, Any]:
    """What an update may change; the rest of a Stripe price is immutable."""
    return {"active": price.active, "nickname": price.nickname}


async def _create_fields(ctx: Context, price_id: int, price: Price) -> dict[str, Any]:
    if price.product_status == "deleted":
        raise PermanentError(
            f"billing.products id={price.product_id} is archived in Stripe "
            f"({price.stripe_product_id}); cannot add a price to it"
        )
    if price.stripe_product_id is None or price.product_status != "synced":
        # Never an orphan price: wait (with a short first backoff) for the product.
        raise TransientError(
            f"billing.products id={price.product_id} is not synced to Stripe yet; "
            "waiting for its create_stripe_product",
            backoff_base=0.1,
        )
    await ctx.mark_pending(PRICES, price_id)
    params: dict[str, Any] = {
        "product": price.stripe_product_id,
        "currency": price.currency,
        "unit_amount": price.unit_amount,
    }
    if price.recurring_interval is not None:
        params["recurring"] = {
            "interval": price.recurring_interval,
            "interval_count": price.recurring_interval_count,
        }
    return params


# The claim does not mark a price's create pending: _create_fields does, once the
# product is synced.
PUSHED = Pushed(
    PRICES,
    Price,
    load="load_price",
    fields=_fields,
    create_fields=_create_fields,
    limits={"nickname": 5000},
)
