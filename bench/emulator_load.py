"""The emulator's own cost under the daemon's load: the official SDK (HTTPXClient, as the
daemon uses it) against `python -m stripe_emulator` in its own process.

Two phases per concurrency level, each on a fresh emulator state:
  create  POST /v1/customers with an idempotency key and metadata; each creates a
          customer.created event delivered to a webhook receiver in this process
          (the phase ends when every event has arrived);
  search  GET /v1/customers/search by metadata, over the customers just created.

Reports requests per second and the emulator process's CPU per request (utime + stime
from /proc/<pid>/stat): the machine is shared, so CPU per request is the honest number.

    .venv/bin/python bench/emulator_load.py [--requests 2000] [--inflight 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import stripe
from harness import API_KEY, WEBHOOK_SECRET, EmulatorProc

_TICK = os.sysconf("SC_CLK_TCK")
_SOURCE = "bench:emulator-load"


def cpu_seconds(pid: int) -> float:
    # Fields 14 and 15 (utime, stime) follow the parenthesised command name.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class Receiver:
    """A bare HTTP/1.1 webhook receiver (keep-alive, answers 200): cheap, so the driver's
    CPU goes to the SDK, and counts what arrived."""

    def __init__(self) -> None:
        self.count = 0
        self.arrived = asyncio.Event()
        self.expect = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def serve(self) -> tuple[asyncio.Server, str]:
        server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        return server, f"http://127.0.0.1:{port}/webhooks"

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        await asyncio.sleep(0.1)  # the connection tasks see EOF and end

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                self.count += 1
                if self.count >= self.expect:
                    self.arrived.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def _run(inflight: int, requests: int, op: Callable[[int], Awaitable[object]]) -> float:
    queue = iter(range(requests))

    async def worker() -> None:
        for i in queue:
            await op(i)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return time.monotonic() - started


async def measure(
    emulator: EmulatorProc, requests: int, inflight: int, phases: set[str]
) -> list[str]:
    receiver = Receiver()
    server, hook_url = await receiver.serve()
    async with httpx.AsyncClient(base_url=emulator.url) as control:
        (await control.post("/_emulator/reset")).raise_for_status()
        endpoint = {"url": hook_url, "secrets": [WEBHOOK_SECRET]}
        (await control.post("/_emulator/webhook_endpoints", json=endpoint)).raise_for_status()
    client = stripe.StripeClient(
        API_KEY,
        base_addresses={"api": emulator.url},
        http_client=stripe.HTTPXClient(),
        max_network_retries=0,
    )
    customers = client.v1.customers
    run = f"{inflight}-{time.monotonic_ns()}"

    async def create(i: int) -> object:
        return await customers.create_async(
            params={
                "email": f"load{i}@example.com",
                "metadata": {"mc_account_id": str(i), "mc_source": _SOURCE},
            },
            options={"idempotency_key": f"{run}-{i}"},
        )

    async def search(i: int) -> object:
        query = f"metadata['mc_account_id']:'{i}' AND metadata['mc_source']:'{_SOURCE}'"
        found = await customers.search_async(params={"query": query})
        assert len(found.data) == 1, (query, found)
        return found

    lines = []
    receiver.expect = requests
    for name, op in (("create + webhook", create), ("search by metadata", search)):
        if name.split()[0] not in phases:
            continue
        cpu0 = cpu_seconds(emulator.pid)
        elapsed = await _run(inflight, requests, op)
        if op is create:  # the CPU of a create includes delivering its event
            await asyncio.wait_for(receiver.arrived.wait(), 60)
        cpu = cpu_seconds(emulator.pid) - cpu0
        lines.append(
            f"{name:20} {inflight:3} in flight: {requests / elapsed:7.0f} req/s, "
            f"emulator CPU {cpu / requests * 1000:.3f} ms/request"
        )
    await receiver.close()
    server.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--inflight", default="1,16")
    parser.add_argument("--phases", default="create,search", help="a search needs the creates")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="stripe-sync-emuload-"))
    emulator = EmulatorProc(run_dir).start()
    print(f"emulator pid {emulator.pid} (for a profiler)", file=sys.stderr, flush=True)
    try:
        phases = set(args.phases.split(","))
        for inflight in (int(n) for n in args.inflight.split(",")):
            for line in asyncio.run(measure(emulator, args.requests, inflight, phases)):
                print(line, flush=True)
    finally:
        emulator.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
