"""The webhook queue as the queue engine (``queue/``) sees it: its table and
channel. Its claim is queue.sql's own; its handlers' writes are statements
(``Done.apply``), recorded in the group's transaction."""

from __future__ import annotations

from ..queue.store import QueueSpec

WEBHOOKS = QueueSpec(
    "webhooks",
    "integration.webhook_events",
    "event_type",
    "stripe_sync_webhooks",
    "processed",
    group_commit=True,
)
