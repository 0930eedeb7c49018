"""``stripe-sync run``: one event loop holding everything.

    LISTEN connection ──wake──▶ outbox Worker ──▶ Stripe ──▶ mapping + done
                      └─wake──▶ webhook Worker ──▶ billing.* + mappings
    Hypercorn ──▶ /webhooks/stripe ──▶ Ingestor (group commit) ──▶ webhook_events

Shutdown (SIGTERM/SIGINT, or :meth:`Daemon.stop`): stop claiming and stop
accepting webhooks, let in-flight work finish within the timeout, hand back
unfinished claims, exit 0.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal
from psycopg_pool import AsyncConnectionPool

from .. import provider
from ..config import Settings
from ..db import first_connect, make_pool, redact_dsn
from ..migrate import check_current
from ..ops.endpoint import watch as endpoint_watch
from ..ops.queue_counts import QueueRow, queue_rows
from ..ops.retention import Pruner
from ..outbox.common import Context, source_of
from ..outbox.execute import make_handler as outbox_handler
from ..outbox.queue import OUTBOX
from ..queue.listen import Listener
from ..queue.retry import Retry
from ..queue.store import PostgresStore
from ..queue.worker import Worker
from ..stripe_api import from_settings
from ..webhooks.endpoint import WebhookEndpoint
from ..webhooks.execute import WebhookContext, make_preload, object_of
from ..webhooks.execute import make_handler as webhook_handler
from ..webhooks.ingest import Ingestor
from ..webhooks.queue import WEBHOOKS
from . import metrics, sdnotify
from .http import bind_socket, create_app, serve_http

log = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Daemon:
    def __init__(self, settings: Settings, sock: socket.socket | None = None) -> None:
        settings.require("DATABASE_URL", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET")
        assert settings.database_url is not None and settings.stripe_api_key is not None
        self.settings = settings
        self.dsn = settings.database_url
        self.id = worker_id()
        self.api = from_settings(settings)
        self.pool: AsyncConnectionPool = make_pool(self.dsn, size=settings.pool_size)
        self.workers: list[Worker] = []
        self.listener: Listener | None = None
        self.http_port: int | None = None
        # The webhook socket, when bound before (processes.py); else run binds it.
        self._sock = sock
        self.recheck_seconds = provider.RECHECK_SECONDS  # tests shorten it
        self._stop = anyio.Event()
        self._http_stop = anyio.Event()
        self._portal: BlockingPortal | None = None

    def stop(self) -> None:
        self._stop.set()

    def _worker(self, spec: Any, handler: Any, **extra: Any) -> Worker:
        s = self.settings
        return Worker(
            PostgresStore(spec, self.pool),
            handler,
            **extra,
            worker_id=self.id,
            concurrency=s.concurrency,
            batch_size=s.batch_size,
            lease_seconds=s.lease_seconds,
            sweep_interval=s.sweep_interval,
            retry=Retry(s.max_attempts, s.retry_base_seconds, s.retry_max_seconds),
            shutdown_timeout=s.shutdown_timeout,
        )

    async def ready(self) -> dict[str, bool]:
        database = False
        try:
            with anyio.fail_after(2):
                async with self.pool.connection() as conn:
                    await conn.execute("SELECT 1")
            database = True
        except Exception:
            log.debug("readiness: database unreachable", exc_info=True)
        return {
            "database": database,
            "listen": bool(self.listener and self.listener.connected),
            "workers": bool(self.workers) and all(w.running for w in self.workers),
        }

    def _read_queues(self) -> list[QueueRow]:
        """A metrics scrape (in the metrics server's thread) reads through the
        event loop and the work pool, never on a connection of its own."""
        if self._portal is None:
            raise RuntimeError("the daemon's pool is not open")
        return self._portal.call(self._queue_rows)

    async def _queue_rows(self) -> list[QueueRow]:
        """A metrics scrape's read, on a connection of the work pool."""
        with anyio.fail_after(5):
            async with self.pool.connection() as conn:
                return await queue_rows(conn)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        s = self.settings
        sock = self._sock or bind_socket(s.bind)
        self.http_port = sock.getsockname()[1]
        log.info(
            "starting",
            extra={
                "worker_id": self.id,
                "database": redact_dsn(self.dsn),
                "bind": f"{sock.getsockname()[0]}:{self.http_port}",
                "rate_limit": s.effective_rate_limit or "unpaced",
                "concurrency": s.concurrency,
            },
        )
        await first_connect(self.dsn)
        if s.metrics_bind:
            metrics.serve(s.metrics_bind, self._read_queues)
        try:
            async with self.api, self.pool, BlockingPortal() as self._portal:
                await self._run(sock, task_status)
        finally:
            sock.close()
        log.info("stopped", extra={"worker_id": self.id})

    async def _run(self, sock: socket.socket, task_status: anyio.abc.TaskStatus[None]) -> None:
        s = self.settings
        assert s.mode is not None
        async with self.pool.connection() as conn:
            await check_current(conn)
        checked = await provider.check(self.pool, self.api, s.mode)
        mode = checked.mode
        source = await source_of(self.pool)
        outbox = self._worker(
            OUTBOX, outbox_handler(Context(self.pool, self.api, source, s.search_lag))
        )
        webhook_ctx = WebhookContext(
            pool=self.pool, api=self.api, mode=mode, refetch=s.webhook_refetch, source=source
        )
        webhooks = self._worker(
            WEBHOOKS,
            webhook_handler(webhook_ctx),
            preload=make_preload(webhook_ctx),
            serial=object_of,
        )
        self.workers = [outbox, webhooks]
        self.listener = Listener(
            self.dsn, {OUTBOX.channel: outbox.wake, WEBHOOKS.channel: webhooks.wake}
        )
        ingestor = Ingestor(self.pool)
        endpoint = WebhookEndpoint(
            ingestor, [x.reveal() for x in s.webhook_secrets], tolerance=s.webhook_tolerance
        )
        app = create_app(endpoint, self.ready)

        async with anyio.create_task_group() as tg:
            if checked.recheck:
                tg.start_soon(self._recheck_account, mode)
            await tg.start(self.listener.run)
            await tg.start(ingestor.run)
            async with anyio.create_task_group() as work:
                for worker in self.workers:
                    await work.start(worker.run)
                # In the inner group: in-flight webhook requests finish before
                # the ingestor behind them is cancelled.
                work.start_soon(serve_http, app, sock, self._http_stop)
                tg.start_soon(self._watchdog)
                tg.start_soon(Pruner(self.pool, s.retention_seconds).run)
                if s.metrics_bind:  # the webhook endpoint's health, for the metrics
                    tg.start_soon(endpoint_watch, self.api, source)
                sdnotify.notify("READY=1")
                log.info("ready", extra={"http_port": self.http_port})
                task_status.started()

                await self._stop.wait()
                sdnotify.notify("STOPPING=1")
                log.info(
                    "stopping: no new claims, no new webhooks",
                    extra={"timeout": s.shutdown_timeout},
                )
                self._http_stop.set()
                for worker in self.workers:
                    worker.stop()
            # Workers have drained (or handed back their claims), HTTP is closed.
            tg.cancel_scope.cancel()

    async def _recheck_account(self, mode: provider.Mode) -> None:
        """Stripe was unreachable at start: check the account once it answers (a
        key of another account then stops the daemon, as at start)."""
        while True:
            await anyio.sleep(self.recheck_seconds)
            checked = await provider.check(self.pool, self.api, mode)
            if not checked.recheck:
                log.info("Stripe account checked", extra={"account_id": checked.account_id})
                return

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval()
        if interval is None:
            return
        while True:
            sdnotify.notify("WATCHDOG=1")
            await anyio.sleep(interval)
