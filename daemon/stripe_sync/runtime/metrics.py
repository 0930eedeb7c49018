"""Prometheus metrics, served on their own address (STRIPE_SYNC_METRICS_BIND),
apart from the webhook endpoint that faces Stripe.

Queue depth and age are read from the database at scrape time (the tables are
the truth) through the daemon's own pool, with the query of ``status``: live
rows counted exactly on their partial indexes, finished rows estimated, so a
scrape costs the same at 10 million rows as at 10. Everything else is counted
as it happens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..config import cannot_listen, split_address
from ..ops.queue_counts import QueueRow

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

PROCESSED = Counter(
    "stripe_sync_processed",
    "Rows finished, by queue, kind and outcome",
    ["queue", "kind", "outcome"],
    registry=REGISTRY,
)
WAKEUPS = Counter(
    "stripe_sync_wakeups",
    "Worker wake-ups, by queue and cause (notify, sweep)",
    ["queue", "cause"],
    registry=REGISTRY,
)
STRIPE_SECONDS = Histogram(
    "stripe_sync_stripe_request_seconds",
    "Stripe API call latency",
    ["call"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STRIPE_RATE_LIMITED = Counter(
    "stripe_sync_stripe_rate_limited", "Stripe 429 answers", registry=REGISTRY
)
WEBHOOKS_RECEIVED = Counter(
    "stripe_sync_webhooks_received",
    "Webhook requests, by result (stored, duplicate, rejected)",
    ["result"],
    registry=REGISTRY,
)
WEBHOOK_INGEST_SECONDS = Histogram(
    "stripe_sync_webhook_ingest_seconds",
    "Webhook request time until the event is durable",
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
)

# Set by the daemon's own check of its webhook endpoint every 10 minutes (ops/endpoint.py
# watch), never by a scrape: a scrape must not call Stripe.
WEBHOOK_ENDPOINT_PROBLEM = Gauge(
    "stripe_sync_webhook_endpoint_problem",
    "1 while the webhook endpoint has the problem (disabled, missing_event_types, "
    "api_version, untagged), as the daemon's last check found it",
    ["problem"],
    registry=REGISTRY,
)


# Runs in the metrics server's thread; reads through the daemon's event loop and pool.
ReadQueues = Callable[[], Sequence[QueueRow]]


class QueueCollector(Collector):
    """Queue depth and oldest-due age per table and status, read at scrape time."""

    def __init__(self, read: ReadQueues) -> None:
        self.read = read

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        rows = GaugeMetricFamily(
            "stripe_sync_queue_rows", "Rows per queue and status", labels=["queue", "status"]
        )
        oldest = GaugeMetricFamily(
            "stripe_sync_queue_oldest_due_seconds",
            "Age of the oldest due pending row",
            labels=["queue"],
        )
        return rows, oldest

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Without it, registering would collect, on the event loop's own
        thread: a read through that loop would wait for itself."""
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows, oldest = self._families()
        # 0 for a queue with nothing due, not no sample: a dashboard shows 0, not "No data".
        ages: dict[str, float] = {}
        try:
            for r in self.read():
                rows.add_metric([r.queue, r.status], r.count)
                ages[r.queue] = max(ages.get(r.queue, 0.0), r.oldest_due_seconds or 0.0)
        except Exception as exc:
            # The database is away, or the daemon is stopping: the scrape
            # still answers, with the counters, and the alert on up/absent fires.
            log.warning("metrics: cannot read queue depth", extra={"error": str(exc)[:200]})
        for queue, age in ages.items():
            oldest.add_metric([queue], age)
        yield rows
        yield oldest


def serve(bind: str, read: ReadQueues) -> None:
    """Start the metrics HTTP server in a background thread."""
    host, port = split_address("STRIPE_SYNC_METRICS_BIND", bind)
    try:
        start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise cannot_listen("STRIPE_SYNC_METRICS_BIND", bind, exc) from None
    REGISTRY.register(QueueCollector(read))
    log.info("metrics listening", extra={"bind": bind})
