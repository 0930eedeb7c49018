"""``stripe-sync catch-up``: store the events Stripe could not deliver.

Lists ``GET /v1/events`` (newest first, 100 a page, paced like every other
Stripe call of the process) with ``delivery_success=false`` (or every event
with ``--all``) since a point in time, and stores the events the database
lacks through the webhook endpoint's own store path (``row_for`` →
``Ingestor.store_rows``). The insert trigger wakes the running daemon, which
applies them like any delivered event; the ordering rules make their late
arrival harmless. Stripe keeps events for 30 days. :func:`run` collects a
:class:`CatchUpResult`, the command's :class:`~.outcome.Outcome`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TextIO, cast

import msgspec

from .. import duration
from ..config import Settings
from ..db import queries
from ..stripe_api import StripeApi, call_with_retries, for_command
from ..webhooks.events import Envelope
from ..webhooks.ingest import Ingestor, Row, Unstorable, row_for

RETENTION_DAYS = 30  # how long Stripe keeps events
PAGE_SIZE = 100  # Stripe's maximum


def parse_since(text: str, now: float | None = None) -> int:
    """A Unix time from ``6h``/``3d``/``90m``/``2w`` (ago) or an ISO date/time (UTC if naive)."""
    now = time.time() if now is None else now
    ago = duration.seconds(text)
    if ago is not None:
        return int(now - ago)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 6h, 3d, 2w) nor an ISO date/time "
            "(2025-05-01, 2025-05-01T12:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


def default_since(now: float | None = None) -> int:
    return int((time.time() if now is None else now) - RETENTION_DAYS * 86400)


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class CatchUpResult:
    since: int
    all_events: bool
    dry_run: bool
    listed: int = 0
    already_stored: int = 0
    newly_stored: int = 0  # with --dry-run: would be stored
    refused: int = 0  # events PostgreSQL cannot hold (Unstorable)
    unusable: int = 0  # not an event we could store (no id, type, created or data.object)
    errors: list[str] | None = None

    def summary(self) -> str:
        what = "event(s)" if self.all_events else "event(s) with failed deliveries"
        verb = "would be stored (dry run)" if self.dry_run else "newly stored"
        text = (
            f"listed {self.listed} {what} since {iso(self.since)}: "
            f"{self.already_stored} already stored, {self.newly_stored} {verb}"
        )
        if self.refused or self.unusable:
            text += f", {self.refused} refused by the database, {self.unusable} unusable"
        return text

    @property
    def exit_code(self) -> int:
        return 1 if self.refused else 0

    def render(self, out: TextIO, err: TextIO) -> None:
        print(self.summary(), file=out)
        for error in self.errors or []:
            print(f"stripe-sync catch-up: not stored: {error}", file=err)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "since": iso(self.since)})


def event_row(event: dict[str, Any]) -> Row | None:
    """The stored columns of one listed event, as the endpoint stores a delivered one."""
    raw = msgspec.json.encode(event)
    try:
        envelope = msgspec.json.decode(raw, type=Envelope)
        row = row_for(raw, envelope)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if not row.event_id.startswith("evt_") or not row.event_type or envelope.created is None:
        return None
    return row if envelope.data is not None and len(envelope.data.object) else None


async def catch_up(
    api: StripeApi,
    ingestor: Ingestor,
    *,
    since: int,
    all_events: bool = False,
    dry_run: bool = False,
    page_size: int = PAGE_SIZE,
    on_page: Callable[[CatchUpResult], None] | None = None,
) -> CatchUpResult:
    result = CatchUpResult(since=since, all_events=all_events, dry_run=dry_run)
    params: dict[str, Any] = {"limit": page_size, "created": {"gte": since}}
    if not all_events:
        params["delivery_success"] = False
    events = api.client.v1.events
    while True:
        request = partial(events.list_async, params=cast(Any, dict(params)))
        page = await call_with_retries(api, "list events", request)
        items = [e.to_dict(for_json=True) for e in page.data]
        result.listed += len(items)
        rows = [row for row in map(event_row, items) if row is not None]
        result.unusable += len(items) - len(rows)
        await _store(ingestor, rows, result)
        if on_page is not None:
            on_page(result)
        if not page.has_more or not items:
            return result
        params["starting_after"] = items[-1]["id"]


async def _store(ingestor: Ingestor, rows: list[Row], result: CatchUpResult) -> None:
    if not rows:
        return
    async with ingestor.pool.connection() as conn:
        cur = await conn.execute(
            queries("ops")["stored_event_ids"], {"ids": [r.event_id for r in rows]}
        )
        stored = {r[0] for r in await cur.fetchall()}
    lacking = [r for r in rows if r.event_id not in stored]
    result.already_stored += len(rows) - len(lacking)
    if result.dry_run:
        result.newly_stored += len(lacking)
        return
    outcome = await ingestor.store_rows(lacking)
    errors = [str(r) for r in outcome if isinstance(r, Unstorable)]
    if errors:
        result.errors = [*(result.errors or []), *errors]
    refused = len(errors)
    new = sum(r is True for r in outcome)
    result.newly_stored += new
    result.refused += refused
    # The rest was stored by a delivery (or another catch-up) since our look-up.
    result.already_stored += len(lacking) - new - refused


async def run(
    settings: Settings,
    *,
    since: int,
    all_events: bool = False,
    dry_run: bool = False,
    on_page: Callable[[CatchUpResult], None] | None = None,
) -> CatchUpResult:
    async with for_command(settings, "catch-up") as (api, pool):
        return await catch_up(
            api,
            Ingestor(pool),
            since=since,
            all_events=all_events,
            dry_run=dry_run,
            on_page=on_page,
        )
