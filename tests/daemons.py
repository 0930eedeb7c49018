"""Test helper: `stripe-sync run` as a real separate process, as deployed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

from stripe_sync_demo.devcluster import free_port

API_KEY = "sk_test_emulator"
WEBHOOK_SECRET = "whsec_test_secret_for_daemon_tests"


class DaemonProcess:
    def __init__(self, dsn: str, api_base: str, **env: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="stripe-sync-daemon-", suffix=".log")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DATABASE"))}
        self.env = {
            **base,
            "DATABASE_URL": dsn,
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_API_BASE": api_base,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_SYNC_BIND": f"127.0.0.1:{self.port}",
            "STRIPE_SYNC_RATE_LIMIT": "0",
            "STRIPE_SYNC_RETRY_BASE_SECONDS": "0.05",
            "STRIPE_SYNC_RETRY_MAX_SECONDS": "0.5",
            **{k: str(v) for k, v in env.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> DaemonProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stripe_sync.cli", "run"],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"daemon not ready within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # The log stays readable after stop; the temporary file goes with the object.


class Daemons:
    """The daemons a test spawns (the ``daemons`` fixture): each stopped at its end."""

    def __init__(self, api_base: str) -> None:
        self.api_base = api_base
        self.spawned: list[DaemonProcess] = []

    def spawn(self, dsn: str, **env: Any) -> DaemonProcess:
        """A daemon on ``dsn`` and the emulator, not started yet."""
        d = DaemonProcess(dsn, self.api_base, **env)
        self.spawned.append(d)
        return d

    def stop_all(self) -> None:
        for d in self.spawned:
            d.stop()


def poll(check: Any, timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Call ``check`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s (last: {value!r})")
        time.sleep(interval)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``stripe-sync ARGS`` as an operator runs it, with only the given settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "-m", "stripe_sync.cli", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_env(dsn: str, api_base: str) -> dict[str, str]:
    """Settings for a command that talks to the database and the emulator."""
    return {
        "DATABASE_URL": dsn,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": api_base,
        "STRIPE_SYNC_RATE_LIMIT": "0",
    }
