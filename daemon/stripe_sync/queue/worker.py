"""Claim → execute → record: the one loop behind both pipelines.

A :class:`Worker` claims due rows of one queue from its :class:`~.store.Store`
in batches into a local buffer, runs its :data:`~.jobs.Handler` on each
concurrently up to a limit, and records the outcome: done (together with the
handler's own writes, in one transaction), retry with backoff
(:class:`~.retry.Retry`), or failed. Claims are leases renewed while the work
runs, so a crashed daemon's rows come back within seconds.

An optional ``serial`` names a key per row (the webhooks': the Stripe object):
rows of one key run one after another, in claim order, each starting once
the one before is recorded, never side by side. An optional ``preload`` sees
each claimed batch before its rows start: the
webhook handlers' pre-check reads, one query per batch instead of one per
row (``webhooks.execute.make_preload``); when it fails, each handler reads
for itself.

It wakes on NOTIFY (via :meth:`Worker.wake`, called by ``listen.py``), when a
slot frees up, when the next backoff retry is due, and on a periodic sweep,
which also takes back expired leases. The wake-up flag is reset *before* each
claim, so a notification that arrives while a claim runs is never lost.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from contextlib import AbstractAsyncContextManager

import anyio
import psycopg

from ..config import DEFAULTS
from ..errors import LeaseLost, PermanentError, TransientError, one_line
from ..runtime.metrics import PROCESSED, WAKEUPS
from .background import in_background
from .jobs import Done, Handler, Job
from .retry import Retry
from .store import DATABASE_ERRORS, REFUSALS, Store, refusal

log = logging.getLogger(__name__)


class Worker:
    # The pause after the first failed claim in a row; it doubles with each
    # further failure, up to the sweep interval.
    claim_backoff: float = 0.2

    def __init__(
        self,
        store: Store,
        handler: Handler,
        *,
        worker_id: str,
        # Unset: the settings' defaults (STRIPE_SYNC_CONCURRENCY, …).
        concurrency: int = DEFAULTS.concurrency,
        batch_size: int = DEFAULTS.batch_size,
        lease_seconds: float = DEFAULTS.lease_seconds,
        sweep_interval: float = DEFAULTS.sweep_interval,
        retry: Retry | None = None,
        shutdown_timeout: float = DEFAULTS.shutdown_timeout,
        preload: Callable[[Sequence[Job]], Awaitable[None]] | None = None,
        serial: Callable[[Job], Hashable | None] | None = None,
    ) -> None:
        self.store = store
        self.preload = preload
        self.serial = serial
        # Keys with a row running, and the claimed rows of each waiting their turn.
        self._serial_waiting: dict[Hashable, deque[Job]] = {}
        self.spec = store.spec
        self.handler = handler
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.sweep_interval = sweep_interval
        self.retry = retry or Retry()
        self.shutdown_timeout = shutdown_timeout
        # Claimed rows, running or buffered; their leases are renewed.
        self.in_flight: set[int] = set()
        self.prefetch = min(batch_size, concurrency)
        self._buffer: deque[Job] = deque()
        self._active = 0
        self._maybe_due = True  # cleared when a claim comes back short
        self._ask_next_due = False  # set when it does: ask the store's next_due
        self._retries_due: list[float] = []  # heap of our own backoff retries' due times
        self.running = False
        self._wakeup = anyio.Event()
        self._stopping = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()

    # -- control ---------------------------------------------------------------

    def wake(self, cause: str = "notify") -> None:
        if cause != "slot":
            WAKEUPS.labels(self.spec.name, cause).inc()
            self._maybe_due = True
        self._wakeup.set()

    def stop(self) -> None:
        """Stop claiming; in-flight work gets ``shutdown_timeout`` to finish."""
        self._stopping.set()
        self._wakeup.set()

    def in_background(self) -> AbstractAsyncContextManager[Worker]:
        """Run in the background for the block; leaving it stops the worker and
        waits for its drain (``shutdown_timeout``)."""
        return in_background(self)

    # -- main loop -------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.running = True
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._renew_leases)
                outer.start_soon(self._sweep)
                async with anyio.create_task_group() as work:
                    task_status.started()
                    await self._claim_loop(work)
                    await self._drain(work)
                outer.cancel_scope.cancel()
        finally:
            self.running = False

    async def _claim_loop(self, work: anyio.abc.TaskGroup) -> None:
        failures = 0
        while not self._stopping.is_set():
            if self._wakeup.is_set():
                self._wakeup = anyio.Event()  # reset before the claim, never after
            claimed = False
            self._start_buffered(work)
            wait = self._until_own_retry()
            room = self.concurrency + self.prefetch - len(self.in_flight)
            # Claim in batches: a freed slot is filled from the buffer, and the
            # database is asked again only when the buffer runs low.
            if self._maybe_due and room > 0 and (room >= self.prefetch or not self._buffer):
                want = min(room, self.batch_size)
                # Like the wake-up event, the flag is reset before the claim:
                # a NOTIFY that lands while the claim runs sets it again.
                self._maybe_due = False
                try:
                    jobs = await self.store.claim(want, self.worker_id, self.lease_seconds)
                    failures = 0
                except DATABASE_ERRORS as exc:
                    failures += 1
                    self._maybe_due = True
                    jobs, wait = [], min(self.claim_backoff * 2**failures, self.sweep_interval)
                    log.warning(
                        "claim failed; retrying",
                        extra={
                            "queue": self.spec.name,
                            "error": one_line(exc),
                            "retry_in": round(wait, 2),
                        },
                    )
                else:
                    self.in_flight.update(job.id for job in jobs)
                    if jobs and self.preload is not None:
                        await self._preload(jobs)
                    self._buffer.extend(jobs)
                    self._start_buffered(work)
                    if len(jobs) == want:
                        self._maybe_due = True
                        continue  # more may be due: claim again before sleeping
                    # Nothing else is due now: sleep until the next backoff retry.
                    self._ask_next_due = True
                    claimed = bool(jobs)
            # Rows just claimed send their requests first: when the next row is
            # due is asked on the next pass (a slot freed, a wake-up), not on
            # their pickup path (docs/benchmarks.md, issue 27, pickup round 3).
            if self._ask_next_due and not claimed:
                self._ask_next_due = False
                next_due = await self._next_due_safe()
                if next_due is not None:
                    wait = min(wait, max(next_due, 0.0) + 0.001)
            with anyio.move_on_after(wait) as timer:
                await self._wakeup.wait()
            if timer.cancelled_caught:
                self._maybe_due = True  # a retry came due, or it is time to look anyway

    async def _preload(self, jobs: list[Job]) -> None:
        assert self.preload is not None
        try:
            await self.preload(jobs)
        except DATABASE_ERRORS as exc:  # only a shortcut: the handlers read for themselves
            log.warning("preload failed", extra={"queue": self.spec.name, "error": one_line(exc)})

    def _until_own_retry(self) -> float:
        """Seconds until a retry this worker scheduled comes due (capped by the sweep)."""
        now = anyio.current_time()
        while self._retries_due and self._retries_due[0] <= now:
            heapq.heappop(self._retries_due)
            self._maybe_due = True
        if self._retries_due:
            return min(self.sweep_interval, self._retries_due[0] - now + 0.001)
        return self.sweep_interval

    def _start_buffered(self, work: anyio.abc.TaskGroup) -> None:
        while self._buffer and self._active < self.concurrency:
            job = self._buffer.popleft()
            key = self.serial(job) if self.serial is not None else None
            if key is not None:
                if (waiting := self._serial_waiting.get(key)) is not None:
                    waiting.append(job)  # after the one of its key running now
                    continue
                self._serial_waiting[key] = deque()
            self._active += 1
            self._idle = anyio.Event()
            work.start_soon(self._execute, job, key)

    def _serial_done(self, key: Hashable) -> None:
        """The row of ``key`` is recorded: the next of that key goes first."""
        waiting = self._serial_waiting.pop(key, None)
        if waiting:
            self._buffer.extendleft(reversed(waiting))

    async def _next_due_safe(self) -> float | None:
        try:
            return await self.store.next_due()
        except DATABASE_ERRORS:
            return None

    async def _drain(self, work: anyio.abc.TaskGroup) -> None:
        """Let running work finish within the timeout; hand back the rest."""
        waiting = [job for jobs in self._serial_waiting.values() for job in jobs]
        for jobs in self._serial_waiting.values():
            jobs.clear()  # those running keep their key: nothing follows them now
        if self._buffer or waiting:  # claimed, never started: back at once
            await self._release([job.id for job in (*self._buffer, *waiting)])
            self._buffer.clear()
            if not self.in_flight:
                self._idle.set()
        if not self.in_flight:
            return
        log.info(
            "waiting for in-flight work",
            extra={
                "queue": self.spec.name,
                "in_flight": len(self.in_flight),
                "timeout": self.shutdown_timeout,
            },
        )
        with anyio.move_on_after(self.shutdown_timeout):
            await self._idle.wait()
        if self.in_flight:
            work.cancel_scope.cancel()
            await self._release(sorted(self.in_flight))

    async def _release(self, ids: list[int]) -> None:
        self.in_flight.difference_update(ids)
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self.store.release(ids, self.worker_id)
            log.warning(
                "handed back unfinished claims", extra={"queue": self.spec.name, "ids": ids}
            )

    # -- one job -----------------------------------------------------------------

    async def _execute(self, job: Job, key: Hashable | None = None) -> None:
        try:
            try:
                done = await self.handler(job)
                await self._record_done(job, done)
            except PermanentError as exc:
                await self._record_failed(job, str(exc))
            except TransientError as exc:
                await self._record_retry(job, str(exc), exc.retry_after, exc.backoff_base)
            except LeaseLost:
                log.warning(
                    "lease lost; another daemon owns the row now",
                    extra={"queue": self.spec.name, "row_id": job.id},
                )
            except REFUSALS as exc:
                assert isinstance(exc, psycopg.Error)
                await self._record_failed(job, refusal(exc))
            except DATABASE_ERRORS as exc:
                await self._record_retry(job, f"database error: {one_line(exc)}", None)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            # A bug or an unclassified failure: keep the daemon going, retry
            # with backoff, and say what it was.
            log.exception("unexpected error", extra={"queue": self.spec.name, "row_id": job.id})
            try:
                await self._record_retry(job, f"unexpected {type(exc).__name__}: {exc}", None)
            except Exception:
                log.exception(
                    "could not record the error; the lease will expire",
                    extra={"queue": self.spec.name, "row_id": job.id},
                )
        finally:
            self._active -= 1
            self.in_flight.discard(job.id)
            if key is not None:
                self._serial_done(key)
            if not self.in_flight:
                self._idle.set()
            self.wake("slot")

    async def _record_done(self, job: Job, done: Done) -> None:
        status = done.status or self.spec.done_status
        await self.store.finish(job.id, self.worker_id, status, done.note, done.apply, done.written)
        PROCESSED.labels(self.spec.name, job.type, status).inc()
        log.info(
            f"{self.spec.name} row {status}",
            extra={
                "queue": self.spec.name,
                "row_id": job.id,
                "kind": job.type,
                "attempt": job.attempts,
                **({"note": done.note} if done.note else {}),
            },
        )

    async def _record_failed(self, job: Job, error: str) -> None:
        await self.store.fail(job.id, self.worker_id, error)
        PROCESSED.labels(self.spec.name, job.type, "failed").inc()
        log.error(
            f"{self.spec.name} row failed",
            extra={
                "queue": self.spec.name,
                "row_id": job.id,
                "kind": job.type,
                "attempt": job.attempts,
                "reason": error,
            },
        )

    async def _record_retry(
        self, job: Job, error: str, retry_after: float | None, base: float | None = None
    ) -> None:
        if job.attempts >= self.retry.max_attempts:
            await self._record_failed(job, f"{error} (gave up after {job.attempts} attempts)")
            return
        delay = self.retry.delay(job.attempts, retry_after, base)
        await self.store.retry(job.id, self.worker_id, error, delay)
        PROCESSED.labels(self.spec.name, job.type, "retry").inc()
        heapq.heappush(self._retries_due, anyio.current_time() + delay)
        log.warning(
            f"{self.spec.name} row will be retried",
            extra={
                "queue": self.spec.name,
                "row_id": job.id,
                "kind": job.type,
                "attempt": job.attempts,
                "retry_in": round(delay, 3),
                "reason": error,
            },
        )

    # -- background --------------------------------------------------------------

    async def _renew_leases(self) -> None:
        while True:
            await anyio.sleep(self.lease_seconds / 3)
            if not self.in_flight:
                continue
            try:
                await self.store.renew(list(self.in_flight), self.worker_id, self.lease_seconds)
            except DATABASE_ERRORS as exc:
                log.warning(
                    "lease renewal failed", extra={"queue": self.spec.name, "error": one_line(exc)}
                )

    async def _sweep(self) -> None:
        """Periodically take back expired leases and look for due rows a NOTIFY missed."""
        while True:
            await anyio.sleep(self.sweep_interval)
            try:
                if n := await self.store.reclaim_expired():
                    log.warning(
                        "took back expired claims", extra={"queue": self.spec.name, "rows": n}
                    )
            except DATABASE_ERRORS as exc:
                log.warning("sweep failed", extra={"queue": self.spec.name, "error": one_line(exc)})
            self.wake("sweep")
