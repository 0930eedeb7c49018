"""stripe_sync.mappings, the one description of the mapping tables, against
the migrated schema and the Stripe SDK."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import stripe
from psycopg.errors import CheckViolation

from stripe_sync.mappings import FAMILIES, Family

Conn = psycopg.Connection[tuple[Any, ...]]


def test_every_mapping_table_is_described_once(conn: Conn) -> None:
    tables = {
        f"stripe.{name}"
        for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'stripe' AND table_name LIKE '%\\_mappings'"
        )
    }
    assert sorted(f.table for f in FAMILIES) == sorted(tables)
    assert len({f.noun for f in FAMILIES}) == len(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.noun)
def test_columns_and_the_mc_table(conn: Conn, family: Family) -> None:
    references = conn.execute(
        "SELECT a.attname, c.confrelid::regclass::text FROM pg_constraint c "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) "
        "WHERE c.conrelid = %s::regclass AND c.contype = 'f'",
        (family.table,),
    ).fetchall()
    assert (family.mc_col, family.mc_table) in references
    columns = {
        name
        for (name,) in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
            (family.table,),
        )
    }
    assert {family.stripe_col, "sync_status", "last_event_id"} <= columns


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.noun)
def test_id_prefix_passes_the_tables_checks(conn: Conn, family: Family) -> None:
    """A Stripe id of the family fits its column; the schema refuses foreign
    prefixes except for products and prices, which also take custom ids."""
    # A copy with the table's CHECKs, defaults and identity, without its foreign keys.
    conn.execute(f"CREATE TEMP TABLE probe (LIKE {family.table} INCLUDING ALL)")
    insert = (
        f"INSERT INTO probe ({family.mc_col}, {family.stripe_col}, sync_status) "
        "VALUES (%s, %s, 'synced')"
    )
    conn.execute(insert, (1, f"{family.id_prefix}Nf4kq2"))
    if family.noun in ("product", "price"):
        conn.execute(insert, (2, "gold-monthly"))
    else:
        with pytest.raises(CheckViolation):
            conn.execute(insert, (2, "x" + family.id_prefix))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.noun)
def test_resource_is_an_sdk_service(family: Family) -> None:
    service = getattr(stripe.StripeClient("sk_test_unused").v1, family.resource)
    assert callable(service.retrieve_async)
