"""What the executors share: the context, idempotency keys, the create-or-adopt
step that makes creation exactly-once, and ``Pushed``: the create/update/archive
executors of a family, written once.

The mapping tables themselves are described in ``stripe_sync.mappings``; an
executor's success names the mapping row to write (``Done.written``), which the
store writes in the statement that marks the row done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from ..config import DEFAULTS
from ..db import queries
from ..errors import PermanentError, SavedFailure, TransientError
from ..mappings import Family, MappingWrite
from ..queue.jobs import Done, Job
from ..stripe_api import StripeApi, is_idempotency_conflict, object_path, search_clause
from .keys import create_key, write_key
from .payloads import decode


@dataclass(frozen=True)
class Context:
    pool: AsyncConnectionPool
    api: StripeApi
    # "<database>/<installation>" (schema/0007): in every object's metadata
    # and every idempotency key (keys.py), so databases sharing a Stripe
    # account never replay or adopt each other's objects.
    source: str
    # Seconds after a create met a 500 that Stripe saved before its search is
    # trusted to show the object if it exists (STRIPE_SYNC_SEARCH_LAG).
    search_lag: float = DEFAULTS.search_lag

    def metadata(self, family: Family, mc_id: int) -> dict[str, str]:
        assert family.metadata_key is not None, f"the outbox does not push {family.noun}s"
        return {family.metadata_key: str(mc_id), "mc_source": self.source}

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


class StripeObject(Protocol):
    @property
    def id(self) -> str: ...


@dataclass(frozen=True)
class Created:
    """What the outbox reads of a created object (``StripeApi.post`` answers JSON)."""

    id: str


async def create_or_adopt(
    ctx: Context,
    family: Family,
    job: Job,
    mc_id: int,
    row: MappedRow,
    params: dict[str, Any],
) -> Done:
    """Create the Stripe object for an MC row exactly once.

    The idempotency key covers a retry within Stripe's 24 h; after that (or
    when the key clashes because the row changed meanwhile) the object a
    lost response created is found by its metadata and adopted. A key that
    met a 500 Stripe saved cannot tell whether the object exists: after
    ``ctx.search_lag`` the search decides, and only if it finds nothing is a
    new key (the next generation) committed and used.
    """
    service = ctx.service(family)
    what = f"create {family.noun} for {family.mc_table} id={mc_id}"
    query = " AND ".join(
        (
            search_clause(f"metadata['{family.metadata_key}']", str(mc_id)),
            search_clause("metadata['mc_source']", ctx.source),
        )
    )

    async def search() -> StripeObject | None:
        found = await ctx.api.call(
            f"search {family.noun}", service.search_async(params={"query": query})
        )
        return _only(found, family, mc_id)

    generation = row.generation
    found: StripeObject | None = None
    if row.unknown_for is not None:
        if (left := ctx.search_lag - row.unknown_for) > 0:
            raise _waiting(ctx, family, what, generation, left)
        found = await search()
        if found is not None:
            note = f"adopted {found.id}, found by its metadata after its create met a saved 500"
            return Done(written=MappingWrite(family, mc_id, found.id), note=note)
        generation = await _next_generation(ctx, family, mc_id, generation)
    elif job.attempts > 1 or generation > 0:
        # A retry, or a re-create after a reset (reconcile --fix, a DBA): the
        # object may exist already, under an id the mapping did not name.
        found = await search()
    if found is None:
        key = create_key(ctx.source, family, mc_id, generation)
        try:
            path = object_path(family.resource)
            created = await ctx.api.post(what, path, params, {"idempotency_key": key})
            found = Created(created["id"])
        except SavedFailure as exc:
            left = ctx.search_lag - await _mark_unknown(ctx, family, mc_id, generation)
            raise _waiting(ctx, family, what, generation, max(left, 0.0), str(exc)) from exc
        except PermanentError as exc:
            if not is_idempotency_conflict(exc):
                raise
            found = await search()
            if found is None:
                # Stripe's search index lags writes by up to a minute.
                raise TransientError(
                    f"{what}: an earlier attempt with other parameters is not searchable yet"
                ) from exc
    return Done(written=MappingWrite(family, mc_id, found.id))


def _waiting(
    ctx: Context, family: Family, what: str, generation: int, left: float, cause: str = ""
) -> TransientError:
    """The wait for Stripe's search after a saved 500, saying what and until when."""
    until = datetime.now(UTC) + timedelta(seconds=left)
    return TransientError(
        f"{what}: Stripe saved a 500 for the create key of generation {generation}, so "
        f"the {family.noun} may or may not exist{f' ({cause})' if cause else ''}; waiting "
        f"until {until:%Y-%m-%d %H:%M:%S} UTC (STRIPE_SYNC_SEARCH_LAG={ctx.search_lag:g}s) "
        f"for Stripe's search, then adopting the {family.noun} it finds by metadata, or "
        f"creating one with a new key (generation {generation + 1})",
        retry_after=left,
    )


async def _mark_unknown(ctx: Context, family: Family, mc_id: int, generation: int) -> float:
    """Record (durably) that this generation's key met a saved 500; seconds since."""
    return float(await _step(ctx, family, "mark_create_unknown", mc_id, generation))


async def _next_generation(ctx: Context, family: Family, mc_id: int, generation: int) -> int:
    """Commit the next create generation (a new key) before any request uses it."""
    return int(await _step(ctx, family, "next_generation", mc_id, generation))


async def _step(ctx: Context, family: Family, query: str, mc_id: int, generation: int) -> Any:
    """One committed step of a create's generation; what it returns, or _moved_on."""
    async with ctx.pool.connection() as conn:
        cur = await conn.execute(
            family.query("outbox", query), {"mc_id": mc_id, "generation": generation}
        )
        row = await cur.fetchone()
    if row is None:
        raise _moved_on(family, mc_id)
    return row[0]


def _moved_on(family: Family, mc_id: int) -> TransientError:
    return TransientError(
        f"{family.mc_table} id={mc_id}: its {family.noun} mapping changed meanwhile "
        "(a webhook confirmed the object, or another attempt moved on); looking again",
        backoff_base=0.1,
    )


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
    # Seconds since this generation's create key met a 500 Stripe saved; None: never.
    unknown_for: float | None


R = TypeVar("R", bound=MappedRow)


@dataclass(frozen=True)
class Pushed(Generic[R]):
    """A family as the outbox pushes it to Stripe: the MC row it reads and the
    fields it sends. Its ``create``, ``update`` and ``archive`` are executors."""

    family: Family
    row: type[R]
    # Named query of sql/outbox.sql, by %(id)s: the MC row with its mapping. The
    # outbox's claim runs it for each row it claims (Job.loaded), and for a
    # create of customers and products marks the mapping pending; prices'
    # ``create_fields`` does that itself after its checks.
    load: str
    # What create and update send (besides the metadata), by parameter = MC column.
    # None and empty values are left out (Stripe takes "" as "unset", and refuses
    # it for most parameters), except that an update sends "" for ``unsettable``.
    fields: Callable[[R], dict[str, Any]]
    # What only a create sends; may wait (TransientError) or refuse first.
    create_fields: Callable[[Context, int, R], Awaitable[dict[str, Any]]] | None = None
    # Stripe's maxLength of each parameter (its OpenAPI spec): a longer value fails
    # the row before any request, naming the column.
    limits: Mapping[str, int] = field(default_factory=dict)
    unsettable: frozenset[str] = frozenset()

    async def create(self, ctx: Context, job: Job) -> Done:
        mc_id = decode(job.payload, self.family)
        row = await self._claimed_or_load(ctx, job, mc_id)
        if row.stripe_id is not None and row.status in ("synced", "deleted"):
            return Done(note=f"already mapped to {row.stripe_id}")
        params = self._params(ctx, mc_id, row)
        if self.create_fields is not None:
            params = {**await self.create_fields(ctx, mc_id, row), **params}
        return await create_or_adopt(ctx, self.family, job, mc_id, row, params)

    async def update(self, ctx: Context, job: Job) -> Done:
        """Push MC's row. A product or price archived (its mapping ``deleted``)
        is updated too: with ``active`` true again, that un-archives it."""
        mc_id = decode(job.payload, self.family)
        row = await self._claimed_or_load(ctx, job, mc_id)
        if row.status == "deleted" and _archivable(row) and row.stripe_id is not None:
            stripe_id = row.stripe_id  # (one Stripe deleted for good answers 404: failed)
        else:
            stripe_id = require_synced(self.family, mc_id, row.stripe_id, row.status)
        params = self._params(ctx, mc_id, row, update=True)
        await self._update(ctx, job, "update", stripe_id, params)
        return Done(written=MappingWrite(self.family, mc_id, stripe_id, _status(row)))

    async def archive(self, ctx: Context, job: Job) -> Done:
        """Stripe keeps objects that others refer to; archiving is ``active=false``."""
        mc_id = decode(job.payload, self.family)
        row = await self._claimed_or_load(ctx, job, mc_id)
        if row.status == "deleted":
            return Done(note=f"{row.stripe_id} already archived")
        if getattr(row, "active", False) is True:
            # MC's row is the truth: archiving what it says is active would be
            # undone by the next update and reported as drift by reconcile.
            raise PermanentError(
                f"{self.family.mc_table} id={mc_id} is active: set active = false "
                f"(with the archive, in one transaction) to archive its Stripe "
                f"{self.family.noun}; nothing was sent"
            )
        stripe_id = require_synced(self.family, mc_id, row.stripe_id, row.status)
        await self._update(ctx, job, "archive", stripe_id, {"active": False})
        return Done(written=MappingWrite(self.family, mc_id, stripe_id, "deleted"))

    async def load_row(self, ctx: Context, mc_id: int) -> R:
        """The MC row with its mapping, for executors of other families."""
        return await self._load(ctx, self.load, mc_id)

    async def _claimed_or_load(self, ctx: Context, job: Job, mc_id: int) -> R:
        """The row as the claim read it (sql/outbox.sql claim, by ``load``), else
        loaded now: the claim could not read the payload, or the row is missing."""
        if job.loaded is not None:
            return msgspec.json.decode(job.loaded, type=self.row)
        return await self._load(ctx, self.load, mc_id)

    async def _load(self, ctx: Context, query: str, mc_id: int) -> R:
        async with ctx.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(self.row))
            await cur.execute(queries("outbox")[query], {"id": mc_id})
            row = await cur.fetchone()
        if row is None:
            raise PermanentError(f"{self.family.mc_table} id={mc_id} does not exist")
        return row

    def _params(self, ctx: Context, mc_id: int, row: R, *, update: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, value in self.fields(row).items():
            if value is None or value == "":
                if update and name in self.unsettable:
                    params[name] = ""
                continue
            limit = self.limits.get(name)
            if limit is not None and len(value) > limit:
                raise PermanentError(
                    f"{self.family.mc_table}.{name} id={mc_id}: {len(value)} characters; "
                    f"Stripe accepts at most {limit}, so nothing was sent"
                )
            params[name] = value
        return {**params, "metadata": ctx.metadata(self.family, mc_id)}

    async def _update(
        self, ctx: Context, job: Job, verb: str, stripe_id: str, params: dict[str, Any]
    ) -> None:
        path = object_path(self.family.resource, stripe_id)

        def update(options: Any) -> Awaitable[Any]:
            sent: Awaitable[Any] = ctx.api.raw_post(path, params, options)
            return sent

        await send_write(ctx, job, f"{verb} {self.family.noun} {stripe_id}", update)


def _archivable(row: MappedRow) -> bool:
    """Products and prices: Stripe archives them (``active``), and MC's row says whether."""
    return isinstance(getattr(row, "active", None), bool)


def _status(row: MappedRow) -> str:
    """The mapping's status once Stripe has MC's row: ``deleted`` for a product
    or price archived in both (as the archive and its webhook record it,
    webhooks/catalog.py), else ``synced``."""
    return "deleted" if getattr(row, "active", None) is False else "synced"


async def send_write(
    ctx: Context, job: Job, what: str, request: Callable[[Any], Awaitable[Any]]
) -> Any:
    """Send a write that sets fields (an update, an archive, a subscription change)
    with the row's key; when that key is spent (a replayed 500, or other
    parameters since), once more with a fresh key (keys.py). ``request`` makes
    the SDK call from its ``options``."""

    async def send(key: str) -> Any:
        return await ctx.api.call(what, request({"idempotency_key": key}))

    try:
        return await send(write_key(ctx.source, job))
    except SavedFailure as exc:
        if not exc.replayed:
            # Stripe failed just now: retry later (the row's key then gets the
            # replay, and a fresh key follows).
            raise TransientError(f"{exc}; retrying with a fresh key") from exc
        return await send(write_key(ctx.source, job, fresh=True))
    except PermanentError as exc:
        if not is_idempotency_conflict(exc):
            raise
        return await send(write_key(ctx.source, job, fresh=True))
