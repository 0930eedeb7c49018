"""The rows per queue and status that ``stripe-sync status`` and every metrics
scrape read: cheap at any table size.

Apart from ``status.py`` so that the daemon, which serves the metrics, does not
import what only the command prints with (rich: ~1.9 MB of the daemon's idle
RSS, docs/benchmarks.md, issue 11).
"""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg

from ..db import queries


class QueueRow(msgspec.Struct):
    """Rows of one status, or (``finished``, ``estimated``) all the finished
    rows of the queue from the statistics counters: never read one by one."""

    queue: str
    status: str
    count: int
    oldest_due_seconds: float | None
    estimated: bool = False


async def queue_rows(conn: psycopg.AsyncConnection[Any]) -> list[QueueRow]:
    """One row per queue and status (finished rows estimated, see :class:`QueueRow`)."""
    cur = await conn.execute(queries("ops")["queue_counts"])
    return [QueueRow(*r) for r in await cur.fetchall()]
