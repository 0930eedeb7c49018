"""The `Emulator` handle: state, clock, faults, webhooks, request statistics, and
the v1 dispatcher the ASGI app calls."""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec

from . import (
    cards,
    catalog,
    credit_notes,
    customers,
    errors,
    events,
    invoice_items,
    payments,
    renewals,
    subscriptions,
    test_clocks,
    webhook_endpoints,
)
from .errors import StripeError
from .faults import FaultRule, Faults, RateLimiter, parse_rule
from .idempotency import IdempotencyStore
from .listing import previous_attributes
from .state import JSON, Clock, State, new_id, snapshot


def _default_api_version() -> str:
    # The SDK pins the version it was generated for; matching it keeps typed access happy.
    try:
        from stripe import _api_version

        return str(_api_version._ApiVersion.CURRENT)
    except Exception:  # pragma: no cover - stripe is a dependency, but stay usable without it
        return "2025-03-31.basil"


@dataclass
class EmulatorConfig:
    account_id: str = "acct_emulator0000000000"
    account_name: str | None = "stripe-sync emulator"
    api_version: str = field(default_factory=_default_api_version)
    # None: any sk_test_/rk_test_ key works; otherwise only these keys.
    allowed_keys: set[str] | None = None
    # Accept sk_live_/rk_live_ keys (objects then carry livemode=true).
    allow_live: bool = False
    rate_limit: int | None = None
    latency: float = 0.0
    # Seconds before a new object shows in search results (by its created
    # second), as Stripe's search index lags writes ("under 1 minute").
    search_lag: float = 0.0
    seed: int = 0
    # Keep the arrival times of the last N API requests for
    # GET /_emulator/request_log (benchmarks); 0: off, nothing is recorded.
    request_log: int = 0
    # After a renewal payment fails: retries this many days after the previous
    # attempt, then the subscription ends so (test_clocks.DunningSettings).
    dunning_retry_days: tuple[int, ...] = (3, 5, 7)
    dunning_end: str = "canceled"


@dataclass
class ApiRequest:
    method: str
    path: str
    template: str
    params: dict[str, Any]
    path_params: dict[str, str]
    request_id: str
    idempotency_key: str | None
    api_key: str
    livemode: bool


@dataclass(frozen=True)
class LoggedRequest:
    """One API request as it arrived: ``t`` is time.monotonic() when the app got it,
    comparable across processes (CLOCK_MONOTONIC), so a benchmark can time the
    path from its own COMMIT to here."""

    t: float
    method: str
    path: str
    idempotency_key: str | None
    metadata: dict[str, Any]


# One v1 API operation (e.g. create a customer): the request in, the response body out,
# or a StripeError raised.
Operation = Callable[["Emulator", ApiRequest], JSON]


@dataclass(frozen=True)
class ApiRoute:
    """`template` as in the ROUTES tables ("/v1/customers/{id}"), split into segments."""

    method: str
    template: str
    segments: tuple[str, ...]
    operation: Operation

    def match(self, parts: list[str]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        for segment, part in zip(self.segments, parts, strict=True):
            if segment[:1] == "{":
                if not part:
                    return None
                params[segment[1:-1]] = part
            elif segment != part:
                return None
        return params


# By method and number of segments, each list in table order (so /v1/customers/search
# is tried before /v1/customers/{id}).
_ROUTES: dict[tuple[str, int], list[ApiRoute]] = {}
for _module in (
    customers,
    catalog,
    subscriptions,
    payments,
    cards,
    credit_notes,
    webhook_endpoints,
    test_clocks,
    invoice_items,
):
    for _method, _template, _operation in _module.ROUTES:
        _segments = tuple(_template.split("/"))
        _ROUTES.setdefault((_method, len(_segments)), []).append(
            ApiRoute(_method, _template, _segments, _operation)
        )


def match_route(method: str, path: str) -> tuple[ApiRoute | None, dict[str, str]]:
    parts = path.split("/")
    for route in _ROUTES.get((method, len(parts)), ()):
        params = route.match(parts)
        if params is not None:
            return route, params
    return None, {}


class Emulator:
    def __init__(self, config: EmulatorConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.clock = clock or Clock()
        self._start_offset = self.clock.offset  # what reset() returns the clock to
        self.lock = threading.RLock()
        self.store = State()
        self.idempotency = IdempotencyStore()
        self.faults = Faults(self.config.seed)
        self.rate_limiter = RateLimiter(self.config.rate_limit)
        self.webhooks = events.Dispatcher(self._delivery_result, self.config.seed)
        self.request_counts: Counter[str] = Counter()
        self.total_requests = 0
        self.rate_limited_requests = 0
        self.requests_in_flight = 0  # maintained by the app
        self.search_lag = self.config.search_lag  # tests may change it; reset restores it
        # Bounded, appended to without the state lock (deque.append is atomic).
        self.request_log: deque[LoggedRequest] | None = (
            deque(maxlen=self.config.request_log) if self.config.request_log > 0 else None
        )
        self._pending: dict[str, set[str]] = {}
        self._failed: dict[str, set[str]] = {}
        # Sees each accepted request with its response (method, route template,
        # params, body): the tests hold them to Stripe's OpenAPI spec with it.
        self.observer: Callable[[str, str, dict[str, Any], bytes], None] | None = None
        self.created_at = self.clock.timestamp()
        # False while history.seed_history writes objects "made before MC": Stripe
        # keeps events for 30 days, and no endpoint existed to be sent them.
        self.recording = True
        # Set while a request or an advance runs on a test clock's time (now()).
        self._frozen: int | None = None
        self.time = self._time_state()

    # -- control -----------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all objects, events, keys, faults, endpoints and counters, and
        undo any advance of the clock (a test's time travel must not leak into the next)."""
        with self.lock:
            self.clock.offset = self._start_offset
            self.recording = True
            self.store.clear()
            self.search_lag = self.config.search_lag
            self.idempotency.clear()
            self.faults.clear()
            self.rate_limiter.reset()
            self.request_counts.clear()
            self.total_requests = 0
            self.rate_limited_requests = 0
            if self.request_log is not None:
                self.request_log.clear()
            self._pending.clear()
            self._failed.clear()
            self.time = self._time_state()
        self.webhooks.reset()

    def _time_state(self) -> test_clocks.TimeState:
        dunning = test_clocks.DunningSettings(
            tuple(self.config.dunning_retry_days), self.config.dunning_end
        )
        return test_clocks.TimeState(dunning)

    def add_fault(
        self,
        kind: str,
        endpoint: str | None = None,
        *,
        count: int | None = None,
        rate: float | None = None,
        seconds: float = 0.0,
        stored: bool = False,
        created: bool = False,
        executing: bool = False,
    ) -> FaultRule:
        """e.g. add_fault("500", "POST /v1/customers", count=2), add_fault("drop", rate=0.1),
        add_fault("500", "POST /v1/customers", stored=True, created=True) or
        add_fault("latency", "POST /v1/customers", seconds=2, executing=True) (faults.py)."""
        spec: dict[str, Any] = {
            "kind": kind,
            "endpoint": endpoint,
            "seconds": seconds,
            "stored": stored,
            "created": created,
            "executing": executing,
        }
        if count is not None:
            spec["count"] = count
        if rate is not None:
            spec["rate"] = rate
        return self.faults.add(parse_rule(spec))

    def clear_faults(self) -> None:
        self.faults.clear()

    def searchable_until(self) -> float | None:
        """Objects created after this (emulator clock) are not searchable yet; None: all are."""
        return self.clock.now() - self.search_lag if self.search_lag > 0 else None

    def set_rate_limit(self, per_second: int | None) -> None:
        self.rate_limiter.per_second = per_second
        self.rate_limiter.reset()

    def add_webhook_endpoint(
        self, url: str, secrets: list[str] | str, **options: Any
    ) -> events.WebhookEndpoint:
        secret_list = [secrets] if isinstance(secrets, str) else list(secrets)
        return self.webhooks.add_endpoint(events.make_endpoint(url, secret_list, **options))

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator's clock (Stripe's real time): idempotency keys expire by
        it, and moving it forward renews, ends and retries the subscriptions on no
        test clock as a test clock's advance does for its own (renewals.py)."""
        with self.lock:
            since = self.clock.timestamp()
            self.clock.advance(seconds)
            if seconds > 0:
                renewals.run_real_time(self, since, self.clock.timestamp())

    def objects(self, kind: str) -> list[JSON]:
        """Every object of a kind (e.g. "customers"), deleted ones flagged `deleted: true`."""
        with self.lock:
            if kind not in self.store.kinds():
                raise KeyError(kind)
            result = []
            for obj in self.store.all(kind):
                item = snapshot(obj)
                if obj["id"] in self.store.deleted:
                    item["deleted"] = True
                result.append(item)
            return result

    def count(self, kind: str, include_deleted: bool = False) -> int:
        with self.lock:
            return sum(
                1
                for obj in self.store.all(kind)
                if include_deleted or obj["id"] not in self.store.deleted
            )

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "total": self.total_requests,
                "rate_limited": self.rate_limited_requests,
                "counts": dict(self.request_counts),
            }

    def put_objects(self, kind: str, objects: list[JSON]) -> int:
        """Hold ``objects`` of a kind (e.g. "disputes") as Stripe would, made
        outside this emulator (recorded events' objects, for a benchmark); an
        object with the same id is replaced. No events are sent."""
        if kind not in self.store.kinds():
            raise KeyError(kind)
        for obj in objects:
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                raise ValueError(f"each {kind} object needs a string id")
        with self.lock:
            for obj in objects:
                self.store.put(kind, copy.deepcopy(obj))
        return len(objects)

    def events_of_type(self, event_type: str) -> list[JSON]:
        with self.lock:
            return [snapshot(e) for e in self.store.all("events") if e["type"] == event_type]

    def wait_requests_idle(self, timeout: float = 10.0) -> bool:
        """Wait (from another thread) until no API request is being handled."""
        deadline = time.monotonic() + timeout
        while self.requests_in_flight > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def wait_webhooks_idle(self, timeout: float = 5.0) -> bool:
        return self.webhooks.wait_idle(timeout)

    # -- used by the app -------------------------------------------------------------
    def count_request(self, method: str, template: str) -> None:
        with self.lock:
            self.total_requests += 1
            self.request_counts[f"{method} {template}"] += 1

    def log_request(self, req: LoggedRequest) -> None:
        if self.request_log is not None:
            self.request_log.append(req)

    def logged_requests(self, since: float = 0.0) -> list[LoggedRequest]:
        """Logged requests that arrived after ``since`` (time.monotonic()), oldest first."""
        if self.request_log is None:
            return []
        return [r for r in list(self.request_log) if r.t > since]

    def count_rate_limited(self) -> None:
        with self.lock:
            self.rate_limited_requests += 1

    def dispatch(self, req: ApiRequest, route: ApiRoute | None) -> tuple[int, bytes]:
        """Run the request's operation (`route` from match_route) under the state lock:
        the status and the encoded body."""
        if route is None:
            err = errors.unrecognized_url(req.method, req.path)
            return err.status, encode(err.body())
        with self.lock:
            try:
                with test_clocks.scope(self, req):
                    body = route.operation(self, req)
            except StripeError as err:
                return err.status, encode(err.body())
            expand = [str(p) for p in _as_list(req.params.get("expand"))]
            if expand or _has_includable(body):
                body = snapshot(body)
                _hide_includable(body, expand)
                for path in expand:
                    self._expand(body, path.split("."))
            return 200, encode(body)

    # -- helpers for resource modules ------------------------------------------------
    def now(self) -> int:
        """The time new objects and events get: the test clock's frozen time while
        working for one of its customers, else the emulator's clock."""
        return self._frozen if self._frozen is not None else self.clock.timestamp()

    @contextmanager
    def frozen_at(self, timestamp: int) -> Iterator[None]:
        outer, self._frozen = self._frozen, timestamp
        try:
            yield
        finally:
            self._frozen = outer

    @contextmanager
    def updating(self, req: ApiRequest | None, obj: JSON, event_type: str) -> Iterator[None]:
        """Wrap an update of `obj`: when any top-level field changed, emit `event_type`
        with its previous_attributes, and bump `updated` where the object has one
        (products)."""
        before = snapshot(obj)
        yield
        changed = previous_attributes(before, obj)
        if changed:
            if "updated" in obj:
                obj["updated"] = self.now()
            if "metadata" in changed:
                self.store.reindex(obj)
            self.record_event(req, event_type, obj, changed)

    def record_event(
        self,
        req: ApiRequest | None,
        event_type: str,
        obj: JSON,
        previous: JSON | None = None,
    ) -> JSON:
        if not self.recording:
            return {"id": None, "object": "event", "type": event_type}
        targets = self.webhooks.targets(event_type)
        data: JSON = {"object": snapshot(obj)}
        _hide_includable(data["object"], [])  # events never carry includable fields
        if previous is not None:
            # Already a copy: previous_attributes takes its values from a snapshot.
            data["previous_attributes"] = previous
        event: JSON = {
            "id": new_id("evt"),
            "object": "event",
            "api_version": self.config.api_version,
            "created": self.now(),
            "data": data,
            "livemode": bool(obj.get("livemode", req.livemode if req else False)),
            "pending_webhooks": len(targets),
            "request": {
                "id": req.request_id if req else None,
                "idempotency_key": req.idempotency_key if req else None,
            },
            "type": event_type,
        }
        self.store.put("events", event)
        self._pending[event["id"]] = set(targets)
        webhook_endpoints.enqueue(self, event, targets)
        return event

    def delivery_failed(self, event_id: str) -> bool:
        return bool(self._failed.get(event_id))

    def _delivery_result(self, event_id: str, endpoint_id: str, ok: bool) -> None:
        with self.lock:
            event = self.store.get("events", event_id)
            pending = self._pending.get(event_id)
            if event is None or pending is None:
                return
            if ok:
                pending.discard(endpoint_id)
                self._failed.get(event_id, set()).discard(endpoint_id)
            else:
                self._failed.setdefault(event_id, set()).add(endpoint_id)
            event["pending_webhooks"] = len(pending)

    def _expand(self, node: Any, parts: list[str]) -> None:
        if not parts:
            return
        if isinstance(node, list):
            for item in node:
                self._expand(item, parts)
            return
        if not isinstance(node, dict) or parts[0] not in node:
            return
        key = parts[0]
        value = node[key]
        if isinstance(value, str):
            target = self.store.find(value)
            if target is not None:
                value = snapshot(target)
                _hide_includable(value, [".".join(parts[1:])])
                if target["id"] in self.store.deleted:
                    value = {"id": target["id"], "object": target["object"], "deleted": True}
                node[key] = value
        self._expand(value, parts[1:])


# Fields Stripe leaves out unless asked for with `expand` ("includable"), by object
# type: since API 2025-03-31 an invoice's payments, which no webhook event carries.
INCLUDABLE = {"invoice": ("payments",)}


def _includable(obj: Any) -> tuple[str, ...]:
    return INCLUDABLE.get(obj.get("object", ""), ()) if isinstance(obj, dict) else ()


def _has_includable(body: JSON) -> bool:
    items = body.get("data") if body.get("object") in ("list", "search_result") else [body]
    return any(_includable(o) for o in items or ())


def _hide_includable(body: JSON, expand: list[str]) -> None:
    """Drop includable fields of the object (or of a list's objects) unless expanded."""
    if body.get("object") in ("list", "search_result"):
        items, prefix = body.get("data") or [], "data."
    else:
        items, prefix = [body], ""
    for obj in items:
        for name in _includable(obj):
            if f"{prefix}{name}" not in expand:
                obj.pop(name, None)


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


_encoder = msgspec.json.Encoder()


def encode(body: JSON) -> bytes:
    """JSON as Stripe sends it, indented by two spaces (responses and webhook bodies)."""
    return msgspec.json.format(_encoder.encode(body), indent=2)
