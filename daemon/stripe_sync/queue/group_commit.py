"""Group commit of completions: the rows that finish while one completion
runs are recorded together in the next one.

A row's completion is its handler's writes plus its status, atomically
(``Store.finish``). Alone, each costs a pool checkout and its round trips;
under load, many finish within the same few milliseconds. So one completion at
a time leads: it takes every completion queued so far and records them
together, while those arriving meanwhile queue up for the next leader. A lone
completion (the pickup-latency path) goes at once: nothing waits for company.

A completion comes in one of two forms. **Data** (a row's status and note,
and for the outbox the mapping row to write): the store records a whole group
of these in one statement (``finish_rows``), which answers per row, so a
refused row costs the others nothing. **A callback** (a webhook handler's
writes, which read what they lock before they write), with its row's data: the
group runs in one transaction, BEGIN, each callback in turn, then the rows'
``finish_rows`` (one statement for all of them), COMMIT. Any row that is no
longer ours fails the whole transaction, which is redone row by row. **Both**
(a webhook's mapping mark: ``Done`` with ``apply`` and ``written``): data
first, and a row the statement declines (:class:`~.jobs.Declined`) is then
recorded through its callback, alone, in the same group's turn.

A row's outcome never depends on another's: if a group's statement or
transaction fails (a lease lost or a mapping refused in a callback, the
database, a row lock awaited longer than the group's lock timeout), it is
rolled back and each of its rows is recorded again alone and gets its own
result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..db import queries
from .jobs import Apply, Declined

# Records data completions of one group (run_row's ``group``) in one autocommit
# statement; each row's error (None: recorded). Raises when the statement failed.
FinishRows = Callable[[AsyncConnection[Any], Sequence[Any]], Awaitable[list[Exception | None]]]


@dataclass(eq=False)
class Completion:
    """One row's ``finish`` while it waits for its group."""

    apply: Apply | None  # its statements, run in a transaction
    row: Any = None  # its data, for ``finish_rows`` (after ``apply``, if any)
    group: object = None  # data of one group shares a statement
    # Data that the statement may decline: then this callback records the row.
    fallback: Completion | None = None
    error: Exception | None = None
    settled: bool = False
    lead: bool = False  # it holds one of the leads: it must run a group or pass the lead on
    # Set when the completion is settled, or handed a lead.
    turn: anyio.Event = field(default_factory=anyio.Event)
    # Set when it is settled (only): what a completion handed a lead after
    # another leader took it along waits for.
    done: anyio.Event = field(default_factory=anyio.Event)


class GroupCommit:
    def __init__(
        self, pool: AsyncConnectionPool, finish_rows: FinishRows, max_leaders: int = 3
    ) -> None:
        self.pool = pool
        self.finish_rows = finish_rows
        # Groups in flight at once (QueueSpec.group_leads): one serialises every
        # completion behind the group before it, which suits a group that is one
        # statement; a few keep the pool busy when a group is a transaction.
        self.max_leaders = max_leaders
        self._queue: list[Completion] = []
        self._leaders = 0
        self.groups = 0  # statements or transactions that recorded several rows (tests)

    async def run(self, apply: Apply, row: Any = None) -> None:
        """Run ``apply`` (which raises to refuse) in a transaction, maybe with others',
        then record ``row`` (if any) with ``finish_rows`` in the same transaction;
        raise its error (which rolls back ``apply``'s writes)."""
        await self._complete(Completion(apply, row))

    async def run_row(
        self, row: Any, group: object = None, fallback: tuple[Apply, Any] | None = None
    ) -> None:
        """Record ``row`` with ``finish_rows``, maybe with others of its ``group``
        (one statement records one group); raise its error. If the statement
        declines it, ``fallback`` records it instead: (apply, row) as ``run``'s."""
        alone = None if fallback is None else Completion(*fallback)
        await self._complete(Completion(None, row, group, fallback=alone))

    async def _complete(self, me: Completion) -> None:
        self._queue.append(me)
        if self._leaders < self.max_leaders:
            self._leaders += 1
            me.lead = True
        else:
            try:
                await me.turn.wait()  # settled by a leader, or handed a lead
            except BaseException:  # cancelled while queued
                self._queue = [c for c in self._queue if c is not me]
                if me.lead:
                    self._pass_on()
                raise
        if me.lead and not any(c is me for c in self._queue):
            # Handed a lead, but before we ran another leader (a newcomer that
            # found a lead free) took us along: pass the lead on and wait for
            # that leader to settle us. Returning now would report a
            # completion its group may still roll back.
            self._pass_on()
            await me.done.wait()
        elif me.lead:  # lead: take everything queued, us included
            group, self._queue = self._queue, []
            try:
                await self._commit(group)
            finally:
                for c in group:
                    if not c.settled:  # we were cancelled mid-commit: outcome unknown
                        c.error = psycopg.OperationalError(
                            "group commit interrupted; the row's outcome is unknown"
                        )
                        c.settled = True
                    c.turn.set()
                    c.done.set()
                self._pass_on()
        if me.error is not None:
            raise me.error

    def _pass_on(self) -> None:
        # A lead ends: it goes straight to the oldest queued completion that has
        # none (still counted meanwhile, so one arriving now queues), or lapses.
        for c in self._queue:
            if not c.lead:
                c.lead = True
                c.turn.set()
                return
        self._leaders -= 1

    async def _commit(self, group: list[Completion]) -> None:
        try:
            async with self.pool.connection() as conn:
                groups: dict[object, list[Completion]] = {}
                for c in group:
                    if c.apply is None:
                        groups.setdefault(c.group, []).append(c)
                for rows in groups.values():
                    await self._rows(conn, rows)
                calls = [c for c in group if c.apply is not None]
                if len(calls) > 1 and await self._together(conn, calls):
                    self.groups += 1
                    return
                for c in calls:
                    try:
                        async with conn.transaction():
                            await self._calls(conn, [c])
                    except Exception as exc:
                        c.error = exc
                    c.settled = True
        except Exception as exc:  # the checkout or the connection failed
            for c in group:
                if not c.settled:
                    c.error, c.settled = exc, True

    async def _calls(self, conn: AsyncConnection[Any], calls: list[Completion]) -> None:
        """Callbacks in the caller's transaction: each in turn, then their rows in
        one ``finish_rows``; raise (to roll it all back) if any is refused."""
        for c in calls:
            assert c.apply is not None
            await c.apply(conn)
        rows = [c.row for c in calls if c.row is not None]
        if rows:
            errors = await self.finish_rows(conn, rows)
            refused = next((e for e in errors if e is not None), None)
            if refused is not None:
                raise refused

    async def _together(self, conn: AsyncConnection[Any], group: list[Completion]) -> bool:
        """All of the group in one transaction; False (rolled back) if any refused."""
        try:
            async with conn.transaction():
                await conn.execute(queries("queue", "stripe_sync.queue")["group_lock_wait"])
                await self._calls(conn, group)
        except Exception:
            if conn.broken:
                raise
            return False
        for c in group:
            c.settled = True
        return True

    async def _rows(self, conn: AsyncConnection[Any], rows: list[Completion]) -> None:
        """Data completions of one group: in one statement, or, if it fails, each alone."""
        if len(rows) > 1:
            try:
                errors = await self.finish_rows(conn, [c.row for c in rows])
            except Exception:
                if conn.broken:
                    raise
            else:
                self.groups += 1
                for c, error in zip(rows, errors, strict=True):
                    await self._settle(conn, c, error)
                return
        for c in rows:
            try:
                [error] = await self.finish_rows(conn, [c.row])
            except Exception as exc:
                if conn.broken:
                    raise
                error = exc
            await self._settle(conn, c, error)

    async def _settle(
        self, conn: AsyncConnection[Any], c: Completion, error: Exception | None
    ) -> None:
        """A data completion's answer; one declined is recorded through its fallback."""
        if isinstance(error, Declined) and c.fallback is not None:
            try:
                async with conn.transaction():
                    await self._calls(conn, [c.fallback])
                error = None
            except Exception as exc:
                if conn.broken:
                    raise
                error = exc
        c.error, c.settled = error, True
