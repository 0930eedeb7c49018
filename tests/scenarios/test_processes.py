"""STRIPE_SYNC_PROCESSES: one `stripe-sync run` as several daemon processes
sharing the webhook port and the queues (processes.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from stripe_emulator.server import EmulatorServer

from daemons import WEBHOOK_SECRET, DaemonProcess
from daemons import poll as wait_until
from webhook_helpers import event, sign

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def service(dsn: str, emulator: EmulatorServer) -> Iterator[DaemonProcess]:
    d = DaemonProcess(
        dsn,
        emulator.base_url,
        STRIPE_SYNC_PROCESSES=3,
        STRIPE_SYNC_RATE_LIMIT=90,
        STRIPE_SYNC_CONCURRENCY=8,
        STRIPE_SYNC_LOG_FORMAT="json",
    )
    yield d.start()
    d.stop()
    for pid in _started_by(d):  # never left behind by a failing test
        os.kill(pid, signal.SIGKILL)


def _started_by(d: DaemonProcess) -> list[int]:
    assert d.proc is not None
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == d.proc.pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cpu(pid: int) -> float:
    """Seconds of CPU (user + system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sockets(pid: int) -> set[str]:
    return {
        os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir() if "socket" in os.readlink(fd)
    }


def _all_ready(d: DaemonProcess) -> list[int]:
    """The processes the first started, once all three have said they are ready."""
    wait_until(lambda: sum(r["msg"] == "ready" for r in _logs(d)) == 3)
    others = _started_by(d)
    assert len(others) == 2
    return others


def _logs(d: DaemonProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in d.output().splitlines() if line.startswith("{")]


def test_processes_share_the_port_and_the_queues(
    service: DaemonProcess, conn: Conn, emulator: EmulatorServer
) -> None:
    assert service.proc is not None
    others = _all_ready(service)
    # Each holds the socket the first bound: the kernel hands connections to any.
    listening = _sockets(service.proc.pid)
    assert all(listening & _sockets(pid) for pid in others)
    # Every process is a whole daemon: its own LISTEN connection ...
    wait_until(
        lambda: (
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = 'stripe-sync/listen' AND datname = current_database()"
            ).fetchone()
            == (3,)
        )
    )
    # ... and a third of the rate limit.
    starting = [r for r in _logs(service) if r["msg"] == "starting"]
    assert sorted(r["rate_limit"] for r in starting) == [30, 30, 30], starting

    before = {pid: _cpu(pid) for pid in [service.proc.pid, *others]}
    conn.execute(
        "INSERT INTO billing.accounts (email) "
        "SELECT 'u' || g || '@example.com' FROM generate_series(1, 120) g"
    )
    conn.execute("SELECT integration.seed_outbox()")
    events = [
        event(
            "customer.updated", {"id": f"cus_{i}", "object": "customer"}, created=int(time.time())
        )
        for i in range(60)
    ]
    for evt in events:  # a connection each, as Stripe's deliveries come
        body = json.dumps(evt).encode()
        answer = httpx.post(
            f"{service.url}/webhooks/stripe",
            content=body,
            headers={"stripe-signature": sign(body, WEBHOOK_SECRET)},
        )
        assert answer.status_code == 200, answer.text
    wait_until(
        lambda: (
            dict(
                conn.execute(
                    "SELECT status, count(*) FROM integration.outbox GROUP BY 1"
                ).fetchall()
            )
            == {"done": 120}
        ),
        timeout=60,
    )
    assert emulator.emulator.count("customers") == 120
    stored = conn.execute(
        "SELECT count(*) FROM integration.webhook_events WHERE status <> 'pending'"
    ).fetchone()
    assert stored == (60,)
    # The work was shared: each process spent CPU on it (an idle one spends ~none).
    spent = {pid: _cpu(pid) - before[pid] for pid in [service.proc.pid, *others]}
    assert all(seconds > 0.05 for seconds in spent.values()), spent

    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0, service.output()
    assert not any(_alive(pid) for pid in others)


def test_a_process_that_dies_stops_the_service(service: DaemonProcess) -> None:
    [victim, _] = _all_ready(service)
    os.kill(victim, signal.SIGKILL)
    assert service.wait(30) == 1
    assert f"process {victim} exited with -9" in service.output()
    assert not _started_by(service) or not any(_alive(p) for p in _started_by(service))


def test_the_others_die_with_the_first(service: DaemonProcess) -> None:
    others = _all_ready(service)
    service.signal(signal.SIGKILL)
    service.wait(10)
    wait_until(lambda: not any(_alive(pid) for pid in others), timeout=30)
