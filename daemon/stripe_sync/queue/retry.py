"""When a row that failed for a passing reason runs again: exponential backoff
with jitter, a server's Retry-After as a floor, and a limit of attempts after
which the row is failed. The worker (``worker.py``) applies it."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..config import DEFAULTS


@dataclass(frozen=True)
class Retry:
    # Unset: the settings' defaults (STRIPE_SYNC_MAX_ATTEMPTS, STRIPE_SYNC_RETRY_*).
    max_attempts: int = DEFAULTS.max_attempts
    base_seconds: float = DEFAULTS.retry_base_seconds
    max_seconds: float = DEFAULTS.retry_max_seconds

    def delay(
        self, attempts: int, retry_after: float | None = None, base: float | None = None
    ) -> float:
        """Exponential backoff with jitter; a server's Retry-After is a floor."""
        step = self.base_seconds if base is None else base
        exp = min(self.max_seconds, step * math.pow(2, max(attempts - 1, 0)))
        delay = exp * random.uniform(0.5, 1.0)
        return max(delay, retry_after or 0.0)
