"""Clean-up that outlives its parent: processes and directories a short-lived
command (the demo, the tests' throwaway cluster) must not leave behind, even
when it is killed with SIGKILL and its own ``finally`` never runs.

The parent starts ``python -m stripe_sync_demo.reaper`` in a session of its own and
keeps the write end of a pipe to its stdin; it writes one line per thing to
clean up as it creates it. When the parent is gone in any way, the kernel closes
that pipe, the reaper reads end-of-file and stops what is still running and
deletes what is still there. After an orderly exit there is nothing left to do.

Lines: ``pid PID START`` (a process, with its start time from /proc so a reused
pid is never signalled), ``postgres DATADIR`` (a server: immediate shutdown
through its postmaster.pid) and ``dir PATH`` (removed last).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    return stat.rsplit(")", 1)[1].split()[19]


class Reaper:
    """``with Reaper() as r: r.pid(proc.pid); r.dir(path)`` — see the module docstring."""

    def __init__(self) -> None:
        read, self._write = os.pipe()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "stripe_sync_demo.reaper"],
            stdin=read,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Out of the terminal's process group: Ctrl-C or a closed terminal
            # reaches the parent, whose death is what this one waits for.
            start_new_session=True,
        )
        os.close(read)

    def _tell(self, line: str) -> None:
        os.write(self._write, f"{line}\n".encode())

    def pid(self, pid: int) -> None:
        started = start_time(pid)
        if started is not None:
            self._tell(f"pid {pid} {started}")

    def postgres(self, data: Path) -> None:
        self._tell(f"postgres {data}")

    def dir(self, path: str | Path) -> None:
        self._tell(f"dir {path}")

    def close(self) -> None:
        """Orderly end: the reaper checks once more (finding nothing) and exits."""
        if self._write >= 0:
            os.close(self._write)
            self._write = -1
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> Reaper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _alive(pid: int, started: str) -> bool:
    return start_time(pid) == started


def _stop(pid: int, started: str) -> None:
    if not _alive(pid, started):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid, started) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid, started):
        os.kill(pid, signal.SIGKILL)


def _stop_postgres(data: Path) -> None:
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    started = start_time(pid)
    if started is None:
        return
    os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
    deadline = time.monotonic() + 10
    while _alive(pid, started) and time.monotonic() < deadline:
        time.sleep(0.05)


def reap(lines: list[str]) -> None:
    pids: list[tuple[int, str]] = []
    servers: list[Path] = []
    dirs: list[str] = []
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "pid":
            pid, started = rest.split()
            pids.append((int(pid), started))
        elif kind == "postgres":
            servers.append(Path(rest))
        elif kind == "dir":
            dirs.append(rest)
    for number, started in reversed(pids):
        try:
            _stop(number, started)
        except ProcessLookupError:
            pass
    for data in servers:
        try:
            _stop_postgres(data)
        except ProcessLookupError:
            pass
    for path in reversed(dirs):
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    reap(sys.stdin.read().splitlines())


if __name__ == "__main__":
    main()
