"""payment_intent.*, charge.succeeded/refunded, refund.* and invoice_payment.paid:
billing.payments.

A payment's invoice comes from whichever event names both first: before API
2025-03-31 the PaymentIntent, the charge or the invoice itself names the other;
since then only invoice_payment.paid does (an invoice's ``payments`` list is
includable, so no event carries it). A link once made is never undone by an
event that names no invoice.

Never half-applied: a payment whose invoice cannot be applied (a subscription
on a price MC does not know) is set aside with it, for the same reason. Before
2025-03-31 the PaymentIntent names the invoice, which is resolved like any
reference. Since then, for a payment MC does not have yet (its first event, or
one fetched because a charge, refund or dispute named it) of a customer of
MC's, Stripe is asked once which invoice it pays (references.paid_invoice) and
that invoice is resolved the same way; one paying none is applied as before.
A payment MC has is not asked about again: its first event decided.

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
from psycopg.rows import class_row

from ..db import queries
from ..mappings import CUSTOMERS, INVOICES, PAYMENTS
from ..queue.jobs import Done, Job
from .common import (
    Key,
    MappingRow,
    MissingReference,
    Raced,
    WebhookContext,
    Write,
    Written,
    find,
    ignored,
    opened,
    rank_of,
    resolve_one,
    stale_note,
    write_object,
)
from .events import (
    Charge,
    InvoicePayment,
    PaymentIntent,
    Refund,
    decode_event,
    invoice_unnamed,
    ref_id,
)
from .references import keep_paid_invoice, paid_invoice

_PI_RANKS = {
    "requires_payment_method": 0,
    "requires_confirmation": 1,
    "requires_action": 2,
    "processing": 3,
    "requires_capture": 4,
    "canceled": 5,
    "succeeded": 5,
}


def _pi_stage(pi: PaymentIntent, event_type: str) -> str | None:
    # A failed attempt (back to requires_payment_method) ends what the intent's
    # creation and confirmation began in the same second, as a renewal charged off
    # session does: it ranks as `processing`, so that tie is asked of Stripe.
    return "processing" if event_type == "payment_intent.payment_failed" else pi.status


_REFUND_RANKS = {"pending": 0, "requires_action": 0, "succeeded": 1, "failed": 2, "canceled": 2}


async def payment_intent(ctx: WebhookContext, job: Job) -> Done:
    seen = opened(job, PaymentIntent, _PI_RANKS, _pi_stage)
    pi = seen.obj

    charge_id = pi.charge_id
    charge_amount_refunded = pi.charge_amount_refunded

    async def charge_and_refunds(conn: AsyncConnection[Any], written: Written) -> None:
        await _record_charge(
            conn, written.mapping_id, charge_id, charge_amount_refunded, only_if_unset=False
        )
        # amount/amount_received may have changed what "full" means.
        await _recompute_refunds(conn, written.mc_id)

    # Which invoice it pays must be asked of Stripe (when MC lacks the payment).
    unnamed = ctx.api is not None and invoice_unnamed(seen.event.api_version)

    async def prepare(conn: AsyncConnection[Any], *, new: bool = False) -> Write:
        account_id = await resolve_one(ctx, conn, CUSTOMERS, ref_id(pi.customer))
        invoice = ref_id(pi.invoice)
        asked = new and unnamed and invoice is None and account_id is not None
        if asked:
            invoice = await paid_invoice(ctx, pi.id)
        try:
            # An invoice that cannot be applied sets the payment aside with it.
            invoice_id = await resolve_one(ctx, conn, INVOICES, invoice)
        except MissingReference:
            if asked and invoice is not None:
                keep_paid_invoice(ctx, pi.id, invoice)  # fetched now; the event runs again
            raise
        values = {
            "account_id": account_id,
            "invoice_id": invoice_id,
            "status": pi.status or "unknown",
            "currency": pi.currency or "",
            "amount": pi.amount or 0,
            "amount_received": pi.amount_received or 0,
            "failure_message": pi.last_payment_error.message if pi.last_payment_error else None,
        }
        return Write(values, then=charge_and_refunds)

    async def first(conn: AsyncConnection[Any]) -> Write:
        return await prepare(conn, new=True)

    return await write_object(ctx, PAYMENTS, pi.id, seen.key, "synced", prepare, first=first)


async def _payment(
    ctx: WebhookContext, conn: AsyncConnection[Any], pi_id: str, *, lock: bool = False
) -> MappingRow:
    """The mapping of a PaymentIntent a charge or refund names; it must exist."""
    row = await find(conn, PAYMENTS, pi_id, lock=lock)
    if row is None:
        raise MissingReference(pi_id, ctx.reference_backoff, PAYMENTS)
    return row


async def _payment_for(
    ctx: WebhookContext,
    conn: AsyncConnection[Any],
    pi_id: str | None,
    charge_id: str | None,
) -> str:
    """The PaymentIntent id a charge or refund belongs to (its mapping must exist)."""
    if pi_id is not None:
        await _payment(ctx, conn, pi_id)
        return pi_id
    assert charge_id is not None
    cur = await conn.execute(queries("webhooks")["payment_by_charge"], {"charge_id": charge_id})
    row = await cur.fetchone()
    if row is None:
        raise MissingReference(charge_id, ctx.reference_backoff, PAYMENTS)
    found: str = row[0]
    return found


async def payment_of(
    ctx: WebhookContext,
    conn: AsyncConnection[Any],
    pi_id: str | None,
    charge_id: str | None,
) -> MappingRow:
    """The payment mapping an object about a charge (a dispute) names by
    PaymentIntent or by charge; it must exist."""
    return await _payment(ctx, conn, await _payment_for(ctx, conn, pi_id, charge_id))


async def charge(ctx: WebhookContext, job: Job) -> Done:
    event = decode_event(job.payload, Charge)
    ch = event.data.object
    pi_id = ref_id(ch.payment_intent)
    if pi_id is None:
        return ignored(f"charge {ch.id} has no PaymentIntent; MC tracks payments by PaymentIntent")
    async with ctx.pool.connection() as conn:
        await _payment(ctx, conn, pi_id)
    # Before API 2025-03-31 a charge names its invoice. Not waited for: the
    # refund figures matter more, and the invoice's own event links it too.
    invoice = ref_id(ch.invoice)
    refunds = ch.refunds.data if ch.refunds else []
    # Only a charge that carried money is remembered, and a PaymentIntent
    # event's own latest_charge wins over it.
    carried = event.type == "charge.refunded" or ch.status == "succeeded" or ch.paid

    async def apply(conn: AsyncConnection[Any]) -> None:
        locked = await _payment(ctx, conn, pi_id, lock=True)
        charge_id = ch.id if carried else None
        await _record_charge(conn, locked.id, charge_id, ch.amount_refunded, only_if_unset=True)
        for refund in refunds:
            await _upsert_refund(conn, locked.mc_id, refund, event.created, event.type, event.id)
        await _recompute_refunds(conn, locked.mc_id)
        known = await find(conn, INVOICES, invoice) if invoice else None
        if known is not None:
            await _link(conn, locked.mc_id, known.mc_id)

    return Done(apply=apply)


async def invoice_payment(ctx: WebhookContext, job: Job) -> Done:
    """invoice_payment.paid (API 2025-03-31 and later): which invoice a payment paid.

    Both the payment and the invoice must be in MC first; the event waits for
    whichever has not arrived, like any reference.
    """
    event = decode_event(job.payload, InvoicePayment)
    link = event.data.object
    target = link.payment
    pi_id = ref_id(target.payment_intent) if target else None
    invoice = ref_id(link.invoice)
    if pi_id is None or invoice is None:
        kind = target.type if target else None
        return ignored(
            f"invoice_payment {link.id} links {invoice} to a {kind or 'payment'} "
            "that is not a PaymentIntent; MC tracks payments by PaymentIntent"
        )
    async with ctx.pool.connection() as conn:
        # The invoice first: one that cannot be applied (a subscription on a
        # price MC does not know) sets this aside before its payment is fetched.
        invoice_id = await resolve_one(ctx, conn, INVOICES, invoice)
        try:
            await _payment(ctx, conn, pi_id)
        except MissingReference:
            # This event says which invoice it pays: the payment, fetched, need not ask.
            keep_paid_invoice(ctx, pi_id, invoice)
            raise
    assert invoice_id is not None

    async def apply(conn: AsyncConnection[Any]) -> None:
        payment = await _payment(ctx, conn, pi_id, lock=True)
        await _link(conn, payment.mc_id, invoice_id)

    return Done(apply=apply)


async def _link(conn: AsyncConnection[Any], payment_id: int, invoice_id: int) -> None:
    await conn.execute(
        queries("webhooks")["link_payment_to_invoice"],
        {"payment_id": payment_id, "invoice_id": invoice_id},
    )


async def refund(ctx: WebhookContext, job: Job) -> Done:
    seen = opened(job, Refund, _REFUND_RANKS, lambda re, _: re.status)
    re, event, key = seen.obj, seen.event, seen.key
    pi_id, charge_id = ref_id(re.payment_intent), ref_id(re.charge)
    if pi_id is None and charge_id is None:
        return ignored(f"refund {re.id} names neither a PaymentIntent nor a charge")
    async with ctx.pool.connection() as conn:
        pi_id = await _payment_for(ctx, conn, pi_id, charge_id)
        cur = conn.cursor(row_factory=class_row(Key))
        await cur.execute(queries("webhooks")["refund_state"], {"refund_id": re.id})
        last = await cur.fetchone()
    if note := stale_note(key, last):
        return Done(note=note)
    payment_intent_id = pi_id

    async def apply(conn: AsyncConnection[Any]) -> None:
        # Payment first, then refund: the lock order of charge.refunded too.
        locked = await _payment(ctx, conn, payment_intent_id, lock=True)
        if not await _upsert_refund(conn, locked.mc_id, re, event.created, event.type, event.id):
            raise Raced(re.id)
        await _recompute_refunds(conn, locked.mc_id)

    return Done(apply=apply)


async def _record_charge(
    conn: AsyncConnection[Any],
    mapping_id: int,
    charge_id: str | None,
    amount_refunded: int | None,
    *,
    only_if_unset: bool,
) -> None:
    """The charge that carried a payment's money, and the refunds it reports."""
    q = queries("webhooks")
    if charge_id:
        await conn.execute(
            q["set_charge"],
            {"id": mapping_id, "charge_id": charge_id, "only_if_unset": only_if_unset},
        )
    if amount_refunded:
        await conn.execute(q["charge_refunded"], {"id": mapping_id, "amount": amount_refunded})


async def _recompute_refunds(conn: AsyncConnection[Any], payment_id: int) -> None:
    await conn.execute(queries("webhooks")["recompute_refunds"], {"payment_id": payment_id})


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
