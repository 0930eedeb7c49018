"""What the webhook handlers share: the context, the mapping tables, the
ordering key, and reference look-ups.

Ordering. Events about one Stripe object are applied in the order of
``Key = (event.created, rank, event.id)``, compared with the key of the
newest event already applied, which the object's mapping row keeps
(last_event_created, last_event_rank, last_event_id). ``created`` has
1-second resolution, so ties are common; the rank (the lifecycle position of
the object's status in the event, e.g. ``canceled`` above ``active``, a
``*.deleted`` event above all) breaks most of them the way Stripe's own
sequence would, and the event id breaks the rest, arbitrarily but the same
way every time. An event whose key is not above the stored one is stale and
is recorded as processed with a note. Each applied event writes the whole
state the event shows, so the final tables depend only on the newest key,
never on arrival order.

Every handler first checks on a plain connection (stale? references known?)
and then returns an ``apply`` that runs in the transaction which marks the
event processed: it locks the mapping row (SELECT ... FOR UPDATE), checks
the key again, and writes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..db import bound_query, queries
from ..errors import TransientError
from ..jobs import Done, Job
from ..stripe_api import StripeApi


@dataclass(frozen=True)
class WebhookContext:
    pool: AsyncConnectionPool
    api: StripeApi | None = None
    # Events of the other mode are stored as ignored (None: accept both).
    mode: Literal["test", "live"] | None = None
    # Fetch the object from the API before applying (authoritative state).
    refetch: bool = False
    # Connect events (with "account") are ignored unless this is set.
    allow_connect: bool = False
    # How many attempts an event waits for a mapping it names (a customer
    # whose outbox create is still in flight) before it fails.
    reference_attempts: int = 8
    # First backoff step of those waits; doubles per attempt (with 8
    # attempts and 1 s: about 1.5 minutes in all).
    reference_backoff: float = 1.0


Handler = Callable[[WebhookContext, Job], Awaitable[Done]]


@dataclass(frozen=True)
class Mapping:
    noun: str
    table: str
    mc_col: str
    stripe_col: str
    metadata_key: str | None = None  # how the outbox names the MC row in Stripe metadata

    def query(self, name: str) -> Any:
        return bound_query(
            "webhooks", name, mapping=self.table, mc_col=self.mc_col, stripe_col=self.stripe_col
        )


CUSTOMERS = Mapping(
    "customer", "stripe.customer_mappings", "account_id", "stripe_customer_id", "mc_account_id"
)
PRODUCTS = Mapping(
    "product", "stripe.product_mappings", "product_id", "stripe_product_id", "mc_product_id"
)
PRICES = Mapping("price", "stripe.price_mappings", "price_id", "stripe_price_id", "mc_price_id")
SUBSCRIPTIONS = Mapping(
    "subscription", "stripe.subscription_mappings", "subscription_id", "stripe_subscription_id"
)
INVOICES = Mapping("invoice", "stripe.invoice_mappings", "invoice_id", "stripe_invoice_id")
PAYMENTS = Mapping("payment", "stripe.payment_mappings", "payment_id", "stripe_payment_intent_id")


@dataclass(frozen=True, order=True)
class Key:
    created: int
    rank: int
    event_id: str


def rank_of(ranks: dict[str, int], status: str | None, event_type: str) -> int:
    """The lifecycle rank of a status; a deletion outranks everything."""
    if event_type.endswith(".deleted"):
        return 100
    return ranks.get(status or "", 0)


@dataclass(frozen=True)
class MappingRow:
    id: int
    mc_id: int
    sync_status: str
    last: Key | None

    def stale_note(self, key: Key) -> str | None:
        if self.last is None or key > self.last:
            return None
        if key == self.last:
            return f"duplicate: {key.event_id} was already applied"
        return f"stale: older than {self.last.event_id}"


async def find(
    conn: AsyncConnection[Any],
    mapping: Mapping,
    stripe_id: str,
    mc_id: int | None = None,
    *,
    lock: bool = False,
) -> MappingRow | None:
    cur = await conn.execute(
        mapping.query("lock_mapping" if lock else "find_mapping"),
        {"stripe_id": stripe_id, "mc_id": mc_id},
    )
    row = await cur.fetchone()
    if row is None:
        return None
    row_id, mc, status, created, rank, event_id = row
    last = (
        Key(created, rank if rank is not None else -1, event_id or "")
        if created is not None
        else None
    )
    return MappingRow(row_id, mc, status, last)


async def mark(
    conn: AsyncConnection[Any],
    mapping: Mapping,
    row_id: int,
    stripe_id: str,
    key: Key,
    status: str,
) -> None:
    await conn.execute(
        mapping.query("mark_mapping"),
        {
            "id": row_id,
            "stripe_id": stripe_id,
            "status": status,
            "created": key.created,
            "rank": key.rank,
            "event_id": key.event_id,
        },
    )


async def insert_mapping(
    conn: AsyncConnection[Any],
    mapping: Mapping,
    mc_id: int,
    stripe_id: str,
    key: Key,
    status: str = "synced",
) -> None:
    await conn.execute(
        mapping.query("insert_mapping"),
        {
            "mc_id": mc_id,
            "stripe_id": stripe_id,
            "status": status,
            "created": key.created,
            "rank": key.rank,
            "event_id": key.event_id,
        },
    )


async def object_lock(conn: AsyncConnection[Any], stripe_id: str) -> None:
    await conn.execute(queries("webhooks")["object_lock"], {"stripe_id": stripe_id})


class MissingReference(TransientError):
    """The event names a Stripe object MC has no mapping for (yet)."""

    def __init__(self, stripe_id: str, backoff: float) -> None:
        super().__init__(f"no mapping for {stripe_id}", backoff_base=backoff)
        self.stripe_id = stripe_id


class Raced(TransientError):
    """A newer event for the object committed between the check and the apply."""

    def __init__(self, stripe_id: str) -> None:
        super().__init__(
            f"a newer event for {stripe_id} was applied meanwhile; checking again",
            backoff_base=0.05,
        )


async def resolve(
    ctx: WebhookContext,
    conn: AsyncConnection[Any],
    mapping: Mapping,
    ids: Iterable[str],
) -> dict[str, int]:
    """MC ids of the Stripe ids; the first unknown one raises MissingReference."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return {}
    cur = await conn.execute(mapping.query("mc_ids"), {"ids": wanted})
    found: dict[str, int] = {stripe_id: mc_id for stripe_id, mc_id in await cur.fetchall()}
    for stripe_id in wanted:
        if stripe_id not in found:
            raise MissingReference(stripe_id, ctx.reference_backoff)
    return found


async def resolve_one(
    ctx: WebhookContext,
    conn: AsyncConnection[Any],
    mapping: Mapping,
    stripe_id: str | None,
) -> int | None:
    if stripe_id is None:
        return None
    return (await resolve(ctx, conn, mapping, [stripe_id]))[stripe_id]


async def confirm(
    ctx: WebhookContext,
    mapping: Mapping,
    stripe_id: str,
    metadata_mc_id: int | None,
    key: Key,
    status: str,
) -> Done:
    """Customers and catalog: confirm the mapping of an object the outbox created.

    Found by its Stripe id, or by the MC id in its metadata while the outbox
    has not recorded the id yet (the webhook can beat the outbox's commit).
    """
    async with ctx.pool.connection() as conn:
        row = await find(conn, mapping, stripe_id, metadata_mc_id)
    if row is None:
        return ignored(f"{mapping.noun} {stripe_id} is not mapped to any MC row")
    if note := row.stale_note(key):
        return Done(note=note)

    async def apply(conn: AsyncConnection[Any]) -> None:
        locked = await find(conn, mapping, stripe_id, metadata_mc_id, lock=True)
        if locked is None or locked.stale_note(key):
            raise Raced(stripe_id)
        await mark(conn, mapping, locked.id, stripe_id, key, status)

    return Done(apply=apply)


def ts(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def ignored(note: str) -> Done:
    return Done(status="ignored", note=note)
