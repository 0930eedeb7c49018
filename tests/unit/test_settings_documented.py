"""The settings are written once, in ``config.Settings``: docs/stripe.md's table,
the systemd example environment file and ``run --help`` list exactly its
variables, with its defaults."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest

from stripe_sync.cli import build_parser, main
from stripe_sync.config import DEFAULTS, ENV_NAMES, env_value, variables
from stripe_sync.outbox.common import Context
from stripe_sync.queue.retry import Retry
from stripe_sync.queue.worker import Worker
from stripe_sync.stripe_api import StripeApi
from stripe_sync.webhooks.endpoint import WebhookEndpoint

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS_BY_NAME = {v.name: v.value for v in variables()}


def docs_table() -> dict[str, str]:
    """Variable → its Default cell, from section 3 of docs/stripe.md."""
    text = (ROOT / "docs" / "stripe.md").read_text()
    section = text.split("\n## 3. Settings\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]*?) \|", section, re.MULTILINE))


def example_lines() -> dict[str, tuple[bool, str]]:
    """Variable → (commented out, value), from systemd/stripe-sync.env.example."""
    text = (ROOT / "systemd" / "stripe-sync.env.example").read_text()
    found = re.findall(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$", text, re.MULTILINE)
    return {name: (hash_ == "#", value) for hash_, name, value in found}


def test_docs_list_every_setting_with_its_default() -> None:
    table = docs_table()
    assert sorted(table) == sorted(ENV_NAMES)
    for name, default in DEFAULTS_BY_NAME.items():
        if default is not None:
            assert table[name] == f"`{default}`", name
        else:  # what unset means is prose ("Stripe's", "unset (off)"), not a value
            assert not re.fullmatch(r"`[^`]*`", table[name]), name


def test_the_systemd_example_lists_every_setting_with_its_default() -> None:
    lines = example_lines()
    assert sorted(lines) == sorted(ENV_NAMES)
    for name, default in DEFAULTS_BY_NAME.items():
        commented, value = lines[name]
        if default is not None:
            # A commented-out line shows the default.
            assert (commented, value) == (True, default), name
        elif commented:
            assert value == "", name


def help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def commands() -> list[str]:
    """Every subcommand but the emulator, which parses its own options."""
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(set(sub.choices) - {"emulator"})


@pytest.mark.parametrize("command", commands())
def test_each_help_lists_the_settings_its_command_reads(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(command, capsys).partition("\nenvironment (the settings")[2]
    listed = set(re.findall(r"^  ([A-Z][A-Z0-9_]+) ", text, re.M))
    assert listed == {v.name for v in variables(command)}
    for v in variables(command):
        assert re.search(
            rf"^  {v.name} +{re.escape(v.meaning)} \({re.escape(v.note)}\)$", text, re.M
        )


def test_the_help_of_commands_that_call_stripe_names_the_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # status asks Stripe how the webhook endpoint is when a key is set (#26);
    # seed looks for an MC row's Stripe twin before it creates one (#24).
    calling = ("catch-up", "reconcile", "run", "link", "backfill", "endpoint", "seed", "status")
    for command in calling:
        assert re.search(r"^  STRIPE_API_KEY ", help_text(command, capsys), re.M), command
    assert "STRIPE_API_KEY" not in help_text("retry", capsys)
    assert re.search(r"^  STRIPE_SYNC_WAIT_ALARM ", help_text("status", capsys), re.M)
    # The demo reads no setting: it never uses DATABASE_URL.
    assert "environment" not in help_text("demo", capsys)


def test_every_setting_is_read_by_real_commands() -> None:
    for v in variables():
        assert v.read_by and set(v.read_by) <= set(commands()), v.name


def test_env_value() -> None:
    assert [env_value(x) for x in (5.0, 0.25, 16, False, "info", None, ())] == [
        "5", "0.25", "16", "false", "info", None, None
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("constructor", "parameter", "setting"),
    [
        (Retry, "max_attempts", "max_attempts"),
        (Retry, "base_seconds", "retry_base_seconds"),
        (Retry, "max_seconds", "retry_max_seconds"),
        (Worker, "concurrency", "concurrency"),
        (Worker, "batch_size", "batch_size"),
        (Worker, "lease_seconds", "lease_seconds"),
        (Worker, "sweep_interval", "sweep_interval"),
        (Worker, "shutdown_timeout", "shutdown_timeout"),
        (WebhookEndpoint, "tolerance", "webhook_tolerance"),
        (StripeApi, "timeout", "stripe_timeout"),
        (Context, "search_lag", "search_lag"),
    ],
)
def test_constructors_default_to_the_settings(
    constructor: type, parameter: str, setting: str
) -> None:
    default = inspect.signature(constructor).parameters[parameter].default
    assert default == getattr(DEFAULTS, setting)
