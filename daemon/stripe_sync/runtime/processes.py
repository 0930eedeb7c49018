"""One service, several daemon processes (``STRIPE_SYNC_PROCESSES`` > 1).

One Python process applies webhooks and executes outbox rows on one core;
more processes use more cores without another systemd unit. The first
process (the one systemd started) binds the webhook port and starts the
others with that listening socket inherited: the kernel hands each new
connection to whichever process accepts it first. Every process is a whole
daemon (outbox, webhooks, LISTEN, sweep, pruning), side by side as replicas
already are (claims skip locked rows, one lease per row), so nothing else
has to know how many there are.

What stays with the first process: the metrics endpoint (its counters are
its own; the queue gauges read the tables), systemd's notifications and
watchdog. The Stripe rate limit is split evenly, so together they stay
under it. A process that dies stops the service (exit 1, and systemd
restarts it whole), and the others die with the first (PR_SET_PDEATHSIG), so
none outlives the unit, even after a SIGKILL.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping

import anyio

from ..config import Settings

log = logging.getLogger(__name__)

# What a started process must not inherit: systemd's channel is the first's,
# and only the first serves metrics.
_FIRST_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "STRIPE_SYNC_METRICS_BIND")
_PR_SET_PDEATHSIG = 1


def rate_share(settings: Settings) -> float:
    """Each process's part of the rate limit (0: unpaced stays unpaced)."""
    return settings.effective_rate_limit / settings.processes


class Processes:
    """The processes the first one starts, watches and stops."""

    def __init__(self, settings: Settings, sock: socket.socket, env: Mapping[str, str]) -> None:
        self.count = settings.processes - 1
        self.shutdown_timeout = settings.shutdown_timeout
        self.sock = sock
        self.env = {k: v for k, v in env.items() if k not in _FIRST_ONLY}
        self.env.update(
            STRIPE_SYNC_PROCESSES="1", STRIPE_SYNC_RATE_LIMIT=f"{rate_share(settings):g}"
        )
        self.started: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self.failed: str | None = None

    def start(self) -> None:
        fd = self.sock.fileno()
        command = [sys.executable, "-m", "stripe_sync.cli", "run"]
        for _ in range(self.count):
            self.started.append(
                subprocess.Popen(
                    [*command, "--socket-fd", str(fd), "--parent-pid", str(os.getpid())],
                    env=self.env,
                    pass_fds=(fd,),
                )
            )
        log.info(
            "started processes",
            extra={"pids": " ".join(str(p.pid) for p in self.started), "processes": self.count + 1},
        )

    async def watch(self, stop: Callable[[], None]) -> None:
        """Stop the service when one of the started processes exits on its own."""
        while not self.stopping:
            for proc in self.started:
                code = proc.poll()
                if code is not None and not self.stopping:
                    self.failed = f"process {proc.pid} exited with {code}"
                    log.error(
                        "a daemon process exited; stopping the service",
                        extra={
                            "pid": proc.pid,
                            "exit_code": code,
                        },
                    )
                    stop()
                    return
            await anyio.sleep(0.5)

    def signal(self) -> None:
        """SIGTERM to all: they drain at the same time as the first."""
        self.stopping = True
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    async def wait(self) -> None:
        """Until all have stopped; after their shutdown time and a margin, SIGKILL."""
        self.signal()
        with anyio.move_on_after(self.shutdown_timeout + 5):
            for proc in self.started:
                await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
        for proc in self.started:
            if proc.poll() is None:
                log.warning("a daemon process did not stop; killing it", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()


def inherited_socket(fd: int, parent_pid: int) -> socket.socket:
    """A started process's webhook socket; it dies with the process that started it."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the first died before the line above
        raise SystemExit(1)
    return socket.socket(fileno=fd)
