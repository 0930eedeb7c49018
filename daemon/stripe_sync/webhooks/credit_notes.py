"""credit_note.created/updated/voided: billing.credit_notes, money credited
back on an invoice.

The invoice must be in MC first (waited for like any reference). A void
credit note ranks above an issued one, so a void and an update of the same
second end void.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from ..errors import PermanentError
from ..mappings import CREDIT_NOTES, INVOICES
from ..queue.jobs import Done, Job
from .common import Key, WebhookContext, Write, rank_of, resolve_one, write_object
from .events import CreditNote, decode_event, ref_id

_RANKS = {"issued": 0, "void": 1}


async def handle(ctx: WebhookContext, job: Job) -> Done:
    event = decode_event(job.payload, CreditNote)
    cn = event.data.object
    if not cn.id:
        raise PermanentError(f"{event.type}: data.object has no id")
    invoice = ref_id(cn.invoice)
    if invoice is None:
        raise PermanentError(f"{event.type}: credit note {cn.id} names no invoice")
    key = Key(event.created, rank_of(_RANKS, cn.status, event.type), event.id)

    async def prepare(conn: AsyncConnection[Any]) -> Write:
        values = {
            "invoice_id": await resolve_one(ctx, conn, INVOICES, invoice),
            "status": cn.status or "unknown",
            # amount: the total credited, tax included (older versions: total).
            "amount": cn.amount if cn.amount is not None else cn.total or 0,
            "currency": cn.currency or "",
            "reason": cn.reason,
            "memo": cn.memo,
        }
        return Write(values)

    return await write_object(ctx, CREDIT_NOTES, cn.id, key, "synced", prepare)
