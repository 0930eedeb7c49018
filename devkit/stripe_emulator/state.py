"""In-memory object store (with its metadata index), id generation, snapshots and the
emulator's clock."""

from __future__ import annotations

import os
import string
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

from .errors import no_such

JSON = dict[str, Any]

# The kinds of object the store keeps, as named by /_emulator/objects/{kind}; Stripe's
# object type is the singular ("payment_intents" -> "No such payment_intent").
KINDS = (
    "customers",
    "products",
    "prices",
    "subscriptions",
    "subscription_items",
    "invoices",
    "invoice_line_items",
    "invoice_payments",
    "payment_intents",
    "charges",
    "refunds",
    "disputes",
    "payment_methods",
    "setup_intents",
    "credit_notes",
    "invoiceitems",
    "webhook_endpoints",
    "test_clocks",
    "events",
)

# Random bytes -> id characters in one C call (the slight bias of 256 % 62 does not matter
# for ids that only have to be unique).
_ALPHABET = (string.ascii_letters + string.digits).encode()
_ID_TABLE = bytes(_ALPHABET[i % len(_ALPHABET)] for i in range(256))

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def new_id(prefix: str, length: int = 24) -> str:
    """Stripe ids are a prefix plus an opaque random token; tests must not rely on the token."""
    return f"{prefix}_{os.urandom(length).translate(_ID_TABLE).decode()}"


def snapshot(obj: JSON) -> JSON:
    """A deep copy of a JSON object (an event's data.object, an update's "before"):
    a round trip through msgspec is several times cheaper than copy.deepcopy."""
    copied: JSON = _decoder.decode(_encoder.encode(obj))
    return copied


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


class State:
    """Objects per kind in insertion order; Stripe lists newest first, which is
    reverse insertion order because creation times never go backwards here.

    Metadata is indexed (kind, key, lower-cased value) -> ids, so a search by metadata
    reads the few objects that can match instead of every object of the kind. Entries
    are only ever added (on `put` and `reindex`), so an entry may be stale after an
    update changed or removed the value: searches re-check every candidate.
    """

    def __init__(self) -> None:
        self._objects: dict[str, dict[str, JSON]] = {kind: {} for kind in KINDS}
        self._kind_of: dict[str, str] = {}
        self._position: dict[str, int] = {}
        self._metadata: dict[tuple[str, str, str], set[str]] = {}
        self.deleted: set[str] = set()
        # Payment methods detached from their customer: Stripe refuses to use them again.
        self.spent: set[str] = set()

    def clear(self) -> None:
        for objects in self._objects.values():
            objects.clear()
        self._kind_of.clear()
        self._position.clear()
        self._metadata.clear()
        self.deleted.clear()
        self.spent.clear()

    def kinds(self) -> list[str]:
        return list(self._objects)

    def put(self, kind: str, obj: JSON) -> JSON:
        object_id = obj["id"]
        self._objects[kind][object_id] = obj
        self._kind_of[object_id] = kind
        self._position[object_id] = len(self._position)
        self._index(kind, obj)
        return obj

    def reindex(self, obj: JSON) -> None:
        """Index an object's metadata again after an update may have changed it."""
        kind = self._kind_of.get(obj["id"])
        if kind is not None:
            self._index(kind, obj)

    def _index(self, kind: str, obj: JSON) -> None:
        for key, value in (obj.get("metadata") or {}).items():
            self._metadata.setdefault((kind, key, str(value).lower()), set()).add(obj["id"])

    def with_metadata(self, kind: str, key: str, value: str) -> list[JSON]:
        """Live objects that may have metadata[key] == value (case-insensitively), newest
        first; a superset: callers check the value."""
        ids = self._metadata.get((kind, key, value.lower()), ())
        objects = self._objects[kind]
        found = [objects[i] for i in ids if i in objects and i not in self.deleted]
        found.sort(key=lambda obj: self._position[obj["id"]], reverse=True)
        return found

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
        """Any object by id, whatever its kind (for `expand`)."""
        kind = self._kind_of.get(object_id)
        return None if kind is None else self._objects[kind].get(object_id)

    def newest_first(self, kind: str, include_deleted: bool = False) -> Iterator[JSON]:
        for obj in reversed(self._objects[kind].values()):
            if include_deleted or obj["id"] not in self.deleted:
                yield obj

    def all(self, kind: str) -> Iterable[JSON]:
        return self._objects[kind].values()

    def count(self, kind: str) -> int:
        return len(self._objects[kind])
