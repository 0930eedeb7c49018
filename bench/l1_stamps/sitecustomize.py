"""L1's stages inside the daemon, for ``bench/l1_stages.py`` only: loaded by the daemon's
interpreter at start (``PYTHONPATH``), it wraps the outbox worker's wake-up, its claim, the
create executor and aiohttp's request write, and appends one JSON line per created row
(``time.monotonic()`` at each) to the file named by ``L1_STAMPS``. Never part of a deployment."""

from __future__ import annotations

import contextvars
import importlib.abc
import json
import os
import sys
import time
from typing import Any

_OUT = os.environ.get("L1_STAMPS")
_job: contextvars.ContextVar[tuple[int, float] | None] = contextvars.ContextVar("job", default=None)
_wake = [0.0]
_claims: dict[int, tuple[float, float, float]] = {}


def _patch() -> None:
    import aiohttp.client_reqrep as reqrep

    from stripe_sync.outbox import common
    from stripe_sync.queue import store, worker

    wake0, claim0, create0 = worker.Worker.wake, store.PostgresStore.claim, common.Pushed.create
    write0 = reqrep.ClientRequest.write_bytes

    def wake(self: Any, cause: str = "notify") -> None:
        if cause == "notify" and self.spec.name == "outbox":
            _wake[0] = time.monotonic()
        wake0(self, cause)

    async def claim(self: Any, limit: int, worker_id: str, lease: float) -> Any:
        t0 = time.monotonic()
        jobs = await claim0(self, limit, worker_id, lease)
        if self.spec.name == "outbox":
            t1 = time.monotonic()
            _claims.update((job.id, (_wake[0], t0, t1)) for job in jobs)
        return jobs

    async def create(self: Any, ctx: Any, job: Any) -> Any:
        _job.set((job.id, time.monotonic()))
        return await create0(self, ctx, job)

    async def write_bytes(self: Any, *args: Any, **kwargs: Any) -> None:
        written = time.monotonic()
        await write0(self, *args, **kwargs)
        if (job := _job.get()) is not None and _OUT:
            wake, claim_sent, claimed = _claims.pop(job[0], (0.0, 0.0, 0.0))
            stamps = {"id": job[0], "wake": wake, "claim0": claim_sent, "claim1": claimed,
                      "exec": job[1], "write": written}  # fmt: skip
            with open(_OUT, "a") as out:  # noqa: ASYNC230 - after the request, bench only
                out.write(json.dumps(stamps) + "\n")

    worker.Worker.wake = wake  # type: ignore[method-assign]
    store.PostgresStore.claim = claim  # type: ignore[method-assign]
    common.Pushed.create = create  # type: ignore[method-assign]
    reqrep.ClientRequest.write_bytes = write_bytes  # type: ignore[method-assign]


class _OnDaemonImport(importlib.abc.MetaPathFinder):
    """Patches once the daemon's own module is first imported (never in other processes)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "stripe_sync.runtime.daemon":
            sys.meta_path.remove(self)
            _patch()


if _OUT:
    sys.meta_path.insert(0, _OnDaemonImport())
