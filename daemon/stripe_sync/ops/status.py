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

from .. import STRIPE_API_VERSION
from ..config import DEFAULTS
from ..db import connect, queries
from .queue_counts import QueueRow, queue_rows
from .tables import show_table
from .waiting import Lag, Waiting, age, read_apply_lag, read_waiting, waited_too_long


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


class UnlinkedCustomer(msgspec.Struct):
    """A Stripe customer not linked to an MC account, and its events ignored in 24 h."""

    customer: str
    events: int


class Status(msgspec.Struct):
    queues: list[QueueRow]
    recent_failures: list[Failure]
    stuck_claims: int
    webhook_oldest_waiting_seconds: float | None
    daemons_listening: int
    problems: list[str]
    waiting: list[Waiting] = []
    apply_lag: list[Lag] = []
    # Billing work for people, not a sync problem: never changes the exit code.
    open_disputes: list[OpenDispute] = []
    # Worth knowing, not wrong: e.g. the Stripe account not verified yet.
    warnings: list[str] = []
    # Webhook events ignored in the last 24 hours because their customer is
    # not linked to an MC account, and the customers with the most of them.
    ignored_unlinked_24h: int = 0
    top_unlinked_customers: list[UnlinkedCustomer] = []
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


# This database's mc_source → (problems, warnings) of its webhook endpoint in Stripe.
EndpointCheck = Callable[[str], Awaitable[tuple[list[str], list[str]]]]


async def collect(
    dsn: str,
    *,
    failures: int = 10,
    disputes: int = 20,
    wait_alarm: float = DEFAULTS.wait_alarm_seconds,
    unlinked: int = 5,
    endpoint: EndpointCheck | None = None,
) -> Status:
    """What the queues hold; a row due, or in backoff since it arrived, for longer
    than ``wait_alarm`` seconds (STRIPE_SYNC_WAIT_ALARM; 0: never) is a problem;
    with ``endpoint``, so is what is wrong with the webhook endpoint in Stripe."""
    sql = queries("ops")
    async with connect(dsn, "status") as conn:
        rows = await queue_rows(conn)
        recent = [Failure(*r) for r in await _all(conn, sql["recent_failures"], limit=failures)]
        stuck = (await _all(conn, sql["stuck"]))[0][0] or 0
        oldest = (await _all(conn, sql["webhook_oldest_waiting"]))[0][0]
        waiting = await read_waiting(conn)
        apply_lag = await read_apply_lag(conn)
        daemons = (await _all(conn, sql["daemons"]))[0][0] or 0
        by_customer = await _all(conn, sql["unlinked_customers"], limit=unlinked)
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
    problems += waited_too_long(rows, waiting, wait_alarm)
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
    top = [UnlinkedCustomer(customer, events) for customer, events, _ in by_customer]
    ignored_unlinked = by_customer[0][2] if by_customer else 0
    if ignored_unlinked:
        named = ", ".join(f"{c.customer} ({c.events})" for c in top)
        warnings.append(
            f"{ignored_unlinked} webhook event(s) in the last 24 h were ignored because their "
            f"customer is not linked to an MC account; most: {named}. Link a customer that "
            "should be synced, then replay its events (docs/stripe.md, runbook)"
        )
    if endpoint is not None:
        endpoint_problems, endpoint_warnings = await endpoint(source)
        problems += endpoint_problems
        warnings += endpoint_warnings
    return Status(
        queues=rows,
        recent_failures=recent,
        stuck_claims=int(stuck),
        webhook_oldest_waiting_seconds=oldest,
        daemons_listening=int(daemons),
        problems=problems,
        waiting=waiting,
        apply_lag=apply_lag,
        open_disputes=open_disputes,
        warnings=warnings,
        ignored_unlinked_24h=ignored_unlinked,
        top_unlinked_customers=top,
    )


async def _all(conn: psycopg.AsyncConnection[Any], query: str, **params: Any) -> list[Any]:
    return await (await conn.execute(query, params or None)).fetchall()


def _render(status: Status, console: Console) -> None:
    show_table(
        console,
        "queues",
        ("queue", "status", "rows", "oldest due"),
        [
            (
                r.queue,
                r.status,
                f"~{r.count}" if r.estimated else str(r.count),
                "" if r.oldest_due_seconds is None else age(r.oldest_due_seconds),
            )
            for r in status.queues
        ],
        right=(2, 3),
    )
    console.print(
        f"daemons listening: {status.daemons_listening}   stuck claims: {status.stuck_claims}"
        f"   Stripe API: {status.stripe_api_version}"
    )
    _render_waiting(status.waiting, console)
    _render_lag(status.apply_lag, console)
    if status.recent_failures:
        show_table(
            console,
            "recent failures",
            ("queue", "id", "kind", "attempts", "last_error"),
            [
                (f.queue, f.id, f.kind, str(f.attempts), f.last_error or "")
                for f in status.recent_failures
            ],
        )
    if status.open_disputes:
        show_table(
            console,
            "disputes needing a response",
            ("due by", "dispute", "stripe id", "payment", "account", "amount", "reason"),
            [
                (
                    "-" if d.evidence_due_by is None else f"{d.evidence_due_by:%Y-%m-%d %H:%M %Z}",
                    str(d.id),
                    d.stripe_dispute_id or "",
                    str(d.payment_id),
                    "" if d.account_id is None else str(d.account_id),
                    f"{d.amount} {d.currency}",
                    d.reason or "",
                )
                for d in status.open_disputes
            ],
        )
    # Piped: one line each, never broken at 80 columns.
    whole = not console.is_terminal
    for warning in status.warnings:
        console.print(f"[bold yellow]note:[/] {warning}", soft_wrap=whole)
    if status.problems:
        console.print("[bold red]problems:[/]")
        for problem in status.problems:
            console.print(f"  {problem}", markup=False, soft_wrap=whole)
    else:
        console.print("[bold green]ok[/]")


def _render_waiting(waiting: list[Waiting], console: Console) -> None:
    """Per queue with pending rows: the oldest's age, then the reasons, counted."""
    for w in waiting:
        show_table(
            console,
            f"{w.queue}: why pending rows wait (the oldest arrived {age(w.oldest_seconds)} ago)",
            ("rows", "oldest", "waiting on (last error)"),
            [(str(r.count), age(r.oldest_seconds), r.reason or "not tried yet") for r in w.reasons],
            right=(0, 1),
        )


def _render_lag(lags: list[Lag], console: Console) -> None:
    if not lags:
        console.print("apply lag: nothing applied in the last hour")
        return
    show_table(
        console,
        "apply lag, from arrival to applied (rows applied in the last hour)",
        ("queue", "rows", "count", "p50", "p95", "p99", "max"),
        [
            (
                lag.queue,
                "retried" if lag.retried else "first try",
                str(lag.rows),
                *(age(v) for v in (lag.p50, lag.p95, lag.p99, lag.max)),
            )
            for lag in lags
        ],
        right=(2, 3, 4, 5, 6),
    )
