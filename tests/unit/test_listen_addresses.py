"""An address the daemon cannot listen on is named by its variable: a configuration
error (exit 78), except a port in use, which a restart may find free (exit 1)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from stripe_sync.config import ConfigError
from stripe_sync.errors import StripeSyncError
from stripe_sync.runtime import metrics
from stripe_sync.runtime.http import bind_socket


@pytest.fixture
def taken() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_port_in_use_names_the_variable_and_may_be_retried(taken: str) -> None:
    with pytest.raises(StripeSyncError) as err:
        bind_socket(taken)
    assert not isinstance(err.value, ConfigError) and err.value.exit_code == 1
    assert str(err.value).startswith(f"STRIPE_SYNC_BIND={taken}: cannot listen there: ")
    assert "in use" in str(err.value)


def test_the_metrics_port_in_use_names_its_variable(taken: str) -> None:
    with pytest.raises(StripeSyncError) as err:
        metrics.serve(taken, list)
    assert str(err.value).startswith(f"STRIPE_SYNC_METRICS_BIND={taken}: cannot listen there")


def test_an_address_of_another_host_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError) as err:
        bind_socket("192.0.2.1:8080")  # TEST-NET-1: never an address of this machine
    assert err.value.exit_code == 78
    assert str(err.value).startswith("STRIPE_SYNC_BIND=192.0.2.1:8080: cannot listen there: ")
