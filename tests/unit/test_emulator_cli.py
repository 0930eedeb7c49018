"""`python -m stripe_emulator` runs until SIGTERM and exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx

from stripe_emulator.cli import build_parser


def test_help_lists_options() -> None:
    text = build_parser().format_help()
    for option in (
        "--bind",
        "--webhook-url",
        "--webhook-secret",
        "--rate-limit",
        "--latency",
        "--account-id",
        "--api-version",
        "--dunning-retry-days",
        "--dunning-end",
    ):
        assert option in text


def test_dunning_options_reach_the_emulator_settings() -> None:
    args = build_parser().parse_args(["--dunning-retry-days", "1,2", "--dunning-end", "unpaid"])
    assert (args.dunning_retry_days, args.dunning_end) == ((1, 2), "unpaid")
    defaults = build_parser().parse_args([])
    assert (defaults.dunning_retry_days, defaults.dunning_end) == ((3, 5, 7), "canceled")


def test_runs_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stripe_emulator",
            "--bind",
            "127.0.0.1:0",
            "--account-id",
            "acct_cli",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        base = line.split("listening on ")[1].split(",")[0].strip()
        account = httpx.get(f"{base}/v1/account", headers={"Authorization": "Bearer sk_test_x"})
        assert account.json()["id"] == "acct_cli"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
