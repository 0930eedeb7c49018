"""The queue tables as the worker sees them: every SQL call of the queue behind
one small interface, :class:`Store`, and its PostgreSQL implementation,
:class:`PostgresStore` (the SQL is in ``sql/queue.sql``).

:class:`QueueSpec` names a queue table and what its pipeline adds to the engine:
a claim composed around queue.sql's, and how completions that carry writes as
data (:class:`~.jobs.Written`) are recorded. The pipelines declare theirs
(``outbox/queue.py``, ``webhooks/queue.py``); this package names neither.

The worker only says what happened — claim due rows, renew these leases, this
row is done together with these writes, retry that one later, hand these
back — and never how it becomes statements. So :class:`PostgresStore` records
completions that finish together in one statement or transaction
(``group_commit.py``) and chooses ``synchronous_commit`` per statement
(``sql/queue.sql``) without the worker's rules changing. ``tests/fake_store.py``
honours the same contract in memory, for fast unit tests of the worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..db import bound_query
from ..errors import LeaseLost, one_line
from .group_commit import GroupCommit
from .jobs import Apply, Job, Written

# A failed round trip to the database (psycopg's errors, or the socket's):
# worth another try later, never a reason for the worker to stop.
DATABASE_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, OSError)

# Except these: SQLSTATE class 22 (data exception) and 23 (integrity constraint
# violation) fail the same statement the same way every time, so a retry only
# delays the error. Lost connections, serialization failures and deadlocks are
# other classes and stay worth another try.
REFUSALS: tuple[type[Exception], ...] = (psycopg.errors.DataError, psycopg.errors.IntegrityError)


def refusal(exc: psycopg.Error) -> str:
    """What the database refused, for last_error: its reason, the table, the
    constraint and the detail (which names the offending value, a Stripe id)."""
    diag = exc.diag
    parts = [f"the database refused the change: {diag.message_primary or one_line(exc)}"]
    if diag.table_name:
        parts.append(f"table {diag.schema_name}.{diag.table_name}")
    if diag.constraint_name:
        parts.append(f"constraint {diag.constraint_name}")
    if diag.message_detail:
        parts.append(diag.message_detail)
    return "; ".join(parts)


class Finished(NamedTuple):
    """A completion as data: one row of ``finish_rows``, or of the pipeline's
    statement for completions that carry writes (:attr:`QueueSpec.record_written`)."""

    id: int
    worker: str
    status: str
    note: str | None
    written: Written | None


RecordWritten = Callable[
    [AsyncConnection[Any], Sequence[Finished]], Awaitable[list[Exception | None]]
]
"""Records completions whose writes share one :attr:`Written.group` (one statement
for the lot); answers each row's error: LeaseLost when it is no longer its
worker's, a PermanentError when the pipeline refused its write, or None."""


@dataclass(frozen=True)
class QueueSpec:
    name: str  # in logs and metrics: "outbox" or "webhooks"
    table: str  # schema-qualified
    type_column: str  # the column that says what to do (Job.type): action_type or event_type
    channel: str  # NOTIFY channel of its triggers
    done_status: str
    # Completions may share a transaction (group_commit.py). The outbox's do:
    # each writes its own mapping row. The webhook queue's do too: events of
    # different objects lock different mapping rows; two events of one object
    # in one group apply in turn in one transaction, the second checking its
    # ordering key against the row the first just wrote (an older one raises
    # Raced, the group is redone row by row); two groups locking two objects in
    # opposite orders stop waiting after the group lock timeout and fall back.
    group_commit: bool = False
    # Groups recorded at once (GroupCommit.max_leaders). The outbox's completions
    # are one statement per group, so one at a time keeps the groups large
    # without queueing behind BEGIN/COMMIT round trips; a group that is a
    # transaction of several statements keeps the pool busier with a few side by
    # side (docs/benchmarks.md, issue 11: steps 3 and 10; issue 27, round 3).
    group_leads: int = 3
    # The pipeline's claim: given queue.sql's claim (bound to this table), the
    # statement to run instead, which may read more for each row (Job.loaded).
    compose_claim: Callable[[bytes], bytes] | None = None
    # Records completions that carry writes as data (Done.written); a queue
    # whose handlers write none leaves it None.
    record_written: RecordWritten | None = None

    def query(self, name: str) -> bytes:
        return bound_query(
            "queue", name, "stripe_sync.queue", table=self.table, type_column=self.type_column
        )

    def claim_query(self) -> bytes:
        claim = self.query("claim")
        return claim if self.compose_claim is None else self.compose_claim(claim)


class Store(Protocol):
    """One queue table, shared by every worker of every daemon.

    A row is ``pending`` (due at ``next_attempt_at``), ``processing`` (claimed:
    ``locked_by`` a worker until ``locked_until``), or finished. Every call that
    changes a claimed row names the ``worker`` and changes the row only while
    that worker still holds it, so a worker whose lease lapsed cannot overwrite
    the work of the one that took the row over. Failures of the database raise
    one of :data:`DATABASE_ERRORS`.
    """

    spec: QueueSpec

    async def claim(self, limit: int, worker: str, lease: float) -> list[Job]:
        """Up to ``limit`` due rows, oldest first, made ``processing`` for ``lease``
        seconds with the attempt counted; rows another worker holds are skipped."""
        ...

    async def next_due(self) -> float | None:
        """Seconds until the next pending row is due (≤ 0: due now); None when none is."""
        ...

    async def renew(self, ids: Collection[int], worker: str, lease: float) -> None:
        """Extend the leases of these claims to ``lease`` seconds from now."""
        ...

    async def finish(
        self,
        job_id: int,
        worker: str,
        status: str,
        note: str | None,
        apply: Apply | None,
        written: Written | None = None,
    ) -> None:
        """Record ``status`` and ``note`` (last_error is cleared) together with ``apply``'s
        writes or ``written`` (with both, ``written`` is ``apply``'s writes as data:
        either is recorded, see ``Done``), atomically; raise :class:`LeaseLost`,
        keeping none of them, when the row is no longer this worker's, and
        :class:`PermanentError` when the pipeline refuses ``written``."""
        ...

    async def fail(self, job_id: int, worker: str, error: str) -> None:
        """Record the row ``failed`` with ``error``; nothing if it is no longer ours."""
        ...

    async def retry(self, job_id: int, worker: str, error: str, delay: float) -> None:
        """Pending again, due in ``delay`` seconds, ``error`` kept; nothing if not ours."""
        ...

    async def release(self, ids: Collection[int], worker: str) -> None:
        """Hand unfinished claims back: pending, due now, the attempt not counted."""
        ...

    async def reclaim_expired(self) -> int:
        """Claims of any worker whose lease lapsed become pending and due now; how many."""
        ...


class PostgresStore:
    """:class:`Store` on a PostgreSQL queue table: one pooled statement per call,
    including ``finish`` when the completion is data (no writes, or a mapping),
    shared with other completions when the queue allows it
    (:attr:`QueueSpec.group_commit`); a transaction when it has ``apply``."""

    def __init__(self, spec: QueueSpec, pool: AsyncConnectionPool) -> None:
        self.spec = spec
        self.pool = pool
        self.completions = GroupCommit(pool, self._finish_rows, spec.group_leads)

    async def claim(self, limit: int, worker: str, lease: float) -> list[Job]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                self.spec.claim_query(), {"limit": limit, "worker": worker, "lease": lease}
            )
            return [Job(*row) for row in await cur.fetchall()]

    async def next_due(self) -> float | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(self.spec.query("next_due"))
            row = await cur.fetchone()
            return None if row is None or row[0] is None else float(row[0])

    async def renew(self, ids: Collection[int], worker: str, lease: float) -> None:
        await self._run("renew", {"ids": list(ids), "worker": worker, "lease": lease})

    async def finish(
        self,
        job_id: int,
        worker: str,
        status: str,
        note: str | None,
        apply: Apply | None,
        written: Written | None = None,
    ) -> None:
        if apply is None:
            row = Finished(job_id, worker, status, note, written)
            if self.spec.group_commit:
                # One statement per group of writes (a mapping family), or none.
                await self.completions.run_row(row, written and written.group)
                return
            async with self.pool.connection() as conn:
                [error] = await self._finish_rows(conn, [row])
            if error is not None:
                raise error
            return
        if written is not None and self.spec.group_commit:
            # apply's writes as data: recorded with its group's in the pipeline's
            # statement, or through apply if that statement declines the row.
            await self.completions.run_row(
                Finished(job_id, worker, status, note, written),
                written.group,
                (apply, Finished(job_id, worker, status, note, None)),
            )
            return
        if self.spec.group_commit:
            # The apply, then the row's status with those of its group in one
            # finish_rows, all in the group's transaction: a lost lease rolls
            # the group back, and each row is redone alone (group_commit.py).
            await self.completions.run(apply, Finished(job_id, worker, status, note, None))
            return
        async with self.pool.connection() as conn, conn.transaction():
            await apply(conn)
            cur = await conn.execute(
                self.spec.query("finish"),
                {"id": job_id, "worker": worker, "status": status, "note": note, "error": None},
            )
            if cur.rowcount != 1:
                raise LeaseLost(job_id)  # rolls back apply

    async def _finish_rows(
        self, conn: AsyncConnection[Any], rows: Sequence[Finished]
    ) -> list[Exception | None]:
        """Rows that write nothing, or writes of one group, in one statement;
        each row's error: LeaseLost, or the pipeline's refusal of its write."""
        first = rows[0].written
        if first is not None:
            assert self.spec.record_written is not None, f"{self.spec.name}: no record_written"
            assert all(r.written is not None and r.written.group == first.group for r in rows)
            return await self.spec.record_written(conn, rows)
        if len(rows) == 1:
            # One row alone (a lone completion, or a group redone row by row):
            # the scalar finish, as psycopg dumps arrays in Python (client CPU
            # 0.11 vs 0.16 ms per statement here).
            [r] = rows
            cur = await conn.execute(
                self.spec.query("finish"),
                {"id": r.id, "worker": r.worker, "status": r.status, "note": r.note, "error": None},
            )
            return [None if cur.rowcount == 1 else LeaseLost(r.id)]
        cur = await conn.execute(self.spec.query("finish_rows"), finished_params(rows))
        done = {id_ for (id_,) in await cur.fetchall()}
        return [None if r.id in done else LeaseLost(r.id) for r in rows]

    async def fail(self, job_id: int, worker: str, error: str) -> None:
        await self._run(
            "finish",
            {"id": job_id, "worker": worker, "status": "failed", "note": None, "error": error},
        )

    async def retry(self, job_id: int, worker: str, error: str, delay: float) -> None:
        await self._run("retry", {"id": job_id, "worker": worker, "error": error, "delay": delay})

    async def release(self, ids: Collection[int], worker: str) -> None:
        await self._run("release", {"ids": list(ids), "worker": worker})

    async def reclaim_expired(self) -> int:
        return await self._run("reclaim_expired", {})

    async def _run(self, name: str, params: dict[str, Any]) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(self.spec.query(name), params)
            return cur.rowcount


def finished_params(rows: Sequence[Finished]) -> dict[str, Any]:
    """The arrays every grouped finish statement takes: row i is one completion."""
    return {
        "ids": [r.id for r in rows],
        "workers": [r.worker for r in rows],
        "statuses": [r.status for r in rows],
        "notes": [r.note for r in rows],
    }
