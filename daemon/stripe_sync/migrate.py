"""Applies ``schema/NNNN_*.sql`` in order, once each, and refuses drift.

Each file runs in its own transaction together with its ledger row, under a
transaction-level advisory lock, so two concurrent ``migrate`` runs serialize
and the second finds nothing to do. :func:`migrate` is synchronous: it is also
the set-up step of the tests and the benchmarks; ``stripe-sync migrate`` shows
its :class:`Applied`. The ledger's SQL is in ``sql/migrate.sql``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, TextIO

import psycopg

from .db import queries
from .errors import EX_CONFIG, StripeSyncError
from .ops.outcome import Record

log = logging.getLogger(__name__)

# Any constant unique to this project; pg_advisory_xact_lock takes a bigint.
_LOCK_KEY = 0x5EED_5711C


class MigrationError(StripeSyncError):
    """A migration cannot be applied (or was edited after it was)."""


@dataclass(frozen=True)
class Migration:
    filename: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    schema = files("stripe_sync.schema")
    found = sorted(
        (f for f in schema.iterdir() if f.name.endswith(".sql") and f.name[:4].isdigit()),
        key=lambda f: f.name,
    )
    return [Migration(f.name, f.read_text()) for f in found]


class Applied(Record):
    """``stripe-sync migrate``'s outcome: the files applied by this run."""

    applied: list[str]

    @property
    def exit_code(self) -> int:
        return 0

    def render(self, out: TextIO, err: TextIO) -> None:
        if self.applied:
            print(f"applied {len(self.applied)} migration(s): {', '.join(self.applied)}", file=out)
        else:
            print("schema is up to date", file=out)


def migrate(dsn: str) -> list[str]:
    """Apply what is missing; return the filenames applied (empty when up to date)."""
    applied_now: list[str] = []
    sql = queries("migrate")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for migration in available():
            with conn.transaction():
                conn.execute(sql["lock"], {"key": _LOCK_KEY})
                conn.execute(sql["ledger"])
                row = conn.execute(sql["checksum"], {"filename": migration.filename}).fetchone()
                if row is not None:
                    if row[0] != migration.checksum:
                        raise MigrationError(
                            f"{migration.filename} changed after it was applied "
                            f"(checksum {row[0][:12]} in the database, "
                            f"{migration.checksum[:12]} on disk); add a new migration instead"
                        )
                    continue
                conn.execute(migration.sql.encode())
                conn.execute(
                    sql["record"], {"filename": migration.filename, "checksum": migration.checksum}
                )
                applied_now.append(migration.filename)
                log.info("migration applied file=%s", migration.filename)
    return applied_now


class SchemaNotReady(StripeSyncError):
    """The daemon refuses to start on a database that is not fully migrated."""

    exit_code = EX_CONFIG  # a restart cannot help until someone runs migrate


async def check_current(conn: psycopg.AsyncConnection[Any]) -> None:
    """Raise SchemaNotReady unless every migration on disk is applied."""
    sql = queries("migrate")
    cur = await conn.execute(sql["has_ledger"])
    row = await cur.fetchone()
    if not row or not row[0]:
        raise SchemaNotReady("the database has no stripe-sync schema; run `stripe-sync migrate`")
    cur = await conn.execute(sql["applied"])
    applied = {r[0] for r in await cur.fetchall()}
    missing = [m.filename for m in available() if m.filename not in applied]
    if missing:
        raise SchemaNotReady(
            f"{len(missing)} migration(s) not applied ({', '.join(missing)}); "
            "run `stripe-sync migrate`"
        )
