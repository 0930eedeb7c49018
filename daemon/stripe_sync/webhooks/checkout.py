"""checkout.session.completed: link the customer a session names to its MC account.

A Checkout session may create the Stripe customer itself; the account it
belongs to is named by ``metadata.mc_account_id`` or ``client_reference_id``.
If that account has no Stripe customer yet, the session's customer becomes
its mapping. The subscription or payment the session made arrive as their
own events and are handled there.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from ..db import queries
from ..errors import TransientError
from ..mappings import CUSTOMERS
from ..queue.jobs import Done, Job
from . import references
from .common import WebhookContext, find, ignored
from .events import CheckoutSession, decode_event, metadata_id, ref_id


def account_of(session: CheckoutSession) -> int | None:
    assert CUSTOMERS.metadata_key is not None
    found = metadata_id(session.metadata, CUSTOMERS.metadata_key)
    if found is None:
        found = metadata_id({"ref": session.client_reference_id}, "ref")
    return found


async def handle(ctx: WebhookContext, job: Job) -> Done:
    event = decode_event(job.payload, CheckoutSession)
    session = event.data.object
    customer = ref_id(session.customer)
    if customer is None:
        return ignored(f"checkout session {session.id} has no customer to link")
    async with ctx.pool.connection() as conn:
        known = await find(conn, CUSTOMERS, customer)
    if known is not None:
        return Done(
            note=f"{customer} is already mapped to billing.accounts "
            f"id={known.mc_id}; nothing to link"
        )
    account_id = account_of(session)
    if account_id is None:
        return ignored(
            f"checkout session {session.id}: {customer} is not mapped and the "
            "session names no MC account (metadata.mc_account_id or "
            "client_reference_id)"
        )

    async with ctx.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(queries("webhooks")["account_customer"], {"account_id": account_id})
        account = await cur.fetchone()
    if account is None:
        return ignored(
            f"checkout session {session.id}: billing.accounts id={account_id} does not exist"
        )
    if account["stripe_id"] is not None:
        return ignored(
            f"checkout session {session.id}: billing.accounts id={account_id} "
            f"already has Stripe customer {account['stripe_id']}, not {customer}"
        )

    async def apply(conn: AsyncConnection[Any]) -> None:
        cur = await conn.execute(
            queries("webhooks")["link_customer"], {"stripe_id": customer, "account_id": account_id}
        )
        if await cur.fetchone() is None:
            raise TransientError(
                f"billing.accounts id={account_id} got a Stripe customer meanwhile; checking again",
                backoff_base=0.05,
            )
        # Its subscription's events may have come first and been ignored.
        await conn.execute(
            queries("webhooks")["requeue_unlinked"], {"note": references.not_linked(customer)}
        )

    return Done(apply=apply, note=f"linked {customer} to billing.accounts id={account_id}")
