"""What the executors share: the context, idempotency keys, the mapping write,
the create-or-adopt step that makes creation exactly-once, and ``Pushed``:
the create/update/archive executors of a family, written once.

The mapping tables themselves are described in ``stripe_sync.mappings``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from ..db import queries
from ..errors import PermanentError, TransientError
from ..jobs import Apply, Done, Job
from ..mappings import Family
from ..stripe_api import StripeApi, is_idempotency_conflict
from .payloads import decode


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
        assert family.metadata_key is not None, f"the outbox does not push {family.noun}s"
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

    def service(self, family: Family) -> Any:
        """The SDK service of the family (``client.v1.customers``, …)."""
        return getattr(self.api.client.v1, family.resource)

    async def mark_pending(self, family: Family, mc_id: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(family.query("outbox", "mark_pending"), {"mc_id": mc_id})


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
            family.query("outbox", "write_mapping"),
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
    params: dict[str, Any],
) -> Done:
    """Create the Stripe object for an MC row exactly once.

    The idempotency key covers a retry within Stripe's 24 h; after that (or
    when the key clashes because the row changed meanwhile) the object a
    lost response created is found by its metadata and adopted.
    """
    service = ctx.service(family)
    what = f"create {family.noun} for {family.mc_table} id={mc_id}"
    query = f"metadata['{family.metadata_key}']:'{mc_id}' AND metadata['mc_source']:'{ctx.source}'"

    async def search() -> StripeObject | None:
        found = await ctx.api.call(
            f"search {family.noun}", service.search_async(params={"query": query})
        )
        return _only(found, family, mc_id)

    found = await search() if job.attempts > 1 else None
    if found is None:
        key = ctx.create_key(family, mc_id, generation)
        try:
            created: StripeObject = await ctx.api.call(
                what, service.create_async(params=params, options={"idempotency_key": key})
            )
            found = created
        except PermanentError as exc:
            if not is_idempotency_conflict(exc):
                raise
            found = await search()
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


@dataclass(frozen=True, kw_only=True)
class MappedRow:
    """An MC row loaded with its mapping: the columns every ``load_*`` query of
    sql/outbox.sql names alike (NULL/0 while the row has no mapping)."""

    stripe_id: str | None
    status: str | None
    generation: int


R = TypeVar("R", bound=MappedRow)


@dataclass(frozen=True)
class Pushed(Generic[R]):
    """A family as the outbox pushes it to Stripe: the MC row it reads and the
    fields it sends. Its ``create``, ``update`` and ``archive`` are executors."""

    family: Family
    row: type[R]
    # Named queries of sql/outbox.sql, by %(id)s: the MC row with its mapping;
    # for the create, one that also marks the mapping pending, unless
    # ``create_fields`` does that itself after its checks.
    load: str
    load_for_create: str
    # What create and update send (besides the metadata); None values are left out.
    fields: Callable[[R], dict[str, Any]]
    # What only a create sends; may wait (TransientError) or refuse first.
    create_fields: Callable[[Context, int, R], Awaitable[dict[str, Any]]] | None = None

    async def create(self, ctx: Context, job: Job) -> Done:
        mc_id = decode(job.payload, self.family)
        row = await self._load(ctx, self.load_for_create, mc_id)
        if row.stripe_id is not None and row.status in ("synced", "deleted"):
            return Done(note=f"already mapped to {row.stripe_id}")
        params = self._params(ctx, mc_id, row)
        if self.create_fields is not None:
            params = {**await self.create_fields(ctx, mc_id, row), **params}
        return await create_or_adopt(ctx, self.family, job, mc_id, row.generation, params)

    async def update(self, ctx: Context, job: Job) -> Done:
        mc_id = decode(job.payload, self.family)
        row = await self._load(ctx, self.load, mc_id)
        stripe_id = require_synced(self.family, mc_id, row.stripe_id, row.status)
        await self._update(ctx, job, "update", stripe_id, self._params(ctx, mc_id, row))
        return Done(apply=record(self.family, mc_id, stripe_id))

    async def archive(self, ctx: Context, job: Job) -> Done:
        """Stripe keeps objects that others refer to; archiving is ``active=false``."""
        mc_id = decode(job.payload, self.family)
        row = await self._load(ctx, self.load, mc_id)
        if row.status == "deleted":
            return Done(note=f"{row.stripe_id} already archived")
        stripe_id = require_synced(self.family, mc_id, row.stripe_id, row.status)
        await self._update(ctx, job, "archive", stripe_id, {"active": False})
        return Done(apply=record(self.family, mc_id, stripe_id, "deleted"))

    async def _load(self, ctx: Context, query: str, mc_id: int) -> R:
        async with ctx.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(self.row))
            await cur.execute(queries("outbox")[query], {"id": mc_id})
            row = await cur.fetchone()
        if row is None:
            raise PermanentError(f"{self.family.mc_table} id={mc_id} does not exist")
        return row

    def _params(self, ctx: Context, mc_id: int, row: R) -> dict[str, Any]:
        fields = {k: v for k, v in self.fields(row).items() if v is not None}
        return {**fields, "metadata": ctx.metadata(self.family, mc_id)}

    async def _update(
        self, ctx: Context, job: Job, verb: str, stripe_id: str, params: dict[str, Any]
    ) -> None:
        await ctx.api.call(
            f"{verb} {self.family.noun} {stripe_id}",
            ctx.service(self.family).update_async(
                stripe_id, params=params, options={"idempotency_key": ctx.write_key(job)}
            ),
        )
