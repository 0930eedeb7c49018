"""One exception base: ``main`` turns every StripeSyncError, from whichever module,
into its one line and exit code, and lets anything else through."""

from __future__ import annotations

import argparse

import msgspec
import pytest

from stripe_sync import cli
from stripe_sync.config import ConfigError
from stripe_sync.errors import TransientError, one_line, validation_parts
from stripe_sync.migrate import MigrationError, SchemaNotReady
from stripe_sync.provider import ProviderMismatch
from stripe_sync_demo.devcluster import ClusterError


def seed_raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def raises(args: argparse.Namespace) -> int:
        raise exc

    monkeypatch.setattr(cli, "cmd_seed", raises)


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (ConfigError("DATABASE_URL unset"), 78, "configuration error: DATABASE_URL unset"),
        (ProviderMismatch("STRIPE_API_KEY is a live key"), 78, "STRIPE_API_KEY is a live key"),
        (SchemaNotReady("run `stripe-sync migrate`"), 78, "run `stripe-sync migrate`"),
        (MigrationError("0001_billing.sql changed"), 1, "0001_billing.sql changed"),
        (ClusterError("initdb failed: no space\n"), 1, "initdb failed: no space"),
        (TransientError("Stripe unreachable"), 1, "Stripe unreachable"),
        (OSError("[Errno 98] Address in use"), 1, "[Errno 98] Address in use"),
        # The daemon's failures arrive wrapped by its task groups.
        (ExceptionGroup("tg", [ProviderMismatch("wrong account")]), 78, "wrong account"),
    ],
)
def test_main_maps_each_error_to_one_line_and_its_exit_code(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    exc: BaseException,
    code: int,
    line: str,
) -> None:
    seed_raising(monkeypatch, exc)
    assert cli.main(["seed"]) == code
    assert capsys.readouterr().err == f"stripe-sync: {line}\n"


def test_other_exceptions_are_bugs_and_keep_their_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed_raising(monkeypatch, KeyError("x"))
    with pytest.raises(KeyError):
        cli.main(["seed"])


def test_one_line() -> None:
    assert one_line(ValueError("first\nsecond")) == "ValueError: first second"
    assert one_line(ValueError()) == "ValueError: "
    # Stripe breaks its message mid-sentence: all of it, on one line.
    stripe_message = (
        "Unexpected error communicating with Stripe. If this problem persists,\n"
        "let us know at support@stripe.com.\n\n(Network error: ConnectionRefusedError)"
    )
    assert one_line(RuntimeError(stripe_message)) == (
        "RuntimeError: Unexpected error communicating with Stripe. If this problem persists, "
        "let us know at support@stripe.com. (Network error: ConnectionRefusedError)"
    )
    # PostgreSQL's quoted SQL and caret are left out.
    pg = 'relation "x" does not exist\nLINE 4: FROM x GROUP BY status\n             ^'
    assert one_line(RuntimeError(pg)) == 'RuntimeError: relation "x" does not exist'


def test_validation_parts() -> None:
    class Ref(msgspec.Struct):
        ids: list[int]

    with pytest.raises(msgspec.ValidationError) as nested:
        msgspec.json.decode(b'{"ids": [1, "2"]}', type=Ref)
    assert validation_parts(nested.value) == ("Expected `int`, got `str`", ".ids[1]")
    with pytest.raises(msgspec.ValidationError) as root:
        msgspec.json.decode(b"[]", type=Ref)
    assert validation_parts(root.value) == ("Expected `object`, got `array`", "")
