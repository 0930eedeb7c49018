"""The webhook dispatch table: event type → handler, and the checks every event passes.

Usage (the daemon)::

    ctx = WebhookContext(pool, api=api, mode="test")
    worker = Worker(PostgresStore(WEBHOOKS, pool), make_handler(ctx), worker_id=...,
                    preload=make_preload(ctx))

Every event type not in HANDLERS is recorded ``ignored`` with a note, never
failed. Events of the other mode (``livemode`` vs ``ctx.mode``) and Connect
events (``account`` set) unless ``ctx.allow_connect`` are ignored too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import msgspec

from ..errors import PermanentError
from ..mappings import CUSTOMERS, PRICES, PRODUCTS, Family
from ..queue.jobs import Done, Handler, Job
from . import (
    catalog,
    checkout,
    credit_notes,
    customers,
    disputes,
    invoices,
    payment_methods,
    payments,
    subscriptions,
)
from .common import EventHandler, MissingReference, SameSecond, WebhookContext, ignored
from .events import Envelope, ObjectHead

__all__ = ["HANDLERS", "WebhookContext", "make_handler", "make_preload", "object_of"]

HANDLERS: dict[str, EventHandler] = {
    "customer.created": customers.handle,
    "customer.updated": customers.handle,
    "customer.deleted": customers.handle,
    "product.created": catalog.product,
    "product.updated": catalog.product,
    "product.deleted": catalog.product,
    "price.created": catalog.price,
    "price.updated": catalog.price,
    "price.deleted": catalog.price,
    "plan.created": catalog.price,
    "plan.updated": catalog.price,
    "plan.deleted": catalog.price,
    **{
        f"customer.subscription.{what}": subscriptions.handle
        for what in (
            "created",
            "updated",
            "deleted",
            "paused",
            "resumed",
            "trial_will_end",
            "pending_update_applied",
            "pending_update_expired",
        )
    },
    **{
        f"invoice.{what}": invoices.handle
        for what in (
            "created",
            "finalized",
            "updated",
            "paid",
            "payment_failed",
            "payment_succeeded",
            "voided",
            "marked_uncollectible",
            "deleted",
            "payment_action_required",
            "overdue",
            "will_be_due",
        )
    },
    **{
        f"payment_intent.{what}": payments.payment_intent
        for what in (
            "created",
            "processing",
            "succeeded",
            "payment_failed",
            "canceled",
            "requires_action",
            "amount_capturable_updated",
            "partially_funded",
        )
    },
    "charge.succeeded": payments.charge,
    "charge.refunded": payments.charge,
    "refund.created": payments.refund,
    "refund.updated": payments.refund,
    "refund.failed": payments.refund,
    "invoice_payment.paid": payments.invoice_payment,
    **{
        f"charge.dispute.{what}": disputes.handle
        for what in ("created", "updated", "closed", "funds_withdrawn", "funds_reinstated")
    },
    **{
        f"payment_method.{what}": payment_methods.payment_method
        for what in ("attached", "updated", "automatically_updated", "detached")
    },
    "setup_intent.succeeded": payment_methods.setup_intent,
    "credit_note.created": credit_notes.handle,
    "credit_note.updated": credit_notes.handle,
    "credit_note.voided": credit_notes.handle,
    "checkout.session.completed": checkout.handle,
}

# What to retrieve for ``refetch``: the object family of an event type (the
# first prefix that matches: charge.dispute before charge).
_REFETCH: dict[str, str] = {
    "charge.dispute": "disputes",
    "customer.subscription": "subscriptions",
    "customer": "customers",
    "product": "products",
    "price": "prices",
    "plan": "plans",
    "invoice": "invoices",
    "payment_intent": "payment_intents",
    "charge": "charges",
    "refund": "refunds",
    "payment_method": "payment_methods",
    "credit_note": "credit_notes",
}


# The handlers whose pre-check reads one mapping row by the event's object id
# (common.confirm), and the family of that row: make_preload reads them per batch.
_CONFIRMS: dict[EventHandler, Family] = {
    customers.handle: CUSTOMERS,
    catalog.product: PRODUCTS,
    catalog.price: PRICES,
}


def make_preload(ctx: WebhookContext) -> Callable[[Sequence[Job]], Awaitable[None]]:
    """The worker's ``preload``: the mapping rows a claimed batch's handlers will
    check, in one query per family (common.Preloaded says why that is safe)."""

    async def preload(jobs: Sequence[Job]) -> None:
        wanted: dict[Family, dict[int, tuple[str, str]]] = {}
        for job in jobs:
            handler = HANDLERS.get(job.type)
            family = _CONFIRMS.get(handler) if handler is not None else None
            if family is None:
                continue
            try:
                envelope = msgspec.json.decode(job.payload, type=Envelope)
                if envelope.id is None or envelope.data is None:
                    continue
                head = msgspec.json.decode(envelope.data.object, type=ObjectHead)
            except (msgspec.DecodeError, RecursionError):
                continue  # its handler says why
            if head.id is not None:
                wanted.setdefault(family, {})[job.id] = (envelope.id, head.id)
        # An object with two events in the batch: the worker runs them one after
        # the other (object_of), so the second must read the row the first wrote.
        for jobs_of in wanted.values():
            seen = Counter(stripe_id for _, stripe_id in jobs_of.values())
            for job_id in [j for j, (_, sid) in jobs_of.items() if seen[sid] > 1]:
                del jobs_of[job_id]
        if any(wanted.values()):
            await ctx.preloaded.load(ctx.pool, wanted)

    return preload


def object_of(job: Job) -> str | None:
    """The worker's ``serial`` key: the Stripe object an event is about. Its
    events then run one after another: side by side, the older one's apply
    would find the newer one's key and fail its whole group (``Raced``)."""
    try:
        envelope = msgspec.json.decode(job.payload, type=Envelope)
        if envelope.data is None or not len(envelope.data.object):
            return None
        return msgspec.json.decode(envelope.data.object, type=ObjectHead).id
    except (msgspec.DecodeError, RecursionError):
        return None  # its handler says why


def make_handler(ctx: WebhookContext) -> Handler:
    if ctx.refetch and ctx.api is not None:
        ctx = replace(ctx, current=True)
    # The context of a second run after a same-second tie (common.SameSecond).
    with_current = replace(ctx, current=True)
    by_id = replace(ctx, fetch_ties=False)

    async def handle(job: Job) -> Done:
        try:
            envelope = msgspec.json.decode(job.payload, type=Envelope)
        except msgspec.DecodeError as exc:  # the endpoint checked it; a DBA may not have
            raise PermanentError(f"payload is not a Stripe event: {exc}") from None
        except RecursionError:
            raise PermanentError("payload is not a Stripe event: nested too deeply") from None
        livemode = "live" if envelope.livemode else "test"
        if ctx.mode is not None and livemode != ctx.mode:
            return ignored(f"{livemode}-mode event, but this daemon syncs {ctx.mode} mode")
        if envelope.account and not ctx.allow_connect:
            return ignored(
                f"Connect event for account {envelope.account}; Connect events are not synced"
            )
        handler = HANDLERS.get(job.type)
        if handler is None:
            return ignored(f"event type {job.type} is not synced by stripe-sync")
        if ctx.current:
            job = await _refetched(ctx, job, envelope)
        try:
            try:
                return await handler(ctx, job)
            except SameSecond:
                return await _tie(with_current, by_id, handler, job, envelope)
        except MissingReference as exc:
            # Its outbox row (or the event that creates it) may still be in
            # flight; after reference_attempts it is not coming.
            if job.attempts >= ctx.reference_attempts:
                plural = "s" if job.attempts != 1 else ""
                raise PermanentError(f"{exc} (waited {job.attempts} attempt{plural})") from None
            raise

    async def forgetting(job: Job) -> Done:
        try:
            return await handle(job)
        finally:
            ctx.preloaded.discard(job.id)  # its preloaded row, taken or not, is of no use now

    return forgetting


async def _tie(
    with_current: WebhookContext,
    by_id: WebhookContext,
    handler: EventHandler,
    job: Job,
    envelope: Envelope,
) -> Done:
    """The event ties with the applied one: apply the object as Stripe has it now.

    If Stripe cannot say (an object family we do not fetch, or one Stripe no
    longer has: 404), the event ids decide as before. A temporary failure
    retries the event.
    """
    try:
        fetched = await _refetched(with_current, job, envelope)
    except PermanentError:
        fetched = job
    if fetched is job:
        return await handler(by_id, job)
    return await handler(with_current, fetched)


async def _refetched(ctx: WebhookContext, job: Job, envelope: Envelope) -> Job:
    """The job with data.object replaced by the object as Stripe has it now.

    The event's own key still orders it; a newer state than the event shows
    is harmless, as the newer event's key will match it. Deleted objects
    cannot be fetched, so deletions use the event's copy.
    """
    assert ctx.api is not None
    if job.type.endswith(".deleted") or envelope.data is None or not len(envelope.data.object):
        return job
    family = next((f for prefix, f in _REFETCH.items() if job.type.startswith(prefix + ".")), None)
    object_id = msgspec.json.decode(envelope.data.object, type=ObjectHead).id
    if family is None or not object_id:
        return job
    service: Any = getattr(ctx.api.client.v1, family)
    fetched = await ctx.api.call(f"retrieve {object_id}", service.retrieve_async(object_id))
    event: dict[str, Any] = msgspec.json.decode(job.payload)
    event["data"]["object"] = fetched.to_dict(recursive=True, for_json=True)
    return job._replace(payload=msgspec.json.encode(event).decode())
