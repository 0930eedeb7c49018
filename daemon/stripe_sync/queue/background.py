"""One idiom for the daemon's long-running services (the queue's Worker, the
webhooks' Ingestor): ``async with in_background(service):`` runs it for the block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

import anyio
import anyio.abc


class Service(Protocol):
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = ...) -> None:
        """Runs until stopped; reports started through ``task_status``."""
        ...

    def stop(self) -> None:
        """Asks ``run`` to finish (what it finishes first is the service's business)."""
        ...


S = TypeVar("S", bound=Service)


@asynccontextmanager
async def in_background(service: S) -> AsyncIterator[S]:
    """Run ``service`` for the block; leaving it stops the service and waits for it."""
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        try:
            yield service
        finally:
            service.stop()
