"""What the webhook handlers share: the context, the ordering key, mapping
rows (``find``, ``mark``), reference look-ups, and the two sequences every
handler of an object uses: ``confirm`` (objects the outbox created) and
``write_object`` (objects born in Stripe). The mapping tables themselves are
described in ``stripe_sync.mappings``.

Ordering. Events about one Stripe object are applied in the order of
``Key = (event.created, rank, event.id)``, compared with the key of the
newest event already applied, which the object's mapping row keeps
(last_event_created, last_event_rank, last_event_id). ``created`` has
1-second resolution, so ties are common; the rank (the lifecycle position of
the object's status in the event, e.g. ``canceled`` above ``active``, a
``*.deleted`` event above all) breaks most of them the way Stripe's own
sequence would. What is left, two events of one object in one second with
the same rank (a cancellation at period end and its undoing, both
``active``), no event can order: for objects born in Stripe
(``write_object``), and in ``confirm`` when the event writes state, the
handler then asks Stripe for the object as it is now and applies that
(``SameSecond``, handled in ``execute.make_handler``), under the higher of
the two keys. Without an API client, or when Stripe no longer has the
object, the event id decides, arbitrarily but the same way every time. An
event whose key is not above the stored one is stale and is recorded as
processed with a note. Each applied event writes the whole
state the event shows, so the final tables depend only on the newest key,
never on arrival order.

Every handler first checks on a plain connection (stale? references known?)
and then returns an ``apply`` that runs in the transaction which marks the
event processed: it locks the mapping row (SELECT ... FOR UPDATE), checks
the key again, and writes. ``confirm``'s check reads the row the worker
pre-loaded for the whole claimed batch (``Preloaded``) when there is one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Generic, Literal, Protocol, TypeVar

from psycopg import AsyncConnection
from psycopg.rows import class_row, dict_row
from psycopg_pool import AsyncConnectionPool

from ..db import queries
from ..errors import PermanentError, TransientError
from ..mappings import Family
from ..queue.jobs import Done, Job
from ..stripe_api import StripeApi
from .events import Event, Expandable, decode_event, metadata_id, ref_id


class Preloaded:
    """Mapping rows read for a claimed batch of events, by event id, until taken
    (or forgotten when the event's handler ends).

    The pre-check read of ``confirm`` costs a pool checkout and a round trip
    per event; the webhook queue's claim reads the rows of a whole batch with
    it instead (``execute.Claimed``; ``execute.make_preload`` keeps them, and
    reads those of jobs claimed otherwise in one query per family) and each
    handler takes its event's row. A row read a few milliseconds before the handler
    runs is as good as its own read: the pre-check only sorts stale and
    unmapped events out early, and the apply locks the row and checks the key
    again. Only rows found are kept: an event without one reads its own (the
    MC-id fallback of a create the outbox has not recorded yet, a retry).
    """

    def __init__(self) -> None:
        self._rows: dict[str, tuple[Family, str, MappingRow]] = {}
        self._events: dict[int, str] = {}  # job id → event id, to forget by job

    async def load(
        self, pool: AsyncConnectionPool, wanted: dict[Family, dict[int, tuple[str, str]]]
    ) -> None:
        """Read the rows of ``wanted``: per family, job id → (event id, object's Stripe id)."""
        async with pool.connection() as conn:
            for family, jobs in wanted.items():
                ids = list({stripe_id for _, stripe_id in jobs.values()})
                cur = await conn.execute(family.query("webhooks", "find_mappings"), {"ids": ids})
                found = {row[0]: MappingRow(*row[1:]) for row in await cur.fetchall()}
                for job_id, (event_id, stripe_id) in jobs.items():
                    if (row := found.get(stripe_id)) is not None:
                        self.keep(job_id, event_id, family, stripe_id, row)

    def keep(
        self, job_id: int, event_id: str, family: Family, stripe_id: str, row: MappingRow
    ) -> None:
        """Keep a row read elsewhere (the webhook queue's claim reads them: execute.Claimed)."""
        self._rows[event_id] = (family, stripe_id, row)
        self._events[job_id] = event_id

    def take(self, event_id: str, family: Family, stripe_id: str) -> MappingRow | None:
        """The row pre-loaded for this event's object, once; None when there is none."""
        entry = self._rows.pop(event_id, None)
        if entry is None or entry[0] != family or entry[1] != stripe_id:
            return None
        return entry[2]

    def discard(self, job_id: int) -> None:
        """Forget a job's row (its handler is done, whether it took it or not)."""
        if (event_id := self._events.pop(job_id, None)) is not None:
            self._rows.pop(event_id, None)

    def __len__(self) -> int:
        """Jobs holding a row, until their handler ends."""
        return len(self._events)


class Unlinked:
    """Customers Stripe just said are not MC's (references.py), for ``ttl``
    seconds: their further events are ignored without asking again. Only
    consulted when the customer has no mapping, so a link made meanwhile
    takes effect at once."""

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._until: dict[str, float] = {}

    def __contains__(self, customer: str) -> bool:
        until = self._until.get(customer)
        if until is None:
            return False
        if until < time.monotonic():
            del self._until[customer]
            return False
        return True

    def add(self, customer: str) -> None:
        if len(self._until) >= 10_000:  # bounded: forget the oldest half
            for old in sorted(self._until, key=self._until.__getitem__)[:5_000]:
                del self._until[old]
        self._until[customer] = time.monotonic() + self.ttl


class Ties(Enum):
    """How a handler decides a same-second tie with the applied event (``same_second``)."""

    # Ask Stripe for the object as it is now (raise SameSecond; make_handler
    # then runs the handler again with CURRENT, or BY_ID when Stripe cannot say).
    ASK = "ask"
    # data.object is the object as Stripe has it now (refetched): a tie applies it.
    CURRENT = "current"
    # The higher event id wins: arbitrary, but the same every time.
    BY_ID = "by_id"


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
    # This database's mc_source (schema/0007): an object found by its mc_*_id
    # metadata must carry it too, or it is another database's on the same
    # Stripe account. None: not checked.
    source: str | None = None
    # How many attempts an event waits for a mapping it names (a customer
    # whose outbox create is still in flight) before it fails.
    reference_attempts: int = 8
    # First backoff step of those waits; doubles per attempt (with 8
    # attempts and 1 s: about 1.5 minutes in all).
    reference_backoff: float = 1.0
    # How same-second ties are decided: ASK unless there is no API client to
    # ask (then BY_ID) or every object is refetched anyway (then CURRENT).
    ties: Ties = Ties.ASK

    # Mapping rows the worker read for the claimed batch (make_preload).
    preloaded: Preloaded = field(default_factory=Preloaded)
    # Customers known not to be MC's (references.py).
    unlinked: Unlinked = field(default_factory=Unlinked)
    # The invoice a PaymentIntent pays, as Stripe said while MC lacked that
    # invoice: kept for the event's run once it is fetched (references.paid_invoice).
    paid_invoices: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ties is Ties.ASK and (self.api is None or self.refetch):
            ties = Ties.BY_ID if self.api is None else Ties.CURRENT
            object.__setattr__(self, "ties", ties)  # frozen: the one derived field


# One event type's handler (execute.FAMILIES). Not the queue's Handler, which
# execute.make_handler builds around these; the outbox's counterpart is Executor.
EventHandler = Callable[[WebhookContext, Job], Awaitable[Done]]


@dataclass(frozen=True, order=True)
class Key:
    created: int
    rank: int
    event_id: str


class Identified(Protocol):
    """A Stripe object as the event Structs decode it (events.py): it has an id."""

    @property
    def id(self) -> str: ...


Obj = TypeVar("Obj", bound=Identified)


@dataclass(frozen=True)
class Opened(Generic[Obj]):
    """An event as a handler opens it (``opened``): decoded, with its ordering key."""

    event: Event[Obj]
    key: Key

    @property
    def obj(self) -> Obj:
        return self.event.data.object


def opened(
    job: Job,
    obj_type: type[Obj],
    ranks: dict[str, int],
    stage: Callable[[Obj, str], str | None],
    *,
    require_id: bool = True,
) -> Opened[Obj]:
    """Every handler's prologue: the event decoded with its data.object as
    ``obj_type`` (a PermanentError naming the field if it cannot be), an object
    without an id refused (unless ``require_id`` is False: the handler says
    what that means), and the key, ranked by ``stage(object, event type)``."""
    event = decode_event(job.payload, obj_type)
    if require_id and not event.data.object.id:
        raise PermanentError(f"{event.type}: data.object has no id")
    stage_of = stage(event.data.object, event.type)
    return Opened(event, Key(event.created, rank_of(ranks, stage_of, event.type), event.id))


def required(value: Expandable, what: str) -> str:
    """The id of a reference the object must name; a PermanentError saying ``what`` if not."""
    found = ref_id(value)
    if found is None:
        raise PermanentError(what)
    return found


def rank_of(ranks: dict[str, int], status: str | None, event_type: str) -> int:
    """The lifecycle rank of a status; a deletion outranks everything."""
    if event_type.endswith(".deleted"):
        return 100
    return ranks.get(status or "", 0)


def same_second(key: Key, last: Key | None) -> bool:
    """Two different events of one second and one rank: their keys cannot order them."""
    return (
        last is not None
        and (key.created, key.rank) == (last.created, last.rank)
        and key.event_id != last.event_id
    )


def stale_note(key: Key, last: Key | None) -> str | None:
    """Why an event with ``key`` is not applied over ``last``; None when it is newer."""
    if last is None or key > last:
        return None
    if key == last:
        return f"duplicate: {key.event_id} was already applied"
    return f"stale: older than {last.event_id}"


@dataclass(frozen=True)
class MappingRow:
    """A mapping row as find_mapping/lock_mapping name its columns."""

    id: int
    mc_id: int
    sync_status: str
    last_event_created: int | None
    last_event_rank: int | None
    last_event_id: str | None

    @property
    def last(self) -> Key | None:
        """The key of the newest event applied to this row (None: none yet)."""
        if self.last_event_created is None:
            return None
        rank = self.last_event_rank if self.last_event_rank is not None else -1
        return Key(self.last_event_created, rank, self.last_event_id or "")


async def find(
    conn: AsyncConnection[Any],
    family: Family,
    stripe_id: str,
    mc_id: int | None = None,
    *,
    lock: bool = False,
) -> MappingRow | None:
    cur = conn.cursor(row_factory=class_row(MappingRow))
    await cur.execute(
        family.query("webhooks", "lock_mapping" if lock else "find_mapping"),
        {"stripe_id": stripe_id, "mc_id": mc_id},
    )
    return await cur.fetchone()


async def mark(
    conn: AsyncConnection[Any],
    family: Family,
    row_id: int,
    stripe_id: str,
    key: Key,
    status: str,
) -> None:
    await conn.execute(
        family.query("webhooks", "mark_mapping"),
        {"id": row_id, "stripe_id": stripe_id, "status": status, **asdict(key)},
    )


class MissingReference(TransientError):
    """The event names a Stripe object MC has no mapping for (yet): an object of
    ``family`` (a payment may be named by its charge). references.py fetches
    it, or says why the event waits or is ignored."""

    def __init__(self, stripe_id: str, backoff: float, family: Family) -> None:
        super().__init__(f"no mapping for {stripe_id}", backoff_base=backoff)
        self.stripe_id = stripe_id
        self.family = family


class SameSecond(Exception):
    """Not an error: the event ties with the applied one (``same_second``), so
    only Stripe's current object can say which state is the newer.
    execute.make_handler fetches it and runs the handler again."""

    def __init__(self, stripe_id: str, applied: str) -> None:
        super().__init__(f"{stripe_id}: same second and rank as {applied}")
        self.applied = applied


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
    family: Family,
    ids: Iterable[str],
) -> dict[str, int]:
    """MC ids of the Stripe ids; the first unknown one raises MissingReference."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return {}
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(family.query("webhooks", "mc_ids"), {"ids": wanted})
    found: dict[str, int] = {row["stripe_id"]: row["mc_id"] for row in await cur.fetchall()}
    for stripe_id in wanted:
        if stripe_id not in found:
            raise MissingReference(stripe_id, ctx.reference_backoff, family)
    return found


async def resolve_one(
    ctx: WebhookContext,
    conn: AsyncConnection[Any],
    family: Family,
    stripe_id: str | None,
) -> int | None:
    if stripe_id is None:
        return None
    return (await resolve(ctx, conn, family, [stripe_id]))[stripe_id]


async def confirm(
    ctx: WebhookContext,
    family: Family,
    stripe_id: str,
    metadata: dict[str, Any] | None,
    key: Key,
    status: str,
    then: Callable[[AsyncConnection[Any], int], Awaitable[None]] | None = None,
    default: str | None = None,
    *,
    as_data: bool = True,
) -> Done:
    """Customers and catalog: confirm the mapping of an object the outbox created.

    Found by its Stripe id, or by the MC id in its metadata while the outbox
    has not recorded the id yet (the webhook can beat the outbox's commit).
    ``then(conn, mc_id)`` runs in the same transaction once the mapping is marked.
    It writes state from the event (a customer's default payment method), so
    with it a same-second tie asks Stripe as ``write_object`` does; without
    it, which of two tied events wins changes nothing but the key.

    The apply comes as data too (``ConfirmWrite``): the webhook queue marks the
    mappings of a group's events in one statement (webhooks/queue.py), as long
    as ``then`` would write nothing: the mapping's ``default_payment_method``
    is ``default`` already (customers: ``then`` is ``set_default``; the other
    families have no such column and name none). Otherwise, and for a newer key
    or a tie met there, the statement declines the event and ``apply`` runs.
    ``as_data=False`` when ``then`` writes what that statement cannot (the
    catalog's archive, decided by MC's row): ``apply`` alone records it.
    """
    assert family.metadata_key is not None, f"the outbox does not create {family.noun}s"
    mc_id = metadata_id(metadata, family.metadata_key)
    if ctx.source is not None and (metadata or {}).get("mc_source") != ctx.source:
        mc_id = None  # another database's object: never confirms our pending create
    row = ctx.preloaded.take(key.event_id, family, stripe_id)
    if row is None:
        async with ctx.pool.connection() as conn:
            row = await find(conn, family, stripe_id, mc_id)
    if row is None:
        return ignored(f"{family.noun} {stripe_id} is not mapped to any MC row")
    ties = then is not None
    if ties and _unordered(ctx, key, status, row):
        raise SameSecond(stripe_id, row.last_event_id or "")
    current = ties and _tie_applies(ctx, key, row)
    if not current and (note := stale_note(key, row.last)):
        return Done(note=note)
    flags = {"current": ties and ctx.ties is Ties.CURRENT, "ask": ties and ctx.ties is Ties.ASK}

    async def apply(conn: AsyncConnection[Any]) -> None:
        # Lock, check the key again (ties as above) and mark, in one statement.
        cur = await conn.execute(
            family.query("webhooks", "mark_if_newer"),
            {"stripe_id": stripe_id, "mc_id": mc_id, "status": status, **asdict(key), **flags},
        )
        if cur.rowcount != 1:
            raise Raced(stripe_id)
        if then is not None:
            await then(conn, _returned_id(await cur.fetchone()))

    write = ConfirmWrite(family, stripe_id, mc_id, status, key, default, **flags)
    return Done(
        apply=apply,
        written=write if as_data else None,
        note=_tie_note(row, stripe_id) if current else None,
    )


@dataclass(frozen=True)
class ConfirmWrite:
    """``confirm``'s apply as data, for ``confirm_rows`` of sql/webhooks.sql
    (webhooks/queue.py records a group's in one statement): mark the mapping
    with ``key`` where ``mark_if_newer`` would, and where its
    ``default_payment_method`` is ``default``."""

    family: Family
    stripe_id: str
    mc_id: int | None
    status: str
    key: Key
    default: str | None
    current: bool
    ask: bool

    @property
    def group(self) -> Family:
        """Events of one family share a statement (queue.jobs.Written)."""
        return self.family


@dataclass(frozen=True)
class Written:
    """Where ``write_object`` put an event's state."""

    mapping_id: int  # the row of stripe.<family>_mappings
    mc_id: int  # the MC row (billing.<family>)


@dataclass(frozen=True)
class Write:
    """What one event writes about an object born in Stripe."""

    # The MC row's columns, for insert_<noun> / update_<noun> of sql/webhooks.sql.
    values: dict[str, Any]
    # Anything else, in the same transaction, once the MC row exists.
    then: Callable[[AsyncConnection[Any], Written], Awaitable[None]] | None = None
    # Locks to take after the object's own and before writing (in a fixed
    # order with other handlers that take them, so none deadlocks).
    before: Callable[[AsyncConnection[Any]], Awaitable[None]] | None = None


async def write_object(
    ctx: WebhookContext,
    family: Family,
    stripe_id: str,
    key: Key,
    status: str,
    prepare: Callable[[AsyncConnection[Any]], Awaitable[Write]],
    *,
    first: Callable[[AsyncConnection[Any]], Awaitable[Write]] | None = None,
) -> Done:
    """Subscriptions, invoices and payments: apply the whole state an event shows.

    A stale or duplicate event is recorded with a note before ``prepare``
    resolves the references it names (so it never waits for them); ``first``,
    when given, prepares instead while MC has no mapping for the object. The apply
    locks the object (its mapping row may not exist yet), inserts the MC row
    and its mapping on first sight or else updates both, then runs
    ``Write.then``; the mapping ends at ``status`` (synced or deleted).
    """
    async with ctx.pool.connection() as conn:
        row = await find(conn, family, stripe_id)
        tie = None
        if row is not None:
            if _unordered(ctx, key, status, row):
                raise SameSecond(stripe_id, row.last_event_id or "")
            if _tie_applies(ctx, key, row):
                tie = _tie_note(row, stripe_id)
            elif note := stale_note(key, row.last):
                return Done(note=note)
        write = await (first or prepare)(conn) if row is None else await prepare(conn)

    async def apply(conn: AsyncConnection[Any]) -> None:
        q = queries("webhooks")
        await conn.execute(q["object_lock"], {"stripe_id": stripe_id})
        if write.before is not None:
            await write.before(conn)
        locked = await find(conn, family, stripe_id, lock=True)
        if locked is None:
            cur = await conn.execute(q[f"insert_{family.noun}"], write.values)
            mc_id = _returned_id(await cur.fetchone())
            cur = await conn.execute(
                family.query("webhooks", "insert_mapping"),
                {"mc_id": mc_id, "stripe_id": stripe_id, "status": status, **asdict(key)},
            )
            written = Written(_returned_id(await cur.fetchone()), mc_id)
        else:
            # A tie that committed meanwhile: Raced sends the event through the check again.
            current = _tie_applies(ctx, key, locked)
            if _unordered(ctx, key, status, locked) or (
                not current and stale_note(key, locked.last)
            ):
                raise Raced(stripe_id)
            await conn.execute(q[f"update_{family.noun}"], {**write.values, "id": locked.mc_id})
            kept = max(key, locked.last) if current and locked.last is not None else key
            await mark(conn, family, locked.id, stripe_id, kept, status)
            written = Written(locked.id, locked.mc_id)
        if write.then is not None:
            await write.then(conn, written)

    return Done(apply=apply, note=tie)


def _unordered(ctx: WebhookContext, key: Key, status: str, row: MappingRow) -> bool:
    """The event ties with the applied one and Stripe can be asked which is newer.

    Deletions are never fetched (a deleted object cannot be), nor is an object
    already deleted: a deletion outranks the rest anyway.
    """
    return (
        ctx.ties is Ties.ASK
        and same_second(key, row.last)
        and status != "deleted"
        and row.sync_status != "deleted"
    )


def _tie_note(row: MappingRow, stripe_id: str) -> str:
    return f"same second and rank as {row.last_event_id}: applied {stripe_id} as Stripe has it now"


def _tie_applies(ctx: WebhookContext, key: Key, row: MappingRow) -> bool:
    """A tie with data.object Stripe's current state: it is applied whatever the ids say."""
    return ctx.ties is Ties.CURRENT and same_second(key, row.last)


def _returned_id(row: Sequence[Any] | None) -> int:
    assert row is not None, "INSERT ... RETURNING id returned no row"
    return int(row[0])


def ts(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def ignored(note: str) -> Done:
    return Done(status="ignored", note=note)
