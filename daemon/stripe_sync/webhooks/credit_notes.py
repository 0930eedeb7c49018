"""credit_note.created/updated/voided: billing.credit_notes, money credited
back on an invoice.

The invoice must be in MC first (waited for like any reference). A void
credit note ranks above an issued one, so a void and an update of the same
second end void.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from ..mappings import CREDIT_NOTES, INVOICES
from ..queue.jobs import Done, Job
from .common import WebhookContext, Write, opened, required, resolve_one, write_object
from .events import CreditNote

_RANKS = {"issued": 0, "void": 1}


async def handle(ctx: WebhookContext, job: Job) -> Done:
    seen = opened(job, CreditNote, _RANKS, lambda cn, _: cn.status)
    cn = seen.obj
    invoice = required(cn.invoice, f"{seen.event.type}: credit note {cn.id} names no invoice")

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

    return await write_object(ctx, CREDIT_NOTES, cn.id, seen.key, "synced", prepare)
