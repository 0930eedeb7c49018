"""What the executors share: the mapping table of each object family, loading
an MC row with its mapping, idempotency keys, and the create-or-adopt step
that makes creation exactly-once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..db import bound_query, queries
from ..errors import PermanentError, TransientError
from ..jobs import Apply, Done, Job
from ..stripe_api import StripeApi, is_idempotency_conflict


@dataclass(frozen=True)
class Family:
    noun: str  # "customer": in messages and keys
    mc_table: str  # billing.accounts
    mapping: str  # stripe.customer_mappings
    mc_col: str  # account_id
    stripe_col: str  # stripe_customer_id
    metadata_key: str  # mc_account_id: how a Stripe object names its MC row

    def query(self, name: str) -> Any:
        return bound_query(
            "outbox", name, mapping=self.mapping, mc_col=self.mc_col, stripe_col=self.stripe_col
        )

    def missing(self, mc_id: int) -> PermanentError:
        return PermanentError(f"{self.mc_table} id={mc_id} does not exist")


CUSTOMER = Family(
    "customer",
    "billing.accounts",
    "stripe.customer_mappings",
    "account_id",
    "stripe_customer_id",
    "mc_account_id",
)
PRODUCT = Family(
    "product",
    "billing.products",
    "stripe.product_mappings",
    "product_id",
    "stripe_product_id",
    "mc_product_id",
)
PRICE = Family(
    "price", "billing.prices", "stripe.price_mappings", "price_id", "stripe_price_id", "mc_price_id"
)


@dataclass(frozen=True)
class Context:
    pool: AsyncConnectionPool
    api: StripeApi
    # "<database>/<installation>" (schema/0007): in every object's metadata
    # and every idempotency key, so databases sharing a Stripe account never
    # replay or adopt each other's objects.
    source: str

    @property
    def key_prefix(self) -> str:
        return f"stripe-sync:{self.source}"

    def metadata(self, family: Family, mc_id: int) -> dict[str, str]:
        return {family.metadata_key: str(mc_id), "mc_source": self.source}

    def create_key(self, family: Family, mc_id: int, generation: int) -> str:
        # Keyed by the MC row, not the outbox row: two create rows for one
        # account (app + seed, a DBA's double insert) make one customer. The
        # generation changes when a mapping is reset to re-create a vanished
        # object (schema/0006), so Stripe does not replay the old answer.
        suffix = f":g{generation}" if generation else ""
        return f"{self.key_prefix}:create:{family.noun}:{mc_id}{suffix}"

    def write_key(self, job: Job) -> str:
        return f"{self.key_prefix}:outbox:{job.id}"

    async def fetch(self, name: str, mc_id: int) -> Sequence[Any] | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(queries("outbox")[name], {"id": mc_id})
            return await cur.fetchone()

    async def mark_pending(self, family: Family, mc_id: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(family.query("mark_pending"), {"mc_id": mc_id})


async def source_of(pool: AsyncConnectionPool) -> str:
    async with pool.connection() as conn:
        cur = await conn.execute(queries("outbox")["source"])
        row = await cur.fetchone()
    assert row is not None and row[0] is not None, "schema/0007 not applied"
    return str(row[0])


def record(family: Family, mc_id: int, stripe_id: str, status: str = "synced") -> Apply:
    """The mapping write that commits together with the outbox row's ``done``."""

    async def apply(conn: AsyncConnection[Any]) -> None:
        cur = await conn.execute(
            family.query("write_mapping"),
            {"mc_id": mc_id, "stripe_id": stripe_id, "status": status},
        )
        if await cur.fetchone() is None:
            raise PermanentError(
                f"{family.mc_table} id={mc_id} is already mapped to another Stripe "
                f"{family.noun}; refusing to re-point it at {stripe_id}"
            )

    return apply


class StripeObject(Protocol):
    id: str


async def create_or_adopt(
    ctx: Context,
    family: Family,
    job: Job,
    mc_id: int,
    generation: int,
    create: Callable[[str], Awaitable[StripeObject]],
    search: Callable[[str], Awaitable[Any]],
) -> Done:
    """Create the Stripe object for an MC row exactly once.

    The idempotency key covers a retry within Stripe's 24 h; after that (or
    when the key clashes because the row changed meanwhile) the object a
    lost response created is found by its metadata and adopted.
    """
    what = f"create {family.noun} for {family.mc_table} id={mc_id}"
    query = f"metadata['{family.metadata_key}']:'{mc_id}' AND metadata['mc_source']:'{ctx.source}'"
    found: StripeObject | None = None
    if job.attempts > 1:
        found = _only(await ctx.api.call(f"search {family.noun}", search(query)), family, mc_id)
    if found is None:
        try:
            found = await ctx.api.call(what, create(ctx.create_key(family, mc_id, generation)))
        except PermanentError as exc:
            if not is_idempotency_conflict(exc):
                raise
            found = _only(await ctx.api.call(f"search {family.noun}", search(query)), family, mc_id)
            if found is None:
                # Stripe's search index lags writes by up to a minute.
                raise TransientError(
                    f"{what}: an earlier attempt with other parameters is not searchable yet"
                ) from exc
    return Done(apply=record(family, mc_id, found.id), note=None)


def _only(result: Any, family: Family, mc_id: int) -> StripeObject | None:
    live = [o for o in result.data if not getattr(o, "deleted", False)]
    if len(live) > 1:
        ids = ", ".join(o.id for o in live)
        raise PermanentError(
            f"{family.mc_table} id={mc_id} has several Stripe "
            f"{family.noun}s ({ids}); resolve by hand"
        )
    return live[0] if live else None


def require_synced(family: Family, mc_id: int, stripe_id: str | None, status: str | None) -> str:
    """The Stripe id for an update; wait while the create is still in flight."""
    if status == "deleted":
        raise PermanentError(
            f"{family.mc_table} id={mc_id}: its Stripe {family.noun} "
            f"{stripe_id} is archived/deleted"
        )
    if stripe_id is None or status != "synced":
        raise TransientError(
            f"{family.mc_table} id={mc_id} has no Stripe {family.noun} yet (its create is pending)",
            backoff_base=0.1,
        )
    return stripe_id
