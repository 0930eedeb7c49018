"""The LISTEN connection: turns NOTIFY into worker wake-ups, and keeps itself alive.

A socket can die silently (server restart, ``pg_terminate_backend``, a
half-open TCP peer), so between short waits for notifications the connection
runs ``SELECT 1`` under a deadline. On any failure it reconnects with backoff
and wakes every worker, because notifications sent while it was away are gone:
the workers' claim after a wake-up is the sweep that finds what they named.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import anyio
import psycopg
from psycopg import AsyncConnection, sql

from ..db import conninfo

log = logging.getLogger(__name__)


class Listener:
    def __init__(
        self,
        dsn: str,
        channels: Mapping[str, Callable[[], None]],
        *,
        check_interval: float = 1.0,
        check_timeout: float = 3.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.channels = dict(channels)
        self.check_interval = check_interval
        self.check_timeout = check_timeout
        self.max_backoff = max_backoff
        self.connected = False
        self.connects = 0  # how many times LISTEN was (re)established
        self.backend_pid: int | None = None

    def _wake_all(self) -> None:
        for wake in self.channels.values():
            wake()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        backoff = 0.05
        started = False
        while True:
            conn: AsyncConnection[tuple[object, ...]] | None = None
            try:
                with anyio.fail_after(10):
                    conn = await AsyncConnection.connect(
                        conninfo(self.dsn, "listen"), autocommit=True
                    )
                    for channel in self.channels:
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                self.connected = True
                self.connects += 1
                self.backend_pid = conn.info.backend_pid
                backoff = 0.05
                if self.connects > 1:
                    log.info("LISTEN connection restored", extra={"backend_pid": self.backend_pid})
                self._wake_all()  # sweep after every (re)connect
                if not started:
                    started = True
                    task_status.started()
                await self._serve(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                was = self.connected
                self.connected = False
                self.backend_pid = None
                log.warning(
                    "LISTEN connection lost; reconnecting"
                    if was
                    else "cannot open LISTEN connection; retrying",
                    extra={
                        "error": f"{type(exc).__name__}: {str(exc).strip()[:200]}",
                        "retry_in": round(backoff, 2),
                    },
                )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            finally:
                self.connected = False
                if conn is not None:
                    with anyio.move_on_after(1, shield=True):
                        await conn.close()

    async def _serve(self, conn: AsyncConnection[tuple[object, ...]]) -> None:
        while True:
            async for notify in conn.notifies(timeout=self.check_interval):
                if wake := self.channels.get(notify.channel):
                    wake()
            with anyio.fail_after(self.check_timeout):
                await conn.execute("SELECT 1")
