"""The queue collector reads at scrape time only, and a failed read still answers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from stripe_sync.ops.queue_counts import QueueRow
from stripe_sync.runtime.metrics import QueueCollector


def test_registering_reads_nothing_a_scrape_reads_once() -> None:
    # The daemon registers on its event loop's thread, where a read through
    # that loop would wait for itself.
    reads: list[int] = []

    def read() -> list[QueueRow]:
        reads.append(1)
        return [QueueRow("outbox", "finished", 7, None, estimated=True)]

    registry = CollectorRegistry(auto_describe=True)
    registry.register(QueueCollector(read))
    assert reads == []
    text = generate_latest(registry).decode()
    assert reads == [1]
    assert 'stripe_sync_queue_rows{queue="outbox",status="finished"} 7.0' in text


def test_a_failed_read_still_answers() -> None:
    def read() -> list[QueueRow]:
        raise RuntimeError("the daemon's pool is not open")

    registry = CollectorRegistry(auto_describe=True)
    registry.register(QueueCollector(read))
    assert "# TYPE stripe_sync_queue_rows gauge" in generate_latest(registry).decode()
