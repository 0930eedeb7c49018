"""T2 mix: stripe-sync-engine's own sample events (its test fixtures: 69 event types
of charges, customers, disputes, invoices, payments, prices, products, refunds,
subscriptions, ...), POSTed like T2 to ours and to the peer.

The events are the files of tests/data/events/stripe-sync-engine/ (copied with their
license from supabase/stripe-sync-engine), sent in turn, over and over, but for two
that ask the Stripe API about an object only the real Stripe has:
checkout_session_completed.json (the peer fetches the session's line items; the bench
gives it no Stripe) and setup_intent_succeeded.json (it names its payment method by id
alone, so ours fetches it; the emulator answers 404). Each round of the 69 files is a
copy about objects of its own: every Stripe id in it gets a suffix
naming the copy (``cus_123`` → ``cus_123x5``), and every event a unique ``evt_`` id, so
the events of one copy touch each other's objects as the originals do and no two copies
contend for a row. For ours, every customer, product and price a copy names is mapped
(as if the outbox had created it), and its subscriptions, payments and invoices exist
(as earlier events would have left them): every event of a type we sync is applied,
none waits for a reference. Each event's ``created`` is the sample's plus its position
among the samples: the samples give all the events of one object one second (and one
object), which would make every event after an object's first a same-second tie, and
real events of one object are not so. The emulator holds each copy's objects as its newest event
shows them (``stripe_objects``), so what ours asks Stripe (a same-second tie) is answered
as the real Stripe would, not with a 404 for an object it never had. The peer needs
nothing: it upserts what it is sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

SAMPLES = Path(__file__).resolve().parent.parent / "tests/data/events/stripe-sync-engine"
# A Stripe id: a short lower-case prefix, then letters and digits with at least one
# digit or capital ("cus_Mt3..." is elided so in one sample). Statuses like
# "requires_payment_method" have neither, so they stay as they are.
_ID = re.compile(r"^[a-z]{2,7}_[A-Za-z0-9]*[0-9A-Z][A-Za-z0-9]*(\.\.\.)?$")


# The peer or ours asks the Stripe API about these (see above).
LEFT_OUT = {"checkout_session_completed.json", "setup_intent_succeeded.json"}


def samples() -> list[dict[str, Any]]:
    paths = [p for p in sorted(SAMPLES.glob("*.json")) if p.name not in LEFT_OUT]
    events = [json.loads(p.read_text()) for p in paths]
    if not events:
        raise FileNotFoundError(f"no sample events in {SAMPLES}")
    return events


def _suffixed(value: Any, suffix: str) -> Any:
    if isinstance(value, dict):
        return {k: _suffixed(v, suffix) for k, v in value.items()}
    if isinstance(value, list):
        return [_suffixed(v, suffix) for v in value]
    if isinstance(value, str) and _ID.match(value):
        return value + suffix
    return value


def bodies(n: int, tag: str) -> list[bytes]:
    """n event bodies: the samples in turn, each copy about objects of its own."""
    events = samples()
    out: list[bytes] = []
    for i in range(n):
        copy, sample = divmod(i, len(events))
        event = _suffixed(events[sample], f"x{tag}{copy}")
        event["id"] = f"evt_{tag}{i:010d}"
        # The samples give every event of an object the same second and the same
        # object (a dispute's five events, a PaymentIntent's eight): each would be
        # a same-second tie that ours asks Stripe about. Real events of one object
        # are seconds to days apart; a second apart per sample keeps that.
        event["created"] = int(event.get("created") or 0) + sample
        out.append(json.dumps(event, separators=(",", ":")).encode())
    return out


# The kinds whose objects ours may ask Stripe for (a same-second tie, a reference).
_KINDS = {
    "charge": "charges",
    "credit_note": "credit_notes",
    "customer": "customers",
    "dispute": "disputes",
    "invoice": "invoices",
    "payment_intent": "payment_intents",
    "payment_method": "payment_methods",
    "price": "prices",
    "product": "products",
    "refund": "refunds",
    "subscription": "subscriptions",
}


def stripe_objects(bodies: list[bytes]) -> dict[str, list[dict[str, Any]]]:
    """What Stripe would hold for these events' objects, by emulator kind: each
    object as its newest event shows it (by ``created``, the later body on a
    tie). Given to the emulator, a same-second tie or a fetched reference is
    answered as Stripe would, not with a 404 about an object it never had."""
    newest: dict[str, tuple[int, dict[str, Any]]] = {}
    for body in bodies:
        event = json.loads(body)
        obj = event.get("data", {}).get("object", {})
        if obj.get("object") in _KINDS and isinstance(obj.get("id"), str):
            held = newest.get(obj["id"])
            if held is None or event.get("created", 0) >= held[0]:
                newest[obj["id"]] = (event.get("created", 0), obj)
    out: dict[str, list[dict[str, Any]]] = {}
    for _, obj in newest.values():
        out.setdefault(_KINDS[obj["object"]], []).append(obj)
    return out


def _ids(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _ids(v)
    elif isinstance(value, list):
        for v in value:
            yield from _ids(v)
    elif isinstance(value, str) and _ID.match(value):
        yield value


def references(conn: psycopg.Connection[Any], n: int, tag: str) -> None:
    """The rows ours needs for the first n events of ``bodies(n, tag)`` (see above)."""
    events = samples()
    named = {i for event in events for i in _ids(event)}
    copies = -(-n // len(events))

    def each(*prefixes: str) -> list[str]:
        return [
            f"{i}x{tag}{c}"
            for c in range(copies)
            for i in sorted(named)
            if i.split("_", 1)[0] in prefixes
        ]

    account = _one(conn, "INSERT INTO billing.accounts (email) VALUES (%s) RETURNING id",
                   f"mix-{tag}@bench.example")  # fmt: skip
    product = _one(conn, "INSERT INTO billing.products (name) VALUES (%s) RETURNING id",
                   f"mix {tag}")  # fmt: skip
    # Customers and products carry their Stripe id in a text column on the way in.
    conn.execute(
        "WITH a AS (INSERT INTO billing.accounts (email, name) "
        "  SELECT s || '@bench.example', s FROM unnest(%s::text[]) s RETURNING id, name) "
        "INSERT INTO stripe.customer_mappings (account_id, stripe_customer_id, sync_status) "
        "SELECT id, name, 'synced' FROM a",
        [each("cus")],
    )
    conn.execute(
        "WITH p AS (INSERT INTO billing.products (name) "
        "  SELECT s FROM unnest(%s::text[]) s RETURNING id, name) "
        "INSERT INTO stripe.product_mappings (product_id, stripe_product_id, sync_status) "
        "SELECT id, name, 'synced' FROM p",
        [each("prod")],
    )
    born = [
        ("INSERT INTO billing.prices (product_id, currency, unit_amount, recurring_interval) "
         "VALUES (%s, 'usd', 1000, 'month') RETURNING id",
         "INSERT INTO stripe.price_mappings (price_id, stripe_price_id, sync_status) "
         "VALUES (%s, %s, 'synced')", product, ("price", "pl", "plan")),
        ("INSERT INTO billing.subscriptions (account_id, status) VALUES (%s, 'active') "
         "RETURNING id",
         "INSERT INTO stripe.subscription_mappings (subscription_id, stripe_subscription_id) "
         "VALUES (%s, %s)", account, ("sub",)),
        ("INSERT INTO billing.payments (account_id, status, currency, amount, amount_received) "
         "VALUES (%s, 'succeeded', 'usd', 2500, 2500) RETURNING id",
         "INSERT INTO stripe.payment_mappings (payment_id, stripe_payment_intent_id) "
         "VALUES (%s, %s)", account, ("pi",)),
        ("INSERT INTO billing.invoices (account_id, status, currency) VALUES (%s, 'paid', 'usd') "
         "RETURNING id",
         "INSERT INTO stripe.invoice_mappings (invoice_id, stripe_invoice_id) VALUES (%s, %s)",
         account, ("in",)),
    ]  # fmt: skip
    with conn.transaction():
        for insert_row, insert_mapping, owner, prefixes in born:
            for stripe_id in each(*prefixes):
                conn.execute(insert_mapping, [_one(conn, insert_row, owner), stripe_id])


def _one(conn: psycopg.Connection[Any], query: str, *params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])
