"""The one shape of the operator commands: an async *collect* (the database,
and Stripe for catch-up and reconcile) returns an :class:`Outcome`, which
renders as text or, with ``--json``, as one JSON object, and names the exit
code. ``cli`` only parses, runs the collect and calls :func:`show`."""

from __future__ import annotations

import sys
from typing import Protocol, TextIO

import msgspec


class Outcome(Protocol):
    @property
    def exit_code(self) -> int: ...

    def render(self, out: TextIO, err: TextIO) -> None:
        """The text an operator reads: results on ``out``, complaints on ``err``."""

    def to_json(self) -> str:
        """One JSON object, for scripts."""


class Record(msgspec.Struct):
    """An outcome whose JSON is its fields."""

    def to_json(self) -> str:
        return msgspec.json.encode(self).decode()


def show(outcome: Outcome, *, json: bool) -> int:
    if json:
        print(outcome.to_json(), flush=True)
    else:
        outcome.render(sys.stdout, sys.stderr)
    return outcome.exit_code
