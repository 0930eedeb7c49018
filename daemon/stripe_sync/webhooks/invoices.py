"""invoice.*: billing.invoices.

Invoices are born in Stripe: the first event creates the MC row and its
mapping, later ones overwrite it with the state they show. invoice.deleted
(a deleted draft) keeps the row with status ``deleted`` and marks the
mapping deleted, so a late invoice.created cannot bring it back.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from ..db import queries
from ..mappings import CUSTOMERS, INVOICES, SUBSCRIPTIONS
from ..queue.jobs import Done, Job
from .common import WebhookContext, Write, Written, opened, required, resolve_one, ts, write_object
from .events import Invoice, ref_id

_RANKS = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3, "deleted": 4}


def status_of(invoice: Invoice, event_type: str) -> str:
    if event_type == "invoice.deleted":
        return "deleted"
    if invoice.status:
        return invoice.status
    # Versions before invoice.status (2015): paid or not.
    return "paid" if invoice.paid else "open"


async def handle(ctx: WebhookContext, job: Job) -> Done:
    seen = opened(job, Invoice, _RANKS, status_of, require_id=False)
    invoice, event = seen.obj, seen.event
    if not invoice.id:
        # invoice.upcoming has no id: a preview, not an invoice.
        return Done(status="ignored", note=f"{event.type}: the invoice has no id (a preview)")
    customer = required(invoice.customer, f"invoice {invoice.id} names no customer")
    status = status_of(invoice, event.type)

    paid_at = invoice.status_transitions.paid_at if invoice.status_transitions else None
    payment_intent, charge = ref_id(invoice.payment_intent), invoice.charge_id

    async def link_payment(conn: AsyncConnection[Any], written: Written) -> None:
        # Versions before 2025-03-31 name the payment here; later ones send
        # invoice_payment.paid (payments.invoice_payment).
        if payment_intent or charge:
            await conn.execute(
                queries("webhooks")["link_invoice_payments"],
                {"invoice_id": written.mc_id, "payment_intent": payment_intent, "charge": charge},
            )

    async def prepare(conn: AsyncConnection[Any]) -> Write:
        return Write(
            {
                "account_id": await resolve_one(ctx, conn, CUSTOMERS, customer),
                "subscription_id": await resolve_one(
                    ctx, conn, SUBSCRIPTIONS, invoice.subscription_id
                ),
                "status": status,
                "number": invoice.number,
                "currency": invoice.currency or "",
                "amount_due": invoice.amount_due or 0,
                "amount_paid": invoice.amount_paid or 0,
                "amount_remaining": invoice.amount_remaining or 0,
                "total": invoice.total or 0,
                "period_start": ts(invoice.period_start),
                "period_end": ts(invoice.period_end),
                "due_date": ts(invoice.due_date),
                "paid_at": ts(paid_at),
            },
            then=link_payment,
        )

    sync_status = "deleted" if status == "deleted" else "synced"
    return await write_object(ctx, INVOICES, invoice.id, seen.key, sync_status, prepare)
