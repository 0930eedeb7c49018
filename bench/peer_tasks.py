"""The procrastinate app the peer worker runs (``procrastinate --app=peer_tasks.app``).

Its database comes from BENCH_PEER_DSN. ``noop`` does nothing (the
drain); ``probe`` appends "<i> <time.monotonic()>" to BENCH_PEER_PROBES
the moment it starts, so the harness can time defer → start the way it times
our COMMIT → Stripe request.
"""

from __future__ import annotations

import os
import time

import procrastinate

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("BENCH_PEER_DSN", ""))
)
_probes = os.environ.get("BENCH_PEER_PROBES")
_fd = os.open(_probes, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if _probes else None


@app.task(name="noop")
async def noop() -> None:
    return None


@app.task(name="probe")
async def probe(i: int) -> None:
    if _fd is not None:
        os.write(_fd, f"{i} {time.monotonic()}\n".encode())
