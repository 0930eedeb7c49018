"""charge.dispute.*: billing.disputes, one row per Stripe dispute.

A dispute names its payment by PaymentIntent (since 2019) or only by charge;
either way the payment must be in MC first (the event waits for it like any
reference), and a dispute about a charge without either is ignored.

Ordering: the usual key, with the lifecycle rank of the dispute's status so
that same-second events resolve as Stripe's sequence would (an inquiry
before the chargeback it may become, a response under review before the
verdict). closed_at is the created time of the earliest event showing the
dispute closed; as a minimum it does not depend on arrival order, so events
too old to apply still lower it.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from ..db import queries
from ..mappings import DISPUTES
from ..queue.jobs import Done, Job
from .common import WebhookContext, Write, Written, find, ignored, opened, ts, write_object
from .events import Dispute, ref_id
from .payments import payment_of

_RANKS = {
    "warning_needs_response": 0,
    "warning_under_review": 1,
    "needs_response": 2,
    "under_review": 3,
    "warning_closed": 4,
    "won": 4,
    "lost": 4,
    "prevented": 4,
}
CLOSED = frozenset(s for s, rank in _RANKS.items() if rank == 4)


async def handle(ctx: WebhookContext, job: Job) -> Done:
    seen = opened(job, Dispute, _RANKS, lambda dp, _: dp.status)
    dp, event = seen.obj, seen.event
    pi_id, charge_id = ref_id(dp.payment_intent), ref_id(dp.charge)
    if pi_id is None and charge_id is None:
        return ignored(f"dispute {dp.id} names neither a PaymentIntent nor a charge")
    closed_at = ts(event.created) if dp.status in CLOSED else None

    async def closed(conn: AsyncConnection[Any], written: Written) -> None:
        if closed_at is not None:
            await conn.execute(
                queries("webhooks")["dispute_closed"], {"id": written.mc_id, "closed_at": closed_at}
            )

    async def prepare(conn: AsyncConnection[Any]) -> Write:
        payment = await payment_of(ctx, conn, pi_id, charge_id)
        due = dp.evidence_details.due_by if dp.evidence_details else None
        values = {
            "payment_id": payment.mc_id,
            "status": dp.status or "unknown",
            "reason": dp.reason,
            "amount": dp.amount or 0,
            "currency": dp.currency or "",
            "evidence_due_by": ts(due),
        }
        return Write(values, then=closed)

    done = await write_object(ctx, DISPUTES, dp.id, seen.key, "synced", prepare)
    if done.apply is not None or closed_at is None:
        return done

    async def stale_but_closed(conn: AsyncConnection[Any]) -> None:
        row = await find(conn, DISPUTES, dp.id, lock=True)
        if row is not None:
            await closed(conn, Written(row.id, row.mc_id))

    return Done(apply=stale_but_closed, note=done.note)
