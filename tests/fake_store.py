"""An in-memory :class:`stripe_sync.queue.store.Store` for fast unit tests of the worker.

It keeps the contract of ``sql/queue.sql`` (status, attempts, next_attempt_at,
leases, the lock owner; ``tests/integration/test_store.py`` runs the same cases against it
and PostgreSQL) and adds what a unit test needs to create a situation exactly:

- a clock: the event loop's, plus :meth:`FakeStore.advance` to jump ahead
  (``next_attempt_at`` and ``locked_until`` are read against it);
- :meth:`FakeStore.hold`: the next call of an operation does its work, then
  waits before returning, so a test can act *while* e.g. a claim is in flight;
- :meth:`FakeStore.fail_next`: the next calls of an operation raise (a lost
  connection) before doing anything;
- :attr:`FakeStore.calls`: every call, with its time and arguments.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import anyio
from psycopg import AsyncConnection

from stripe_sync.errors import LeaseLost
from stripe_sync.outbox.queue import OUTBOX
from stripe_sync.queue.jobs import Apply, Job, Written
from stripe_sync.queue.store import QueueSpec

LEASE_EXPIRED = "lease expired: the daemon that claimed it stopped or stalled"


@dataclass
class Row:
    id: int
    type: str  # action_type
    payload: str
    next_attempt_at: float
    status: str = "pending"
    attempts: int = 0
    locked_by: str | None = None
    locked_until: float | None = None
    last_error: str | None = None
    note: str | None = None


class Call(NamedTuple):
    op: str
    at: float  # the store's clock
    args: tuple[Any, ...]


class Hold:
    """One held call: :attr:`reached` is set once it did its work; it returns on
    :meth:`release`."""

    def __init__(self) -> None:
        self.reached = anyio.Event()
        self._released = anyio.Event()

    def release(self) -> None:
        self._released.set()

    async def wait(self) -> None:
        self.reached.set()
        await self._released.wait()


class FakeStore:
    """The queue table in a dict. ``reports_next_due=False`` makes :meth:`next_due`
    always answer None, so only wake-ups and the worker's own timers start a claim."""

    def __init__(self, spec: QueueSpec = OUTBOX, *, reports_next_due: bool = True) -> None:
        self.spec = spec
        self.reports_next_due = reports_next_due
        self.rows: dict[int, Row] = {}
        self.calls: list[Call] = []
        self._skew = 0.0
        self._holds: dict[str, Hold] = {}
        self._faults: defaultdict[str, deque[Exception]] = defaultdict(deque)

    # -- test controls -------------------------------------------------------------

    def now(self) -> float:
        return anyio.current_time() + self._skew

    def advance(self, seconds: float) -> None:
        """Move the store's clock ahead (leases lapse, retries come due)."""
        self._skew += seconds

    def insert(self, n: int = 1, kind: str = "create_stripe_customer") -> list[int]:
        """``n`` new rows, due now, as the app's INSERT makes them."""
        ids = []
        for _ in range(n):
            id_ = len(self.rows) + 1
            self.rows[id_] = Row(id_, kind, f'{{"account_id": {id_}}}', self.now())
            ids.append(id_)
        return ids

    def hold(self, op: str) -> Hold:
        """Hold the next call of ``op`` after its work, before it returns."""
        self._holds[op] = hold = Hold()
        return hold

    def fail_next(self, op: str, error: Exception, times: int = 1) -> None:
        """The next ``times`` calls of ``op`` raise ``error`` and change nothing."""
        self._faults[op].extend([error] * times)

    def count(self, op: str) -> int:
        return sum(1 for call in self.calls if call.op == op)

    def statuses(self) -> dict[int, str]:
        return {id_: row.status for id_, row in self.rows.items()}

    # -- the Store contract ----------------------------------------------------------

    async def claim(self, limit: int, worker: str, lease: float) -> list[Job]:
        self._enter("claim", limit, worker, lease)
        now = self.now()
        due = sorted(
            (r for r in self.rows.values() if r.status == "pending" and r.next_attempt_at <= now),
            key=lambda r: (r.next_attempt_at, r.id),
        )[:limit]
        for row in due:
            row.status, row.attempts = "processing", row.attempts + 1
            row.locked_by, row.locked_until = worker, now + lease
        jobs = [Job(r.id, r.type, r.attempts, r.payload) for r in due]
        await self._leave("claim")
        return jobs

    async def next_due(self) -> float | None:
        self._enter("next_due")
        pending = [r.next_attempt_at for r in self.rows.values() if r.status == "pending"]
        answer = min(pending) - self.now() if pending and self.reports_next_due else None
        await self._leave("next_due")
        return answer

    async def renew(self, ids: Collection[int], worker: str, lease: float) -> None:
        self._enter("renew", sorted(ids), worker, lease)
        for row in self._held(ids, worker):
            row.locked_until = self.now() + lease
        await self._leave("renew")

    async def finish(
        self,
        job_id: int,
        worker: str,
        status: str,
        note: str | None,
        apply: Apply | None,
        written: Written | None = None,
    ) -> None:
        self._enter("finish", job_id, worker, status, note)
        rows = self._held([job_id], worker)
        if not rows:
            raise LeaseLost(job_id)  # the transaction rolls back: apply's writes are not kept
        if apply is not None:
            # Unit tests' applies record what they would write; there is no database.
            await apply(cast("AsyncConnection[Any]", None))
        self._settle(rows[0], status, None)
        rows[0].note = note
        await self._leave("finish")

    async def fail(self, job_id: int, worker: str, error: str) -> None:
        self._enter("fail", job_id, worker, error)
        for row in self._held([job_id], worker):
            self._settle(row, "failed", error)
        await self._leave("fail")

    async def retry(self, job_id: int, worker: str, error: str, delay: float) -> None:
        self._enter("retry", job_id, worker, error, delay)
        for row in self._held([job_id], worker):
            self._settle(row, "pending", error)
            row.next_attempt_at = self.now() + delay
        await self._leave("retry")

    async def release(self, ids: Collection[int], worker: str) -> None:
        self._enter("release", sorted(ids), worker)
        for row in self._held(ids, worker):
            self._settle(row, "pending", row.last_error)
            row.attempts, row.next_attempt_at = max(row.attempts - 1, 0), self.now()
        await self._leave("release")

    async def reclaim_expired(self) -> int:
        self._enter("reclaim_expired")
        now = self.now()
        expired = [
            r
            for r in self.rows.values()
            if r.status == "processing" and r.locked_until is not None and r.locked_until < now
        ]
        for row in expired:
            self._settle(row, "pending", LEASE_EXPIRED)
            row.next_attempt_at = now
        await self._leave("reclaim_expired")
        return len(expired)

    # -- helpers -----------------------------------------------------------------------

    def _held(self, ids: Collection[int], worker: str) -> list[Row]:
        """The rows of ``ids`` this worker still holds (the SQL's lock check)."""
        rows = (self.rows.get(id_) for id_ in ids)
        return [r for r in rows if r and r.status == "processing" and r.locked_by == worker]

    @staticmethod
    def _settle(row: Row, status: str, error: str | None) -> None:
        row.status, row.last_error = status, error
        row.locked_by = row.locked_until = None

    def _enter(self, op: str, *args: Any) -> None:
        self.calls.append(Call(op, self.now(), args))
        if self._faults[op]:
            raise self._faults[op].popleft()

    async def _leave(self, op: str) -> None:
        if hold := self._holds.pop(op, None):
            await hold.wait()
