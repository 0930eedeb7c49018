"""In-memory object store, id generation and the emulator's clock."""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Callable, Iterator
from typing import Any

from .errors import no_such

JSON = dict[str, Any]

_ALPHABET = string.ascii_letters + string.digits

# Kind name (as used by /_emulator/objects/{kind}) -> id prefix.
PREFIXES: dict[str, str] = {
    "customers": "cus",
    "products": "prod",
    "prices": "price",
    "subscriptions": "sub",
    "subscription_items": "si",
    "invoices": "in",
    "invoice_line_items": "il",
    "invoice_payments": "inpay",
    "payment_intents": "pi",
    "charges": "ch",
    "refunds": "re",
    "events": "evt",
}
KIND_BY_PREFIX = {prefix: kind for kind, prefix in PREFIXES.items()}


def new_id(prefix: str, length: int = 24) -> str:
    """Stripe ids are a prefix plus an opaque random token; tests must not rely on the token."""
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def kind_of_id(object_id: str) -> str | None:
    prefix, _, _ = object_id.partition("_")
    return KIND_BY_PREFIX.get(prefix)


class Clock:
    """Wall time plus an offset tests can advance, so 24 h idempotency expiry and
    subscription periods can be exercised without waiting."""

    def __init__(self, base: Callable[[], float] = time.time, offset: float = 0.0) -> None:
        self._base = base
        self.offset = offset

    def now(self) -> float:
        return self._base() + self.offset

    def timestamp(self) -> int:
        return int(self.now())

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Store:
    """Objects per kind in insertion order; Stripe lists newest first, which is
    reverse insertion order because creation times never go backwards here."""

    def __init__(self) -> None:
        self._objects: dict[str, dict[str, JSON]] = {kind: {} for kind in PREFIXES}
        self.deleted: set[str] = set()

    def clear(self) -> None:
        for objects in self._objects.values():
            objects.clear()
        self.deleted.clear()

    def kinds(self) -> list[str]:
        return list(self._objects)

    def put(self, kind: str, obj: JSON) -> JSON:
        self._objects[kind][obj["id"]] = obj
        return obj

    def get(self, kind: str, object_id: str) -> JSON | None:
        return self._objects[kind].get(object_id)

    def require(self, kind: str, object_id: str, param: str = "id") -> JSON:
        """A live object, or Stripe's 404 naming `param` (deleted objects count as missing)."""
        obj = self._objects[kind].get(object_id)
        if obj is None or object_id in self.deleted:
            # Stripe names the object type in its message: "No such payment_intent: 'pi_…'".
            raise no_such(kind.removesuffix("s"), object_id, param)
        return obj

    def find(self, object_id: str) -> JSON | None:
        kind = kind_of_id(object_id)
        return None if kind is None else self._objects[kind].get(object_id)

    def newest_first(self, kind: str, include_deleted: bool = False) -> Iterator[JSON]:
        for obj in reversed(self._objects[kind].values()):
            if include_deleted or obj["id"] not in self.deleted:
                yield obj

    def all(self, kind: str) -> list[JSON]:
        return list(self._objects[kind].values())

    def count(self, kind: str) -> int:
        return len(self._objects[kind])
