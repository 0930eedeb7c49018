"""Storing verified events in integration.webhook_events, with group commit.

Every stored event costs one commit, and a commit waits for the WAL flush.
Under a burst, requests would queue for connections and flushes one by one;
instead each request hands its event to one collector task and waits, and
the collector inserts everything that queued up meanwhile in one multi-row
statement (one commit, one NOTIFY) and then answers all of them. A lone
request is inserted at once: the collector never waits for company.

Usage (the daemon, and the ``catch-up`` command)::

    ingestor = Ingestor(pool)
    async with anyio.create_task_group() as tg:
        await tg.start(ingestor.run)  # the collector
        ...  # ingestor.store(raw, envelope) from any task
        ingestor.stop()

or ``async with ingestor.in_background(): ...``. Without a running collector,
``store`` commits the one event itself, through the same ``_commit`` path, so
nothing breaks if the daemon never started it (it is merely slower under
load). ``store_rows`` is that path for callers holding many events at once
(``catch-up``): one statement, and row by row only when PostgreSQL refuses one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import msgspec
import psycopg
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from psycopg_pool import AsyncConnectionPool

from ..db import queries
from ..errors import one_line
from ..queue.background import in_background
from .events import Envelope, ObjectHead

log = logging.getLogger(__name__)


class StoreError(Exception):
    """The event could not be stored; the endpoint answers 5xx so Stripe retries."""


class Unstorable(StoreError):
    """PostgreSQL refuses this one event (e.g. a \\u0000 in a string, which jsonb cannot hold)."""


@dataclass(frozen=True)
class Row:
    event_id: str
    event_type: str
    api_version: str | None
    livemode: bool
    created: int
    object_id: str | None
    account: str | None
    payload: str


def row_for(raw: bytes | str, event: Envelope) -> Row:
    """The stored columns of one event (the endpoint has checked its shape)."""
    head = ObjectHead()
    if event.data is not None and len(event.data.object):
        head = msgspec.json.decode(event.data.object, type=ObjectHead)
    return Row(
        event_id=event.id or "",
        event_type=event.type or "",
        api_version=event.api_version,
        livemode=event.livemode,
        created=event.created or 0,
        object_id=head.id,
        account=event.account,
        payload=raw.decode() if isinstance(raw, bytes) else raw,
    )


@dataclass
class _Waiter:
    row: Row
    done: anyio.Event = field(default_factory=anyio.Event)
    stored: bool = False
    error: BaseException | None = None


class Ingestor:
    def __init__(self, pool: AsyncConnectionPool, *, max_batch: int = 500) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self.batches = 0  # statements run, for tests and metrics
        self._send: MemoryObjectSendStream[_Waiter] | None = None
        self._stop = anyio.Event()

    @property
    def is_running(self) -> bool:
        return self._send is not None

    async def store(self, raw: bytes | str, event: Envelope) -> bool:
        """Store one event; True if new, False if its id was already stored.

        Returns only after the row has committed. Raises StoreError (or
        Unstorable) when it could not be stored.
        """
        waiter = _Waiter(row_for(raw, event))
        if self._send is None:
            await self._commit([waiter])
        else:
            self._send.send_nowait(waiter)  # unbounded: the request itself is the backpressure
            # Shielded: a client hanging up must not leave the caller unsure
            # whether the insert it started will commit.
            with anyio.CancelScope(shield=True):
                await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.stored

    async def store_rows(self, rows: Sequence[Row]) -> list[bool | Unstorable]:
        """Insert rows in one statement; per row, True if it was new, False if
        its id was already stored, or the Unstorable that names why PostgreSQL
        refused it (then the others are stored one by one, so one bad row
        never fails the rest). Any other database error propagates.
        """
        try:
            return list(await self._insert(rows))
        except psycopg.DataError as exc:
            if len(rows) == 1:
                return [Unstorable(f"{rows[0].event_id}: {one_line(exc)}")]
        results: list[bool | Unstorable] = []
        for row in rows:
            results.extend(await self.store_rows([row]))
        return results

    async def _insert(self, rows: Sequence[Row]) -> list[bool]:
        params: dict[str, Any] = {
            "ids": [r.event_id for r in rows],
            "types": [r.event_type for r in rows],
            "versions": [r.api_version for r in rows],
            "livemodes": [r.livemode for r in rows],
            "created": [r.created for r in rows],
            "objects": [r.object_id for r in rows],
            "accounts": [r.account for r in rows],
            "payloads": [r.payload for r in rows],
        }
        # One statement on an autocommit connection is its own transaction:
        # committed (and flushed: synchronous_commit stays on, the 200 depends
        # on it) when execute returns. No BEGIN/COMMIT: two round trips less.
        async with self.pool.connection() as conn:
            cur = await conn.execute(queries("webhooks")["insert_events"], params)
            new = {row[0] for row in await cur.fetchall()}
        self.batches += 1
        results: list[bool] = []
        for row in rows:
            # The same id twice in one batch: only its first occurrence is new.
            results.append(row.event_id in new)
            new.discard(row.event_id)
        return results

    # -- the collector --------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        send, receive = anyio.create_memory_object_stream[_Waiter](math.inf)
        self._send = send
        self._stop = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_stop, tg)
                task_status.started()
                while True:
                    batch = [await receive.receive()]
                    while len(batch) < self.max_batch:
                        try:
                            batch.append(receive.receive_nowait())
                        except anyio.WouldBlock:
                            break
                    # Shielded: once taken off the queue, a batch is answered.
                    with anyio.CancelScope(shield=True):
                        await self._commit(batch)
        finally:
            self._send = None
            # Requests that queued while we were stopping are still answered.
            with anyio.CancelScope(shield=True):
                for waiter in _drain(receive):
                    await self._commit([waiter])
                send.close()
                receive.close()

    async def _watch_stop(self, tg: anyio.abc.TaskGroup) -> None:
        await self._stop.wait()
        tg.cancel_scope.cancel()

    def stop(self) -> None:
        self._stop.set()

    def in_background(self) -> AbstractAsyncContextManager[Ingestor]:
        """Run in the background for the block (stopped when it is left)."""
        return in_background(self)

    async def _commit(self, batch: list[_Waiter]) -> None:
        """Store a batch and answer each waiter (never raises)."""
        try:
            results = await self.store_rows([w.row for w in batch])
        except (psycopg.Error, OSError) as exc:
            log.warning(
                "storing webhook events failed",
                extra={"events": len(batch), "error": one_line(exc)},
            )
            _fail(batch, StoreError(one_line(exc)))
        except Exception as exc:  # a bug: answer the requests rather than hang them
            log.exception("storing webhook events failed")
            _fail(batch, StoreError(f"{type(exc).__name__}: {exc}"))
        else:
            for waiter, result in zip(batch, results, strict=True):
                if isinstance(result, Unstorable):
                    waiter.error = result
                else:
                    waiter.stored = result
                waiter.done.set()


def _fail(batch: list[_Waiter], error: BaseException) -> None:
    for waiter in batch:
        waiter.error = error
        waiter.done.set()


def _drain(receive: MemoryObjectReceiveStream[_Waiter]) -> list[_Waiter]:
    left: list[_Waiter] = []
    while True:
        try:
            left.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return left
