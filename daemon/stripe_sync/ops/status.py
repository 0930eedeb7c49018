"""``stripe-sync status``: what the queues hold and whether anything is wrong,
read from the database (works with the daemon down) and, given STRIPE_API_KEY, the
webhook endpoint's health from Stripe (ops/endpoint.py): :func:`collect` →
:class:`Status` (an :class:`~.outcome.Outcome`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TextIO

import msgspec
import psycopg
from rich.console import Console
from rich.table import Table

from .. import STRIPE_API_VERSION
from ..db import connect, queries
from .queue_counts import QueueRow, queue_rows


class Failure(msgspec.Struct):
    queue: str
    id: str
    kind: str
    attempts: int
    last_error: str | None
    at: datetime


class OpenDispute(msgspec.Struct):
    """A dispute that needs a response (billing.disputes); ids are MC's but the dispute's."""

    id: int
    stripe_dispute_id: str | None
    payment_id: int
    account_id: int | None
    status: str
    reason: str | None
    amount: int
    currency: str
    evidence_due_by: datetime | None


class Status(msgspec.Struct):
    queues: list[QueueRow]
    recent_failures: list[Failure]
    stuck_claims: int
    webhook_apply_lag_seconds: float | None
    webhook_oldest_waiting_seconds: float | None
    daemons_listening: int
    problems: list[str]
    # Billing work for people, not a sync problem: never changes the exit code.
    open_disputes: list[OpenDispute] = []
    # Worth knowing, not wrong: e.g. the Stripe account not verified yet.
    warnings: list[str] = []
    # The API version of the daemon's requests and of its webhook endpoint (pinned).
    stripe_api_version: str = STRIPE_API_VERSION

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def render(self, out: TextIO, err: TextIO) -> None:
        _render(self, Console(file=out))

    def to_json(self) -> str:
        return msgspec.json.encode(
            {**msgspec.structs.asdict(self), "healthy": self.healthy}
        ).decode()


# A due row older than this means the daemon is not keeping up (or is down).
BACKLOG_ALARM_SECONDS = 300.0


# This database's mc_source → (problems, warnings) of its webhook endpoint in Stripe.
EndpointCheck = Callable[[str], Awaitable[tuple[list[str], list[str]]]]


async def collect(
    dsn: str, *, failures: int = 10, disputes: int = 20, endpoint: EndpointCheck | None = None
) -> Status:
    sql = queries("ops")
    async with connect(dsn, "status") as conn:
        rows = await queue_rows(conn)
        recent = [Failure(*r) for r in await _all(conn, sql["recent_failures"], limit=failures)]
        stuck = (await _all(conn, sql["stuck"]))[0][0] or 0
        lag, oldest = (await _all(conn, sql["webhook_lag"]))[0]
        daemons = (await _all(conn, sql["daemons"]))[0][0] or 0
        open_disputes = [
            OpenDispute(*r) for r in await _all(conn, sql["open_disputes"], limit=disputes)
        ]
        provider = await _all(conn, queries("provider")["load"])
        source = (await _all(conn, queries("outbox")["source"]))[0][0]
    problems = []
    failed = sum(r.count for r in rows if r.status == "failed")
    if failed:
        problems.append(f"{failed} failed row(s)")
    if stuck:
        problems.append(f"{stuck} claim(s) stuck past their lease")
    backlog = [r for r in rows if (r.oldest_due_seconds or 0) > BACKLOG_ALARM_SECONDS]
    for r in backlog:
        problems.append(f"{r.queue}: oldest due row waits {r.oldest_due_seconds:.0f}s")
    pending = sum(r.count for r in rows if r.status in ("pending", "processing"))
    if pending and not daemons:
        problems.append("work is waiting and no daemon is listening")
    warnings = []
    if provider and provider[0][0] is None:
        warnings.append(
            "the Stripe account is not verified (stripe.provider_configs.account_id is empty: "
            "Stripe was unreachable when the daemon started, or the key cannot read the "
            "account); the daemon checks again every minute"
        )
    if endpoint is not None:
        endpoint_problems, endpoint_warnings = await endpoint(source)
        problems += endpoint_problems
        warnings += endpoint_warnings
    return Status(
        rows, recent, int(stuck), lag, oldest, int(daemons), problems, open_disputes, warnings
    )


async def _all(conn: psycopg.AsyncConnection[Any], query: str, **params: Any) -> list[Any]:
    return await (await conn.execute(query, params or None)).fetchall()


def _render(status: Status, console: Console) -> None:
    table = Table(title="queues", title_justify="left")
    for col in ("queue", "status", "rows", "oldest due"):
        table.add_column(col, justify="right" if col in ("rows", "oldest due") else "left")
    for r in status.queues:
        due = "" if r.oldest_due_seconds is None else f"{r.oldest_due_seconds:.1f}s"
        count = f"~{r.count}" if r.estimated else str(r.count)
        table.add_row(r.queue, r.status, count, due)
    console.print(table)
    lag = status.webhook_apply_lag_seconds
    console.print(
        f"daemons listening: {status.daemons_listening}   "
        f"webhook apply lag: {'-' if lag is None else f'{lag * 1000:.0f} ms'}   "
        f"stuck claims: {status.stuck_claims}   Stripe API: {status.stripe_api_version}"
    )
    if status.recent_failures:
        failures = Table(title="recent failures", title_justify="left")
        for col in ("queue", "id", "kind", "attempts", "last_error"):
            failures.add_column(col, overflow="fold")
        for f in status.recent_failures:
            failures.add_row(f.queue, f.id, f.kind, str(f.attempts), f.last_error or "")
        console.print(failures)
    if status.open_disputes:
        disputes = Table(title="disputes needing a response", title_justify="left")
        for col in ("due by", "dispute", "stripe id", "payment", "account", "amount", "reason"):
            disputes.add_column(col, overflow="fold")
        for d in status.open_disputes:
            due = "-" if d.evidence_due_by is None else f"{d.evidence_due_by:%Y-%m-%d %H:%M %Z}"
            disputes.add_row(
                due,
                str(d.id),
                d.stripe_dispute_id or "",
                str(d.payment_id),
                "" if d.account_id is None else str(d.account_id),
                f"{d.amount} {d.currency}",
                d.reason or "",
            )
        console.print(disputes)
    for warning in status.warnings:
        console.print(f"[bold yellow]note:[/] {warning}")
    if status.problems:
        console.print("[bold red]problems:[/] " + "; ".join(status.problems))
    else:
        console.print("[bold green]ok[/]")
