"""What a handler sees and answers: the types every outbox executor and webhook
handler imports.

The worker (``worker.py``) hands each claimed row to its queue's
:data:`Handler` as a :class:`Job`; the handler answers :class:`Done`, with its
own writes committed together with the row's status (an outbox row's mapping
as data, :class:`~.mappings.MappingWrite`; a webhook handler's as an
:data:`Apply` callback), or raises one of the errors in ``errors.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from psycopg import AsyncConnection

from ..mappings import MappingWrite


class Job(NamedTuple):
    id: int
    kind: str  # action_type or event_type
    attempts: int  # including this one
    payload: str  # raw JSON text: handlers decode it straight into msgspec Structs
    # What the claim read for the handler (JSON text), if its queue's claim does:
    # the outbox's, the MC row its payload names with its mapping (sql/outbox.sql).
    loaded: str | None = None


Apply = Callable[[AsyncConnection[Any]], Awaitable[None]]


@dataclass(frozen=True)
class Done:
    """A handler's success: ``apply`` runs in the transaction that records it;
    ``mapping`` is written in the statement that records it (one or the other)."""

    apply: Apply | None = None
    status: str | None = None  # default: the queue's done status
    note: str | None = None  # kept in the row's note, e.g. why an event was ignored
    mapping: MappingWrite | None = None

    def __post_init__(self) -> None:
        assert self.apply is None or self.mapping is None, "Done: apply or mapping, not both"


Handler = Callable[[Job], Awaitable[Done]]
