"""billing.products → Stripe products."""

from __future__ import annotations

from typing import Any

from ..jobs import Done, Job
from .family import PRODUCT, Context, create_or_adopt, record, require_synced
from .payloads import ProductRef, decode


def _params(ctx: Context, product_id: int, name: str, description: str | None, active: bool) -> Any:
    params: dict[str, Any] = {
        "name": name,
        "active": active,
        "metadata": ctx.metadata(PRODUCT, product_id),
    }
    if description:  # Stripe rejects an empty description
        params["description"] = description
    return params


async def _load(ctx: Context, product_id: int, query: str = "load_product") -> tuple[Any, ...]:
    row = await ctx.fetch(query, product_id)
    if row is None:
        raise PRODUCT.missing(product_id)
    return tuple(row)


async def create(ctx: Context, job: Job) -> Done:
    ref = decode(job.payload, ProductRef)
    # Loads the product and marks the create pending, in one round trip.
    row = await _load(ctx, ref.product_id, "load_product_for_create")
    name, description, active, stripe_id, status, generation = row
    if stripe_id is not None and status in ("synced", "deleted"):
        return Done(note=f"already mapped to {stripe_id}")
    products = ctx.api.client.v1.products
    params: Any = _params(ctx, ref.product_id, name, description, active)
    return await create_or_adopt(
        ctx,
        PRODUCT,
        job,
        ref.product_id,
        generation,
        create=lambda key: products.create_async(params=params, options={"idempotency_key": key}),
        search=lambda q: products.search_async(params={"query": q}),
    )


async def update(ctx: Context, job: Job) -> Done:
    ref = decode(job.payload, ProductRef)
    name, description, active, stripe_id, status = await _load(ctx, ref.product_id)
    product_id = require_synced(PRODUCT, ref.product_id, stripe_id, status)
    await ctx.api.call(
        f"update product {product_id}",
        ctx.api.client.v1.products.update_async(
            product_id,
            params=_params(ctx, ref.product_id, name, description, active),
            options={"idempotency_key": ctx.write_key(job)},
        ),
    )
    return Done(apply=record(PRODUCT, ref.product_id, product_id))


async def archive(ctx: Context, job: Job) -> Done:
    """Stripe keeps products that prices refer to; archiving is ``active=false``."""
    ref = decode(job.payload, ProductRef)
    *_, stripe_id, status = await _load(ctx, ref.product_id)
    if status == "deleted":
        return Done(note=f"{stripe_id} already archived")
    product_id = require_synced(PRODUCT, ref.product_id, stripe_id, status)
    await ctx.api.call(
        f"archive product {product_id}",
        ctx.api.client.v1.products.update_async(
            product_id, params={"active": False}, options={"idempotency_key": ctx.write_key(job)}
        ),
    )
    return Done(apply=record(PRODUCT, ref.product_id, product_id, "deleted"))
