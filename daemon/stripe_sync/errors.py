"""The program's errors and how they are worded.

:class:`StripeSyncError` is the base of every error that ends a command with
one line for the operator and an exit code (``cli.main`` maps them; nothing
else there sorts exceptions). :class:`PermanentError` and
:class:`TransientError` also say how a unit of work failed, which decides
what the queue does next. :func:`one_line` and :func:`validation_parts` word
foreign exceptions (psycopg's, msgspec's) the same way everywhere.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

EX_FAILURE = 1
EX_CONFIG = 78  # sysexits.h EX_CONFIG; the systemd unit does not restart on it


class StripeSyncError(Exception):
    """Ends a command: :meth:`line` on stderr and :attr:`exit_code`.

    The message is all the operator reads: name the variable, table or file.
    """

    exit_code: int = EX_FAILURE
    # Between "stripe-sync: " and the message, e.g. "configuration error: ".
    label: ClassVar[str] = ""

    def line(self) -> str:
        return f"stripe-sync: {self.label}{str(self).strip()}"


class UsageError(StripeSyncError):
    """A command line that cannot be carried out as written (exit 2, as argparse)."""

    exit_code = 2


class CommandStopped(StripeSyncError):
    """Stripe or the database stopped an operator command midway (catch-up, reconcile)."""

    def __init__(self, command: str, cause: BaseException, exit_code: int) -> None:
        super().__init__(str(cause))
        self.command = command
        self.exit_code = exit_code

    def line(self) -> str:
        return f"stripe-sync {self.command}: {str(self).strip()}"


class PermanentError(StripeSyncError):
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


class TransientError(StripeSyncError):
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


def one_line(exc: BaseException) -> str:
    """``TypeName: the message`` on one line, for logs and ``last_error``."""
    return f"{type(exc).__name__}: {joined(str(exc))}"


def joined(text: str) -> str:
    """A message's lines joined, whole: Stripe's break mid-sentence ("If this problem
    persists,⏎let us know…"). PostgreSQL's quoted-SQL context (``LINE 4: …`` and
    the caret under it) is left out."""
    lines = (line.strip() for line in text.splitlines())
    return " ".join(
        line for line in lines if line and not line.startswith("LINE ") and set(line) != {"^"}
    )


def validation_parts(exc: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's ``Expected `int`, got `str` - at `$.a[0]``` as (the text, ``.a[0]``).

    The path is ``""`` when the error is about the whole document; each caller
    puts its own root in front (``payload``, ``event``, the variable's name).
    """
    text, _, where = str(exc).partition(" - at `$")
    return text, where.rstrip("`")
