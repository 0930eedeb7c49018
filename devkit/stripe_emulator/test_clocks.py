"""Stripe's test clocks (/v1/test_helpers/test_clocks): a frozen time that a
customer, and everything of that customer, lives on.

A customer created with `test_clock` belongs to the clock: while a request
concerns such a customer (names it, or names one of its objects), the
emulator's "now" is the clock's `frozen_time` (`scope`), so its subscriptions,
invoices, payments and the events' `created` all carry the clock's time.
Advancing the clock (renewals.py) runs what falls due in between, in time
order. The clock object itself (`created`, `deletes_after`) and idempotency
keys stay on the emulator's own clock, as on Stripe, where test clocks expire
30 days after creation in real time: a clock is deleted once the emulator's
clock passes its `deletes_after`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import renewals
from .errors import invalid, no_such
from .forms import check_known, get_int, get_str
from .listing import list_objects
from .state import JSON, new_id

if TYPE_CHECKING:
    from .emulator import ApiRequest, Emulator

# Stripe deletes a test clock (and its objects) this long after its creation.
LIFETIME = 30 * 86400
_PREFIX = "/v1/test_helpers/"
# The parameters by which a request names an object that may be on a test clock.
_NAMING = ("test_clock", "customer", "subscription", "invoice", "payment_intent", "charge")


@dataclass
class DunningSettings:
    """What happens after a subscription's renewal payment fails (Stripe's
    Billing settings, "Manage failed payments"): a retry this many days after
    the previous attempt, one per entry (3, 5 and 7: the last retry two weeks
    after the failure, like Stripe's recommended schedule), then the
    subscription ends `canceled`, `unpaid` or stays `past_due`."""

    retry_days: tuple[int, ...] = (3, 5, 7)
    exhausted: str = "canceled"

    def __post_init__(self) -> None:
        if self.exhausted not in ("canceled", "unpaid", "past_due"):
            raise ValueError(f"dunning end must be canceled, unpaid or past_due: {self.exhausted}")
        if any(days <= 0 for days in self.retry_days):
            raise ValueError("dunning retry days must be positive")


@dataclass
class TimeState:
    """The emulator's time machinery besides its clock: the dunning settings,
    which trials were announced (trial_will_end is sent once), the invoices of
    each subscription still to be finalized or retried, and the payment intent
    each invoice's attempts reuse."""

    dunning: DunningSettings = field(default_factory=DunningSettings)
    trial_warned: set[str] = field(default_factory=set)
    collecting: dict[str, list[str]] = field(default_factory=dict)
    invoice_intents: dict[str, str] = field(default_factory=dict)

    def clear(self) -> None:
        self.trial_warned.clear()
        self.collecting.clear()
        self.invoice_intents.clear()


def clock_object(clock_id: str, created: int, frozen: int, name: str | None, live: bool) -> JSON:
    return {
        "id": clock_id,
        "object": "test_helpers.test_clock",
        "created": created,
        "deletes_after": created + LIFETIME,
        "frozen_time": frozen,
        "livemode": live,
        "name": name,
        "status": "ready",
        "status_details": {},
    }


# -- whose time a request runs on --------------------------------------------------------
def clock_of(emu: Emulator, object_id: Any) -> JSON | None:
    """The live test clock `object_id` belongs to: a clock itself, a customer on one,
    or an object whose `customer` is on one."""
    if not isinstance(object_id, str) or not object_id:
        return None
    obj = emu.store.find(object_id)
    if obj is None:
        return None
    if obj["object"] != "customer" and obj["object"] != "test_helpers.test_clock":
        customer = obj.get("customer")
        obj = emu.store.find(customer) if isinstance(customer, str) else None
        if obj is None:
            return None
    clock_id = obj["id"] if obj["object"] == "test_helpers.test_clock" else obj.get("test_clock")
    if clock_id is None or clock_id in emu.store.deleted:
        return None
    return emu.store.get("test_clocks", clock_id)


@contextmanager
def scope(emu: Emulator, req: ApiRequest) -> Iterator[None]:
    """Run the request on the time of the test clock it concerns, if any."""
    expire(emu)
    clock = None
    if not req.path.startswith(_PREFIX):
        named = (req.params.get(name) for name in _NAMING)
        for candidate in (*named, *req.path_params.values()):
            clock = clock_of(emu, candidate)
            if clock is not None:
                break
    if clock is None:
        yield
        return
    with emu.frozen_at(clock["frozen_time"]):
        yield


def expire(emu: Emulator) -> None:
    """Delete the clocks whose deletes_after the emulator's clock has passed."""
    now = emu.clock.timestamp()
    for clock in list(emu.store.newest_first("test_clocks")):
        if clock["deletes_after"] <= now:
            _delete(emu, None, clock)


def for_new_customer(emu: Emulator, params: dict[str, Any]) -> str | None:
    """The `test_clock` a new customer is created on (checked), or None."""
    clock_id = get_str(params, "test_clock")
    if clock_id is None:
        return None
    clock = emu.store.get("test_clocks", clock_id)
    if clock is None or clock_id in emu.store.deleted:
        raise no_such("test_helpers.test_clock", clock_id, "test_clock")
    return clock_id


# -- the API -----------------------------------------------------------------------------
def create_clock(emu: Emulator, req: ApiRequest) -> JSON:
    p = req.params
    check_known(p, {"frozen_time", "name"})
    frozen = get_int(p, "frozen_time", required=True) or 0
    name = get_str(p, "name")
    if name is not None and len(name) > 300:
        raise invalid("name", "Name must be at most 300 characters.", "parameter_invalid_string")
    clock = clock_object(new_id("clock"), emu.now(), frozen, name, req.livemode)
    emu.store.put("test_clocks", clock)
    emu.record_event(req, "test_helpers.test_clock.created", clock)
    return clock


def retrieve_clock(emu: Emulator, req: ApiRequest) -> JSON:
    return _require(emu, req.path_params["test_clock"])


def list_clocks(emu: Emulator, req: ApiRequest) -> JSON:
    listed = list_objects(emu.store, req.params, "test_clocks")
    listed["url"] = "/v1/test_helpers/test_clocks"
    return listed


def delete_clock(emu: Emulator, req: ApiRequest) -> JSON:
    clock = _require(emu, req.path_params["test_clock"])
    _delete(emu, req, clock)
    return {"id": clock["id"], "object": "test_helpers.test_clock", "deleted": True}


def _delete(emu: Emulator, req: ApiRequest | None, clock: JSON) -> None:
    """The clock and, as on Stripe, its customers go away."""
    emu.store.deleted.add(clock["id"])
    for cus in emu.store.all("customers"):
        if cus.get("test_clock") == clock["id"]:
            emu.store.deleted.add(cus["id"])
    emu.record_event(req, "test_helpers.test_clock.deleted", clock)


def advance_clock(emu: Emulator, req: ApiRequest) -> JSON:
    """Move the clock to `frozen_time`, running what falls due on its way in time
    order. Stripe does this asynchronously (status `advancing`, then `ready`);
    the emulator does it within the request and answers with the clock as the
    advance started, so a client polling for `ready` finds it at once."""
    clock = _require(emu, req.path_params["test_clock"])
    check_known(req.params, {"frozen_time"})
    target = get_int(req.params, "frozen_time", required=True) or 0
    if target <= clock["frozen_time"]:
        raise invalid(
            "frozen_time",
            "The frozen_time must be after the test clock's current frozen_time "
            f"({clock['frozen_time']}).",
            "parameter_invalid_integer",
        )
    limit = renewals.advance_limit(emu, clock)
    if target > limit:
        raise invalid(
            "frozen_time",
            "Cannot advance the test clock more than two intervals of the shortest "
            f"subscription on it (or two years when it has none): the latest frozen_time "
            f"allowed is {limit}.",
            "parameter_invalid_integer",
        )
    clock.update(status="advancing", status_details={"advancing": {"target_frozen_time": target}})
    emu.record_event(req, "test_helpers.test_clock.advancing", clock)
    answer = dict(clock)
    renewals.run_until(emu, clock, target)
    clock.update(frozen_time=target, status="ready", status_details={})
    emu.record_event(req, "test_helpers.test_clock.ready", clock)
    return answer


def _require(emu: Emulator, clock_id: str) -> JSON:
    clock = emu.store.get("test_clocks", clock_id)
    if clock is None or clock_id in emu.store.deleted:
        raise no_such("test_helpers.test_clock", clock_id, "test_clock")
    return clock


ROUTES = [
    ("POST", "/v1/test_helpers/test_clocks", create_clock),
    ("GET", "/v1/test_helpers/test_clocks", list_clocks),
    ("GET", "/v1/test_helpers/test_clocks/{test_clock}", retrieve_clock),
    ("DELETE", "/v1/test_helpers/test_clocks/{test_clock}", delete_clock),
    ("POST", "/v1/test_helpers/test_clocks/{test_clock}/advance", advance_clock),
]
