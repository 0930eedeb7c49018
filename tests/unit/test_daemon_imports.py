"""What the daemon's process imports counts against its idle RSS (issue 11, M:
≤ 64 MB): modules only the operator commands use stay out of it."""

from __future__ import annotations

import subprocess
import sys

# Terminal rendering of status, demo and reconcile's progress bar (~1.9 MB).
COMMANDS_ONLY = (
    "rich",
    "stripe_sync.ops.status",
    "stripe_sync.ops.progress",
    "stripe_emulator",
)


def test_the_daemon_does_not_import_what_only_commands_use() -> None:
    probe = (
        "import sys, stripe_sync.runtime.daemon; "
        f"print(' '.join(sorted(m for m in sys.modules if m.startswith({COMMANDS_ONLY!r}))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out == [], f"stripe_sync.runtime.daemon imports {out}"


def test_the_daemon_does_not_load_the_sdks_unused_http_clients() -> None:
    """requests and httpx (6.6 MB) stay out; the SDK still builds the daemon's client."""
    probe = (
        "import sys, stripe_sync.cli as cli; cli.without_unused_http_clients(); "
        "import stripe_sync.runtime.daemon, stripe_sync.stripe_api as api, stripe; "
        "from stripe_sync.config import Secret; "
        "client = api.StripeApi(Secret('sk_test_x'), api_base=None, rate_limit=0, timeout=5); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('requests', 'httpx') "
        "and sys.modules[m] is not None))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert out == "[]"
