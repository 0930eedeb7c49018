"""``stripe-sync seed``, ``retry`` and ``replay``: what an operator does to the
queues, each an async collect (one connection, the SQL of ``sql/ops.sql``)
whose result renders as text or JSON and names its exit code."""

from __future__ import annotations

from typing import Literal, TextIO

from .db import connect, queries
from .outcome import Record

Table = Literal["outbox", "webhooks"]


class Seeded(Record):
    enqueued: int

    @property
    def exit_code(self) -> int:
        return 0

    def render(self, out: TextIO, err: TextIO) -> None:
        print(f"enqueued {self.enqueued} outbox row(s) for MC rows without a mapping", file=out)


async def seed(dsn: str) -> Seeded:
    async with connect(dsn, "seed") as conn:
        row = await (await conn.execute(queries("ops")["seed"])).fetchone()
    return Seeded(int(row[0]) if row and row[0] is not None else 0)


class Retried(Record):
    table: Table
    due_again: list[int]
    # Asked for by id but not retried: no such row, or not failed.
    not_retried: list[int]

    @property
    def exit_code(self) -> int:
        return 1 if self.not_retried else 0

    def render(self, out: TextIO, err: TextIO) -> None:
        done = ", ".join(map(str, self.due_again)) or "-"
        print(f"{len(self.due_again)} {self.table} row(s) due again: {done}", file=out)
        if self.not_retried:
            missing = ", ".join(map(str, self.not_retried))
            print(f"not retried (no such row, or not failed): {missing}", file=err)


async def retry(dsn: str, table: Table, ids: list[int], *, all_failed: bool) -> Retried:
    """Failed rows (by id, or all) due again with a fresh retry budget."""
    query = queries("ops")["retry_outbox" if table == "outbox" else "retry_webhooks"]
    async with connect(dsn, "retry") as conn:
        cur = await conn.execute(query, {"ids": ids, "all_failed": all_failed})
        done = sorted(int(r[0]) for r in await cur.fetchall())
    return Retried(table, done, sorted(set(ids) - set(done)))


class Replayed(Record):
    asked: list[str]
    queued: list[str]

    @property
    def exit_code(self) -> int:
        return 0 if set(self.queued) == set(self.asked) else 1

    def render(self, out: TextIO, err: TextIO) -> None:
        for event_id in self.asked:
            if event_id in self.queued:
                print(f"{event_id}: queued for replay", file=out)
            else:
                print(f"{event_id}: not stored (or being processed right now)", file=out)


async def replay(dsn: str, event_ids: list[str]) -> Replayed:
    """Stored webhook events pending again, to be applied once more."""
    async with connect(dsn, "replay") as conn:
        cur = await conn.execute(queries("ops")["replay"], {"ids": event_ids})
        queued = {str(r[0]) for r in await cur.fetchall()}
    return Replayed(event_ids, [e for e in event_ids if e in queued])
