"""What the daemon does at start when its database or Stripe is not there."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import psycopg
import pytest
from conftest import dsn_for

from stripe_emulator import EmulatorServer
from stripe_sync.config import ConfigError, load_settings
from stripe_sync.db import first_connect
from stripe_sync.errors import StripeSyncError
from stripe_sync.ops.status import collect
from stripe_sync.runtime.daemon import Daemon

pytestmark = pytest.mark.anyio


async def test_a_refusal_retrying_cannot_fix_is_a_configuration_error_at_once(
    pg_server: dict[str, Any],
) -> None:
    with anyio.fail_after(10):  # not the pool's 30 s of warnings
        with pytest.raises(ConfigError) as err:
            await first_connect(dsn_for(pg_server, "stripe_sync_no_such_database"))
    assert err.value.exit_code == 78
    assert 'database "stripe_sync_no_such_database" does not exist' in str(err.value)


async def test_a_server_that_does_not_answer_is_retried_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="stripe_sync.db")
    with pytest.raises(StripeSyncError) as err:
        await first_connect("postgresql://u:hunter2@127.0.0.1:1/db", wait=1.0)
    assert err.value.exit_code == 1
    assert "no answer for 1 s" in str(err.value) and "Connection refused" in str(err.value)
    assert "hunter2" not in str(err.value)
    retries = [r for r in caplog.records if r.getMessage() == "database not reachable; retrying"]
    assert len(retries) >= 2
    assert all("Connection refused" in r.__dict__["reason"] for r in retries)


async def _account(dsn: str) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute("SELECT account_id FROM stripe.provider_configs")
        ).fetchone()
    return row[0] if row else "no row"


async def test_stripe_unreachable_at_start_starts_warns_and_checks_again(
    dsn: str, emulator: EmulatorServer
) -> None:
    emu = emulator.emulator
    emu.add_fault("503", "GET /v1/account", rate=1.0)
    settings = load_settings(
        {
            "DATABASE_URL": dsn,
            "STRIPE_API_KEY": "sk_test_emulator",
            "STRIPE_WEBHOOK_SECRET": "whsec_test",
            "STRIPE_API_BASE": emulator.base_url,
            "STRIPE_SYNC_BIND": "127.0.0.1:0",
        }
    )
    daemon = Daemon(settings)
    daemon.recheck_seconds = 0.2
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(30):
            await tg.start(daemon.run)  # started: webhooks are stored meanwhile
        assert await _account(dsn) is None
        status = await collect(dsn)
        assert status.exit_code == 0 and "not verified" in status.warnings[0]
        emu.clear_faults()
        with anyio.fail_after(30):
            while await _account(dsn) is None:
                await anyio.sleep(0.05)
        assert (await collect(dsn)).warnings == []
        daemon.stop()
