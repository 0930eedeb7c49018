"""payment_intent.*, charge.succeeded/refunded and refund.*: billing.payments.

MC tracks payments by PaymentIntent: the first payment_intent event creates
the row and its mapping. Charge and refund events only add to a payment
that exists (they wait for it like any reference), and a charge without a
PaymentIntent (pre-2019 API) is ignored.

Refunds: each refund is a row of stripe.payment_refunds, ordered by its own
events; charge.refunded also raises the payment mapping's
charge_amount_refunded, which only grows. The payment's amount_refunded is
the larger of the two figures, and refund_status follows from it (none,
partial, full), so refund events in any order give the same result.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from ..db import queries
from ..errors import PermanentError
from ..jobs import Done, Job
from .common import (
    CUSTOMERS,
    INVOICES,
    PAYMENTS,
    Key,
    MissingReference,
    Raced,
    WebhookContext,
    find,
    ignored,
    insert_mapping,
    mark,
    object_lock,
    rank_of,
    resolve_one,
)
from .shapes import Charge, PaymentIntent, Refund, decode_event, ref_id

_PI_RANKS = {
    "requires_payment_method": 0,
    "requires_confirmation": 1,
    "requires_action": 2,
    "processing": 3,
    "requires_capture": 4,
    "canceled": 5,
    "succeeded": 5,
}
_REFUND_RANKS = {"pending": 0, "requires_action": 0, "succeeded": 1, "failed": 2, "canceled": 2}


async def payment_intent(ctx: WebhookContext, job: Job) -> Done:
    event = decode_event(job.payload, PaymentIntent)
    pi = event.data.object
    if not pi.id:
        raise PermanentError(f"{event.type}: data.object has no id")
    key = Key(event.created, rank_of(_PI_RANKS, pi.status, event.type), event.id)

    async with ctx.pool.connection() as conn:
        row = await find(conn, PAYMENTS, pi.id)
        if row is not None and (note := row.stale_note(key)):
            return Done(note=note)
        account_id = await resolve_one(ctx, conn, CUSTOMERS, ref_id(pi.customer))
        invoice_id = await resolve_one(ctx, conn, INVOICES, ref_id(pi.invoice))

    values: dict[str, Any] = {
        "account_id": account_id,
        "invoice_id": invoice_id,
        "status": pi.status or "unknown",
        "currency": pi.currency or "",
        "amount": pi.amount or 0,
        "amount_received": pi.amount_received or 0,
        "failure_message": pi.last_payment_error.message if pi.last_payment_error else None,
    }
    charge_id = pi.charge_id

    async def apply(conn: AsyncConnection[Any]) -> None:
        q = queries("webhooks")
        await object_lock(conn, pi.id)
        locked = await find(conn, PAYMENTS, pi.id, lock=True)
        if locked is None:
            cur = await conn.execute(q["insert_payment"], values)
            created = await cur.fetchone()
            assert created is not None
            payment_id: int = created[0]
            await insert_mapping(conn, PAYMENTS, payment_id, pi.id, key)
            locked = await find(conn, PAYMENTS, pi.id, lock=True)
            assert locked is not None
        else:
            if locked.stale_note(key):
                raise Raced(pi.id)
            payment_id = locked.mc_id
            await conn.execute(q["update_payment"], {**values, "id": payment_id})
            await mark(conn, PAYMENTS, locked.id, pi.id, key, "synced")
        if charge_id:
            await conn.execute(
                q["set_charge"], {"id": locked.id, "charge_id": charge_id, "only_if_unset": False}
            )
        if amount := pi.charge_amount_refunded:
            await conn.execute(q["charge_refunded"], {"id": locked.id, "amount": amount})
        # amount/amount_received may have changed what "full" means.
        await conn.execute(q["recompute_refunds"], {"payment_id": payment_id})

    return Done(apply=apply)


async def _payment_for(
    ctx: WebhookContext,
    conn: AsyncConnection[Any],
    pi_id: str | None,
    charge_id: str | None,
) -> str:
    """The PaymentIntent id a charge or refund belongs to (its mapping must exist)."""
    if pi_id is not None:
        if await find(conn, PAYMENTS, pi_id) is None:
            raise MissingReference(pi_id, ctx.reference_backoff)
        return pi_id
    assert charge_id is not None
    cur = await conn.execute(queries("webhooks")["payment_by_charge"], {"charge_id": charge_id})
    row = await cur.fetchone()
    if row is None:
        raise MissingReference(charge_id, ctx.reference_backoff)
    found: str = row[0]
    return found


async def charge(ctx: WebhookContext, job: Job) -> Done:
    event = decode_event(job.payload, Charge)
    ch = event.data.object
    pi_id = ref_id(ch.payment_intent)
    if pi_id is None:
        return ignored(f"charge {ch.id} has no PaymentIntent; MC tracks payments by PaymentIntent")
    async with ctx.pool.connection() as conn:
        await _payment_for(ctx, conn, pi_id, None)
    refunds = ch.refunds.data if ch.refunds else []

    async def apply(conn: AsyncConnection[Any]) -> None:
        q = queries("webhooks")
        locked = await find(conn, PAYMENTS, pi_id, lock=True)
        if locked is None:
            raise MissingReference(pi_id, ctx.reference_backoff)
        # Only a charge that carried money is remembered, and a PaymentIntent
        # event's own latest_charge wins over it.
        if ch.id and (event.type == "charge.refunded" or ch.status == "succeeded" or ch.paid):
            await conn.execute(
                q["set_charge"], {"id": locked.id, "charge_id": ch.id, "only_if_unset": True}
            )
        if ch.amount_refunded:
            await conn.execute(
                q["charge_refunded"], {"id": locked.id, "amount": ch.amount_refunded}
            )
        for refund in refunds:
            await _upsert_refund(conn, locked.mc_id, refund, event.created, event.type, event.id)
        await conn.execute(q["recompute_refunds"], {"payment_id": locked.mc_id})

    return Done(apply=apply)


async def refund(ctx: WebhookContext, job: Job) -> Done:
    event = decode_event(job.payload, Refund)
    re = event.data.object
    pi_id, charge_id = ref_id(re.payment_intent), ref_id(re.charge)
    if not re.id:
        raise PermanentError(f"{event.type}: data.object has no id")
    if pi_id is None and charge_id is None:
        return ignored(f"refund {re.id} names neither a PaymentIntent nor a charge")
    key = Key(event.created, rank_of(_REFUND_RANKS, re.status, event.type), event.id)
    async with ctx.pool.connection() as conn:
        pi_id = await _payment_for(ctx, conn, pi_id, charge_id)
        cur = await conn.execute(queries("webhooks")["refund_state"], {"refund_id": re.id})
        state = await cur.fetchone()
    if state is not None and (note := _stale(key, Key(*state))):
        return Done(note=note)
    payment_intent_id = pi_id

    async def apply(conn: AsyncConnection[Any]) -> None:
        # Payment first, then refund: the lock order of charge.refunded too.
        locked = await find(conn, PAYMENTS, payment_intent_id, lock=True)
        if locked is None:
            raise MissingReference(payment_intent_id, ctx.reference_backoff)
        if not await _upsert_refund(conn, locked.mc_id, re, event.created, event.type, event.id):
            raise Raced(re.id)
        await conn.execute(queries("webhooks")["recompute_refunds"], {"payment_id": locked.mc_id})

    return Done(apply=apply)


def _stale(key: Key, last: Key) -> str | None:
    if key > last:
        return None
    if key == last:
        return f"duplicate: {key.event_id} was already applied"
    return f"stale: older than {last.event_id}"


async def _upsert_refund(
    conn: AsyncConnection[Any],
    payment_id: int,
    re: Refund,
    created: int,
    event_type: str,
    event_id: str,
) -> bool:
    """Write one refund's state unless a newer event already did; True if written."""
    if not re.id:
        return False
    rank = rank_of(_REFUND_RANKS, re.status, event_type)
    cur = await conn.execute(
        queries("webhooks")["upsert_refund"],
        {
            "refund_id": re.id,
            "payment_id": payment_id,
            "amount": re.amount or 0,
            "status": re.status,
            "created": created,
            "rank": rank,
            "event_id": event_id,
        },
    )
    return cur.rowcount == 1
