"""The processes a benchmark run starts, and the small helpers every measurement uses.

Each piece under test runs as its own OS process (PostgreSQL, the emulator,
the daemon, procrastinate's worker), so the harness never competes with them
for a GIL; on a 2-core machine they still compete for CPU, as they would in
production on such a box, unless :func:`pin` gives the daemon a core of its own.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from stripe_sync.migrate import migrate
from stripe_sync_demo.devcluster import free_port

API_KEY = "sk_test_bench_stripe_sync"
WEBHOOK_SECRET = "whsec_bench_stripe_sync"
# Enough arrival times for the largest L1 run plus its warm-up.
REQUEST_LOG = 50_000


class BenchError(Exception):
    """A measurement could not run (a process died, a drain never finished)."""


# -- statistics -------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(seconds: Sequence[float], *, stall_ms: float = 10.0) -> dict[str, Any]:
    """p50/p99/max in milliseconds, and how many samples exceeded ``stall_ms``."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else math.nan,
        "mean_ms": sum(ms) / len(ms) if ms else math.nan,
        "over_stall": sum(1 for m in ms if m > stall_ms),
    }


# -- processes ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process and the processes it
    started (a daemon with STRIPE_SYNC_PROCESSES > 1) have used so far, from
    utime and stime of /proc/<pid>/stat. Unlike a rate, it hardly depends on
    what else the machine runs: the figure to compare on a loaded box."""
    total = sum(
        int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
        for other, fields in _stats()
        if other == pid or fields[1] == str(pid)
    )
    return total / os.sysconf("SC_CLK_TCK")


def _stats() -> Iterator[tuple[int, list[str]]]:
    """Every process's pid and the fields of its /proc/<pid>/stat after the command name."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces: split after its closing ")".
            yield int(stat.parent.name), stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def cpus_allowed(pid: int) -> str:
    """The CPUs a process may run on (``Cpus_allowed_list`` of /proc/<pid>/status), e.g. "1"."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return "?"


def children(pid: int) -> list[int]:
    """The processes ``pid`` started that still run (a daemon's STRIPE_SYNC_PROCESSES > 1)."""
    return sorted(other for other, fields in _stats() if fields[1] == str(pid))


def pin(daemon: set[int], others: set[int]) -> None:
    """Daemons on the CPUs ``daemon``, everything else on ``others``: this process
    now, and so whatever it starts from here on (PostgreSQL and its backends, the
    emulator, the peers; affinity is inherited across fork and exec), except the
    daemons, which :class:`DaemonProc` starts on ``daemon`` (and the processes a
    daemon starts inherit that)."""
    usable = os.sched_getaffinity(0)
    if not (daemon | others) <= usable:
        raise BenchError(f"--pin needs CPUs {sorted(daemon | others)}; this process may use "
                         f"{sorted(usable)}")  # fmt: skip
    os.sched_setaffinity(0, others)
    DaemonProc.cpus = frozenset(daemon)


def affinity(dsn: str, procs: dict[str, int]) -> dict[str, str]:
    """Where each process may run, read back from /proc: this one, PostgreSQL (its
    postmaster, and the backends serving the daemon and us), and ``procs`` by name
    with the processes each started (a daemon's STRIPE_SYNC_PROCESSES > 1)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        ours = int(row[0])
        daemons = [int(pid) for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'stripe-sync%%'"
        ).fetchall()]  # fmt: skip
    postmaster = int(Path(f"/proc/{ours}/stat").read_text().rsplit(")", 1)[1].split()[1])
    out = {
        f"bench (pid {os.getpid()})": cpus_allowed(os.getpid()),
        f"postgres (pid {postmaster})": cpus_allowed(postmaster),
        "postgres backend of the bench": cpus_allowed(ours),
        f"postgres backends of the daemons ({len(daemons)})": _same(daemons),
    }
    for name, pid in procs.items():
        out[f"{name} (pid {pid})"] = cpus_allowed(pid)
        if started := children(pid):
            out[f"{name}: the processes it started ({len(started)})"] = _same(started)
    return out


def _same(pids: list[int]) -> str:
    """The CPUs of several processes: one list when all agree, else each."""
    found = {cpus_allowed(pid) for pid in pids}
    return found.pop() if len(found) == 1 else " | ".join(sorted(found)) or "none"


@dataclass
class Proc:
    """A child process whose output goes to a log file in the run directory."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    # The CPUs it runs on (set before it executes anything); None: as this process.
    cpus: ClassVar[frozenset[int] | None] = None

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        cpus = self.cpus
        self.proc = subprocess.Popen(
            self.args, env=self.env or None, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )  # fmt: skip
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited; its log:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _clean_env(**extra: str) -> dict[str, str]:
    # Our settings only: nothing from the caller's STRIPE_*/DATABASE_URL leaks in.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DATABASE"))}
    return {**base, **extra}


def _wait_http(proc: Proc, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise BenchError(f"{proc.name} not ready within {timeout:.0f}s:\n{proc.tail()}")


class EmulatorProc(Proc):
    def __init__(
        self, run_dir: Path, *, latency: float = 0.0, rate_limit: int | None = None, tag: str = ""
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            sys.executable, "-m", "stripe_emulator", "--bind", f"127.0.0.1:{self.port}",
            "--api-key", API_KEY, "--request-log", str(REQUEST_LOG),
        ]  # fmt: skip
        if latency:
            args += ["--latency", str(latency)]
        if rate_limit:
            args += ["--rate-limit", str(rate_limit)]
        super().__init__(f"emulator{tag}", args, run_dir / f"emulator{tag}.log", _clean_env())

    def start(self) -> EmulatorProc:
        super().start()
        _wait_http(self, f"{self.url}/_emulator/requests")
        return self

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/_emulator/requests", timeout=10).json()
        return result

    def put_objects(self, kind: str, objects: list[dict[str, Any]]) -> None:
        """Objects the emulator is to hold as Stripe would (POST /_emulator/objects/KIND)."""
        response = httpx.post(f"{self.url}/_emulator/objects/{kind}", json={"data": objects},
                              timeout=30)  # fmt: skip
        response.raise_for_status()

    def request_log(self, since: float = 0.0) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.url}/_emulator/request_log", params={"since": since}, timeout=30
        )
        data: list[dict[str, Any]] = response.json()["data"]
        return data


class DaemonProc(Proc):
    """``stripe-sync run`` as deployed: its own process, configured by environment."""

    def __init__(self, run_dir: Path, dsn: str, api_base: str, tag: str = "", **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = {
            "DATABASE_URL": dsn,
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_API_BASE": api_base,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_SYNC_BIND": f"127.0.0.1:{self.port}",
            "STRIPE_SYNC_RATE_LIMIT": "0",
            **env,
        }
        self.settings = settings
        args = [sys.executable, "-m", "stripe_sync.cli", "run"]
        super().__init__(f"daemon{tag}", args, run_dir / f"daemon{tag}.log", _clean_env(**settings))

    def start(self) -> DaemonProc:
        super().start()
        _wait_http(self, f"{self.url}/readyz")
        return self


# -- the database ---------------------------------------------------------------------


def create_database(server_dsn: str, name: str, *, migrated: bool = True) -> str:
    """A fresh database on our cluster (migrated to the daemon's schema); its DSN."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(**{**conninfo_to_dict(server_dsn), "dbname": name})
    if migrated:
        migrate(dsn)
    return dsn


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def wait_until(
    conn: psycopg.Connection[Any],
    query: str,
    params: Any = None,
    *,
    timeout: float,
    interval: float = 0.02,
    watch: Sequence[Proc] = (),
) -> float:
    """Poll until ``query`` returns true; the time.monotonic() it first did."""
    deadline = time.monotonic() + timeout
    checked = 0.0
    while True:
        row = conn.execute(query, params).fetchone()
        now = time.monotonic()
        if row is not None and row[0]:
            return now
        if now > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for: {query}")
        if now - checked > 1.0:  # a dead process would make us wait the whole timeout
            for proc in watch:
                proc.check()
            checked = now
        time.sleep(interval)


def node_package(folder: Path, name: str) -> str | None:
    """The version of npm package ``name`` in ``folder``/node_modules, installed from
    ``folder``/package.json on first use; None without node and npm (or the registry)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    package = folder / "node_modules" / name / "package.json"
    if not package.exists():
        try:
            subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--silent"],
                cwd=folder, check=True, capture_output=True, timeout=300,
            )  # fmt: skip
        except (subprocess.SubprocessError, OSError):
            return None
    return str(json.loads(package.read_text())["version"])


def node_url(dsn: str) -> str:
    """node-postgres reads URLs, not libpq's key=value strings."""
    parts = conninfo_to_dict(dsn)
    return (f"postgresql://{parts.get('user', 'postgres')}@{parts.get('host', '127.0.0.1')}:"
            f"{parts.get('port', 5432)}/{parts['dbname']}")  # fmt: skip


def wait_for_line(proc: Proc, line: str, timeout: float = 60.0) -> None:
    """Until ``proc``'s log shows ``line`` (a peer's "ready")."""
    deadline = time.monotonic() + timeout
    while line not in proc.tail():
        proc.check()
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.name} did not start:\n{proc.tail()}")
        time.sleep(0.05)
