"""customer.subscription.*: billing.subscriptions and their items.

Subscriptions are born in Stripe: the first event about one creates the MC
row and its mapping. Each applied event writes the whole state it shows
(items included: those no longer present are deleted), so only the newest
event decides the final row. Items are matched to MC prices by the price
mappings; MC keys items by (subscription, price), as Stripe allows one item
per price.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from psycopg import AsyncConnection

from ..db import queries
from ..errors import PermanentError
from ..mappings import CUSTOMERS, PRICES, SUBSCRIPTIONS
from ..queue.jobs import Done, Job
from .common import (
    WebhookContext,
    Write,
    Written,
    opened,
    required,
    resolve,
    resolve_one,
    ts,
    write_object,
)
from .events import Subscription, ref_id

# Lifecycle order, for events of the same second.
_RANKS = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "past_due": 3,
    "unpaid": 4,
    "paused": 4,
    "incomplete_expired": 5,
    "canceled": 6,
}


@dataclass(frozen=True)
class Item:
    stripe_price_id: str
    quantity: int
    start: int | None
    end: int | None


def items_of(sub: Subscription) -> list[Item]:
    """One entry per price (duplicates, which Stripe refuses, are summed)."""
    found: dict[str, Item] = {}
    raw = sub.items.data if sub.items else []
    for item in raw:
        price = ref_id(item.price) or (item.plan.id if item.plan else None)
        if not price:
            raise PermanentError(f"subscription {sub.id}: item {item.id} names no price")
        quantity = item.quantity if item.quantity is not None else 1
        if (seen := found.get(price)) is not None:
            quantity += seen.quantity
        found[price] = Item(price, quantity, item.current_period_start, item.current_period_end)
    if not raw and sub.plan is not None and sub.plan.id:
        # 2015-era: one plan and a quantity on the subscription itself.
        quantity = sub.quantity if sub.quantity is not None else 1
        found[sub.plan.id] = Item(
            sub.plan.id, quantity, sub.current_period_start, sub.current_period_end
        )
    return list(found.values())


def period(sub: Subscription, items: list[Item]) -> tuple[int | None, int | None]:
    """On the subscription in older versions, on its items in newer ones."""
    if sub.current_period_start is not None or sub.current_period_end is not None:
        return sub.current_period_start, sub.current_period_end
    starts = [i.start for i in items if i.start is not None]
    ends = [i.end for i in items if i.end is not None]
    return (min(starts) if starts else None), (max(ends) if ends else None)


async def handle(ctx: WebhookContext, job: Job) -> Done:
    seen = opened(job, Subscription, _RANKS, lambda sub, _: sub.status)
    sub, event = seen.obj, seen.event
    customer = required(sub.customer, f"subscription {sub.id} names no customer")
    items = items_of(sub)
    start, end = period(sub, items)

    async def prepare(conn: AsyncConnection[Any]) -> Write:
        account_id = await resolve_one(ctx, conn, CUSTOMERS, customer)
        prices = await resolve(ctx, conn, PRICES, (i.stripe_price_id for i in items))
        values = {
            "account_id": account_id,
            "status": sub.status or "unknown",
            "current_period_start": ts(start),
            "current_period_end": ts(end),
            "cancel_at_period_end": bool(sub.cancel_at_period_end),
            "canceled_at": ts(sub.canceled_at),
            "ended_at": ts(sub.ended_at),
            "trial_start": ts(sub.trial_start),
            "trial_end": ts(sub.trial_end),
            "paused": sub.status == "paused" or sub.pause_collection is not None,
        }
        then = partial(_write_items, items=items, prices=prices, default_period=(start, end))
        return Write(values, then=then)

    status = "deleted" if event.type.endswith(".deleted") else "synced"
    return await write_object(ctx, SUBSCRIPTIONS, sub.id, seen.key, status, prepare)


async def _write_items(
    conn: AsyncConnection[Any],
    written: Written,
    *,
    items: list[Item],
    prices: dict[str, int],
    default_period: tuple[int | None, int | None],
) -> None:
    """Exactly the items the event shows; an item's period defaults to the subscription's."""
    q = queries("webhooks")
    subscription_id = written.mc_id
    start, end = default_period
    mc_prices = [prices[i.stripe_price_id] for i in items]
    await conn.execute(
        q["delete_other_items"], {"subscription_id": subscription_id, "prices": mc_prices}
    )
    if items:
        await conn.execute(
            q["upsert_items"],
            {
                "subscription_id": subscription_id,
                "prices": mc_prices,
                "quantities": [i.quantity for i in items],
                "starts": [ts(i.start if i.start is not None else start) for i in items],
                "ends": [ts(i.end if i.end is not None else end) for i in items],
            },
        )
