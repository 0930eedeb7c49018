"""product.*, price.* and legacy plan.*: confirm the catalog the outbox created.

MC owns its catalog, so these events change only the mappings, never
billing.products/prices. A ``*.deleted`` event marks the mapping deleted;
an archived object (active=false) stays ``synced``: archiving is reversible
in Stripe and MC's own ``active`` column is what the outbox pushed. Legacy
plans are prices (plan ids are price ids), so plan.* uses the price mappings.
"""

from __future__ import annotations

from ..mappings import PRICES, PRODUCTS, Family
from ..queue.jobs import Done, Job
from .common import WebhookContext, confirm, opened
from .events import CatalogObject

# Ties in one second: an archiving update after a create, a deletion last.
_RANKS = {"active": 0, "archived": 1}


async def _handle(ctx: WebhookContext, job: Job, family: Family) -> Done:
    seen = opened(job, CatalogObject, _RANKS, _liveness, require_id=False)
    obj = seen.obj
    deleted = obj.deleted or seen.event.type.endswith(".deleted")
    status = "deleted" if deleted else "synced"
    return await confirm(ctx, family, obj.id, obj.metadata, seen.key, status)


def _liveness(obj: CatalogObject, _: str) -> str:
    return "archived" if obj.active is False else "active"


async def product(ctx: WebhookContext, job: Job) -> Done:
    return await _handle(ctx, job, PRODUCTS)


async def price(ctx: WebhookContext, job: Job) -> Done:
    return await _handle(ctx, job, PRICES)
