"""product.*, price.* and legacy plan.*: confirm the catalog the outbox created.

MC owns its catalog, so these events change only the mappings, never
billing.products/prices. A ``*.deleted`` event marks the mapping deleted.
An archived object (active=false) is ``deleted`` too when MC's row is
inactive: the archive MC asked for, which the outbox's archive records the
same way, so its own webhook (before or after that record) leaves it so. An
object archived in Stripe alone while MC's row is active stays ``synced``:
reconcile compares it and reports the drift. Archiving is reversible: an
event showing the object active makes the mapping ``synced`` again (MC's
update of a row made active un-archives it, outbox/common.py). Legacy plans
are prices (plan ids are price ids), so plan.* uses the price mappings.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from ..db import queries
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
    if deleted or obj.active is not False:
        return await confirm(ctx, family, obj.id, obj.metadata, seen.key, status)

    async def archived(conn: AsyncConnection[Any], mc_id: int) -> None:
        # Decided under the mapping's lock, by MC's row as it is now.
        await conn.execute(queries("webhooks")[f"archived_{family.noun}"], {"mc_id": mc_id})

    return await confirm(
        ctx, family, obj.id, obj.metadata, seen.key, status, archived, as_data=False
    )


def _liveness(obj: CatalogObject, _: str) -> str:
    return "archived" if obj.active is False else "active"


async def product(ctx: WebhookContext, job: Job) -> Done:
    return await _handle(ctx, job, PRODUCTS)


async def price(ctx: WebhookContext, job: Job) -> Done:
    return await _handle(ctx, job, PRICES)
