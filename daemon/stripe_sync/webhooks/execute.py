"""The webhook dispatch table: one declaration per family of events (``Applied``:
its event types, its handler, its object), and the checks every event passes.

Usage (the daemon)::

    ctx = WebhookContext(pool, api=api, mode="test")
    worker = Worker(PostgresStore(WEBHOOKS, pool), make_handler(ctx), worker_id=...,
                    preload=make_preload(ctx))

Every event type not declared in FAMILIES is recorded ``ignored`` with a note, never
failed. Events of the other mode (``livemode`` vs ``ctx.mode``) and Connect
events (``account`` set) unless ``ctx.allow_connect`` are ignored too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from .. import STRIPE_API_VERSION
from ..errors import PermanentError
from ..mappings import (
    CREDIT_NOTES,
    CUSTOMERS,
    DISPUTES,
    INVOICES,
    PAYMENT_METHODS,
    PAYMENTS,
    PRICES,
    PRODUCTS,
    SUBSCRIPTIONS,
    Family,
)
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
    references,
    subscriptions,
)
from .common import (
    EventHandler,
    MappingRow,
    MissingReference,
    SameSecond,
    Ties,
    WebhookContext,
    ignored,
)
from .events import Envelope, ObjectHead
from .references import Budget

__all__ = [
    "FAMILIES",
    "WebhookContext",
    "applied_event_types",
    "make_handler",
    "make_preload",
    "object_of",
]


@dataclass(frozen=True)
class Applied:
    """One family of webhook events, declared once: its event types, the handler
    that applies them, and what the daemon knows of its object."""

    prefix: str  # "customer.subscription": the event types are <prefix>.<action>
    actions: tuple[str, ...]
    handler: EventHandler
    # The mapping family of the event's object (None: MC maps no such object).
    family: Family | None = None
    # What ``refetch`` and same-second ties retrieve (client.v1.<resource>),
    # when not the family's own; None with no family: never retrieved.
    resource: str | None = None
    # The handler's pre-check reads the object's mapping row by its Stripe id
    # (common.confirm): make_preload reads those rows per claimed batch.
    confirms: bool = False

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(f"{self.prefix}.{action}" for action in self.actions)

    @property
    def retrieves(self) -> str | None:
        """The resource its objects are retrieved from, if they can be."""
        return self.resource or (self.family.resource if self.family else None)


_CATALOG = ("created", "updated", "deleted")

FAMILIES: tuple[Applied, ...] = (
    Applied("customer", _CATALOG, customers.handle, CUSTOMERS, confirms=True),
    Applied("product", _CATALOG, catalog.product, PRODUCTS, confirms=True),
    Applied("price", _CATALOG, catalog.price, PRICES, confirms=True),
    # Legacy plans are prices (a plan id is a price id), retrieved as plans.
    Applied("plan", _CATALOG, catalog.price, PRICES, resource="plans", confirms=True),
    Applied(
        "customer.subscription",
        (
            "created",
            "updated",
            "deleted",
            "paused",
            "resumed",
            "trial_will_end",
            "pending_update_applied",
            "pending_update_expired",
        ),
        subscriptions.handle,
        SUBSCRIPTIONS,
    ),
    Applied(
        "invoice",
        (
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
        ),
        invoices.handle,
        INVOICES,
    ),
    Applied(
        "payment_intent",
        (
            "created",
            "processing",
            "succeeded",
            "payment_failed",
            "canceled",
            "requires_action",
            "amount_capturable_updated",
            "partially_funded",
        ),
        payments.payment_intent,
        PAYMENTS,
    ),
    Applied("charge", ("succeeded", "refunded"), payments.charge, resource="charges"),
    Applied("refund", ("created", "updated", "failed"), payments.refund, resource="refunds"),
    Applied("invoice_payment", ("paid",), payments.invoice_payment),
    Applied(
        "charge.dispute",
        ("created", "updated", "closed", "funds_withdrawn", "funds_reinstated"),
        disputes.handle,
        DISPUTES,
    ),
    Applied(
        "payment_method",
        ("attached", "updated", "automatically_updated", "detached"),
        payment_methods.payment_method,
        PAYMENT_METHODS,
    ),
    Applied("setup_intent", ("succeeded",), payment_methods.setup_intent),
    Applied("credit_note", ("created", "updated", "voided"), credit_notes.handle, CREDIT_NOTES),
    Applied("checkout.session", ("completed",), checkout.handle),
)

# Event type → its family's declaration.
_BY_TYPE: dict[str, Applied] = {t: applied for applied in FAMILIES for t in applied.types}
# Objects born in Stripe, by mapping family: the declaration that applies one
# fetched because an event named it and MC lacked it (references.py).
_FETCHED: dict[Family, Applied] = {
    applied.family: applied for applied in FAMILIES if applied.family and not applied.confirms
}


def applied_event_types() -> frozenset[str]:
    """The event types stripe-sync applies (all others are recorded ``ignored``):
    exactly what its webhook endpoint enables (ops/endpoint.py)."""
    return frozenset(_BY_TYPE)


class Claimed(msgspec.Struct):
    """What the webhook queue's claim read for an event (``Job.loaded``; ``claim``
    of sql/webhooks.sql): its ids, and its object's mapping row when it names one."""

    event: str
    object: str | None = None
    row: MappingRow | None = None


def claimed(job: Job) -> Claimed | None:
    """The claim's reading of the job; None when its claim read nothing (a test's job)."""
    return None if job.loaded is None else msgspec.json.decode(job.loaded, type=Claimed)


def make_preload(ctx: WebhookContext) -> Callable[[Sequence[Job]], Awaitable[None]]:
    """The worker's ``preload``: the mapping rows a claimed batch's handlers will
    check (common.Preloaded says why that is safe). The claim has read them
    (``Claimed``); for jobs it did not (``Job.loaded`` None), one query per family."""

    async def preload(jobs: Sequence[Job]) -> None:
        wanted: dict[Family, dict[int, tuple[str, str]]] = {}
        rows: dict[int, MappingRow | None] = {}  # read by the claim, by job id
        for job in jobs:
            applied = _BY_TYPE.get(job.type)
            if applied is None or not applied.confirms or applied.family is None:
                continue
            family = applied.family
            if (read := claimed(job)) is not None:
                if read.object is not None:
                    wanted.setdefault(family, {})[job.id] = (read.event, read.object)
                    rows[job.id] = read.row
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
        unread: dict[Family, dict[int, tuple[str, str]]] = {}
        for family, jobs_of in wanted.items():
            for job_id, (event_id, stripe_id) in jobs_of.items():
                if job_id not in rows:
                    unread.setdefault(family, {})[job_id] = (event_id, stripe_id)
                elif (row := rows[job_id]) is not None:
                    ctx.preloaded.keep(job_id, event_id, family, stripe_id, row)
        if unread:
            await ctx.preloaded.load(ctx.pool, unread)

    return preload


def object_of(job: Job) -> str | None:
    """The worker's ``serial`` key: the Stripe object an event is about. Its
    events then run one after another: side by side, the older one's apply
    would find the newer one's key and fail its whole group (``Raced``)."""
    try:
        if (read := claimed(job)) is not None:
            return read.object
        envelope = msgspec.json.decode(job.payload, type=Envelope)
        if envelope.data is None or not len(envelope.data.object):
            return None
        return msgspec.json.decode(envelope.data.object, type=ObjectHead).id
    except (msgspec.DecodeError, RecursionError):
        return None  # its handler says why


def make_handler(ctx: WebhookContext) -> Handler:
    # The contexts of a second run after a same-second tie (common.SameSecond).
    with_current = replace(ctx, ties=Ties.CURRENT)
    by_id = replace(ctx, ties=Ties.BY_ID)

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
        applied = _BY_TYPE.get(job.type)
        if applied is None:
            return ignored(f"event type {job.type} is not synced by stripe-sync")
        if ctx.refetch and ctx.api is not None:
            job = await _refetched(ctx, applied, job, envelope)
        try:
            return await run(applied, job, envelope, Budget())
        except MissingReference as exc:
            # Its outbox row (or the event that creates it) may still be in
            # flight; after reference_attempts it is not coming.
            if job.attempts >= ctx.reference_attempts:
                plural = "s" if job.attempts != 1 else ""
                raise PermanentError(f"{exc} (waited {job.attempts} attempt{plural})") from None
            raise

    async def run(applied: Applied, job: Job, envelope: Envelope, budget: Budget) -> Done:
        """The event through its handler: a same-second tie asks Stripe; a
        reference MC lacks is supplied (references.py), then the event runs again."""

        async def apply_fetched(
            family: Family, obj: dict[str, Any], created: int, event_id: str
        ) -> Done:
            # The object as an event carrying it would bring it, through its
            # family's handler (and this same loop, for what it names in turn).
            of = _FETCHED[family]
            kind = f"{of.prefix}.updated"
            event = {
                "id": event_id,
                "object": "event",
                "type": kind,
                "created": created,
                "livemode": bool(obj.get("livemode", envelope.livemode)),
                # Retrieved with the daemon's Stripe-Version: its shape.
                "api_version": STRIPE_API_VERSION,
                "data": {"object": obj},
            }
            payload = msgspec.json.encode(event)
            fetched = Job(job.id, kind, job.attempts, payload.decode())
            return await run(of, fetched, msgspec.json.decode(payload, type=Envelope), budget)

        while True:
            try:
                try:
                    return await applied.handler(ctx, job)
                except SameSecond:
                    return await _tie(with_current, by_id, applied, job, envelope)
            except MissingReference as missing:
                outcome = await references.supply(
                    ctx, missing, budget, apply_fetched, envelope.id or "", envelope.created or 0
                )
                if outcome is not None:
                    return outcome

    async def forgetting(job: Job) -> Done:
        try:
            return await handle(job)
        finally:
            ctx.preloaded.discard(job.id)  # its preloaded row, taken or not, is of no use now

    return forgetting


async def _tie(
    with_current: WebhookContext,
    by_id: WebhookContext,
    applied: Applied,
    job: Job,
    envelope: Envelope,
) -> Done:
    """The event ties with the applied one: apply the object as Stripe has it now.

    If Stripe cannot say (an object family we do not fetch, or one Stripe no
    longer has: 404), the event ids decide as before. A temporary failure
    retries the event.
    """
    try:
        fetched = await _refetched(with_current, applied, job, envelope)
    except PermanentError:
        fetched = job
    if fetched is job:
        return await applied.handler(by_id, job)
    return await applied.handler(with_current, fetched)


async def _refetched(ctx: WebhookContext, applied: Applied, job: Job, envelope: Envelope) -> Job:
    """The job with data.object replaced by the object as Stripe has it now.

    The event's own key still orders it; a newer state than the event shows
    is harmless, as the newer event's key will match it. Deleted objects
    cannot be fetched, so deletions use the event's copy.
    """
    assert ctx.api is not None
    if job.type.endswith(".deleted") or envelope.data is None or not len(envelope.data.object):
        return job
    resource = applied.retrieves
    object_id = msgspec.json.decode(envelope.data.object, type=ObjectHead).id
    if resource is None or not object_id:
        return job
    service: Any = getattr(ctx.api.client.v1, resource)
    # "retrieve <family>" first: the metrics label (StripeApi.call) takes two words, no id.
    what = f"retrieve {applied.prefix} {object_id}"
    fetched = await ctx.api.call(what, service.retrieve_async(object_id))
    event: dict[str, Any] = msgspec.json.decode(job.payload)
    event["data"]["object"] = fetched.to_dict(recursive=True, for_json=True)
    event["api_version"] = STRIPE_API_VERSION  # the shape it now has
    return job._replace(payload=msgspec.json.encode(event).decode())
