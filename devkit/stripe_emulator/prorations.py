"""Prorations of a subscription change, as Stripe makes them (proration_behavior).

When an item's price or quantity changes (or an item is added or removed)
mid-period, Stripe credits the unused time of what was billed and charges the
remaining time of what is billed now, to the second: two invoice items with
`proration: true` (`invoiceitem.created`). `create_prorations` (the default)
leaves them pending, to land on the subscription's next invoice;
`always_invoice` invoices them at once (billing_reason `subscription_update`,
with the usual invoice and payment events); `none` makes none. Only an
active or past_due subscription is prorated (not a trial).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import new_objects_billing
from .state import JSON, new_id

if TYPE_CHECKING:
    from .emulator import ApiRequest, Emulator

BEHAVIORS = ("create_prorations", "none", "always_invoice")


@dataclass(frozen=True)
class Billed:
    """What an item billed for its current period before the change."""

    price: JSON
    quantity: int
    start: int
    end: int


def billed(sub: JSON) -> dict[str, Billed]:
    return {
        item["id"]: Billed(
            item["price"],
            item["quantity"],
            item["current_period_start"],
            item["current_period_end"],
        )
        for item in sub["items"]["data"]
    }


def prorate(emu: Emulator, sub: JSON, before: dict[str, Billed]) -> list[JSON]:
    """The proration invoice items of the change from `before` to the subscription's
    items now, stored (`announce` sends their events)."""
    if sub["status"] not in ("active", "past_due"):
        return []
    now = emu.now()
    after = billed(sub)
    made = []
    for item_id in [*before, *(i for i in after if i not in before)]:
        old, new = before.get(item_id), after.get(item_id)
        if old and new and (old.price["id"], old.quantity) == (new.price["id"], new.quantity):
            continue
        if old is not None:
            made.append(_item(emu, sub, item_id, old, now, "Unused time on", -1))
        if new is not None:
            made.append(_item(emu, sub, item_id, new, now, "Remaining time on", 1))
    kept = [ii for ii in made if ii["amount"] != 0]
    for ii in kept:
        emu.store.put("invoiceitems", ii)
    return kept


def _item(
    emu: Emulator, sub: JSON, item_id: str, bill: Billed, now: int, what: str, sign: int
) -> JSON:
    price = bill.price
    length = bill.end - bill.start
    remaining = min(max(bill.end - now, 0), length)
    full = (price["unit_amount"] or 0) * bill.quantity
    amount = sign * round(full * remaining / length) if length > 0 else 0
    product = emu.store.get("products", price["product"]) or {}
    name = product.get("name") or price["product"]
    # Stripe's wording: "Unused time on 2 × Gold after 30 Nov 2026".  # noqa: RUF003
    after = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%d %b %Y")
    ii = new_objects_billing.invoice_item(new_id("ii"), now, sub["livemode"])
    ii.update(
        amount=amount,
        net_amount=amount,
        currency=price["currency"],
        customer=sub["customer"],
        test_clock=sub["test_clock"],
        description=f"{what} {bill.quantity} × {name} after {after}",  # noqa: RUF001
        parent={
            "subscription_details": {"subscription": sub["id"], "subscription_item": item_id},
            "type": "subscription_details",
        },
        period={"end": bill.end, "start": now},
        pricing={
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
        proration=True,
        quantity=bill.quantity,
        quantity_decimal=str(bill.quantity),
    )
    return ii


def pending(emu: Emulator, sub: JSON) -> list[JSON]:
    """The subscription's invoice items no invoice has taken yet, oldest first."""
    return [
        ii
        for ii in emu.store.all("invoiceitems")
        if ii["invoice"] is None
        and ((ii["parent"] or {}).get("subscription_details") or {}).get("subscription")
        == sub["id"]
    ]


def announce(emu: Emulator, req: ApiRequest, items: list[JSON]) -> None:
    for ii in items:
        emu.record_event(req, "invoiceitem.created", ii)
