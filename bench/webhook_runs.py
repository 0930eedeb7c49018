"""T2: signed customer.updated events POSTed by concurrent clients, stored and applied.

Each event names a different MC account with a customer mapping, so applying
it is real work: find the mapping, lock it, check the ordering key, update
it, and mark the event processed, in one transaction.

The client is a few lines of raw HTTP/1.1 over asyncio streams with
pre-signed, pre-serialized requests: on a 2-core machine a full HTTP client
library would eat the CPU the daemon needs and we would measure the client.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import webhook_mix
from harness import (
    WEBHOOK_SECRET,
    BenchError,
    DaemonProc,
    EmulatorProc,
    cpu_seconds,
    latency_summary,
    wait_until,
)

PENDING = (
    "SELECT NOT EXISTS (SELECT 1 FROM integration.webhook_events "
    "WHERE status IN ('pending', 'processing'))"
)


def mapped_customers(conn: psycopg.Connection[Any], n: int, tag: str) -> list[tuple[int, str]]:
    """n accounts with a synced customer mapping: (account id, Stripe customer id)."""
    rows = conn.execute(
        "WITH a AS (INSERT INTO billing.accounts (email, name) "
        "  SELECT %(tag)s || '-' || g || '@bench.example', 'Bench ' || g "
        "  FROM generate_series(1, %(n)s) g RETURNING id) "
        "INSERT INTO stripe.customer_mappings (account_id, stripe_customer_id, sync_status) "
        "SELECT id, 'cus_' || %(tag)s || lpad(id::text, 12, '0'), 'synced' FROM a "
        "RETURNING account_id, stripe_customer_id",
        {"tag": tag, "n": n},
    ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def _event(i: int, tag: str, account: int, customer: str, created: int) -> bytes:
    # The shape of a real customer.updated event (~1.2 KB), not a minimal stub.
    obj = {
        "id": customer, "object": "customer", "address": None, "balance": 0,
        "created": created - 86_400, "currency": "usd", "default_source": None,
        "delinquent": False, "description": None, "discount": None,
        "email": f"{tag}-{account}@bench.example", "invoice_prefix": f"B{account:07d}",
        "invoice_settings": {"custom_fields": None, "default_payment_method": None,
                             "footer": None, "rendering_options": None},
        "livemode": False, "metadata": {"mc_account_id": str(account)},
        "name": f"Bench {account}", "next_invoice_sequence": 1, "phone": None,
        "preferred_locales": ["en"], "shipping": None, "tax_exempt": "none",
        "test_clock": None,
    }  # fmt: skip
    event = {
        "id": f"evt_{tag}{i:010d}", "object": "event", "api_version": "2025-03-31.basil",
        "created": created, "data": {"object": obj, "previous_attributes": {"name": None}},
        "livemode": False, "pending_webhooks": 1,
        "request": {"id": f"req_{tag}{i:010d}", "idempotency_key": None},
        "type": "customer.updated",
    }  # fmt: skip
    return json.dumps(event, separators=(",", ":")).encode()


def _request(body: bytes, port: int, timestamp: int) -> bytes:
    mac = hmac.new(
        WEBHOOK_SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    head = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"User-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n"
        f"Content-Type: application/json; charset=utf-8\r\n"
        f"Stripe-Signature: t={timestamp},v1={mac}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _post_all(
    port: int, requests: Sequence[bytes], clients: int
) -> tuple[list[float], list[int], float, float]:
    """Send every request over ``clients`` keep-alive connections; latencies, statuses."""
    latencies: list[float] = [0.0] * len(requests)
    statuses: list[int] = [0] * len(requests)
    next_index = iter(range(len(requests)))

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in next_index:  # shared iterator: each request goes out once
                t0 = time.monotonic()
                writer.write(requests[i])
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise
                    # Closed before answering (Hypercorn's keep_alive_max_requests):
                    # nothing was read, so nothing was stored; reconnect and resend.
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    t0 = time.monotonic()
                    writer.write(requests[i])
                    head = await reader.readuntil(b"\r\n\r\n")
                length, close = 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                await reader.readexactly(length)
                latencies[i] = time.monotonic() - t0
                statuses[i] = int(head.split(b" ", 2)[1])
                if close:  # Hypercorn ends a keep-alive connection after 1,000 requests
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, statuses, start, time.monotonic()


def webhooks(
    dsn: str, daemon: DaemonProc, *, events: int, warmup: int, clients: int = 16
) -> dict[str, Any]:
    """T2: one customer.updated event per mapped customer; each must be applied."""
    now = int(time.time())

    def prepare(admin: psycopg.Connection[Any], n: int, tag: str) -> list[bytes]:
        customers = mapped_customers(admin, n, tag)
        return [_event(i, tag, account, customer, now) for i, (account, customer) in
                enumerate(customers)]  # fmt: skip

    def check(admin: psycopg.Connection[Any], n: int, tag: str) -> dict[str, Any]:
        row = admin.execute(
            "SELECT count(*) FILTER (WHERE status = 'processed' AND last_error IS NULL), "
            "count(*) FILTER (WHERE status <> 'processed' OR last_error IS NOT NULL), "
            "min(last_error) FROM integration.webhook_events WHERE stripe_event_id LIKE %s",
            [f"evt_{tag}%"],
        ).fetchone()
        assert row is not None
        if row[0] != n:
            raise BenchError(f"T2: {row[0]} of {n} events applied; {row[1]} not: {row[2]}")
        return {}

    return _timed(dsn, daemon, prepare, check, ("bw", "bt"), events=events, warmup=warmup,
                  clients=clients)  # fmt: skip


def webhooks_mix(
    dsn: str,
    daemon: DaemonProc,
    *,
    events: int,
    warmup: int,
    clients: int = 16,
    emulator: EmulatorProc | None = None,
) -> dict[str, Any]:
    """T2 mix: stripe-sync-engine's sample events (webhook_mix); none may fail.
    With ``emulator``, it holds the events' objects as Stripe would."""

    def prepare(admin: psycopg.Connection[Any], n: int, tag: str) -> list[bytes]:
        webhook_mix.references(admin, n, tag)
        bodies = webhook_mix.bodies(n, tag)
        if emulator is not None:
            for kind, objects in webhook_mix.stripe_objects(bodies).items():
                emulator.put_objects(kind, objects)
        return bodies

    def check(admin: psycopg.Connection[Any], n: int, tag: str) -> dict[str, Any]:
        rows = admin.execute(
            "SELECT status, note IS NOT NULL, count(*), min(coalesce(last_error, note)) "
            "FROM integration.webhook_events WHERE stripe_event_id LIKE %s GROUP BY 1, 2",
            [f"evt_{tag}%"],
        ).fetchall()
        counts = {("noted" if noted and status == "processed" else status): int(count)
                  for status, noted, count, _ in rows}  # fmt: skip
        bad = [
            (status, why) for status, _, _, why in rows if status not in ("processed", "ignored")
        ]
        if bad or sum(counts.values()) != n:
            raise BenchError(f"T2 mix: of {n} events {counts}, e.g. {bad[:1]}")
        return {"outcomes": counts, "types": len(webhook_mix.samples())}

    return _timed(dsn, daemon, prepare, check, ("mw", "mt"), events=events, warmup=warmup,
                  clients=clients)  # fmt: skip


def _timed(
    dsn: str,
    daemon: DaemonProc,
    prepare: Callable[[psycopg.Connection[Any], int, str], list[bytes]],
    check: Callable[[psycopg.Connection[Any], int, str], dict[str, Any]],
    tags: tuple[str, str],
    *,
    events: int,
    warmup: int,
    clients: int,
) -> dict[str, Any]:
    """A warm-up, then the timed run: ``prepare`` makes the bodies (and the rows
    they need), all are POSTed, and once none is pending ``check`` judges them."""
    now = int(time.time())
    with psycopg.connect(dsn, autocommit=True) as admin:
        for n, timed, tag in ((warmup, False, tags[0]), (events, True, tags[1])):
            if n == 0:
                continue
            requests = [_request(body, daemon.port, now) for body in prepare(admin, n, tag)]
            cpu0 = cpu_seconds(daemon.pid)
            latencies, statuses, start, end = asyncio.run(_post_all(daemon.port, requests, clients))
            bad = [s for s in statuses if s != 200]
            if bad:
                raise BenchError(f"{len(bad)} of {n} requests not accepted, e.g. {bad[0]}")
            applied_at = wait_until(admin, PENDING, timeout=600, interval=0.02, watch=[daemon])
            cpu1 = cpu_seconds(daemon.pid)
            outcome = check(admin, n, tag)
            if not timed:
                continue
            result = latency_summary(latencies, stall_ms=15.0)
            result.update(
                events=n,
                clients=clients,
                accept_seconds=end - start,
                accepted_per_s=n / (end - start),
                applied_seconds=applied_at - start,
                applied_per_s=n / (applied_at - start),
                daemon_cpu_ms_per_event=(cpu1 - cpu0) * 1000 / n,
                # The daemon's cores busy until all were applied (all its processes).
                daemon_cores=(cpu1 - cpu0) / (applied_at - start),
                **outcome,
            )
            return result
    raise BenchError("no events")
