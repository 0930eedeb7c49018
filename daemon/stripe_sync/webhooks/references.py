"""A reference MC lacks: fetched from Stripe and applied, not waited for.

An event may name an object MC has no mapping for: an invoice whose
subscription's ``created`` event never reached us, a payment whose
PaymentIntent MC never saw, an object of a customer MC does not know. What
happens (``supply``, called by execute.make_handler when a handler raises
``MissingReference``):

- **Objects born in Stripe** (subscriptions, invoices, payments, disputes,
  credit notes, payment methods; a payment named by its charge): retrieved
  and applied exactly as an event carrying the object would be, by the same
  handler (references it names in turn are fetched too, at most
  ``MAX_FETCHES`` retrieves per attempt of the event), in a transaction of its own;
  then the event is applied. The object's key is (the ``created`` of the
  event that named it, its status's rank, ``fetched for evt_…``): a newer applied state is never
  overwritten by it, and an event older than that event that arrives later is
  stale. The request is paced with every other call (StripeApi's pacer).
- **Objects MC creates itself** (customers, prices, products: the outbox):
  retrieved to see whose they are. One whose metadata names an MC row and
  this database's ``mc_source`` is ours with its create still in flight: the
  event waits for the mapping (the short wait, ``reference_attempts``). A
  customer that is not ours: the event is ``ignored`` at once with the note
  ``customer cus_… is not linked to an MC account`` (ops/status counts these).
  A price or product that is not ours: the event cannot be applied whole (a
  subscription item would have no MC price), so it fails at once naming it;
  a person links it and retries the event.
- **Stripe answers 404**: the event is ``ignored`` with the reason.

One reference no field names: since API 2025-03-31 a PaymentIntent does not
name its invoice. ``paid_invoice`` asks Stripe's InvoicePayments which invoice
it pays (``GET /v1/invoice_payments?payment[type]=payment_intent&payment[payment_intent]=…``,
paced like a retrieve), once per payment new to MC (payments.py): the payment
is then applied with that invoice, or set aside with it when it cannot be.

Without an API client (tests, tools) every missing reference waits as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import PermanentError
from ..mappings import CUSTOMERS, PAYMENTS, PRICES, PRODUCTS, Family
from ..queue.jobs import Done
from ..stripe_api import object_path
from .common import MissingReference, WebhookContext, ignored
from .events import metadata_id

log = logging.getLogger(__name__)

# Retrieves per attempt of one event. The longest chains Stripe's objects
# make are four: a refund or dispute naming only its charge → the charge →
# its PaymentIntent → the invoice it names (before API 2025-03-31) → that
# invoice's subscription. Each attempt starts the chain from the top, so a
# longer one never completes: it waits like any missing reference, then fails
# naming the object it lacks.
MAX_FETCHES = 6

# Families the outbox creates: never fetched and applied, only checked for ownership.
_OWNED = (CUSTOMERS, PRICES, PRODUCTS)

# Applies a fetched object of a family as an event carrying it would
# (execute.make_handler): the outcome of that synthetic event.
ApplyFetched = Callable[[Family, dict[str, Any], int, str], Awaitable[Done]]


class Budget:
    """The fetches one attempt of an event may still make (nested fetches share it)."""

    def __init__(self, left: int = MAX_FETCHES) -> None:
        self.left = left

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def not_linked(customer: str) -> str:
    """The note of an event ignored for its customer (ops/status.py matches it)."""
    return f"customer {customer} is not linked to an MC account"


async def supply(
    ctx: WebhookContext,
    missing: MissingReference,
    budget: Budget,
    apply: ApplyFetched,
    event_id: str,
    event_created: int,
) -> Done | None:
    """Make good a reference the event's handler found missing.

    None: the object is applied now; run the event again. A Done: the
    event's outcome (ignored, with the reason). Raises ``missing`` again when
    the event must wait for it, PermanentError when it can never be applied.
    """
    if ctx.api is None:
        raise missing
    family, stripe_id = missing.family, missing.stripe_id
    if family is CUSTOMERS and stripe_id in ctx.unlinked:
        return ignored(not_linked(stripe_id))
    if family in _OWNED:
        return await _owned(ctx, missing)
    if not budget.take():
        raise missing
    if family is PAYMENTS and not stripe_id.startswith("pi_"):
        # Named by its charge (a refund, a dispute): the charge names its PaymentIntent.
        charge = await _retrieve(missing, ctx, "charges", "charge", stripe_id)
        if charge is None:
            return ignored(f"charge {stripe_id} does not exist in Stripe (404)")
        pi = charge.get("payment_intent")
        pi_id = pi.get("id") if isinstance(pi, dict) else pi
        if not isinstance(pi_id, str) or not pi_id:
            return ignored(
                f"charge {stripe_id} has no PaymentIntent; MC tracks payments by PaymentIntent"
            )
        if not budget.take():
            raise missing
        stripe_id = pi_id
    # The object is ordered at the second of the event that named it, on Stripe's
    # clock, not the daemon's: a test clock's objects live on the clock's time
    # (months ahead or behind), and a daemon whose clock runs ahead would call
    # the events of those seconds stale for good. An event older than this one
    # that arrives later is stale; a newer one applies over the fetched state,
    # and the newest event of the object, which every change has, wins.
    fetched_at = event_created
    found = await _retrieve(missing, ctx, family.resource, family.noun, stripe_id)
    if found is None:
        return ignored(f"{family.noun} {stripe_id} does not exist in Stripe (404)")
    done = await apply(family, found, fetched_at, f"fetched for {event_id}")
    if done.status == "ignored":
        return done  # its reason is the event's: its customer is not MC's, say
    if done.apply is not None:
        async with ctx.pool.connection() as conn, conn.transaction():
            await done.apply(conn)
    # Applied now, or found applied meanwhile (a stale note): the event runs again.
    return None


async def _owned(ctx: WebhookContext, missing: MissingReference) -> Done | None:
    """A customer, price or product MC lacks: ours in flight (wait), or not ours."""
    family, stripe_id = missing.family, missing.stripe_id
    found = await _retrieve(missing, ctx, family.resource, family.noun, stripe_id)
    if found is None:
        return ignored(f"{family.noun} {stripe_id} does not exist in Stripe (404)")
    if _ours(ctx, family, found):
        raise missing  # MC's own create, not recorded yet: the short wait
    if family is CUSTOMERS:
        ctx.unlinked.add(stripe_id)
        return ignored(not_linked(stripe_id))
    raise PermanentError(
        f"{family.noun} {stripe_id} is not linked to any row of {family.mc_table} (it was "
        f"made outside MC), so the event cannot be applied whole; link it, then retry the event"
    )


# Answers kept for runs of an event again (WebhookContext.paid_invoices); more
# means they are not being taken (events that ended otherwise): start over.
_KEPT_ANSWERS = 1_000


async def paid_invoice(ctx: WebhookContext, pi_id: str) -> str | None:
    """The invoice a PaymentIntent pays, as its InvoicePayments say: the one it
    is not canceled for, else any (Stripe makes one per invoice the payment was
    for; a payment made for an invoice belongs to it even once canceled, as the
    PaymentIntent of older versions names it). None: it pays no invoice, or the
    key may not read invoice payments (403: logged; the payment is applied
    without, as before). A temporary failure raises: the event is retried."""
    if (kept := ctx.paid_invoices.pop(pi_id, None)) is not None:
        return kept
    assert ctx.api is not None
    params = {"payment": {"type": "payment_intent", "payment_intent": pi_id}}
    try:
        found = await ctx.api.get(
            f"list invoice_payments {pi_id}", object_path("invoice_payments"), params
        )
    except PermanentError as exc:
        log.warning(
            "cannot list the invoice payments of a PaymentIntent; applying it without its invoice",
            extra={"object": pi_id, "reason": str(exc)},
        )
        return None
    links = [link for link in (found or {}).get("data") or [] if isinstance(link, dict)]
    links.sort(key=lambda link: link.get("status") == "canceled")
    for link in links:
        invoice = link.get("invoice")
        invoice_id = invoice.get("id") if isinstance(invoice, dict) else invoice
        if isinstance(invoice_id, str) and invoice_id:
            return invoice_id
    return None


def keep_paid_invoice(ctx: WebhookContext, pi_id: str, invoice_id: str) -> None:
    """Keep Stripe's answer for the run of the event again once MC has the
    invoice (fetched now), so that run does not ask again."""
    if len(ctx.paid_invoices) >= _KEPT_ANSWERS:
        ctx.paid_invoices.clear()
    ctx.paid_invoices[pi_id] = invoice_id


def _ours(ctx: WebhookContext, family: Family, found: dict[str, Any]) -> bool:
    """Made by this database's outbox: its metadata names an MC row and our mc_source."""
    metadata = found.get("metadata")
    if found.get("deleted") or not isinstance(metadata, dict):
        return False
    assert family.metadata_key is not None
    if metadata_id(metadata, family.metadata_key) is None:
        return False
    return ctx.source is None or metadata.get("mc_source") == ctx.source


async def _retrieve(
    missing: MissingReference, ctx: WebhookContext, resource: str, noun: str, stripe_id: str
) -> dict[str, Any] | None:
    """The object as Stripe has it now; None on a 404. When Stripe refuses to
    say for good (a restricted key without read permission for it: 403), the
    event waits for the reference as it did before references were fetched."""
    assert ctx.api is not None
    try:
        # "retrieve <noun>" first: the call's metrics label (StripeApi.call) has no id.
        return await ctx.api.get(f"retrieve {noun} {stripe_id}", object_path(resource, stripe_id))
    except PermanentError as exc:
        log.warning(
            "cannot retrieve an object an event names; waiting for it instead",
            extra={"object": stripe_id, "reason": str(exc)},
        )
        raise missing from exc
