"""The shipped unit: it passes the credentials the daemon reads, stays hardened
(``systemd-analyze security`` ≤ 1.5) and verifies. Skipped without systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stripe_sync.config import CREDENTIALS

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "stripe-sync.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def test_the_unit_loads_exactly_the_credentials_the_daemon_reads() -> None:
    loaded = re.findall(r"^LoadCredential=([^:\s]+):(\S+)$", UNIT.read_text(), re.MULTILINE)
    assert sorted(name for name, _ in loaded) == sorted(CREDENTIALS.values())
    assert all(path == f"/etc/stripe-sync/credentials/{name}" for name, path in loaded)


@needs_analyze
def test_security_exposure_stays_at_most_1_5() -> None:
    assert ANALYZE is not None
    out = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(UNIT)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for stripe-sync.service: ([\d.]+)", out.stdout)
    assert found, out.stdout[-2000:] + out.stderr
    assert float(found.group(1)) <= 1.5, out.stdout


@needs_analyze
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare (a private /usr/local/bin holding the ExecStart= path)",
)
def test_the_unit_verifies() -> None:
    # verify wants ExecStart='s binary to exist: give it one in a private mount namespace.
    script = (
        "mount -t tmpfs tmpfs /usr/local/bin && printf '#!/bin/sh\\n' > /usr/local/bin/stripe-sync"
        f" && chmod 755 /usr/local/bin/stripe-sync && exec {ANALYZE} verify {UNIT}"
    )
    out = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    assert (out.returncode, out.stderr) == (0, ""), out.stdout
