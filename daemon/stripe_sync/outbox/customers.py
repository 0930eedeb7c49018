"""billing.accounts → Stripe customers."""

from __future__ import annotations

from typing import Any

from ..jobs import Done, Job
from .family import CUSTOMER, Context, create_or_adopt, record, require_synced
from .payloads import AccountRef, decode


def _params(ctx: Context, account_id: int, email: str, name: str | None) -> Any:
    params: dict[str, Any] = {"email": email, "metadata": ctx.metadata(CUSTOMER, account_id)}
    if name is not None:
        params["name"] = name
    return params


async def create(ctx: Context, job: Job) -> Done:
    ref = decode(job.payload, AccountRef)
    # Loads the account and marks the create pending, in one round trip.
    row = await ctx.fetch("load_account_for_create", ref.account_id)
    if row is None:
        raise CUSTOMER.missing(ref.account_id)
    email, name, stripe_id, status, generation = row
    if stripe_id is not None and status in ("synced", "deleted"):
        return Done(note=f"already mapped to {stripe_id}")
    customers = ctx.api.client.v1.customers
    params: Any = _params(ctx, ref.account_id, email, name)
    return await create_or_adopt(
        ctx,
        CUSTOMER,
        job,
        ref.account_id,
        generation,
        create=lambda key: customers.create_async(params=params, options={"idempotency_key": key}),
        search=lambda q: customers.search_async(params={"query": q}),
    )


async def update(ctx: Context, job: Job) -> Done:
    ref = decode(job.payload, AccountRef)
    row = await ctx.fetch("load_account", ref.account_id)
    if row is None:
        raise CUSTOMER.missing(ref.account_id)
    email, name, stripe_id, status = row
    customer_id = require_synced(CUSTOMER, ref.account_id, stripe_id, status)
    await ctx.api.call(
        f"update customer {customer_id}",
        ctx.api.client.v1.customers.update_async(
            customer_id,
            params=_params(ctx, ref.account_id, email, name),
            options={"idempotency_key": ctx.write_key(job)},
        ),
    )
    return Done(apply=record(CUSTOMER, ref.account_id, customer_id))
