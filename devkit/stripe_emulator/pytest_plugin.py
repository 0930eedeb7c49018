"""Pytest fixtures: `emulator_server` (one per session), `emulator` (clean state per
test, returns the server) and `stripe_client` (official SDK pointed at it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .receiver import WebhookReceiver
from .server import EmulatorServer

TEST_API_KEY = "sk_test_emulator"


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> Iterator[EmulatorServer]:
    emu = emulator_server.emulator
    emu.wait_requests_idle()  # a previous test's slow request must not land in this one
    emu.reset()
    emu.set_rate_limit(None)
    emu.config.latency = 0.0
    yield emulator_server
    emu.wait_requests_idle()
    emu.reset()


@pytest.fixture
def stripe_client(emulator: EmulatorServer):  # type: ignore[no-untyped-def]
    # Function-scoped: the SDK's httpx.AsyncClient binds to the loop of the test using it.
    import stripe

    return stripe.StripeClient(
        TEST_API_KEY,
        base_addresses={"api": emulator.base_url},
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
        max_network_retries=0,
    )


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver
