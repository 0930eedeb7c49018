"""The start-up check that this key belongs to the account and mode this
database was set up for: a live key against a test database (or another
account's key) would silently split the data across two Stripes.

When Stripe cannot be reached at start, the daemon starts anyway (webhooks
must still be stored, and the mode check needs no request) and checks the
account again every :data:`RECHECK_SECONDS` until Stripe answers;
``stripe-sync status`` says meanwhile that the account is not verified."""

from __future__ import annotations

import logging
from typing import Literal, NamedTuple

from psycopg_pool import AsyncConnectionPool

from .db import queries
from .errors import EX_CONFIG, PermanentError, StripeSyncError, TransientError
from .stripe_api import StripeApi

log = logging.getLogger(__name__)
Mode = Literal["test", "live"]


class ProviderMismatch(StripeSyncError):
    """Refuse to start; the message is the one line the operator reads."""

    exit_code = EX_CONFIG  # a restart cannot help: the key or the database is wrong


RECHECK_SECONDS = 60.0


class Checked(NamedTuple):
    account_id: str | None
    mode: Mode
    # Stripe did not answer: worth asking again (a key that may not read the
    # account is not).
    recheck: bool = False


async def check(pool: AsyncConnectionPool, api: StripeApi, key_mode: Mode) -> Checked:
    """The account and mode, after checking or filling stripe.provider_configs."""
    sql = queries("provider")
    async with pool.connection() as conn:
        row = await (await conn.execute(sql["load"])).fetchone()
    if row is not None and row[1] != key_mode:
        raise ProviderMismatch(
            f"STRIPE_API_KEY is a {key_mode} key but stripe.provider_configs.mode is "
            f"'{row[1]}'; use a {row[1]} key, or move this database to {key_mode} mode "
            f"deliberately: UPDATE stripe.provider_configs SET mode = '{key_mode}', "
            "account_id = NULL (its mappings name objects of the other mode; docs/stripe.md 5.9)"
        )
    account_id, recheck = await _account_id(api)
    if row is not None and row[0] and account_id and account_id != row[0]:
        raise ProviderMismatch(
            f"STRIPE_API_KEY belongs to {account_id} but stripe.provider_configs.account_id "
            f"is {row[0]}; this database is bound to another Stripe account"
        )
    if row is not None and (row[0] or not account_id):
        return Checked(row[0], key_mode, recheck and not row[0])
    async with pool.connection() as conn:
        filled = await (
            await conn.execute(sql["fill"], {"account_id": account_id, "mode": key_mode})
        ).fetchone()
    assert filled is not None
    log.info("provider config recorded", extra={"account_id": filled[0], "mode": filled[1]})
    return Checked(filled[0], key_mode, recheck and not filled[0])


async def _account_id(api: StripeApi) -> tuple[str | None, bool]:
    """The key's account id, or None and whether asking again may help."""
    try:
        account = await api.call(
            "retrieve account", api.client.v1.accounts.retrieve_current_async()
        )
    except TransientError as exc:
        log.warning(
            "Stripe is unreachable: running without the account check (webhooks are "
            "stored, outbox rows wait and retry); checking again every "
            f"{RECHECK_SECONDS:.0f} s",
            extra={"reason": str(exc)},
        )
        return None, True
    except PermanentError as exc:
        # A restricted key may lack the account permission: the mode check
        # still holds.
        log.warning(
            "this key cannot read the Stripe account; running without the account check",
            extra={"reason": str(exc)},
        )
        return None, False
    return str(account.id), False
