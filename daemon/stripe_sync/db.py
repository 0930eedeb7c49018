"""Connections and SQL: the work pool, the LISTEN connection's settings, and
the named queries kept in ``stripe_sync/sql/*.sql``."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from importlib.resources import files
from typing import Any

import anyio
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from .config import ConfigError
from .errors import StripeSyncError

log = logging.getLogger(__name__)

APPLICATION_NAME = "stripe-sync"
# Keepalives make the kernel notice a peer that vanished without a FIN;
# the listener's own periodic check catches the rest.
_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
}

_NAME = re.compile(r"^--\s*name:\s*(\S+)\s*$", re.MULTILINE)


@cache
def queries(module: str, package: str = "stripe_sync") -> dict[str, str]:
    """Named queries of ``<package>/sql/<module>.sql``: blocks introduced by ``-- name: x``."""
    text = files(package).joinpath("sql", f"{module}.sql").read_text()
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


@cache
def bound_query(module: str, name: str, package: str = "stripe_sync", **identifiers: str) -> bytes:
    """A named query with its ``{placeholders}`` bound to identifiers (``a.b`` → "a"."b").

    Rendered to bytes once: psycopg renders a ``Composed`` again on every execute
    (each identifier escaped anew), 10-20 µs of CPU per statement on the claim →
    mapping → finish path of every row (docs/benchmarks.md, issue 11).
    """
    composed = sql.SQL(queries(module, package)[name]).format(
        **{k: sql.Identifier(*v.split(".")) for k, v in identifiers.items()}
    )
    return composed.as_bytes()


def conninfo(dsn: str, role: str = "") -> str:
    """The DSN plus keepalives and our application_name (``stripe-sync[/role]``)."""
    params: dict[str, Any] = {**_KEEPALIVES, **conninfo_to_dict(dsn)}
    params["application_name"] = f"{APPLICATION_NAME}/{role}" if role else APPLICATION_NAME
    return make_conninfo("", **params)


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for logs."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DATABASE_URL>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


@asynccontextmanager
async def connect(dsn: str, role: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """One autocommit connection for an operator command (``role``: status, retry…)."""
    async with await psycopg.AsyncConnection.connect(conninfo(dsn, role), autocommit=True) as conn:
        yield conn


# A server that answers FATAL has refused us for good (no such database or
# role, a wrong password, pg_hba.conf), unless it says it is busy or restarting.
_BUSY = ("starting up", "shutting down", "in recovery", "too many", "not yet accepting")


def connect_failure(exc: psycopg.OperationalError) -> str:
    """libpq's reason for a failed connection, on one line."""
    return " ".join(str(exc).split())


def refused_for_good(exc: psycopg.OperationalError) -> bool:
    text = str(exc)
    return "FATAL:" in text and not any(busy in text for busy in _BUSY)


async def first_connect(dsn: str, *, wait: float = 30.0) -> None:
    """Connect once before the pool does, so the operator reads why it failed:
    a refusal that retrying cannot fix is a configuration error (exit 78) at
    once; a server that does not answer is retried for ``wait`` seconds, with
    libpq's reason in every log line and in the final message (exit 1)."""
    deadline = anyio.current_time() + wait
    delay = 0.25
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo(dsn, "start"), connect_timeout=5)
        except psycopg.OperationalError as exc:
            reason = connect_failure(exc)
            if refused_for_good(exc):
                raise ConfigError(f"DATABASE_URL ({redact_dsn(dsn)}): {reason}") from None
            if anyio.current_time() + delay > deadline:
                raise StripeSyncError(
                    f"DATABASE_URL ({redact_dsn(dsn)}): no answer for {wait:.0f} s: {reason}"
                ) from None
            log.warning(
                "database not reachable; retrying", extra={"reason": reason, "retry_in": delay}
            )
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)
        else:
            await conn.close()
            return


def make_pool(dsn: str, *, size: int, role: str = "") -> AsyncConnectionPool:
    """An unopened pool; ``async with pool`` opens it and waits for the first connection."""
    return AsyncConnectionPool(
        conninfo(dsn, role),
        min_size=min(2, size),
        max_size=size,
        open=False,
        # Prepared statements for the hot claim/complete queries.
        kwargs={"autocommit": True, "prepare_threshold": 1},
        # No check on checkout: it costs a round trip per use, and a broken
        # connection fails its query, which every caller retries anyway.
        name=role or "work",
    )
