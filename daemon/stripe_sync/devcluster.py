"""A throwaway PostgreSQL cluster in a temporary directory, for the demo,
the tests and the benchmarks on a machine with only the server binaries.

``initdb`` refuses to run as root, so as root the cluster is made and run as
the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg


class ClusterError(Exception):
    pass


def find_bindir() -> Path:
    """The newest installed server's bin directory (Debian keeps them versioned)."""
    if explicit := os.environ.get("STRIPE_SYNC_PG_BINDIR"):
        return Path(explicit)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for path in reversed(candidates):
        if (Path(path) / "initdb").exists():
            return Path(path)
    if found := shutil.which("initdb"):
        return Path(found).parent
    raise ClusterError(
        "no PostgreSQL server binaries found (initdb); install them "
        "(Debian: apt-get install postgresql) or set DATABASE_URL to an existing server"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayCluster:
    """``with ThrowawayCluster() as c: c.dsn`` — stopped and deleted on exit."""

    def __init__(self, *, durable: bool = False) -> None:
        # durable=False turns off fsync: fine for data that dies with the run.
        self.durable = durable
        self.bindir = find_bindir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="stripe-sync-pg-"))
        self.data = self.dir / "data"
        self._as_postgres = os.geteuid() == 0

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ClusterError(f"{args[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self) -> ThrowawayCluster:
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.dir}",
            "-c max_connections=200",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "server.log"),
            "-o",
            " ".join(options),
            "-w",
            "-t",
            "60",
            "start",
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except ClusterError:
                pass  # already gone; still remove the files
        shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start on the same port: for tests of reconnects."""
        # -l: a server whose output went to our pipe would keep run() waiting for EOF.
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "server.log"),
            "-m",
            "fast",
            "-w",
            "restart",
        )
        self._wait_ready()

    def __enter__(self) -> ThrowawayCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
