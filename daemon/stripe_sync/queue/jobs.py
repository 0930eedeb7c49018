"""What a handler sees and answers: the types every outbox executor and webhook
handler imports.

The worker (``worker.py``) hands each claimed row to its queue's
:data:`Handler` as a :class:`Job`; the handler answers :class:`Done`, with its
own writes committed together with the row's status — as data,
:class:`Written` (an outbox row's mapping), recorded by its pipeline's
statement, or as an :data:`Apply` callback (a webhook handler's) — or raises one
of the errors in ``errors.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from psycopg import AsyncConnection


class Job(NamedTuple):
    id: int
    type: str  # what to do: the row's action_type or event_type
    attempts: int  # including this one
    payload: str  # raw JSON text: handlers decode it straight into msgspec Structs
    # What the claim read for the handler (JSON text), if its queue's claim does:
    # the outbox's, the MC row its payload names with its mapping (sql/outbox.sql).
    loaded: str | None = None


Apply = Callable[[AsyncConnection[Any]], Awaitable[None]]
"""A completion's writes as statements, run in the transaction that records it."""


class Written(Protocol):
    """A completion's writes as data, recorded in the statement that marks its row
    done (the pipeline's ``QueueSpec.record_written``): completions of one
    ``group`` that finish together share that statement."""

    @property
    def group(self) -> Hashable: ...


@dataclass(frozen=True)
class Done:
    """A handler's success: ``apply`` runs in the transaction that records it;
    ``written`` is recorded in the statement that records it. With both,
    ``written`` is ``apply``'s writes as data: a store that groups completions
    records it in its pipeline's statement, which may decline a row
    (:class:`Declined`), and that row is then recorded through ``apply``; any
    other caller (the backfill, a test) just runs ``apply``."""

    apply: Apply | None = None
    status: str | None = None  # default: the queue's done status
    note: str | None = None  # kept in the row's note, e.g. why an event was ignored
    written: Written | None = None


class Declined(Exception):
    """A pipeline's statement did not record this row's writes as data (a
    webhook's mapping changed in a way only its ``apply`` handles): it is
    recorded through the ``apply`` it came with, in a transaction of its own."""


Handler = Callable[[Job], Awaitable[Done]]
