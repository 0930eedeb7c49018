"""The outbox measurements: L1 pickup latency (NOTIFY and sweep-only), T1 drain, P pacing.

Every row is inserted with plain SQL, as a DBA or the app would; the daemon
only ever sees the table. Arrival times come from the emulator's request log
(time.monotonic() of the emulator process: CLOCK_MONOTONIC is one clock for
all processes on Linux), compared with our time.monotonic() taken just
before COMMIT.
"""

from __future__ import annotations

import random
import time
from typing import Any

import psycopg
from harness import (
    BenchError,
    DaemonProc,
    EmulatorProc,
    cpu_seconds,
    latency_summary,
    wait_until,
)

INSERT_ROW = (
    "INSERT INTO integration.outbox (action_type, payload) "
    "VALUES ('create_stripe_customer', jsonb_build_object('account_id', %s::bigint))"
)
IDLE = (
    "SELECT NOT EXISTS (SELECT 1 FROM integration.outbox WHERE status IN ('pending', 'processing'))"
)


def new_accounts(conn: psycopg.Connection[Any], n: int, tag: str) -> list[int]:
    """n MC accounts without a Stripe customer yet."""
    cur = conn.execute(
        "INSERT INTO billing.accounts (email, name) "
        "SELECT %s || '-' || g || '@bench.example', 'Bench ' || g FROM generate_series(1, %s) g "
        "RETURNING id",
        [tag, n],
    )
    return sorted(row[0] for row in cur.fetchall())


def request_arrivals(emulator: EmulatorProc, since: float) -> dict[int, float]:
    """account id → when its create request reached the emulator (first one)."""
    arrivals: dict[int, float] = {}
    for req in emulator.request_log(since):
        mc_id = req["metadata"].get("mc_account_id")
        if req["path"] == "/v1/customers" and mc_id is not None:
            arrivals.setdefault(int(mc_id), req["t"])
    return arrivals


def _check_failed(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT count(*), min(last_error) FROM integration.outbox WHERE status = 'failed'"
    ).fetchone()
    if row and row[0]:
        raise BenchError(f"{row[0]} outbox rows failed, e.g.: {row[1]}")


def pickup_latency(
    dsn: str,
    emulator: EmulatorProc,
    daemon: DaemonProc,
    *,
    samples: int,
    warmup: int,
    spacing: float = 0.003,
) -> dict[str, Any]:
    """L1: one row at a time; INSERT, COMMIT, wait until done, pause, next.

    Also the daemon's CPU per sample (``daemon_cpu_ms_per_row``), and commit → mapping
    committed (``mapping_p50_ms``…): from the wall clock just
    before the COMMIT to the row's ``processed_at``, the start of the statement that
    wrote its mapping and marked it done (its own commit follows within it); the
    daemon and PostgreSQL run on this machine, so both read the same clock.
    """
    with psycopg.connect(dsn, autocommit=True) as admin, psycopg.connect(dsn) as conn:
        ids = new_accounts(admin, warmup + samples, "l1")
        since = time.monotonic()
        cpu0 = 0.0
        committed: dict[int, float] = {}
        committed_at: dict[int, float] = {}  # outbox id → wall clock before COMMIT
        commit_ms: list[float] = []
        for i, account in enumerate(ids):
            if i == warmup:
                cpu0 = cpu_seconds(daemon.pid)
            cur = conn.execute(INSERT_ROW + " RETURNING id", [account])
            row = cur.fetchone()
            assert row is not None
            wall0, t0 = time.time(), time.monotonic()
            conn.commit()
            t1 = time.monotonic()
            if i >= warmup:
                committed[account] = t0
                committed_at[row[0]] = wall0
                commit_ms.append((t1 - t0) * 1000)
            # Wait for done without hammering: most rows finish in ~1 ms.
            time.sleep(0.001)
            wait_until(
                admin, "SELECT status = 'done' FROM integration.outbox WHERE id = %s", [row[0]],
                timeout=30, interval=0.002, watch=[daemon, emulator],
            )  # fmt: skip
            time.sleep(spacing)
        cpu1 = cpu_seconds(daemon.pid)
        _check_failed(admin)
        done = admin.execute(
            "SELECT id, extract(epoch FROM processed_at)::float8 FROM integration.outbox "
            "WHERE id = ANY(%s)",
            [list(committed_at)],
        ).fetchall()
    arrivals = request_arrivals(emulator, since)
    missing = [a for a in committed if a not in arrivals]
    if missing:
        raise BenchError(f"L1: {len(missing)} requests not in the emulator's log")
    result = latency_summary([arrivals[a] - t0 for a, t0 in committed.items()])
    result["commit_p50_ms"] = sorted(commit_ms)[len(commit_ms) // 2]
    mapped = latency_summary([at - committed_at[id_] for id_, at in done])
    result.update(mapping_p50_ms=mapped["p50_ms"], mapping_p99_ms=mapped["p99_ms"])
    # The daemon's CPU per sample, all of it (pickup, request, completion, and
    # whatever it does meanwhile: the LISTEN check, the sweep): load hardly moves it.
    result["daemon_cpu_ms_per_row"] = (cpu1 - cpu0) * 1000 / samples
    return result


def sweep_latency(
    dsn: str,
    emulator: EmulatorProc,
    daemon: DaemonProc,
    *,
    samples: int,
    window: float,
    sweep_interval: float,
) -> dict[str, Any]:
    """L1 without NOTIFY: the insert trigger disabled, rows found by the periodic sweep only.

    Sequential samples would lock onto the sweep's phase, so the rows are
    committed at random moments spread over ``window`` seconds instead.
    """
    rng = random.Random(7)
    with psycopg.connect(dsn, autocommit=True) as admin, psycopg.connect(dsn) as conn:
        ids = new_accounts(admin, samples, "sweep")
        admin.execute("ALTER TABLE integration.outbox DISABLE TRIGGER outbox_insert_notify")
        try:
            since = time.monotonic()
            moments = sorted(rng.uniform(0, window) for _ in ids)
            committed: dict[int, float] = {}
            for account, at in zip(ids, moments, strict=True):
                time.sleep(max(0.0, since + at - time.monotonic()))
                conn.execute(INSERT_ROW, [account])
                committed[account] = time.monotonic()
                conn.commit()
            wait_until(admin, IDLE, timeout=sweep_interval * 3 + 10, interval=0.05,
                       watch=[daemon, emulator])  # fmt: skip
        finally:
            admin.execute("ALTER TABLE integration.outbox ENABLE TRIGGER outbox_insert_notify")
        _check_failed(admin)
    arrivals = request_arrivals(emulator, since)
    result = latency_summary([arrivals[a] - t0 for a, t0 in committed.items() if a in arrivals])
    result["sweep_interval_s"] = sweep_interval
    return result


def drain(
    dsn: str, emulator: EmulatorProc, daemon: DaemonProc, *, rows: int, warmup: int
) -> dict[str, Any]:
    """T1: ``rows`` creates committed in one transaction, then drained end to end.

    Done means the Stripe call was made and the mapping row committed with
    the outbox row's ``done``; the clock stops when no row is left pending
    or processing. The daemon's and the emulator's own CPU time over the
    drain, per row, come with the rate (docs/benchmarks.md: why).
    """
    procs = [emulator, daemon]
    with psycopg.connect(dsn, autocommit=True) as admin, psycopg.connect(dsn) as conn:
        for n, timed in ((warmup, False), (rows, True)):
            if n == 0:
                continue
            ids = new_accounts(admin, n, "t1")
            conn.execute(
                "INSERT INTO integration.outbox (action_type, payload) "
                "SELECT 'create_stripe_customer', jsonb_build_object('account_id', id) "
                "FROM unnest(%s::bigint[]) id",
                [ids],
            )
            cpu0 = cpu_seconds(daemon.pid), cpu_seconds(emulator.pid)
            t0 = time.monotonic()
            conn.commit()
            t_end = wait_until(admin, IDLE, timeout=600, interval=0.02, watch=procs)
            cpu1 = cpu_seconds(daemon.pid), cpu_seconds(emulator.pid)
            if timed:
                _check_failed(admin)
                row = admin.execute(
                    "SELECT count(*) FROM stripe.customer_mappings "
                    "WHERE account_id = ANY(%s) AND sync_status = 'synced' "
                    "AND stripe_customer_id IS NOT NULL",
                    [ids],
                ).fetchone()
                mapped = row[0] if row else 0
                if mapped != n:
                    raise BenchError(f"T1: only {mapped} of {n} accounts mapped after the drain")
                seconds = t_end - t0
                return {
                    "rows": n,
                    "seconds": seconds,
                    "rows_per_s": n / seconds,
                    "daemon_cpu_ms_per_row": (cpu1[0] - cpu0[0]) * 1000 / n,
                    "emulator_cpu_ms_per_row": (cpu1[1] - cpu0[1]) * 1000 / n,
                    # The daemon's cores busy over the drain (all its processes).
                    "daemon_cores": (cpu1[0] - cpu0[0]) / seconds,
                }
    raise BenchError("T1: nothing to drain")


def pacing(
    dsn: str,
    emulator: EmulatorProc,
    daemon: DaemonProc,
    *,
    limit: int,
    seconds: float,
    warmup: float = 3.0,
) -> dict[str, Any]:
    """P: more work queued than the limit allows; count what reaches the emulator."""
    rows = int(limit * (seconds + warmup + 5) * 1.2)
    with psycopg.connect(dsn, autocommit=True) as admin:
        ids = new_accounts(admin, rows, "p")
        admin.execute(
            "INSERT INTO integration.outbox (action_type, payload) "
            "SELECT 'create_stripe_customer', jsonb_build_object('account_id', id) "
            "FROM unnest(%s::bigint[]) id",
            [ids],
        )
        time.sleep(warmup)
        daemon.check()
        start, t_start = emulator.stats(), time.monotonic()
        time.sleep(seconds)
        end, t_end = emulator.stats(), time.monotonic()
        daemon.check()
        # Leave nothing behind for the next daemon on this database.
        admin.execute("UPDATE integration.outbox SET status = 'failed', locked_by = NULL, "
                      "locked_until = NULL, last_error = 'bench: cancelled' "
                      "WHERE status IN ('pending', 'processing')")  # fmt: skip
    achieved = (end["total"] - start["total"]) / (t_end - t_start)
    return {
        "limit": limit,
        "seconds": t_end - t_start,
        "achieved_per_s": achieved,
        "fraction": achieved / limit,
        "rate_limited": end["rate_limited"],
    }
