"""Connections and SQL: the work pool, the LISTEN connection's settings, and
the named queries kept in ``stripe_sync/sql/*.sql``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from importlib.resources import files
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

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
def queries(module: str) -> dict[str, str]:
    """Named queries of ``sql/<module>.sql``: blocks introduced by ``-- name: x``."""
    text = files("stripe_sync").joinpath("sql", f"{module}.sql").read_text()
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


@cache
def bound_query(module: str, name: str, **identifiers: str) -> sql.Composed:
    """A named query with its ``{placeholders}`` bound to identifiers (``a.b`` → "a"."b")."""
    return sql.SQL(queries(module)[name]).format(
        **{k: sql.Identifier(*v.split(".")) for k, v in identifiers.items()}
    )


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
