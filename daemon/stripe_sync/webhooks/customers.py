"""customer.created/updated/deleted: confirm the customers the outbox created.

MC owns its accounts, so these events change only stripe.customer_mappings
(synced, or deleted, and the default payment method the customer's
invoice_settings names, from which billing.payment_methods.is_default
follows), never billing.accounts. Customers MC does not know (made in the
Dashboard, say) are ignored.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from ..mappings import CUSTOMERS
from ..queue.jobs import Done, Job
from .common import WebhookContext, confirm, opened
from .events import Customer
from .payment_methods import set_default

# Within one second a customer's creation comes before its updates (an update
# that sets the default payment method must not lose to the creation).
_RANKS = {"customer.created": 0, "customer.updated": 1, "deleted": 2}


async def handle(ctx: WebhookContext, job: Job) -> Done:
    seen = opened(job, Customer, _RANKS, _stage, require_id=False)
    customer = seen.obj
    deleted = _stage(customer, seen.event.type) == "deleted"
    status = "deleted" if deleted else "synced"
    default = None if deleted else customer.default_payment_method

    async def then(conn: AsyncConnection[Any], account_id: int) -> None:
        await set_default(conn, account_id, default)

    return await confirm(
        ctx, CUSTOMERS, customer.id, customer.metadata, seen.key, status, then, default
    )


def _stage(customer: Customer, event_type: str) -> str:
    return "deleted" if customer.deleted or event_type == "customer.deleted" else event_type
