"""Subscription changes initiated in MC: cancel (now or at the period's end),
resume a scheduled cancellation, change an item's price or quantity.

Subscriptions are born in Stripe and ``billing.subscriptions`` has one writer,
the ``customer.subscription.*`` webhooks: these executors only ask Stripe for
the change, and the outbox row is done once Stripe accepted it. Each request
carries the row's idempotency key (keys.py), so a retry after a lost answer
gets Stripe's first answer replayed instead of changing anything twice; the
changes set values (never add to them), so the fresh key that follows a spent
one cannot apply a change twice either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from psycopg.rows import class_row

from ..db import queries
from ..errors import PermanentError
from ..queue.jobs import Done, Job
from .common import Context, send_write
from .payloads import decode_as, require_id
from .prices import PUSHED as PRICES

# Stripe refuses every change but metadata to a subscription in these states.
_ENDED = ("canceled", "incomplete_expired")


class Cancel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    subscription_id: int
    at_period_end: bool  # false: cancel now


class Resume(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    subscription_id: int


class Update(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    subscription_id: int
    price_id: int | None = None
    quantity: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # Stripe's default when the parameter is left out.
    proration_behavior: Literal["create_prorations", "none", "always_invoice"] = "create_prorations"


@dataclass(frozen=True, kw_only=True)
class Subscription:
    status: str  # billing.subscriptions.status, as the webhooks last wrote it
    stripe_id: str | None
    sync_status: str | None


async def _load(ctx: Context, job: Job, subscription_id: int) -> str:
    """The Stripe id of the MC subscription; a bad payload fails the row at once.

    An ended subscription is refused on the first attempt only: on a retry, MC
    may show the end that this very row asked for (a cancel whose answer was
    lost), and Stripe, asked with the row's key, answers as it did the first time.
    """
    require_id("subscription_id", subscription_id)
    async with ctx.pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Subscription))
        await cur.execute(queries("outbox")["load_subscription"], {"id": subscription_id})
        row = await cur.fetchone()
    what = f"billing.subscriptions id={subscription_id} (payload.subscription_id)"
    if row is None:
        raise PermanentError(f"{what} does not exist")
    if row.stripe_id is None:
        raise PermanentError(
            f"{what} has no row in stripe.subscription_mappings: subscriptions are born "
            "in Stripe, and only one the webhooks brought in can be changed"
        )
    if job.attempts == 1 and (row.status in _ENDED or row.sync_status == "deleted"):
        raise PermanentError(
            f"{what} is {row.status} ({row.stripe_id}); Stripe does not change an ended "
            "subscription"
        )
    return row.stripe_id


def _update(ctx: Context, stripe_id: str, params: dict[str, Any]) -> Any:
    """The SDK call of a subscription update, for send_write."""
    service: Any = ctx.api.client.v1.subscriptions

    def request(options: Any) -> Any:
        return service.update_async(stripe_id, params=params, options=options)

    return request


async def cancel(ctx: Context, job: Job) -> Done:
    payload = decode_as(job.payload, Cancel)
    stripe_id = await _load(ctx, job, payload.subscription_id)
    if payload.at_period_end:
        what = f"cancel subscription {stripe_id} at its period's end"
        await send_write(ctx, job, what, _update(ctx, stripe_id, {"cancel_at_period_end": True}))
        return Done(note=f"{stripe_id}: Stripe will cancel it at the end of its period")
    service = ctx.api.client.v1.subscriptions
    if job.attempts > 1:
        # A fresh key (after a spent one) would meet "already canceled" if an
        # earlier attempt's cancel went through: look first.
        sub = await ctx.api.call(
            f"retrieve subscription {stripe_id}", service.retrieve_async(stripe_id)
        )
        if sub["status"] in _ENDED:
            return Done(note=f"{stripe_id}: already {sub['status']} in Stripe")

    def delete(options: Any) -> Any:
        return service.cancel_async(stripe_id, options=options)

    await send_write(ctx, job, f"cancel subscription {stripe_id} now", delete)
    return Done(note=f"{stripe_id}: canceled in Stripe")


async def resume(ctx: Context, job: Job) -> Done:
    """Undo a scheduled cancellation (not Stripe's resume, which ends a pause)."""
    payload = decode_as(job.payload, Resume)
    stripe_id = await _load(ctx, job, payload.subscription_id)
    what = f"resume subscription {stripe_id} (no cancellation at its period's end)"
    await send_write(ctx, job, what, _update(ctx, stripe_id, {"cancel_at_period_end": False}))
    return Done(note=f"{stripe_id}: no longer cancels at the end of its period")


async def update(ctx: Context, job: Job) -> Done:
    """Change the price and/or quantity of one item: the only one, or the one
    already on ``price_id`` (MC keys items by price; Stripe's si_ ids are read
    from the subscription, never stored)."""
    payload = decode_as(job.payload, Update)
    if payload.price_id is None and payload.quantity is None:
        raise PermanentError("payload: names neither price_id nor quantity; nothing to change")
    stripe_id = await _load(ctx, job, payload.subscription_id)
    item: dict[str, Any] = {}
    if payload.price_id is not None:
        item["price"] = await _synced_price(ctx, payload.price_id)
    if payload.quantity is not None:
        item["quantity"] = payload.quantity
    service = ctx.api.client.v1.subscriptions
    sub = await ctx.api.call(
        f"retrieve subscription {stripe_id}", service.retrieve_async(stripe_id)
    )
    # The item with the new price already (a retry after Stripe applied it, or a
    # quantity change) or the only one: the same item on every attempt, so the
    # parameters, and Stripe's answer under the row's key, are the same too.
    items = sub["items"]["data"]
    chosen = [it for it in items if it["price"]["id"] == item.get("price")] or items
    if len(chosen) != 1:
        raise PermanentError(
            f"billing.subscriptions id={payload.subscription_id} has {len(items)} items in "
            f"Stripe ({stripe_id}); update_stripe_subscription changes the only item, or "
            "the one whose price is payload.price_id"
        )
    params = {
        "items": [{"id": chosen[0]["id"], **item}],
        "proration_behavior": payload.proration_behavior,
    }
    what = f"update subscription {stripe_id} item {chosen[0]['id']}"
    await send_write(ctx, job, what, _update(ctx, stripe_id, params))
    changes = ", ".join(f"{k}={v}" for k, v in item.items())
    return Done(note=f"{stripe_id}: {changes} ({payload.proration_behavior})")


async def _synced_price(ctx: Context, price_id: int) -> str:
    """The Stripe id of an MC price; one Stripe does not have (yet) fails the row."""
    require_id("price_id", price_id)
    what = f"billing.prices id={price_id} (payload.price_id)"
    try:
        price = await PRICES.load_row(ctx, price_id)
    except PermanentError:
        raise PermanentError(f"{what} does not exist") from None
    if price.status == "deleted" or not price.active:
        raise PermanentError(f"{what} is archived ({price.stripe_id}); Stripe refuses it")
    if price.stripe_id is None or price.status != "synced":
        raise PermanentError(
            f"{what} is not synced to Stripe (its create_stripe_price is not done); "
            "insert this row again once it is"
        )
    return price.stripe_id


EXECUTORS = {
    "cancel_stripe_subscription": cancel,
    "resume_stripe_subscription": resume,
    "update_stripe_subscription": update,
}
