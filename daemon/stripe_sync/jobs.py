"""What a handler sees and answers: the types every outbox executor and webhook
handler imports.

The worker (``worker.py``) hands each claimed row to its queue's
:data:`Handler` as a :class:`Job`; the handler answers :class:`Done` (with an
optional :data:`Apply`: its own writes, committed in the transaction that
records the row) or raises one of the errors in ``errors.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from psycopg import AsyncConnection


class Job(NamedTuple):
    id: int
    kind: str  # action_type or event_type
    attempts: int  # including this one
    payload: str  # raw JSON text: handlers decode it straight into msgspec Structs


Apply = Callable[[AsyncConnection[Any]], Awaitable[None]]


@dataclass(frozen=True)
class Done:
    """A handler's success: ``apply`` runs in the transaction that records it."""

    apply: Apply | None = None
    status: str | None = None  # default: the queue's done status
    note: str | None = None  # kept in the row's note, e.g. why an event was ignored


Handler = Callable[[Job], Awaitable[Done]]
