"""GET /_emulator/request_log: arrival times of API requests, for the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import stripe

from stripe_emulator import EmulatorConfig, EmulatorServer

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def logging_emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(config=EmulatorConfig(request_log=3)) as server:
        yield server


def _client(server: EmulatorServer) -> stripe.StripeClient:
    return stripe.StripeClient(
        "sk_test_log",
        base_addresses={"api": server.base_url},
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
        max_network_retries=0,
    )


def test_logs_arrival_time_key_and_metadata(logging_emulator: EmulatorServer) -> None:
    client = _client(logging_emulator)
    before = time.monotonic()
    client.v1.customers.create(
        params={"email": "a@x.io", "metadata": {"mc_account_id": "7"}},
        options={"idempotency_key": "k-7"},
    )
    after = time.monotonic()
    client.v1.customers.list()
    log = httpx.get(f"{logging_emulator.base_url}/_emulator/request_log").json()
    assert log["enabled"] is True
    first, second = log["data"]
    # CLOCK_MONOTONIC: the same clock as ours, even in another process.
    assert before <= first["t"] <= after <= second["t"]
    assert first["method"] == "POST" and first["path"] == "/v1/customers"
    assert first["idempotency_key"] == "k-7"
    assert first["metadata"] == {"mc_account_id": "7"}
    assert second["method"] == "GET" and second["idempotency_key"] is None
    since = httpx.get(
        f"{logging_emulator.base_url}/_emulator/request_log", params={"since": first["t"]}
    ).json()
    assert since["data"] == [second]


def test_bounded_and_reset(logging_emulator: EmulatorServer) -> None:
    client = _client(logging_emulator)
    for i in range(5):
        client.v1.products.create(params={"name": f"p{i}"})
    emu = logging_emulator.emulator
    assert len(emu.logged_requests()) == 3  # the newest three
    emu.reset()
    assert emu.logged_requests() == []


def test_off_by_default(stripe_client: stripe.StripeClient, emulator: EmulatorServer) -> None:
    stripe_client.v1.customers.create()
    log = httpx.get(f"{emulator.base_url}/_emulator/request_log").json()
    assert log == {"enabled": False, "data": []}
    assert emulator.emulator.request_log is None
