"""customer.created/updated/deleted: confirm the customers the outbox created.

MC owns its accounts, so these events change only stripe.customer_mappings
(synced, or deleted), never billing.accounts. Customers MC does not know
(made in the Dashboard, say) are ignored.
"""

from __future__ import annotations

from ..jobs import Done, Job
from ..mappings import CUSTOMERS
from .common import Key, WebhookContext, confirm, rank_of
from .events import Customer, decode_event

_RANKS = {"live": 0, "deleted": 1}


async def handle(ctx: WebhookContext, job: Job) -> Done:
    event = decode_event(job.payload, Customer)
    customer = event.data.object
    deleted = customer.deleted or event.type == "customer.deleted"
    status = "deleted" if deleted else "synced"
    key = Key(
        event.created, rank_of(_RANKS, "deleted" if deleted else "live", event.type), event.id
    )
    return await confirm(ctx, CUSTOMERS, customer.id, customer.metadata, key, status)
