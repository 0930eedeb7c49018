"""The outbox's queue: its table, its claim, and how its completions write
their mappings — what the outbox hands the queue engine (``queue/``).

The claim is queue.sql's, wrapped by ``claim`` of ``sql/outbox.sql``, which
also reads for each claimed row what its executor reads first (``Job.loaded``).
A completion's mapping (:class:`~..mappings.MappingWrite`) is data: the
completions of one family that finish together are one ``finish_mapped``
statement.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

from psycopg import AsyncConnection, sql

from ..db import queries
from ..errors import LeaseLost, PermanentError
from ..mappings import MappingWrite
from ..queue.store import Finished, QueueSpec, finished_params


@cache
def compose_claim(queue_claim: bytes) -> bytes:
    """The ``claim`` of ``sql/outbox.sql``: ``{queue_claim}`` in it is queue.sql's
    claim, and each ``{load_x}`` the query ``load_x``, reading the claimed row's
    ``r.mc_id`` where the load alone takes ``%(id)s``: one text of each, used in
    the claim and alone."""
    text = queries("outbox")["claim"]
    loads = {
        name: sql.SQL(queries("outbox")[name].replace("%(id)s", "r.mc_id"))
        for name in re.findall(r"\{(load_\w+)\}", text)
    }
    return sql.SQL(text).format(queue_claim=sql.SQL(queue_claim.decode()), **loads).as_bytes()


async def record_mappings(
    conn: AsyncConnection[Any], rows: Sequence[Finished]
) -> list[Exception | None]:
    """Completions writing mappings of one family, in one ``finish_mapped``:
    each row's error, LeaseLost or a PermanentError for a refused mapping."""
    writes = [r.written for r in rows]
    assert all(isinstance(w, MappingWrite) for w in writes)
    mappings: list[MappingWrite] = writes  # type: ignore[assignment]
    params = finished_params(rows)
    params["mc_ids"] = [m.mc_id for m in mappings]
    params["stripe_ids"] = [m.stripe_id for m in mappings]
    params["map_statuses"] = [m.status for m in mappings]
    cur = await conn.execute(mappings[0].family.query("outbox", "finish_mapped"), params)
    answers = await cur.fetchall()
    ours = {id_ for id_, _ in answers}
    done = {id_ for id_, written in answers if written}
    return [
        None if r.id in done else PermanentError(m.refused()) if r.id in ours else LeaseLost(r.id)
        for r, m in zip(rows, mappings, strict=True)
    ]


OUTBOX = QueueSpec(
    "outbox",
    "integration.outbox",
    "action_type",
    "stripe_sync_outbox",
    "done",
    group_commit=True,
    # Its completions are one statement per group (docs/benchmarks.md, issue 11).
    group_leads=1,
    compose_claim=compose_claim,
    record_written=record_mappings,
)
