"""``stripe-sync backfill``: import Stripe's current state for linked customers.

For each family (customers, payment methods, subscriptions, invoices,
payments with the invoice each paid, refunds, disputes, credit notes)
the objects of linked customers are listed from Stripe (100 a page, newest
first, paced at a share of the rate limit, see below) and each
is applied exactly as a webhook event carrying it would be: a synthetic
event envelope of the matching type (``customer.subscription.updated``,
``invoice.updated``, ``invoice_payment.paid``, …) goes through the webhook
handler table (``webhooks.execute.make_handler``), whose apply runs in the
page's transaction. So the mapping and the billing row are written by the
code that writes them for events, under the same ordering rules.

Ordering. The synthetic event's ``created`` is when the page was asked
for (this machine's clock, which Stripe's signatures already require to be
right): the state listed is at least that new. An applied event newer than
that is kept (the object is counted ``stale``); a webhook older than it that
arrives later is stale in turn. A webhook of the same second and rank makes
the handler ask Stripe for the object (common.SameSecond), as for events.

Idempotent: a page's fingerprint of the MC rows it touches (sql/backfill.sql)
is taken before and after; a page that changed nothing is rolled back, so a
second run writes nothing and says so. Resumable: each page commits with its
checkpoint (integration.backfill_checkpoints, schema/0013), so a run stopped
anywhere resumes after the last committed page (the invoices' pages are read
again while the payments are not done: the payments learn from them which
invoice each paid, and whether it was skipped); a run that finished leaves
the next one to start over. Safe beside the daemon: the handlers lock each
object as they do for events; a deadlock or a race with a webhook retries the
page.

Its share of the rate limit: ``STRIPE_SYNC_BACKFILL_SHARE`` when set; unset,
the whole limit while no daemon runs on this database (the runbook's link,
backfill, run) and half while one does (its LISTEN connection,
``application_name`` 'stripe-sync/listen', sql/ops.sql ``daemons``), looked at
again every SHARE_CHECK_SECONDS, so a daemon started meanwhile gets its half.
The pacer is the client's one, its rate changed in place.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import anyio
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..config import Settings
from ..db import bound_query, make_pool, queries
from ..errors import PermanentError, TransientError, UsageError
from ..queue.jobs import Job
from ..stripe_api import StripeApi, call_with_retries, from_settings
from ..webhooks.common import MissingReference, WebhookContext
from ..webhooks.execute import make_handler
from .backfill_sources import JSON, NAMES, SOURCES, Source, events_of, paid_by

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # Stripe's maximum
PAGE_ATTEMPTS = 5  # a page that meets a deadlock or a race is tried again this often
CUSTOMERS_AT_ONCE = 8  # payment methods are listed per customer: this many requests in flight
# Pages applied side by side, each on a connection of its own: a page's time is
# mostly round trips to PostgreSQL, which overlap.
APPLY_AT_ONCE = 4
# STRIPE_SYNC_BACKFILL_SHARE unset: the share beside a running daemon, and how
# often the backfill looks whether one runs.
SHARE_BESIDE_DAEMON = 0.5
SHARE_CHECK_SECONDS = 5.0


@dataclass
class FamilyResult:
    listed: int = 0  # objects Stripe listed
    imported: int = 0  # of linked customers, applied (changed or not)
    changed: int = 0  # objects whose MC rows the run changed (dry run: would change)
    unchanged: int = 0
    stale: int = 0  # MC already holds a newer state (a webhook applied since)
    skipped: Counter[str] = field(default_factory=Counter)  # reason → objects
    requests: int = 0
    seconds: float = 0.0


@dataclass
class ShareChange:
    """The share of the rate limit the backfill took from a moment of the run on."""

    at: float  # seconds into the run
    share: float
    why: str  # "STRIPE_SYNC_BACKFILL_SHARE", "no daemon running", "1 daemon(s) running"
    rate: float  # requests/s (0: unpaced)


@dataclass
class BackfillResult:
    scope: str
    dry_run: bool
    resumed: bool = False
    families: dict[str, FamilyResult] = field(default_factory=dict)
    seconds: float = 0.0
    requests: int = 0
    cpu_seconds: float = 0.0
    shares: list[ShareChange] = field(default_factory=list)  # the first, then each change

    @property
    def share(self) -> float:
        """The share the run began with (``shares`` says when it changed)."""
        return self.shares[0].share if self.shares else 1.0

    @property
    def objects(self) -> int:
        return sum(f.imported for f in self.families.values())

    @property
    def changed(self) -> int:
        return sum(f.changed for f in self.families.values())

    @property
    def exit_code(self) -> int:
        return 0

    def summary(self) -> str:
        verb = "would change" if self.dry_run else "changed"
        rate = self.objects / self.seconds if self.seconds else 0.0
        text = (
            f"backfill ({self.scope}{', resumed' if self.resumed else ''}): "
            f"{self.objects} object(s) imported, {verb} {self.changed}, "
            f"{self.requests} request(s), {self.seconds:.1f} s ({rate:.0f} objects/s)"
        )
        if not self.changed and not self.dry_run:
            text += "; nothing to change: MC already holds Stripe's state"
        return text + "; " + "; then ".join(_share_text(c) for c in self.shares)

    def render(self, out: TextIO, err: TextIO) -> None:
        print(self.summary(), file=out)
        for name, f in self.families.items():
            line = (
                f"  {name}: {f.listed} listed, {f.imported} imported, {f.changed} changed, "
                f"{f.unchanged} unchanged, {f.stale} kept newer"
            )
            print(line, file=out)
            for reason, n in f.skipped.most_common():
                print(f"    skipped {n}: {reason}", file=out)

    def to_json(self) -> str:
        return json.dumps(
            {
                "scope": self.scope,
                "dry_run": self.dry_run,
                "resumed": self.resumed,
                "objects": self.objects,
                "changed": self.changed,
                "requests": self.requests,
                "seconds": round(self.seconds, 3),
                "cpu_seconds": round(self.cpu_seconds, 3),
                "share": self.share,
                "shares": [
                    {**vars(c), "at": round(c.at, 3), "rate": round(c.rate, 3)} for c in self.shares
                ],
                "families": {
                    name: {**vars(f), "skipped": dict(f.skipped), "seconds": round(f.seconds, 3)}
                    for name, f in self.families.items()
                },
            }
        )


def _share_text(change: ShareChange) -> str:
    rate = f"{change.rate:g} req/s" if change.rate else "unpaced"
    at = f" from {change.at:.0f} s" if change.at else ""
    return f"share {change.share:g} ({change.why}, {rate}){at}"


class _OneConnection:
    """A stand-in for the pool the handlers read from: the page's own connection,
    so a handler's checks see what the page wrote before it (an invoice's
    payments, linked in the page that imports the invoice)."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self._conn = conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        yield self._conn


class _Rollback(Exception):
    """The page changed nothing (or this is a dry run): undo its writes."""


@dataclass
class Backfill:
    api: StripeApi
    pool: AsyncConnectionPool
    customer: str | None = None
    since: int | None = None
    dry_run: bool = False
    on_page: Callable[[str, int], None] | None = None
    # Tests: called with each page's objects before they are applied (a racing
    # webhook, a crash after N objects).
    before_apply: Callable[[str, list[JSON]], Awaitable[None]] | None = None
    linked: set[str] = field(default_factory=set)
    # The rate limit whose share the backfill takes (0: unpaced), and the share
    # set by STRIPE_SYNC_BACKFILL_SHARE (None: follow whether a daemon runs).
    rate_limit: float = 0.0
    share: float | None = None
    _held: AsyncConnection[Any] | None = None  # the dry run's one connection
    _requests: dict[str, FamilyResult] = field(default_factory=dict)  # list requests counted
    # PaymentIntent → invoice → (why the invoice was skipped, or None; the
    # invoice_payment.paid event that links them), learnt from the invoices'
    # pages, which come before the payments' (backfill_sources.SOURCES).
    _paid: dict[str, dict[str, tuple[str | None, tuple[str, str]]]] = field(default_factory=dict)
    # Payment-method lists in flight at once (made in _families: see there).
    _beside: anyio.CapacityLimiter | None = None

    @property
    def scope(self) -> str:
        who = self.customer or "all"
        return f"{who} since={self.since}" if self.since is not None else who

    async def run(self) -> BackfillResult:
        started, cpu = time.monotonic(), time.process_time()
        result = BackfillResult(self.scope, self.dry_run)
        calls = self.api.calls
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                queries("backfill")["linked_customers"], {"customer": self.customer}
            )
            self.linked = {r[0] for r in await cur.fetchall()}
            if self.customer is not None and not self.linked:
                raise UsageError(
                    f"customer {self.customer} is not linked to an MC account "
                    "(stripe-sync link ACCOUNT_ID cus_…)"
                )
            cur = await conn.execute(queries("backfill")["checkpoints"], {"scope": self.scope})
            saved = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
            # A run that finished every family leaves the next one to start over.
            finished = all(saved.get(name, (None, False))[1] for name in NAMES)
            if finished or self.dry_run:
                saved = {}
                if not self.dry_run:
                    await conn.execute(queries("backfill")["restart"], {"scope": self.scope})
            result.resumed = bool(saved)
            if not saved.get("payment_intents", (None, False))[1]:
                # The payments learn their invoices from the invoices' pages of
                # this run: those are listed again (what they committed is
                # found unchanged).
                saved.pop("invoices", None)
        await self._pace(result, started)
        try:
            async with anyio.create_task_group() as tg:
                if self.share is None:
                    tg.start_soon(self._follow_daemons, result, started)
                try:
                    await self._run_families(result, saved)
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _first(group) from None
        result.seconds = time.monotonic() - started
        result.cpu_seconds = time.process_time() - cpu
        result.requests = self.api.calls - calls
        return result

    async def _pace(self, result: BackfillResult, started: float) -> None:
        """Set the pacer to the share this moment calls for; a change is reported."""
        if self.share is not None:
            share, why = self.share, "STRIPE_SYNC_BACKFILL_SHARE"
        else:
            async with self.pool.connection() as conn:
                cur = await conn.execute(queries("ops")["daemons"])
                row = await cur.fetchone()
            daemons = row[0] if row else 0
            share = SHARE_BESIDE_DAEMON if daemons else 1.0
            why = f"{daemons} daemon(s) running" if daemons else "no daemon running"
        if result.shares and result.shares[-1].share == share:
            return
        rate = self.rate_limit * share
        self.api.pacer.set_rate(rate)
        change = ShareChange(time.monotonic() - started, share, why, rate)
        # A change during the run is worth a line on the terminal too (an
        # operator command logs warnings and above to stderr).
        level = logging.WARNING if result.shares else logging.INFO
        result.shares.append(change)
        log.log(level, "backfill: %s", _share_text(change))

    async def _follow_daemons(self, result: BackfillResult, started: float) -> None:
        while True:
            await anyio.sleep(SHARE_CHECK_SECONDS)
            await self._pace(result, started)

    async def _run_families(
        self, result: BackfillResult, saved: dict[str, tuple[str | None, bool]]
    ) -> None:
        if not self.dry_run:
            await self._families(result, saved)
        else:
            # One transaction for the whole run, rolled back at the end: each
            # family sees what the families before it would have written.
            async with self.pool.connection() as conn:
                try:
                    async with conn.transaction():
                        self._held = conn
                        await self._families(result, saved)
                        raise _Rollback
                except _Rollback:
                    pass
                finally:
                    self._held = None

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A page's transaction (a savepoint of the dry run's one transaction)."""
        if self._held is not None:
            async with self._held.transaction():
                yield self._held
            return
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(queries("backfill")["relaxed"])
            yield conn

    async def _families(
        self, result: BackfillResult, saved: dict[str, tuple[str | None, bool]]
    ) -> None:
        """The families in order, but payment methods beside the rest: they are
        listed a customer at a time (most of a run's requests) and depend on
        nothing but customers, which come first. A dry run's one transaction
        takes them one after another."""

        async def one(source: Source) -> None:
            cursor, done = saved.get(source.name, (None, False))
            family = result.families[source.name]
            if done:
                return
            t0 = time.monotonic()
            if source.per_customer:
                pages = self._per_customer(source, family, cursor)
            else:
                pages = self._listed(source, family, cursor)
            await self._import(source, family, pages)
            family.seconds = time.monotonic() - t0

        for source in SOURCES:
            result.families[source.name] = FamilyResult()
        self._requests = result.families
        first, *others = SOURCES
        await one(first)
        if self._held is not None:
            for source in others:
                await one(source)
            return
        # Paced, the payment methods' many small lists would take most of the
        # slots (the pacer gives them out in the order asked, and they ask
        # CUSTOMERS_AT_ONCE at a time) and starve the other families, whose
        # pages come one after another, each waiting for its cursor: while
        # those are listed, one payment-method list at a time goes beside them.
        paced = bool(self.api.pacer.interval)
        self._beside = anyio.CapacityLimiter(1 if paced else CUSTOMERS_AT_ONCE)
        try:
            async with anyio.create_task_group() as tg:
                for source in others:
                    if source.per_customer:
                        tg.start_soon(one, source)
                for source in others:
                    if not source.per_customer:
                        await one(source)
                self._beside.total_tokens = CUSTOMERS_AT_ONCE
        except BaseExceptionGroup as group:
            raise _first(group) from None

    # -- listing -----------------------------------------------------------------------
    async def _list(self, source: Source, params: JSON) -> tuple[list[JSON], bool, int]:
        """One page: its objects, whether there are more, and when it was asked for."""
        self._requests[source.name].requests += 1
        asked = int(time.time())
        response = await call_with_retries(
            self.api,
            f"list {source.name}",
            lambda: self.api.client.raw_request_async("get", source.path, **params),
        )
        body: JSON = response.data
        return list(body.get("data") or []), bool(body.get("has_more")), asked

    def _params(self, source: Source, cursor: str | None, **extra: Any) -> JSON:
        params: JSON = {"limit": PAGE_SIZE, **dict(source.params), **extra}
        if self.since is not None and source.created:
            params["created"] = {"gte": self.since}
        if cursor is not None:
            params["starting_after"] = cursor
        return params

    async def _listed(self, source: Source, family: FamilyResult, cursor: str | None) -> Pages:
        extra: JSON = {}
        if self.customer is not None and source.by_customer:
            if source.name == "customers":
                obj = await self._retrieve_customer()
                yield _Page([obj], int(time.time()), None, last=True)
                return
            extra["customer"] = self.customer
        while True:
            objects, more, asked = await self._list(source, self._params(source, cursor, **extra))
            family.listed += len(objects)
            cursor = objects[-1]["id"] if objects else cursor
            yield _Page(objects, asked, cursor, last=not more or not objects)
            if not more or not objects:
                return

    async def _retrieve_customer(self) -> JSON:
        assert self.customer is not None
        path = f"/v1/customers/{self.customer}"
        self._requests["customers"].requests += 1
        response = await call_with_retries(
            self.api,
            f"retrieve {self.customer}",
            lambda: self.api.client.raw_request_async("get", path),
        )
        found: JSON = response.data
        return found

    async def _per_customer(
        self, source: Source, family: FamilyResult, cursor: str | None
    ) -> Pages:
        """A page per CUSTOMERS_AT_ONCE customers (each listed in full, side by side);
        the cursor is the last customer of the page."""
        customers = sorted(c for c in self.linked if cursor is None or c > cursor)
        if not customers:
            yield _Page([], int(time.time()), cursor, last=True)
        for start in range(0, len(customers), CUSTOMERS_AT_ONCE):
            batch = customers[start : start + CUSTOMERS_AT_ONCE]
            pages: list[list[JSON]] = [[] for _ in batch]
            asked = int(time.time())

            async def one(i: int, customer: str, pages: list[list[JSON]] = pages) -> None:
                after: str | None = None
                while True:
                    params = self._params(source, after, customer=customer)
                    async with self._beside or nullcontext():
                        objects, more, _ = await self._list(source, params)
                    pages[i].extend(objects)
                    if not more or not objects:
                        return
                    after = objects[-1]["id"]

            async with anyio.create_task_group() as tg:
                for i, customer in enumerate(batch):
                    tg.start_soon(one, i, customer)
            objects = [o for page in pages for o in page]
            family.listed += len(objects)
            last = start + CUSTOMERS_AT_ONCE >= len(customers)
            yield _Page(objects, asked, batch[-1], last=last)

    async def _import(self, source: Source, family: FamilyResult, pages: Pages) -> None:
        """Apply a family's pages as they are listed, APPLY_AT_ONCE side by side.

        Each page commits on its own; the checkpoint moves on (a statement of its
        own) once a page and every page before it have committed, so a stop
        leaves it at or behind what is done: pages after it that committed are
        applied again by the rerun and found unchanged. A dry run applies them
        one after another in its one transaction.
        """
        if self._held is not None:
            async for page in pages:
                await self._page(source, family, page)
            return
        send, receive = anyio.create_memory_object_stream[tuple[int, _Page]](APPLY_AT_ONCE)
        finished: dict[int, _Page] = {}
        frontier = [0]  # the next page whose commit moves the checkpoint
        lock = anyio.Lock()

        async def advance() -> None:
            async with lock:
                moved: list[_Page] = []
                while frontier[0] in finished:
                    moved.append(finished.pop(frontier[0]))
                    frontier[0] += 1
                if moved:
                    await self._checkpoint(source, moved)

        async def worker() -> None:
            async with receive.clone() as pages_in:
                async for seq, page in pages_in:
                    await self._page(source, family, page)
                    finished[seq] = page
                    await advance()

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(APPLY_AT_ONCE):
                    tg.start_soon(worker)
                async with send, receive:
                    seq = 0
                    async for page in pages:
                        await send.send((seq, page))
                        seq += 1
        except BaseExceptionGroup as group:
            # One failure stops the family (the others are its cancellations):
            # raised as itself, for the command's one line.
            raise _first(group) from None

    async def _checkpoint(self, source: Source, pages: list[_Page]) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                queries("backfill")["checkpoint"],
                {
                    "scope": self.scope,
                    "family": source.name,
                    "cursor": pages[-1].cursor,
                    "done": pages[-1].last,
                    "objects": sum(p.imported for p in pages),
                },
            )

    # -- applying ----------------------------------------------------------------------
    async def _ours(self, source: Source, objects: list[JSON]) -> list[JSON]:
        """The objects of linked customers (created since --since)."""
        if self.since is not None and not source.created:
            since = self.since
            objects = [o for o in objects if int(o.get("created") or 0) >= since]
        if source.name == "customers":
            return [o for o in objects if o.get("id") in self.linked]
        if source.by_customer:
            return [o for o in objects if _ref(o.get("customer")) in self.linked]
        wanted = [pi for o in objects if (pi := _ref(o.get("payment_intent")))]
        async with self._transaction() as conn:
            cur = await conn.execute(
                queries("backfill")["mapped_payment_intents"],
                {"ids": wanted, "customer": self.customer},
            )
            mapped = {r[0] for r in await cur.fetchall()}
        return [o for o in objects if _ref(o.get("payment_intent")) in mapped]

    async def _page(self, source: Source, family: FamilyResult, page: _Page) -> None:
        objects = await self._ours(source, page.objects)
        page.imported = len(objects)
        if self.before_apply is not None and objects:
            await self.before_apply(source.name, objects)
        for attempt in range(PAGE_ATTEMPTS):
            try:
                counts = await self._apply_page(source, objects, page.asked)
                break
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == PAGE_ATTEMPTS - 1:
                    raise
                await anyio.sleep(0.05 * 2**attempt)
        family.imported += len(objects)
        family.changed += counts.changed
        family.unchanged += counts.unchanged
        family.stale += counts.stale
        family.skipped.update(counts.skipped)
        if self.on_page is not None:
            self.on_page(source.name, len(objects))

    async def _apply_page(self, source: Source, objects: list[JSON], asked: int) -> _Counts:
        counts = _Counts()
        async with self._transaction() as conn:
            try:
                async with conn.transaction():
                    ids = _ids(source, objects)
                    before = await _fingerprints(conn, source, ids)
                    ctx = WebhookContext(
                        cast(AsyncConnectionPool, _OneConnection(conn)), api=self.api
                    )
                    handler = make_handler(ctx)
                    async with _pipelined(conn, source):
                        for obj in objects:
                            await self._apply_one(conn, handler, source, obj, asked, counts)
                    after = await _fingerprints(conn, source, ids)
                    changed = sum(after.get(i) != before.get(i) for i in ids)
                    counts.changed = changed
                    counts.unchanged = (
                        len(objects) - changed - counts.stale - counts.skipped.total()
                    )
                    if not changed:  # (a dry run's one transaction is rolled back at its end)
                        raise _Rollback
            except _Rollback:
                pass
        return counts

    async def _apply_one(
        self,
        conn: AsyncConnection[Any],
        handler: Callable[[Job], Awaitable[Any]],
        source: Source,
        obj: JSON,
        asked: int,
        counts: _Counts,
    ) -> None:
        """An object's events; an invoice's payments are remembered for theirs,
        with the invoice's outcome: a payment whose invoice was skipped is
        skipped for the same reason, never imported without it."""
        if source.name == "invoices":
            paid = paid_by(obj, asked)
            skipped = await self._apply_events(conn, handler, events_of(source, obj, asked), counts)
            invoice = str(obj.get("id"))
            for pi_id, link in paid:
                self._paid.setdefault(pi_id, {})[invoice] = (skipped, link)
            return
        events = events_of(source, obj, asked)
        if source.name == "payment_intents":
            invoices = self._paid.get(str(obj.get("id")), {})
            for reason, _ in invoices.values():
                if reason is not None:
                    counts.skipped[reason] += 1
                    return
            events += [link for _, link in invoices.values()]
        await self._apply_events(conn, handler, events, counts)

    async def _apply_events(
        self,
        conn: AsyncConnection[Any],
        handler: Callable[[Job], Awaitable[Any]],
        events: list[tuple[str, str]],
        counts: _Counts,
    ) -> str | None:
        """Apply an object's events in order; why it was skipped, or None."""
        for event_type, payload in events:
            job = Job(0, event_type, 1, payload)
            last = ""
            for _ in range(PAGE_ATTEMPTS):
                try:
                    # No savepoint: what a handler raises (a race, a missing
                    # reference) it raises before it writes; a database error
                    # fails the whole page.
                    done = await handler(job)
                    if done.apply is not None:
                        await done.apply(conn)
                    break
                except MissingReference as exc:
                    # A reference MC lacks (and the handler could not supply):
                    # the object cannot be imported.
                    return counts.skip(str(exc))
                except TransientError as exc:
                    # A webhook's apply raced ours (Raced): look again.
                    last = str(exc)
                except PermanentError as exc:
                    return counts.skip(str(exc))
            else:
                return counts.skip(f"not applied in {PAGE_ATTEMPTS} attempts: {last}")
            if event_type.startswith("invoice_payment."):
                continue  # the payment's own outcome counts
            if done.status == "ignored":
                return counts.skip(done.note or "ignored")
            if done.note and done.note.startswith("stale"):
                counts.stale += 1
        return None


@dataclass
class _Page:
    objects: list[JSON]  # as listed
    asked: int  # when it was asked for (the synthetic events' created)
    cursor: str | None  # where a resumed run starts after it
    last: bool  # the family's last page
    imported: int = 0  # its objects of linked customers


Pages = AsyncIterator[_Page]


@dataclass
class _Counts:
    changed: int = 0
    unchanged: int = 0
    stale: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def skip(self, why: str) -> str:
        """Count an object skipped; its reason, as counted."""
        reason = _reason(why)
        self.skipped[reason] += 1
        return reason


# Families whose handlers read a statement's rowcount as soon as it is executed
# (customers: confirm's mark_if_newer and set_default; refunds: upsert_refund),
# which pipeline mode only knows once the result is fetched: applied without it.
_ROWCOUNT_READ = frozenset({"customers", "refunds"})


@asynccontextmanager
async def _pipelined(conn: AsyncConnection[Any], source: Source) -> AsyncIterator[None]:
    """A page's objects in pipeline mode: the statements whose results a handler
    does not read (the object lock, a payment's charge and refund totals, an
    invoice's payment link, …) go out with the next one it does read, instead
    of a round trip each. The statements and their order are the handlers'
    own; an error in one surfaces at the next read and fails the page, as it
    would have at once."""
    if source.name in _ROWCOUNT_READ:
        yield
        return
    async with conn.pipeline():
        yield


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    found: BaseException = group
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found


def _ref(value: Any) -> str | None:
    if isinstance(value, dict):
        found = value.get("id")
        return found if isinstance(found, str) else None
    return value if isinstance(value, str) else None


_ID = re.compile(r"\b([a-z]+)_[A-Za-z0-9]{6,}\b")


def _reason(text: str) -> str:
    """A skip reason with its object ids shortened to their prefix (``price_…``),
    so that skips of one kind count together."""
    return _ID.sub(r"\1_…", text)[:160]


def _ids(source: Source, objects: Iterable[JSON]) -> list[str]:
    return [o["id"] for o in objects if isinstance(o.get("id"), str)]


async def _fingerprints(
    conn: AsyncConnection[Any], source: Source, ids: list[str]
) -> dict[str, str]:
    """What MC shows of each object (sql/backfill.sql), by Stripe id."""
    if not ids:
        return {}
    statements: list[bytes | str] = []
    if source.family is not None:
        f = source.family
        statements.append(
            bound_query(
                "backfill",
                "fingerprints",
                mapping=f.table,
                mc_table=f.mc_table,
                mc_col=f.mc_col,
                stripe_col=f.stripe_col,
            )
        )
    extra = {"customers": "customer", "subscriptions": "subscription", "invoices": "invoice"}
    if source.name in extra:
        statements.append(queries("backfill")[f"fingerprints_{extra[source.name]}"])
    if source.name == "refunds":
        statements.append(queries("backfill")["fingerprints_refund"])
    found: dict[str, str] = {}
    for statement in statements:
        cur = await conn.execute(statement, {"ids": ids})
        for stripe_id, text in await cur.fetchall():
            found[stripe_id] = found.get(stripe_id, "") + "#" + (text or "")
    return found


@asynccontextmanager
async def _clients(settings: Settings) -> AsyncIterator[tuple[StripeApi, AsyncConnectionPool]]:
    """The client (its pacer set by ``Backfill`` to its share) and the pool."""
    settings.require("DATABASE_URL", "STRIPE_API_KEY")
    assert settings.database_url is not None
    async with (
        from_settings(settings) as api,
        make_pool(settings.database_url, size=2 * APPLY_AT_ONCE + 1, role="backfill") as pool,
    ):
        yield api, pool


async def run(
    settings: Settings,
    *,
    customer: str | None = None,
    since: int | None = None,
    dry_run: bool = False,
    on_page: Callable[[str, int], None] | None = None,
) -> BackfillResult:
    if customer is not None and not customer.startswith("cus_"):
        raise UsageError(f"--customer: expected a cus_ id, got {customer!r}")
    async with _clients(settings) as (api, pool):
        backfill = Backfill(
            api,
            pool,
            customer=customer,
            since=since,
            dry_run=dry_run,
            on_page=on_page,
            rate_limit=settings.effective_rate_limit,
            share=settings.backfill_share,
        )
        return await backfill.run()
