"""Scriptable faults (per endpoint, next-N or by seeded probability) and the
optional enforced rate limit.

Where each fault strikes, as seen from Stripe's layers: `rate_limit`, `drop` and a
plain `500`/`503` come from in front of the API (nothing executed, nothing saved under
the idempotency key); a `500`/`503` with `stored` comes from inside the endpoint (the
response is saved under the key and replayed for 24 hours, and with `created` the
object and its events came into being first); `latency` holds the request before
it executes, or with `executing` after it began executing (its idempotency key is
taken: another request with that key meanwhile gets Stripe's 409
`idempotency_key_in_use`); `applied_response_lost` executes and saves, then drops
the connection before the response; `403` is a restricted key's refusal of an
endpoint it has no permission for (nothing executed).
"""

from __future__ import annotations

import fnmatch
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("rate_limit", "500", "503", "latency", "drop", "applied_response_lost", "403")
SERVER_ERRORS = ("500", "503")


@dataclass
class FaultRule:
    kind: str
    method: str = "*"
    path: str = "*"
    count: int | None = 1
    rate: float | None = None
    seconds: float = 0.0
    stored: bool = False
    created: bool = False
    executing: bool = False
    hits: int = field(default=0)

    def matches(self, method: str, path: str, template: str) -> bool:
        if self.method not in ("*", method):
            return False
        return fnmatch.fnmatchcase(template, self.path) or fnmatch.fnmatchcase(path, self.path)


def parse_rule(spec: dict[str, Any]) -> FaultRule:
    """JSON shape: {"kind": "500", "endpoint": "POST /v1/customers", "count": 2},
    {"kind": "rate_limit", "rate": 0.1} (rate rules apply until cleared), or
    {"kind": "500", "endpoint": "POST /v1/customers", "stored": true, "created": true},
    {"kind": "latency", "seconds": 2, "executing": true}."""
    kind = str(spec["kind"])
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {KINDS}")
    stored, created = spec.get("stored", False), spec.get("created", False)
    executing = spec.get("executing", False)
    for name, flag in (("stored", stored), ("created", created), ("executing", executing)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be true or false, got {flag!r}")
    if executing and kind != "latency":
        raise ValueError(f"executing applies to the latency fault, not {kind!r}")
    if (stored or created) and kind not in SERVER_ERRORS:
        raise ValueError(f"stored and created apply to the {SERVER_ERRORS} faults, not {kind!r}")
    if created and not stored:
        raise ValueError("created needs stored: a 500 in front of the API executes nothing")
    method, path = "*", "*"
    endpoint = spec.get("endpoint")
    if endpoint:
        method, _, path = str(endpoint).strip().partition(" ")
        if not path:
            method, path = "*", method
    rate = spec.get("rate")
    count = spec.get("count", None if rate is not None else 1)
    return FaultRule(
        kind=kind,
        method=method.upper() if method != "*" else "*",
        path=path.strip() or "*",
        count=None if count is None else int(count),
        rate=None if rate is None else float(rate),
        seconds=float(spec.get("seconds", 0.0)),
        stored=stored,
        created=created,
        executing=executing,
    )


class Faults:
    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._rng = random.Random(seed)
        self.seed = seed

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._rng = random.Random(self.seed)

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def triggered(self, method: str, path: str, template: str) -> list[FaultRule]:
        """Rules firing for this request, consuming next-N counts; exhausted rules go away."""
        fired: list[FaultRule] = []
        if not self._rules:  # the usual case; a racing add applies from the next request
            return fired
        with self._lock:
            for rule in list(self._rules):
                if not rule.matches(method, path, template):
                    continue
                if rule.rate is not None and self._rng.random() >= rule.rate:
                    continue
                rule.hits += 1
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count <= 0:
                        self._rules.remove(rule)
                fired.append(rule)
        return fired


class RateLimiter:
    """Stripe's request rate limiter: a token bucket (Stripe's engineering blog,
    "Scaling your API with rate limiters"), one second's worth of requests deep,
    refilled at the limit.

    A client paced just under the limit keeps the bucket nearly full, so network
    jitter that bunches a few of its requests is absorbed, as at Stripe; a client
    faster than the limit empties it within seconds and is refused.
    """

    def __init__(
        self, per_second: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second = per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(per_second or 0)
        self._last = clock()

    def reset(self) -> None:
        with self._lock:
            self._tokens = float(self.per_second or 0)
            self._last = self._clock()

    def allow(self) -> bool:
        if not self.per_second:
            return True
        now = self._clock()
        with self._lock:
            refill = (now - self._last) * self.per_second
            self._tokens = min(float(self.per_second), self._tokens + refill)
            self._last = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True
        now = time.monotonic()
        with self._lock:
            while self._hits and now - self._hits[0] >= 1.0:
                self._hits.popleft()
            if len(self._hits) >= self.per_second:
                return False
            self._hits.append(now)
            return True
