"""``stripe-sync link``, and what ``seed`` looks for before it creates.

A link pairs an MC row (an account, product or price) with a Stripe object
that exists already (made in the Dashboard, by another application, by an
earlier install): it writes the mapping (``synced``) and, in the same
transaction, one ``update_stripe_<noun>`` outbox row, which pushes MC's fields
and metadata (``mc_*_id``, ``mc_source``) to the object once, with the row's
idempotency key. From then on the object's events apply like those of an
object MC created, and ``backfill`` imports its history.

A link is refused, with a one-line reason, when it would contradict what is
known: the MC row or the Stripe object already mapped elsewhere, a create in
flight for the MC row, a Stripe object that another database's metadata (or
another MC row's) names, a price whose product is linked to another product.
Linking a pair that is already linked changes nothing.

``--by-email`` lists the account's Stripe customers once and links each
unlinked account to the one unlinked customer with its email (case-insensitive);
emails with several customers or several accounts are listed as ambiguous,
accounts without a customer as unmatched. ``seed`` (``look``) does the same
before it enqueues creates, and also links objects that carry this database's
own metadata (an earlier run's, whose mapping was lost); what it links or
cannot tell apart is held back from the creates.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..config import Settings
from ..db import bound_query, connect, queries
from ..errors import EX_FAILURE, PermanentError, UsageError
from ..mappings import CUSTOMERS, PRICES, PRODUCTS, Family
from ..outbox.common import source_of
from ..stripe_api import StripeApi, call_with_retries, for_command

PAGE_SIZE = 100


@dataclass(frozen=True)
class Pair:
    family: Family
    mc_id: int
    stripe_id: str

    def describe(self) -> str:
        return f"{self.family.mc_table} id={self.mc_id} ↔ {self.stripe_id}"


def parse_pairs(
    positional: list[str], products: list[list[str]], prices: list[list[str]]
) -> list[Pair]:
    """``ACCOUNT_ID cus_…`` pairs, ``--product ID prod_…``, ``--price ID price_…``."""
    if len(positional) % 2:
        raise UsageError(
            f"link: pairs of ACCOUNT_ID cus_ID expected, got {len(positional)} word(s)"
        )
    given: list[tuple[Family, str, str]] = [
        (CUSTOMERS, positional[i], positional[i + 1]) for i in range(0, len(positional), 2)
    ]
    given += [(PRODUCTS, p[0], p[1]) for p in products] + [(PRICES, p[0], p[1]) for p in prices]
    pairs = []
    for family, mc_id, stripe_id in given:
        if not mc_id.isdigit() or not 0 < int(mc_id) < 2**63:
            raise UsageError(
                f"link: {family.mc_table} id must be a positive integer, got {mc_id!r}"
            )
        if family is CUSTOMERS and not stripe_id.startswith("cus_"):
            raise UsageError(f"link: {stripe_id!r} is not a Stripe customer id (cus_…)")
        if family is not CUSTOMERS and (not stripe_id or stripe_id.startswith("cus_")):
            raise UsageError(f"link: {stripe_id!r} is not a Stripe {family.noun} id")
        pairs.append(Pair(family, int(mc_id), stripe_id))
    return pairs


@dataclass
class LinkResult:
    dry_run: bool
    linked: list[str] = field(default_factory=list)  # "billing.accounts id=1 ↔ cus_…"
    already: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # one line each, with the reason
    ambiguous: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    # MC rows held back from seed's creates (linked or ambiguous), per family noun.
    held: dict[str, list[int]] = field(default_factory=dict)

    def hold(self, noun: str, mc_id: int) -> None:
        self.held.setdefault(noun, []).append(mc_id)

    @property
    def exit_code(self) -> int:
        return EX_FAILURE if self.refused else 0

    def render(self, out: TextIO, err: TextIO) -> None:
        verb = "would link" if self.dry_run else "linked"
        for line in self.linked:
            print(f"{verb} {line}", file=out)
        for line in self.already:
            print(f"already linked {line}", file=out)
        for line in self.ambiguous:
            print(f"ambiguous, not linked: {line}", file=out)
        for line in self.unmatched:
            print(f"unmatched: {line}", file=out)
        print(
            f"{len(self.linked)} {verb}, {len(self.already)} already linked, "
            f"{len(self.refused)} refused, {len(self.ambiguous)} ambiguous, "
            f"{len(self.unmatched)} unmatched",
            file=out,
        )
        for line in self.refused:
            print(f"stripe-sync link: refused: {line}", file=err)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class Linker:
    def __init__(self, api: StripeApi, pool: AsyncConnectionPool, source: str) -> None:
        self.api = api
        self.pool = pool
        self.source = source

    async def listed(self, family: Family) -> AsyncIterator[dict[str, Any]]:
        """Every live object of the family in Stripe, a page at a time."""
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        path = f"/v1/{family.resource}"
        while True:
            response = await call_with_retries(
                self.api,
                f"list {family.resource}",
                lambda: self.api.client.raw_request_async("get", path, **params),
            )
            page = response.data.get("data") or []
            for obj in page:
                yield obj
            if not response.data.get("has_more") or not page:
                return
            params["starting_after"] = page[-1]["id"]

    async def retrieve(self, family: Family, stripe_id: str) -> dict[str, Any] | None:
        path = f"/v1/{family.resource}/{stripe_id}"
        try:
            response = await call_with_retries(
                self.api,
                f"retrieve {stripe_id}",
                lambda: self.api.client.raw_request_async("get", path),
            )
        except PermanentError as exc:
            if "(404" in str(exc):
                return None
            raise
        found: dict[str, Any] = response.data
        return None if found.get("deleted") else found

    def foreign(self, pair: Pair, obj: dict[str, Any]) -> str | None:
        """Why the object's metadata says it is not this MC row's; None when it may be."""
        metadata = obj.get("metadata") or {}
        theirs = metadata.get("mc_source")
        if theirs and theirs != self.source:
            return f"{pair.stripe_id} belongs to another database (mc_source={theirs})"
        key = pair.family.metadata_key or ""
        named = metadata.get(key)
        if theirs and named and named != str(pair.mc_id):
            return f"{pair.stripe_id} names {pair.family.mc_table} id={named} ({key})"
        return None

    async def link(self, pair: Pair, result: LinkResult, obj: dict[str, Any] | None = None) -> bool:
        """Link one pair (or refuse it, with the reason in ``result``); True if linked."""
        if obj is None:
            obj = await self.retrieve(pair.family, pair.stripe_id)
        if obj is None:
            result.refused.append(
                f"{pair.describe()}: no live Stripe {pair.family.noun} {pair.stripe_id}"
            )
            return False
        reason = self.foreign(pair, obj)
        if reason is None and pair.family is PRICES:
            reason = await self._price_product(pair, obj)
        if reason is not None:
            result.refused.append(f"{pair.describe()}: {reason}")
            return False
        try:
            async with self.pool.connection() as conn, conn.transaction():
                reason = await self._write(conn, pair, result)
                if reason is None and result.dry_run:
                    raise _DryRun
        except _DryRun:
            pass
        except psycopg.errors.UniqueViolation:
            reason = "linked by someone else meanwhile"
        if reason is not None:
            if reason != "already":
                result.refused.append(f"{pair.describe()}: {reason}")
            return False
        result.linked.append(pair.describe())
        return True

    async def _price_product(self, pair: Pair, obj: dict[str, Any]) -> str | None:
        """A price's Stripe product must be the one its MC product is linked to."""
        product = obj.get("product")
        product_id = product.get("id") if isinstance(product, dict) else product
        async with self.pool.connection() as conn:
            cur = await conn.execute(queries("link")["price_product"], {"price_id": pair.mc_id})
            row = await cur.fetchone()
        if row is None or row[0] is None or row[0] == product_id:
            return None
        return (
            f"{pair.stripe_id} is a price of {product_id}, but billing.prices "
            f"id={pair.mc_id}'s product is linked to {row[0]}"
        )

    async def _write(
        self, conn: AsyncConnection[Any], pair: Pair, result: LinkResult
    ) -> str | None:
        f = pair.family
        args = {"mc_id": pair.mc_id, "stripe_id": pair.stripe_id}
        if await (await conn.execute(_q(f, "lock_mc_row"), args)).fetchone() is None:
            return f"no {f.mc_table} id={pair.mc_id}"
        mine = await (await conn.execute(_q(f, "mapping_of_mc"), args)).fetchone()
        if mine is not None:
            if mine[0] == pair.stripe_id:
                result.already.append(pair.describe())
                return "already"
            if mine[0] is None:
                return f"a create of it is in flight (its mapping is {mine[1]} without a Stripe id)"
            return f"{f.mc_table} id={pair.mc_id} is already linked to {mine[0]}"
        theirs = await (await conn.execute(_q(f, "mapping_of_stripe"), args)).fetchone()
        if theirs is not None:
            return f"{pair.stripe_id} is already linked to {f.mc_table} id={theirs[0]}"
        await conn.execute(_q(f, "insert_link"), args)
        await conn.execute(
            queries("link")["push_metadata"],
            {"action": f"update_stripe_{f.noun}", "key": f.mc_col, "mc_id": pair.mc_id},
        )
        return None

    async def by_email(self, result: LinkResult, *, metadata: bool = False) -> None:
        """Link unlinked accounts to the one unlinked customer with their email.

        With ``metadata`` (seed's look), a customer carrying this database's
        mc_account_id for the account is its twin first, whatever the email.
        """
        async with self.pool.connection() as conn:
            cur = await conn.execute(_q(CUSTOMERS, "unlinked"), {})
            accounts = [(r[0], r[1]) for r in await cur.fetchall()]
            cur = await conn.execute(_q(CUSTOMERS, "linked_stripe_ids"), {})
            taken = {r[0] for r in await cur.fetchall()}
        if not accounts:
            return
        by_email: dict[str, list[dict[str, Any]]] = defaultdict(list)
        by_metadata: dict[int, list[dict[str, Any]]] = defaultdict(list)
        async for cus in self.listed(CUSTOMERS):
            if cus["id"] in taken:
                continue
            if cus.get("email"):
                by_email[str(cus["email"]).lower()].append(cus)
            named = _named(cus, CUSTOMERS, self.source)
            if named is not None:
                by_metadata[named].append(cus)
        emails = defaultdict(list)
        for account_id, email in accounts:
            emails[email].append(account_id)
        for account_id, email in accounts:
            twins = by_metadata.get(account_id, []) if metadata else []
            if not twins:
                twins = by_email.get(email, [])
                if len(emails[email]) > 1 and twins:
                    result.ambiguous.append(
                        f"{len(emails[email])} accounts ({_ids(emails[email])}) have email {email}"
                    )
                    result.hold("customer", account_id)
                    continue
            if len(twins) > 1:
                ids = ", ".join(c["id"] for c in twins)
                result.ambiguous.append(f"billing.accounts id={account_id} ({email}): {ids}")
                result.hold("customer", account_id)
            elif twins:
                pair = Pair(CUSTOMERS, account_id, twins[0]["id"])
                if await self.link(pair, result, twins[0]):
                    result.hold("customer", account_id)
            else:
                result.unmatched.append(f"billing.accounts id={account_id} ({email})")

    async def catalog_by_metadata(self, family: Family, result: LinkResult) -> None:
        """Seed's look for products and prices: those carrying this database's metadata."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(_q(family, "unlinked_ids"), {})
            unlinked = {r[0] for r in await cur.fetchall()}
        if not unlinked:
            return
        found: dict[int, list[dict[str, Any]]] = defaultdict(list)
        async for obj in self.listed(family):
            named = _named(obj, family, self.source)
            if named is not None and named in unlinked:
                found[named].append(obj)
        for mc_id, twins in sorted(found.items()):
            if len(twins) > 1:
                ids = ", ".join(o["id"] for o in twins)
                result.ambiguous.append(f"{family.mc_table} id={mc_id}: {ids}")
                result.hold(family.noun, mc_id)
            elif await self.link(Pair(family, mc_id, twins[0]["id"]), result, twins[0]):
                result.hold(family.noun, mc_id)


class _DryRun(Exception):
    """Roll the link's writes back."""


def _named(obj: dict[str, Any], family: Family, source: str) -> int | None:
    """The MC id this database's metadata on the object names, if it carries it."""
    metadata = obj.get("metadata") or {}
    value = metadata.get(family.metadata_key or "")
    if metadata.get("mc_source") != source or not isinstance(value, str) or not value.isdigit():
        return None
    return int(value)


def _ids(ids: list[int]) -> str:
    return ", ".join(f"id={i}" for i in ids)


def _q(family: Family, name: str) -> bytes:
    return bound_query(
        "link",
        name,
        mapping=family.table,
        mc_table=family.mc_table,
        mc_col=family.mc_col,
        stripe_col=family.stripe_col,
    )


async def run(
    settings: Settings, pairs: list[Pair], *, by_email: bool, dry_run: bool
) -> LinkResult:
    if not pairs and not by_email:
        raise UsageError("link: give ACCOUNT_ID cus_ID pairs, --product, --price or --by-email")
    result = LinkResult(dry_run)
    async with for_command(settings, "link") as (api, pool):
        linker = Linker(api, pool, await source_of(pool))
        for pair in pairs:
            await linker.link(pair, result)
        if by_email:
            await linker.by_email(result)
    return result


@dataclass
class SeedResult:
    enqueued: int
    looked: bool
    found: LinkResult

    @property
    def exit_code(self) -> int:
        return 0  # a twin not linked is created like any other row

    def render(self, out: TextIO, err: TextIO) -> None:
        if self.looked:
            for line in self.found.linked:
                print(f"linked existing {line}", file=out)
            for line in self.found.ambiguous:
                print(
                    f"not created, ambiguous: {line} (stripe-sync link ID cus_… picks one)",
                    file=out,
                )
            for line in self.found.refused:
                print(f"stripe-sync seed: not linked: {line}", file=err)
        else:
            print(
                "stripe-sync seed: STRIPE_API_KEY unset, so existing Stripe objects were not "
                "looked for (set it to link twins instead of creating duplicates)",
                file=err,
            )
        print(f"enqueued {self.enqueued} outbox row(s) for MC rows without a mapping", file=out)

    def to_json(self) -> str:
        looked = {"enqueued": self.enqueued, "looked": self.looked}
        if not self.looked:
            return json.dumps(looked)
        found = json.loads(self.found.to_json())
        del found["dry_run"]
        return json.dumps({**looked, **found})


async def seed(settings: Settings) -> SeedResult:
    """``stripe-sync seed``: look for each unlinked MC row's twin in Stripe (by
    this database's metadata, or a unique email for accounts) and link it, then
    enqueue creates for the rest, holding back what could not be told apart."""
    settings.require("DATABASE_URL")
    assert settings.database_url is not None
    found = LinkResult(dry_run=False)
    looked = settings.stripe_api_key is not None
    if looked:
        async with for_command(settings, "seed") as (api, pool):
            linker = Linker(api, pool, await source_of(pool))
            await linker.by_email(found, metadata=True)
            found.unmatched.clear()  # those are created below
            for family in (PRODUCTS, PRICES):
                await linker.catalog_by_metadata(family, found)
    held = {noun: sorted(set(ids)) for noun, ids in found.held.items()}
    async with connect(settings.database_url, "seed") as conn:
        cur = await conn.execute(
            queries("link")["seed_holding"],
            {
                "accounts": held.get("customer", []),
                "products": held.get("product", []),
                "prices": held.get("price", []),
            },
        )
        row = await cur.fetchone()
    return SeedResult(int(row[0]) if row and row[0] is not None else 0, looked, found)
