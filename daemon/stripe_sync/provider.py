"""The start-up check that this key belongs to the account and mode this
database was set up for: a live key against a test database (or another
account's key) would silently split the data across two Stripes."""

from __future__ import annotations

import logging
from typing import Literal

from psycopg_pool import AsyncConnectionPool

from .db import queries
from .errors import EX_CONFIG, PermanentError, StripeSyncError, TransientError
from .stripe_api import StripeApi

log = logging.getLogger(__name__)
Mode = Literal["test", "live"]


class ProviderMismatch(StripeSyncError):
    """Refuse to start; the message is the one line the operator reads."""

    exit_code = EX_CONFIG  # a restart cannot help: the key or the database is wrong


async def check(
    pool: AsyncConnectionPool, api: StripeApi, key_mode: Mode
) -> tuple[str | None, Mode]:
    """Return (account_id, mode) after checking or filling stripe.provider_configs."""
    sql = queries("provider")
    async with pool.connection() as conn:
        row = await (await conn.execute(sql["load"])).fetchone()
    if row is not None and row[1] != key_mode:
        raise ProviderMismatch(
            f"STRIPE_API_KEY is a {key_mode} key but stripe.provider_configs.mode is "
            f"'{row[1]}'; use a {row[1]} key or change the mode deliberately"
        )
    account_id = await _account_id(api)
    if row is not None and row[0] and account_id and account_id != row[0]:
        raise ProviderMismatch(
            f"STRIPE_API_KEY belongs to {account_id} but stripe.provider_configs.account_id "
            f"is {row[0]}; this database is bound to another Stripe account"
        )
    if row is not None and (row[0] or not account_id):
        return row[0], key_mode
    async with pool.connection() as conn:
        filled = await (
            await conn.execute(sql["fill"], {"account_id": account_id, "mode": key_mode})
        ).fetchone()
    assert filled is not None
    log.info("provider config recorded", extra={"account_id": filled[0], "mode": filled[1]})
    return filled[0], key_mode


async def _account_id(api: StripeApi) -> str | None:
    try:
        account = await api.call(
            "retrieve account", api.client.v1.accounts.retrieve_current_async()
        )
    except (PermanentError, TransientError) as exc:
        # A restricted key may lack the account permission, or Stripe may be
        # down: the mode check still holds, and webhook ingest must not wait
        # for Stripe, so start without the account check.
        log.warning(
            "cannot read the Stripe account; skipping the account check", extra={"reason": str(exc)}
        )
        return None
    return str(account.id)
