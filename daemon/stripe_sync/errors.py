"""How a unit of work failed, which decides what the queue does next."""

from __future__ import annotations


class PermanentError(Exception):
    """Retrying cannot help (bad payload, missing MC row, Stripe 4xx): mark failed now.

    The message is what a DBA reads in ``last_error``: say what and where,
    e.g. ``payload.account_id: expected int, got str``.
    """


class SavedFailure(PermanentError):
    """Stripe answered 5xx and saved that answer under the request's idempotency
    key (``Stripe-Should-Retry: false``, or ``Idempotent-Replayed: true`` on the
    replay): every retry with the key gets it again for 24 hours.

    The outcome is unknown (the object may or may not exist) and that key cannot
    tell more. Permanent for a caller that knows no better; the outbox executors
    act on it (outbox/common.py: search and adopt, or a new key).
    """

    def __init__(self, message: str, *, replayed: bool) -> None:
        super().__init__(message)
        self.replayed = replayed  # this answer was a replay, not the first of the key


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
