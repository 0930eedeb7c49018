"""Why rows wait and how long applying takes, for ``stripe-sync status``: the
pending rows' reasons (their last_error, counted), the age of the oldest since
it arrived, when waiting is a problem (STRIPE_SYNC_WAIT_ALARM), and the apply
lag of recent rows as percentiles, first tries apart from retried rows."""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg

from ..db import queries
from .queue_counts import QueueRow


class Reason(msgspec.Struct):
    """Pending rows of one queue that wait for one reason (their last_error,
    Stripe ids blanked; None: not tried yet)."""

    reason: str | None
    count: int
    oldest_seconds: float  # since the oldest of them arrived
    # Since the oldest of them that was tried arrived (None: none was): a row in
    # backoff, not a new one nor one `stripe-sync retry` just made due again.
    oldest_tried_seconds: float | None = None


class Waiting(msgspec.Struct):
    """Why a queue's pending rows wait: the reasons of at most 10,000 of them,
    the most common first (sql/ops.sql, waiting)."""

    queue: str
    oldest_seconds: float  # since the oldest pending row arrived
    reasons: list[Reason]


class Lag(msgspec.Struct):
    """Seconds from arrival to applied of the rows a queue finished in the last
    hour (at most 1,000): first tries, or rows that were retried."""

    queue: str
    retried: bool
    rows: int
    p50: float
    p95: float
    p99: float
    max: float


async def read_apply_lag(conn: psycopg.AsyncConnection[Any]) -> list[Lag]:
    """Per queue, first tries then retried rows (sql/ops.sql, apply_lag)."""
    return [Lag(*r) for r in await (await conn.execute(queries("ops")["apply_lag"])).fetchall()]


async def read_waiting(conn: psycopg.AsyncConnection[Any]) -> list[Waiting]:
    """Per queue with pending rows, why they wait (sql/ops.sql, waiting)."""
    found = await (await conn.execute(queries("ops")["waiting"])).fetchall()
    by_queue: dict[str, Waiting] = {}
    for queue, oldest, *reason in found:
        by_queue.setdefault(queue, Waiting(queue, oldest, [])).reasons.append(Reason(*reason))
    return list(by_queue.values())


def waited_too_long(rows: list[QueueRow], waiting: list[Waiting], alarm: float) -> list[str]:
    """Per queue, the one problem of rows waiting longer than ``alarm``: a due row
    (no daemon keeps up), else a row in backoff since it arrived (retried too long).
    Rows new or made due again are not in backoff: the due age covers them."""
    if not alarm:
        return []
    found = {
        r.queue: f"{r.queue}: the oldest due row waits {age(r.oldest_due_seconds)}"
        for r in rows
        if (r.oldest_due_seconds or 0) > alarm
    }
    for w in waiting:
        tried = [r for r in w.reasons if r.oldest_tried_seconds is not None]
        oldest = max(tried, key=lambda r: r.oldest_tried_seconds or 0.0, default=None)
        if w.queue in found or oldest is None or (oldest.oldest_tried_seconds or 0.0) <= alarm:
            continue
        found[w.queue] = (
            f"{w.queue}: a row retried with backoff has waited {age(oldest.oldest_tried_seconds)} "
            f"since it arrived (STRIPE_SYNC_WAIT_ALARM {age(alarm)}), on: "
            f"{oldest.reason or 'no error recorded'}"
        )
    return list(found.values())


def age(seconds: float | None) -> str:
    """A duration as people read it: 850 ms, 12.5 s, 4m 10s, 3h 20m, 2d 5h."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    for unit, size, sub, sub_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if seconds >= size:
            rest = int(seconds % size // sub_size)
            return f"{int(seconds // size)}{unit}" + (f" {rest}{sub}" if rest else "")
    raise AssertionError("unreachable")
