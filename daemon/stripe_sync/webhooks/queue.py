"""The webhook queue as the queue engine (``queue/``) sees it: its table and
channel. Its claim is queue.sql's, wrapped by ``claim`` of sql/webhooks.sql,
which also reads for each event what the worker's preload needs
(``Job.loaded``: execute.Claimed). Its handlers' writes are statements
(``Done.apply``), recorded in the group's transaction, except ``confirm``'s
(customers, products, prices), which come as data as well
(:class:`~.common.ConfirmWrite`): the events of one family that finish
together are one ``confirm_rows`` statement, mapping marks and finishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from psycopg import AsyncConnection, sql

from ..db import queries
from ..errors import LeaseLost
from ..queue.jobs import Declined
from ..queue.store import Finished, QueueSpec, finished_params
from .common import ConfirmWrite


async def record_confirms(
    conn: AsyncConnection[Any], rows: Sequence[Finished]
) -> list[Exception | None]:
    """Events confirming mappings of one family, in one ``confirm_rows``: each
    row's error, LeaseLost, or Declined when its apply must record it."""
    writes = [r.written for r in rows]
    assert all(isinstance(w, ConfirmWrite) for w in writes)
    confirms: list[ConfirmWrite] = writes  # type: ignore[assignment]
    params = finished_params(rows)
    params["stripe_ids"] = [w.stripe_id for w in confirms]
    params["mc_ids"] = [w.mc_id for w in confirms]
    params["map_statuses"] = [w.status for w in confirms]
    params["created"] = [w.key.created for w in confirms]
    params["ranks"] = [w.key.rank for w in confirms]
    params["event_ids"] = [w.key.event_id for w in confirms]
    params["currents"] = [w.current for w in confirms]
    params["asks"] = [w.ask for w in confirms]
    params["defaults"] = [w.default for w in confirms]
    cur = await conn.execute(confirms[0].family.query("webhooks", "confirm_rows"), params)
    answers = await cur.fetchall()
    ours = {id_ for id_, _ in answers}
    done = {id_ for id_, marked in answers if marked}
    return [None if r.id in done else Declined() if r.id in ours else LeaseLost(r.id) for r in rows]


@cache
def compose_claim(queue_claim: bytes) -> bytes:
    """The ``claim`` of sql/webhooks.sql around queue.sql's (``{queue_claim}`` in it)."""
    text = queries("webhooks")["claim"]
    return sql.SQL(text).format(queue_claim=sql.SQL(queue_claim.decode())).as_bytes()


WEBHOOKS = QueueSpec(
    "webhooks",
    "integration.webhook_events",
    "event_type",
    "stripe_sync_webhooks",
    "processed",
    group_commit=True,
    # One group at a time: most groups are now one confirm_rows statement, and
    # one lead makes them larger (docs/benchmarks.md, issue 27, round 3).
    group_leads=1,
    compose_claim=compose_claim,
    record_written=record_confirms,
)
