"""``stripe-sync retry``, ``dismiss`` and ``replay``: what an operator does to the
queues (``seed``: link.py), each an async collect (one connection, the SQL of ``sql/ops.sql``)
whose result renders as text or JSON and names its exit code."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, NamedTuple, TextIO

from ..db import connect, queries
from ..errors import UsageError
from .outcome import Record

Table = Literal["outbox", "webhooks"]


class Rows(NamedTuple):
    """Rows an operator names the way ``status`` shows them: outbox row ids, and
    webhook events by row id or by their ``evt_`` id."""

    table: Table
    ids: list[int]
    event_ids: list[str]


def rows(raw: list[str], table: Table | None) -> Rows:
    """``raw`` ids as given; an ``evt_`` id implies the webhooks table."""
    event_ids = [r for r in raw if r.startswith("evt_")]
    bad = [r for r in raw if not r.startswith("evt_") and not r.isdigit()]
    if bad:
        raise UsageError(f"not a row id or an evt_ id: {', '.join(bad)}")
    if event_ids and table == "outbox":
        raise UsageError("evt_ ids name webhook events, not outbox rows (--table webhooks)")
    chosen: Table = "webhooks" if event_ids else (table or "outbox")
    return Rows(chosen, [int(r) for r in raw if r.isdigit()], event_ids)


class Changed(Record):
    """What ``retry`` or ``dismiss`` changed, named as the operator named them
    (an ``evt_`` id stays one); rows of ``--all-failed`` by row id."""

    verb: ClassVar[str]
    table: Table
    done: list[int | str]
    # Named but not changed: no such row, or not in a state that allows it.
    not_done: list[int | str]

    @property
    def exit_code(self) -> int:
        return 1 if self.not_done else 0

    def render(self, out: TextIO, err: TextIO) -> None:
        done = ", ".join(map(str, self.done)) or "-"
        print(f"{len(self.done)} {self.table} row(s) {self.verb}: {done}", file=out)
        if self.not_done:
            missing = ", ".join(map(str, self.not_done))
            print(f"not {self.verb} (no such row, or not failed): {missing}", file=err)


class Retried(Changed):
    verb = "due again"


class Dismissed(Changed):
    verb = "dismissed"


async def _change(
    dsn: str, query: str, target: Rows, **params: Any
) -> tuple[list[int | str], list[int | str]]:
    """Run ``{query}_{table}`` of sql/ops.sql on the rows: (changed, named but not)."""
    async with connect(dsn, query) as conn:
        cur = await conn.execute(
            queries("ops")[f"{query}_{target.table}"],
            {"ids": target.ids, "event_ids": target.event_ids, **params},
        )
        found = sorted(await cur.fetchall(), key=lambda r: int(r[0]))
    done: list[int | str] = [
        r[1] if len(r) > 1 and r[1] in target.event_ids else int(r[0]) for r in found
    ]
    asked: list[int | str] = [*target.ids, *target.event_ids]
    return done, [a for a in asked if a not in done]


async def retry(dsn: str, target: Rows, *, all_failed: bool) -> Retried:
    """Failed rows (by id, or all) due again with a fresh retry budget."""
    return Retried(target.table, *await _change(dsn, "retry", target, all_failed=all_failed))


async def dismiss(dsn: str, target: Rows, reason: str) -> Dismissed:
    """Failed rows set aside for good, with the reason; ``retry`` brings them back."""
    return Dismissed(target.table, *await _change(dsn, "dismiss", target, reason=reason))


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
