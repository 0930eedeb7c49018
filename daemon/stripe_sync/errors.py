"""How a unit of work failed, which decides what the queue does next."""

from __future__ import annotations


class PermanentError(Exception):
    """Retrying cannot help (bad payload, missing MC row, Stripe 4xx): mark failed now.

    The message is what a DBA reads in ``last_error``: say what and where,
    e.g. ``payload.account_id: expected int, got str``.
    """


class TransientError(Exception):
    """Worth retrying later with backoff (network, 5xx, 429, a mapping not there yet)."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, backoff_base: float | None = None
    ) -> None:
        super().__init__(message)
        # A floor the server asked for (Retry-After).
        self.retry_after = retry_after
        # A smaller first step for waits that usually end soon, e.g. a price
        # whose product is being created right now.
        self.backoff_base = backoff_base


class LeaseLost(Exception):
    """Our claim expired and another daemon owns the row now: roll back, do nothing."""
