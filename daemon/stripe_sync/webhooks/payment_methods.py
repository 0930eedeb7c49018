"""Cards on file: payment_method.attached/updated/automatically_updated/detached
and setup_intent.succeeded → billing.payment_methods; customer.updated names
the default (customers.py).

Only what Stripe's events show is kept: type, and for cards brand, last4 and
expiry (never a fingerprint). A payment method belongs to the account of the
customer it is attached to, which must be in MC (waited for like any
reference); once detached its customer is null and so is account_id, and
its mapping is marked deleted: a detached payment method cannot be attached
again. Within one second, the lifecycle orders them: attached (or a setup
intent's success) before updated, and detached above all.

is_default is derived, never written from one event alone: a payment method
is the default when stripe.customer_mappings.default_payment_method (the
newest customer event's invoice_settings.default_payment_method) names it
and it is attached to that customer. Each side recomputes it after writing,
so the result does not depend on which arrives first; both take the
account's lock before reading what they recompute it from (account_locks),
so they never run side by side (a customer event that leaves the default as
it was changes nothing and recomputes nothing).
"""

from __future__ import annotations

from typing import Any

import msgspec
from psycopg import AsyncConnection

from ..db import queries
from ..errors import PermanentError
from ..mappings import CUSTOMERS, PAYMENT_METHODS
from ..queue.jobs import Done, Job
from ..stripe_api import object_path
from .common import Key, WebhookContext, Write, Written, ignored, resolve_one, write_object
from .events import PaymentMethod, SetupIntent, decode_event, ref_id

_RANKS = {"attached": 0, "updated": 1, "detached": 2}


async def payment_method(ctx: WebhookContext, job: Job) -> Done:
    event = decode_event(job.payload, PaymentMethod)
    return await _write(ctx, event.data.object, event.created, event.type, event.id)


async def setup_intent(ctx: WebhookContext, job: Job) -> Done:
    """setup_intent.succeeded: the payment method it set up. Stripe's event
    names it by id (expanded only when the event was made so): the daemon
    then fetches it. Stripe's state now may be newer than the event (detached
    since); that is harmless, as the newer event's key will match it. Without
    an API client an id alone shows nothing to keep, and the
    payment_method.attached that accompanies it carries the card."""
    event = decode_event(job.payload, SetupIntent)
    pm = event.data.object.payment_method
    if isinstance(pm, str) and ctx.api is not None:
        fetched = await _retrieve(ctx, pm)
        if fetched is None:
            return ignored(f"payment method {pm} does not exist in Stripe (404)")
        pm = fetched
    if not isinstance(pm, PaymentMethod):
        return ignored(
            f"setup_intent {event.data.object.id} names payment method {pm} without its "
            "details; payment_method.attached carries them"
        )
    return await _write(ctx, pm, event.created, event.type, event.id)


async def _retrieve(ctx: WebhookContext, payment_method_id: str) -> PaymentMethod | None:
    """The payment method as Stripe has it now; None when Stripe has none (404)."""
    assert ctx.api is not None
    fetched = await ctx.api.get(
        f"retrieve payment_method {payment_method_id}",
        object_path(PAYMENT_METHODS.resource, payment_method_id),
    )
    if fetched is None:
        return None
    try:
        return msgspec.convert(fetched, PaymentMethod)
    except msgspec.ValidationError as exc:
        raise PermanentError(
            f"payment method {payment_method_id} as Stripe returned it: {exc}"
        ) from None


async def _write(
    ctx: WebhookContext, pm: PaymentMethod, created: int, event_type: str, event_id: str
) -> Done:
    if not pm.id:
        raise PermanentError(f"{event_type}: the payment method has no id")
    customer = ref_id(pm.customer)
    detached = customer is None or event_type == "payment_method.detached"
    updated = event_type.endswith("updated")  # .updated, .automatically_updated
    stage = "detached" if detached else "updated" if updated else "attached"
    key = Key(created, _RANKS[stage], event_id)
    card = pm.card

    async def prepare(conn: AsyncConnection[Any]) -> Write:
        account = None if detached else await resolve_one(ctx, conn, CUSTOMERS, customer)
        values = {
            "account_id": account,
            "type": pm.type or "unknown",
            "brand": card.brand if card else None,
            "last4": card.last4 if card else None,
            "exp_month": card.exp_month if card else None,
            "exp_year": card.exp_year if card else None,
        }

        async def lock_accounts(conn: AsyncConnection[Any]) -> None:
            # The account it leaves (detached, or moved) and the one it joins.
            cur = await conn.execute(
                queries("webhooks")["payment_method_account"], {"stripe_id": pm.id}
            )
            row = await cur.fetchone()
            await account_locks(conn, [a for a in (row and row[0], account) if a is not None])

        return Write(values, then=refresh_default, before=lock_accounts)

    status = "deleted" if detached else "synced"
    return await write_object(ctx, PAYMENT_METHODS, pm.id, key, status, prepare)


async def refresh_default(conn: AsyncConnection[Any], written: Written) -> None:
    """is_default of this payment method (and its account's others) after a write."""
    await conn.execute(
        queries("webhooks")["default_payment_methods"],
        {"account_id": None, "payment_method_id": written.mc_id},
    )


async def account_locks(conn: AsyncConnection[Any], accounts: list[int]) -> None:
    await conn.execute(queries("webhooks")["account_locks"], {"accounts": accounts})


async def set_default(
    conn: AsyncConnection[Any], account_id: int, stripe_payment_method: str | None
) -> None:
    """customer.*: the default its newest applied event names, and is_default
    of that account's payment methods.

    Most customer events name the default already stored: then is_default is
    as the last writer left it, and the lock and the recompute (two round
    trips on every customer event) are skipped. When the default changes, the
    lock is taken after writing it and before reading is_default's inputs,
    which is all the lock needs: a payment method's writer that held it first
    has committed by then, and one that waits for it reads our default once
    we commit."""
    q = queries("webhooks")
    cur = await conn.execute(
        q["set_default_payment_method"],
        {"account_id": account_id, "payment_method": stripe_payment_method},
    )
    if cur.rowcount == 0:
        return
    await account_locks(conn, [account_id])
    await conn.execute(
        q["default_payment_methods"], {"account_id": account_id, "payment_method_id": None}
    )
