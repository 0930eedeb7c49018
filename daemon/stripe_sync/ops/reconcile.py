"""``stripe-sync reconcile``: compare every mapping with its Stripe object.

Pages over the customer, product and price mappings that name a Stripe
object (mappings marked ``deleted`` are skipped: they record a deletion or
archive Stripe confirmed), retrieves each object (paced, a few at a time) and
reports drift:

``missing``   Stripe answers 404 for the mapped id.
``deleted``   Stripe says the object is deleted while the mapping is not; or a
              product/price is archived (``active=false``) while its MC row is active.
``changed``   a field the outbox pushes differs (customer email/name; product
              name/description/active; price nickname/active). A field MC leaves
              NULL is not compared: the outbox never clears it in Stripe.
``metadata``  the object's ``mc_*_id`` metadata is missing or names another MC row.
``duplicate`` several live Stripe objects carry one MC row's ``mc_*_id`` and this
              database's ``mc_source`` (a search per family): two objects for one
              MC row, e.g. when Stripe's search lagged more than
              STRIPE_SYNC_SEARCH_LAG after a saved 500 (docs/stripe.md 6.4).
              Never repaired: which one to keep, and what to move, is a person's call.

``--fix`` repairs, each in one transaction:

- changed, metadata, archived: enqueue ``update_stripe_<x>``; the update pushes
  the MC row's fields, ``active`` and the metadata (MC owns them).
- deleted (Stripe's ``deleted: true``): mark the mapping ``deleted``, exactly what
  the missed ``*.deleted`` webhook would have done. Nothing is re-created: a
  deletion in Stripe is taken as deliberate, and re-creating is an operator's call.
- missing (404): set the mapping back to ``pending`` with no Stripe id (only if it
  still names that id) and enqueue ``create_stripe_<x>`` in the same transaction.
  Nothing refers to a mapping's Stripe id by key, and the price create waits for
  a re-created product. The reset bumps the create generation (schema/0006), so
  the create has a new key (outbox/keys.py); it searches by metadata first and
  adopts an object that still exists under another id.

An outbox row is not enqueued twice while an identical one is pending.

:func:`run` collects a :class:`Report` (an :class:`~.outcome.Outcome`: the
drift lines and a summary, or JSON; exit 1 on drift). It calls back per
object checked, which is how ``progress.py`` draws its bar; nothing here
prints.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Literal, TextIO

import anyio
import stripe
from psycopg_pool import AsyncConnectionPool

from ..config import Settings
from ..db import queries
from ..errors import PermanentError
from ..mappings import CUSTOMERS, PRICES, PRODUCTS, Family
from ..outbox.common import source_of
from ..stripe_api import StripeApi, call_with_retries, for_command, search_clause
from ..webhooks.events import metadata_id

Kind = Literal["missing", "deleted", "changed", "metadata", "duplicate"]
# What --fix does about a finding; an object gets the first of these its findings need.
Repair = Literal["create", "mark_deleted", "update"]
REPAIRS: tuple[Repair, ...] = ("create", "mark_deleted", "update")
KINDS: tuple[Kind, ...] = ("missing", "deleted", "changed", "metadata", "duplicate")
FAMILIES: tuple[Family, ...] = (CUSTOMERS, PRODUCTS, PRICES)  # products before their prices
PAGE_SIZE = 100  # mappings per page, and Stripe's largest search page
CONCURRENCY = 8  # retrieves in flight; the pacer still spaces them


@dataclass(frozen=True)
class Mapped:
    family: Family
    mc_id: int
    stripe_id: str
    expected: dict[str, Any]


@dataclass
class Drift:
    kind: Kind
    family: str  # customer, product, price
    mc_table: str
    mc_id: int
    stripe_id: str
    detail: str
    fix: str | None = None  # what --fix did

    def line(self) -> str:
        text = (
            f"{self.family} {self.mc_table} id={self.mc_id} {self.stripe_id}: "
            f"{self.kind}: {self.detail}"
        )
        return f"{text} → {self.fix}" if self.fix else text


@dataclass
class Report:
    fix: bool
    checked: dict[str, int] = field(default_factory=dict)
    drift: list[Drift] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {k: sum(d.kind == k for d in self.drift) for k in KINDS}

    def summary(self) -> str:
        checked = ", ".join(f"{n} {f}(s)" for f, n in self.checked.items())
        if not self.drift:
            return f"checked {checked}: no drift"
        counts = ", ".join(f"{k} {n}" for k, n in self.counts.items() if n)
        verb = "fixed or enqueued" if self.fix else "found (run with --fix to repair)"
        return f"checked {checked}: {len(self.drift)} drift(s) {verb} ({counts})"

    @property
    def exit_code(self) -> int:
        return 1 if self.drift else 0

    def render(self, out: TextIO, err: TextIO) -> None:
        for d in self.drift:
            print(d.line(), file=out)
        print(self.summary(), file=out, flush=True)

    def to_json(self) -> str:
        return json.dumps(
            {
                "fix": self.fix,
                "checked": self.checked,
                "counts": self.counts,
                "drift": [asdict(d) for d in self.drift],
            }
        )


# -- comparing ------------------------------------------------------------------------

Finding = tuple[Kind, str, Repair]


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, str):
        # Stripe shows unset text as null or "".
        return expected == (actual or "")
    return bool(expected == actual)


ARCHIVED_WHILE_ACTIVE = (
    "archived in Stripe while the MC row is active (MC's row is the truth: --fix un-archives; "
    "to keep it archived, set active = false in MC)"
)


def compare(item: Mapped, obj: dict[str, Any] | None) -> list[Finding]:
    """The drift between a mapping and its Stripe object (None: Stripe said 404)."""
    if obj is None:
        return [("missing", f"Stripe has no {item.family.noun} {item.stripe_id}", "create")]
    if obj.get("deleted"):
        return [("deleted", "deleted in Stripe; the mapping is not marked deleted", "mark_deleted")]
    found: list[Finding] = []
    expected = dict(item.expected)
    if expected.get("active") is True and obj.get("active") is False:
        # MC's row is the truth: the outbox never archives an active row (common.Pushed.archive).
        found.append(("deleted", ARCHIVED_WHILE_ACTIVE, "update"))
        expected.pop("active")
    changed = [
        f"{name} {value!r} in MC, {obj.get(name)!r} in Stripe"
        for name, value in expected.items()
        if value is not None and value != "" and not _same(value, obj.get(name))
    ]
    if changed:
        found.append(("changed", "; ".join(changed), "update"))
    key = item.family.metadata_key
    named = (obj.get("metadata") or {}).get(key)
    if named != str(item.mc_id):
        detail = f"metadata {key} missing" if named is None else f"metadata {key}={named!r}"
        found.append(("metadata", detail, "update"))
    return found


async def retrieve(api: StripeApi, family: Family, stripe_id: str) -> dict[str, Any] | None:
    """The Stripe object as a plain dict, or None when Stripe answers 404."""
    service: Any = getattr(api.client.v1, family.resource)
    try:
        obj = await call_with_retries(
            api, f"retrieve {family.noun} {stripe_id}", lambda: service.retrieve_async(stripe_id)
        )
    except PermanentError as exc:
        cause = exc.__cause__
        if isinstance(cause, stripe.StripeError) and cause.http_status == 404:
            return None
        raise
    data: dict[str, Any] = obj.to_dict(for_json=True)
    return data


# -- fixing ---------------------------------------------------------------------------


async def repair(pool: AsyncConnectionPool, item: Mapped, how: Repair) -> str:
    """Apply one repair in one transaction; what was done, for the report."""
    f = item.family
    ids = {"mc_id": item.mc_id, "stripe_id": item.stripe_id}
    action = f"{'create' if how == 'create' else 'update'}_stripe_{f.noun}"
    payload = json.dumps({f.mc_col: item.mc_id})
    async with pool.connection() as conn, conn.transaction():
        if how in ("create", "mark_deleted"):
            cur = await conn.execute(
                f.query("reconcile", "forget" if how == "create" else "mark_deleted"), ids
            )
            if await cur.fetchone() is None:
                return "left alone: the mapping changed meanwhile"
            if how == "mark_deleted":
                return "mapping marked deleted"
        cur = await conn.execute(
            queries("reconcile")["enqueue"], {"action": action, "payload": payload}
        )
        row = await cur.fetchone()
    done = f"enqueued {action} (outbox id {row[0]})" if row else f"{action} already pending"
    return f"mapping set back to pending, {done}" if how == "create" else done


# -- the run --------------------------------------------------------------------------


async def _pages(pool: AsyncConnectionPool, family: Family) -> AsyncIterator[list[Mapped]]:
    after = 0
    while True:
        async with pool.connection() as conn:
            cur = await conn.execute(
                queries("reconcile")[f"page_{family.noun}"],
                {"after": after, "limit": PAGE_SIZE},
            )
            rows = await cur.fetchall()
        if not rows:
            return
        yield [Mapped(family, int(r[1]), str(r[2]), dict(r[3])) for r in rows]
        after = int(rows[-1][0])


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first failure of the page's retrieves: one line for the operator."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


async def _fetch(
    api: StripeApi,
    limiter: anyio.CapacityLimiter,
    item: Mapped,
    into: list[dict[str, Any] | None],
    i: int,
) -> None:
    async with limiter:
        into[i] = await retrieve(api, item.family, item.stripe_id)


async def duplicates(
    api: StripeApi, pool: AsyncConnectionPool, family: Family, source: str, fix: bool
) -> list[Drift]:
    """MC rows of this database that several live Stripe objects name in metadata."""
    assert family.metadata_key is not None
    service: Any = getattr(api.client.v1, family.resource)
    objects: dict[int, list[str]] = {}
    params: dict[str, Any] = {
        "query": search_clause("metadata['mc_source']", source),
        "limit": PAGE_SIZE,
    }
    while True:
        found = await call_with_retries(
            api, f"search {family.noun}s", partial(service.search_async, params=dict(params))
        )
        for obj in (o.to_dict() for o in found.data):
            mc_id = metadata_id(obj.get("metadata"), family.metadata_key)
            if mc_id is not None and not obj.get("deleted"):
                objects.setdefault(mc_id, []).append(str(obj["id"]))
        if not found.has_more:
            break
        params["page"] = found.next_page
    drift = []
    for mc_id, ids in sorted(objects.items()):
        if len(ids) < 2:
            continue
        async with pool.connection() as conn:
            cur = await conn.execute(family.query("reconcile", "mapped_id"), {"mc_id": mc_id})
            row = await cur.fetchone()
        mapped = row[0] if row is not None and row[0] is not None else None
        keep = f"the mapped one is {mapped}" if mapped else "none is mapped"
        detail = (
            f"{len(ids)} Stripe {family.noun}s carry {family.metadata_key}={mc_id} of this "
            f"database ({', '.join(sorted(ids))}); {keep}: delete or merge the others by hand"
        )
        stripe_id = mapped or sorted(ids)[0]
        left = "left alone: resolve by hand" if fix else None
        drift.append(
            Drift("duplicate", family.noun, family.mc_table, mc_id, stripe_id, detail, left)
        )
    return drift


async def count(pool: AsyncConnectionPool) -> dict[str, int]:
    totals: dict[str, int] = {}
    async with pool.connection() as conn:
        for f in FAMILIES:
            cur = await conn.execute(f.query("reconcile", "count"))
            row = await cur.fetchone()
            totals[f.noun] = int(row[0]) if row else 0
    return totals


async def reconcile(
    api: StripeApi,
    pool: AsyncConnectionPool,
    *,
    fix: bool = False,
    on_checked: Callable[[str, Sequence[Drift]], None] | None = None,
) -> Report:
    """Compare every mapping, then search each family for duplicates; with ``fix``,
    repair. ``on_checked(noun, drift)`` per object."""
    report = Report(fix=fix)
    limiter = anyio.CapacityLimiter(CONCURRENCY)
    source = await source_of(pool)
    for family in FAMILIES:
        report.checked[family.noun] = 0
        async for page in _pages(pool, family):
            objects: list[dict[str, Any] | None] = [None] * len(page)

            try:
                async with anyio.create_task_group() as tg:
                    for i, item in enumerate(page):
                        tg.start_soon(_fetch, api, limiter, item, objects, i)
            except BaseExceptionGroup as group:
                raise _first(group) from None
            for item, obj in zip(page, objects, strict=True):
                findings = compare(item, obj)
                drift = [
                    Drift(k, family.noun, family.mc_table, item.mc_id, item.stripe_id, detail)
                    for k, detail, _ in findings
                ]
                if fix and findings:
                    how = next(r for r in REPAIRS if any(f[2] == r for f in findings))
                    done = await repair(pool, item, how)
                    for d in drift:
                        d.fix = done
                report.checked[family.noun] += 1
                report.drift += drift
                if on_checked is not None:
                    on_checked(family.noun, drift)
        report.drift += await duplicates(api, pool, family, source, fix)
    return report


async def run(
    settings: Settings,
    *,
    fix: bool = False,
    on_start: Callable[[dict[str, int]], None] | None = None,
    on_checked: Callable[[str, Sequence[Drift]], None] | None = None,
) -> Report:
    """``on_start(totals)`` gets the number of mappings to check per family first."""
    async with for_command(settings, "reconcile") as (api, pool):
        if on_start is not None:
            on_start(await count(pool))
        return await reconcile(api, pool, fix=fix, on_checked=on_checked)
