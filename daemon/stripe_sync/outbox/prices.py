"""billing.prices → Stripe prices. Amounts are immutable in Stripe: a new
amount is a new MC price (and an archive of the old one)."""

from __future__ import annotations

from typing import Any

from ..errors import PermanentError, TransientError
from ..jobs import Done, Job
from .family import PRICE, Context, create_or_adopt, record, require_synced
from .payloads import PriceRef, decode


async def _load(ctx: Context, price_id: int) -> tuple[Any, ...]:
    row = await ctx.fetch("load_price", price_id)
    if row is None:
        raise PRICE.missing(price_id)
    return tuple(row)


def _mutable(ctx: Context, price_id: int, nickname: str | None, active: bool) -> Any:
    params: dict[str, Any] = {"active": active, "metadata": ctx.metadata(PRICE, price_id)}
    if nickname is not None:
        params["nickname"] = nickname
    return params


async def create(ctx: Context, job: Job) -> Done:
    ref = decode(job.payload, PriceRef)
    (
        product_id,
        currency,
        unit_amount,
        interval,
        interval_count,
        nickname,
        active,
        stripe_id,
        status,
        stripe_product_id,
        product_status,
        generation,
    ) = await _load(ctx, ref.price_id)
    if stripe_id is not None and status in ("synced", "deleted"):
        return Done(note=f"already mapped to {stripe_id}")
    if product_status == "deleted":
        raise PermanentError(
            f"billing.products id={product_id} is archived in Stripe "
            f"({stripe_product_id}); cannot add a price to it"
        )
    if stripe_product_id is None or product_status != "synced":
        # Never an orphan price: wait (with a short first backoff) for the product.
        raise TransientError(
            f"billing.products id={product_id} is not synced to Stripe yet; "
            "waiting for its create_stripe_product",
            backoff_base=0.1,
        )
    await ctx.mark_pending(PRICE, ref.price_id)
    params: Any = {
        "product": stripe_product_id,
        "currency": currency,
        "unit_amount": unit_amount,
        **_mutable(ctx, ref.price_id, nickname, active),
    }
    if interval is not None:
        params["recurring"] = {"interval": interval, "interval_count": interval_count}
    prices = ctx.api.client.v1.prices
    return await create_or_adopt(
        ctx,
        PRICE,
        job,
        ref.price_id,
        generation,
        create=lambda key: prices.create_async(params=params, options={"idempotency_key": key}),
        search=lambda q: prices.search_async(params={"query": q}),
    )


async def update(ctx: Context, job: Job) -> Done:
    ref = decode(job.payload, PriceRef)
    row = await _load(ctx, ref.price_id)
    nickname, active, stripe_id, status = row[5], row[6], row[7], row[8]
    price_id = require_synced(PRICE, ref.price_id, stripe_id, status)
    await ctx.api.call(
        f"update price {price_id}",
        ctx.api.client.v1.prices.update_async(
            price_id,
            params=_mutable(ctx, ref.price_id, nickname, active),
            options={"idempotency_key": ctx.write_key(job)},
        ),
    )
    return Done(apply=record(PRICE, ref.price_id, price_id))


async def archive(ctx: Context, job: Job) -> Done:
    ref = decode(job.payload, PriceRef)
    row = await _load(ctx, ref.price_id)
    stripe_id, status = row[7], row[8]
    if status == "deleted":
        return Done(note=f"{stripe_id} already archived")
    price_id = require_synced(PRICE, ref.price_id, stripe_id, status)
    await ctx.api.call(
        f"archive price {price_id}",
        ctx.api.client.v1.prices.update_async(
            price_id, params={"active": False}, options={"idempotency_key": ctx.write_key(job)}
        ),
    )
    return Done(apply=record(PRICE, ref.price_id, price_id, "deleted"))
