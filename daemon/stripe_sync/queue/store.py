"""The queue tables as the worker sees them: every SQL call of the queue behind
one small interface, :class:`Store`, and its PostgreSQL implementation,
:class:`PostgresStore` (the SQL is in ``sql/queue.sql``).

:class:`QueueSpec` names a queue table: :data:`OUTBOX` and :data:`WEBHOOKS`.

The worker only says what happened — claim due rows, renew these leases, this
row is done together with these writes, retry that one later, hand these
back — and never how it becomes statements. So :class:`PostgresStore` records
completions that finish together in one statement or transaction
(``group_commit.py``) and chooses ``synchronous_commit`` per statement
(``sql/queue.sql``) without the worker's rules changing. ``tests/fake_store.py``
honours the same contract in memory, for fast unit tests of the worker.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple, Protocol

import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from ..db import bound_query, queries
from ..errors import LeaseLost, PermanentError, one_line
from ..mappings import MappingWrite
from .group_commit import GroupCommit
from .jobs import Apply, Job

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


@cache
def _outbox_claim(module: str, queue_claim: bytes) -> bytes:
    """The ``claim`` of ``sql/<module>.sql``: ``{queue_claim}`` in it is queue.sql's
    claim, and each ``{load_x}`` that module's query ``load_x``, reading the claimed
    row's ``r.mc_id`` where the load alone takes ``%(id)s``: one text of each, used
    in the claim and alone."""
    text = queries(module)["claim"]
    loads = {
        name: sql.SQL(queries(module)[name].replace("%(id)s", "r.mc_id"))
        for name in re.findall(r"\{(load_\w+)\}", text)
    }
    return sql.SQL(text).format(queue_claim=sql.SQL(queue_claim.decode()), **loads).as_bytes()


@dataclass(frozen=True)
class QueueSpec:
    name: str  # in logs: "outbox" or "webhooks"
    table: str  # schema-qualified
    kind: str  # the column that says what to do: action_type or event_type
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
    # without queueing behind BEGIN/COMMIT round trips; a webhook group is a
    # transaction of several statements, so three run side by side
    # (docs/benchmarks.md, issue 11: steps 3 and 10).
    group_leads: int = 3
    # Where its claim is: queue.sql's, or the outbox's own (sql/outbox.sql),
    # which also reads what each row's executor needs first (Job.loaded).
    claim_module: str = "queue"

    def query(self, name: str) -> bytes:
        return bound_query("queue", name, "stripe_sync.queue", table=self.table, kind=self.kind)

    def claim_query(self) -> bytes:
        if self.claim_module == "queue":
            return self.query("claim")
        return _outbox_claim(self.claim_module, self.query("claim"))


OUTBOX = QueueSpec(
    "outbox",
    "integration.outbox",
    "action_type",
    "stripe_sync_outbox",
    "done",
    group_commit=True,
    group_leads=1,
    claim_module="outbox",
)
WEBHOOKS = QueueSpec(
    "webhooks",
    "integration.webhook_events",
    "event_type",
    "stripe_sync_webhooks",
    "processed",
    group_commit=True,
)


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
        mapping: MappingWrite | None = None,
    ) -> None:
        """Record ``status`` and ``note`` (last_error is cleared) together with ``apply``'s
        writes or ``mapping`` (at most one of them), atomically; raise :class:`LeaseLost`,
        keeping none of them, when the row is no longer this worker's, and
        :class:`PermanentError` when the mapping names another Stripe object."""
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


class Finished(NamedTuple):
    """A completion as data: one row of ``finish_rows`` / ``finish_mapped``."""

    id: int
    worker: str
    status: str
    note: str | None
    mapping: MappingWrite | None


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
        mapping: MappingWrite | None = None,
    ) -> None:
        if apply is None:
            row = Finished(job_id, worker, status, note, mapping)
            if self.spec.group_commit:
                # One statement per kind of mapping written: its family, or none.
                await self.completions.run_row(row, mapping and mapping.family)
                return
            async with self.pool.connection() as conn:
                [error] = await self._finish_rows(conn, [row])
            if error is not None:
                raise error
            return
        assert mapping is None, "finish: apply or mapping, not both"
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
        """Rows that write no mapping or one of one family, in one statement;
        each row's error: LeaseLost, or PermanentError for a refused mapping."""
        first = rows[0].mapping
        if first is None and len(rows) == 1:
            # One row alone (a lone completion, or a group redone row by row):
            # the scalar finish, as psycopg dumps arrays in Python (client CPU
            # 0.11 vs 0.16 ms per statement here).
            [r] = rows
            cur = await conn.execute(
                self.spec.query("finish"),
                {"id": r.id, "worker": r.worker, "status": r.status, "note": r.note, "error": None},
            )
            return [None if cur.rowcount == 1 else LeaseLost(r.id)]
        params: dict[str, Any] = {
            "ids": [r.id for r in rows],
            "workers": [r.worker for r in rows],
            "statuses": [r.status for r in rows],
            "notes": [r.note for r in rows],
        }
        if first is None:
            cur = await conn.execute(self.spec.query("finish_rows"), params)
            done = {id_ for (id_,) in await cur.fetchall()}
            ours = done
        else:
            assert all(r.mapping is not None and r.mapping.family == first.family for r in rows)
            params["mc_ids"] = [r.mapping.mc_id for r in rows if r.mapping]
            params["stripe_ids"] = [r.mapping.stripe_id for r in rows if r.mapping]
            params["map_statuses"] = [r.mapping.status for r in rows if r.mapping]
            cur = await conn.execute(first.family.query("outbox", "finish_mapped"), params)
            answers = await cur.fetchall()
            ours = {id_ for id_, _ in answers}
            done = {id_ for id_, written in answers if written}
        errors: list[Exception | None] = []
        for r in rows:
            if r.id not in ours:
                errors.append(LeaseLost(r.id))
            elif r.id not in done:
                assert r.mapping is not None
                errors.append(PermanentError(r.mapping.refused()))
            else:
                errors.append(None)
        return errors

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
