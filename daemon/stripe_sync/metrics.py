"""Prometheus metrics, served on their own address (STRIPE_SYNC_METRICS_BIND),
apart from the webhook endpoint that faces Stripe.

Queue depth and age are read from the database at scrape time (the tables are
the truth); everything else is counted as it happens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .config import cannot_listen, split_address
from .db import conninfo, queries

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


class QueueCollector(Collector):
    """Queue depth and oldest-due age per table and status, read at scrape time."""

    def __init__(self, dsn: str) -> None:
        self.dsn = conninfo(dsn, "metrics")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = GaugeMetricFamily(
            "stripe_sync_queue_rows", "Rows per queue and status", labels=["queue", "status"]
        )
        oldest = GaugeMetricFamily(
            "stripe_sync_queue_oldest_due_seconds",
            "Age of the oldest due pending row",
            labels=["queue"],
        )
        # 0 for a queue with nothing due, not no sample: a dashboard shows 0, not "No data".
        ages: dict[str, float] = {}
        try:
            with psycopg.connect(self.dsn, connect_timeout=3) as conn:
                for queue, status, count, age in conn.execute(queries("ops")["queue_counts"]):
                    rows.add_metric([queue, status], count)
                    ages[queue] = max(ages.get(queue, 0.0), age or 0.0)
        except psycopg.Error as exc:
            log.warning("metrics: cannot read queue depth", extra={"error": str(exc)[:200]})
        for queue, age in ages.items():
            oldest.add_metric([queue], age)
        yield rows
        yield oldest


def serve(bind: str, dsn: str) -> None:
    """Start the metrics HTTP server in a background thread."""
    host, port = split_address("STRIPE_SYNC_METRICS_BIND", bind)
    try:
        start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise cannot_listen("STRIPE_SYNC_METRICS_BIND", bind, exc) from None
    REGISTRY.register(QueueCollector(dsn))
    log.info("metrics listening", extra={"bind": bind})
