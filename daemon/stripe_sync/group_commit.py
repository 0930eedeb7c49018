"""Group commit of completions: the rows that finish while one completion
transaction runs are recorded together in the next one.

A row's completion is its handler's writes plus its status, in one
transaction (``Store.finish``). Alone, each costs a pool checkout, BEGIN, its
statements and COMMIT; under load, many finish within the same few
milliseconds. So one completion at a time leads: it takes every completion
queued so far and records them in one transaction, while those arriving
meanwhile queue up for the next leader. A lone completion (the pickup-latency
path) goes at once: nothing waits for company.

A row's outcome never depends on another's: if anything in a group fails (a
lease lost, a mapping refused, the database, a row lock awaited longer than
the group's lock timeout), the group is rolled back and
each of its rows is recorded again alone, in its own transaction, and gets its
own result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from .db import queries


@dataclass(eq=False)
class Completion:
    """One row's ``finish`` while it waits for its group."""

    record: Callable[[AsyncConnection[Any]], Awaitable[None]]  # its statements
    error: Exception | None = None
    settled: bool = False
    lead: bool = False  # it holds one of the leads: it must run a group or pass the lead on
    # Set when the completion is settled, or handed a lead.
    turn: anyio.Event = field(default_factory=anyio.Event)


class GroupCommit:
    def __init__(self, pool: AsyncConnectionPool, max_leaders: int = 3) -> None:
        self.pool = pool
        # Transactions in flight at once: one would serialise every completion
        # behind its round trips; a few keep the pool busy and still group.
        self.max_leaders = max_leaders
        self._queue: list[Completion] = []
        self._leaders = 0
        self.groups = 0  # transactions that recorded more than one row (tests, metrics)

    async def run(self, record: Callable[[AsyncConnection[Any]], Awaitable[None]]) -> None:
        """Run ``record`` (which raises to refuse) in a transaction, maybe with others'."""
        me = Completion(record)
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
        if me.lead and me.settled:  # handed a lead, but another leader took us along
            self._pass_on()
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
                if len(group) > 1 and await _together(conn, group):
                    self.groups += 1
                    return
                for c in group:
                    try:
                        async with conn.transaction():
                            await c.record(conn)
                    except Exception as exc:
                        c.error = exc
                    c.settled = True
        except Exception as exc:  # the checkout or the connection failed
            for c in group:
                if not c.settled:
                    c.error, c.settled = exc, True


async def _together(conn: AsyncConnection[Any], group: list[Completion]) -> bool:
    """All of the group in one transaction; False (rolled back) if any refused."""
    try:
        async with conn.transaction():
            await conn.execute(queries("queue")["group_lock_wait"])
            for c in group:
                await c.record(conn)
    except Exception:
        if conn.broken:
            raise
        return False
    for c in group:
        c.settled = True
    return True
