"""GroupCommit's hand-over of leads, step by step on a fake pool: a completion
reports back only once its own group has settled it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint

from stripe_sync.queue.group_commit import GroupCommit

pytestmark = pytest.mark.anyio


class FakeConn:
    broken = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def execute(self, query: Any, params: Any = None) -> None:
        await checkpoint()


class FakePool:
    @asynccontextmanager
    async def connection(self) -> AsyncIterator[FakeConn]:
        yield FakeConn()


async def no_rows(conn: Any, rows: Any) -> list[Exception | None]:
    raise AssertionError("no data completions here")


async def test_a_lead_handed_to_a_completion_another_leader_took_waits_for_that_group() -> None:
    """A and B lead (two leads); C queues. A's end hands its lead to C; before C
    runs, B's end frees a lead and newcomer D takes it, and the queue: C with
    it. C must not report back until D's group has settled it (there, refused)."""
    commits = GroupCommit(FakePool(), no_rows, max_leaders=2)  # type: ignore[arg-type]
    gates = {name: anyio.Event() for name in "ABCD"}
    returned: dict[str, str] = {}

    def record(name: str) -> Any:
        async def run(conn: Any) -> None:
            await gates[name].wait()
            if name == "C":
                raise RuntimeError("C refused")

        return run

    async def complete(name: str) -> None:
        try:
            await commits.run(record(name))
        except RuntimeError as exc:
            returned[name] = str(exc)
        else:
            returned[name] = "recorded"

    async with anyio.create_task_group() as tg:
        for name in "ABC":
            tg.start_soon(complete, name)
            await anyio.wait_all_tasks_blocked()
        # In one step, so that C runs last: A ends (its lead goes to C), B ends
        # (no one queued without a lead: its lead is freed), D arrives.
        gates["A"].set()
        gates["B"].set()
        tg.start_soon(complete, "D")
        await anyio.wait_all_tasks_blocked()
        assert "C" not in returned, "C reported back while its group was still open"
        gates["C"].set()
        gates["D"].set()
    assert returned == {"A": "recorded", "B": "recorded", "C": "C refused", "D": "recorded"}
