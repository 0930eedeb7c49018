"""The worker loop's rules, against the in-memory store: no database, each test
well under a second. ``tests/test_queue.py`` checks the same loop against
PostgreSQL; ``tests/test_store.py`` checks that the fake keeps PostgreSQL's
contract."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
import pytest

from stripe_sync.errors import TransientError
from stripe_sync.queue.jobs import Done, Handler, Job
from stripe_sync.queue.retry import Retry
from stripe_sync.queue.worker import Worker

from fake_store import FakeStore

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(5)]


def make(store: FakeStore, handler: Handler, **options: Any) -> Worker:
    """A worker that only wakes when told: the sweep is an hour away."""
    settings: dict[str, Any] = {
        "worker_id": "w1",
        "sweep_interval": 3600.0,
        "concurrency": 4,
        "retry": Retry(5, 0.01, 0.02),
        "shutdown_timeout": 5.0,
    }
    return Worker(store, handler, **{**settings, **options})


async def until(check: Callable[[], object], what: str, timeout: float = 1.0) -> None:
    with anyio.move_on_after(timeout):
        while not check():
            await anyio.sleep(0.001)
        return
    pytest.fail(f"{what}: not within {timeout} s")


async def done(job: Job) -> Done:
    return Done()


class Gated:
    """A handler whose jobs run until the test lets each one finish."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self._finish: dict[int, anyio.Event] = {}

    async def __call__(self, job: Job) -> Done:
        self.started.append(job.id)
        try:
            await self._event(job.id).wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(job.id)
            raise
        return Done()

    def finish(self, job_id: int) -> None:
        self._event(job_id).set()

    def _event(self, job_id: int) -> anyio.Event:
        return self._finish.setdefault(job_id, anyio.Event())


async def test_a_notify_during_the_claim_is_not_lost() -> None:
    """A wake-up that arrives while a claim is in flight makes the worker claim again.

    Nothing else can start that claim: the sweep is an hour away, no job ran so no
    retry timer is set, and the store's next_due never answers. A worker that reset
    its wake-up flag after the claim, not before, would leave the row for an hour.
    """
    store = FakeStore(reports_next_due=False)
    claim = store.hold("claim")
    async with make(store, done).in_background() as worker:
        await claim.reached.wait()  # the start-up claim found nothing; its answer is on the way
        store.insert()  # a row commits meanwhile ...
        worker.wake()  # ... and its NOTIFY arrives before the claim returns
        claim.release()
        await until(lambda: store.statuses() == {1: "done"}, "the row the NOTIFY announced")
    assert store.count("claim") == 2


async def test_a_freed_slot_is_filled_from_the_buffer_without_a_claim() -> None:
    store = FakeStore()
    store.insert(4)
    jobs = Gated()
    # Two run at once and two more are claimed ahead into the buffer.
    async with make(store, jobs, concurrency=2, batch_size=4).in_background() as worker:
        await until(lambda: jobs.started == [1, 2], "the first two rows start")
        assert worker.in_flight == {1, 2, 3, 4} and store.count("claim") == 1
        jobs.finish(1)
        await until(lambda: jobs.started == [1, 2, 3], "a buffered row takes the free slot")
        await anyio.wait_all_tasks_blocked()
        assert store.count("claim") == 1, "a slot the buffer could fill cost a claim"
        jobs.finish(2)  # the buffer runs low: now it asks the store again
        await until(lambda: store.count("claim") == 2, "a claim once the buffer runs low")
        for job_id in (3, 4):
            jobs.finish(job_id)
        await until(lambda: set(store.statuses().values()) == {"done"}, "all rows done")


async def test_leases_of_running_and_buffered_rows_are_renewed() -> None:
    store = FakeStore()
    store.insert(2)
    jobs = Gated()
    worker = make(store, jobs, concurrency=1, batch_size=2, lease_seconds=0.03)
    async with worker.in_background():
        await until(lambda: jobs.started == [1], "row 1 starts, row 2 waits in the buffer")
        claimed_until = max(row.locked_until or 0.0 for row in store.rows.values())
        await until(lambda: store.count("renew") >= 3, "three renewals", timeout=0.5)
        renewed = [call.args[0] for call in store.calls if call.op == "renew"]
        assert all(ids == [1, 2] for ids in renewed), renewed
        assert all((row.locked_until or 0.0) > claimed_until for row in store.rows.values())
        assert await store.reclaim_expired() == 0
        jobs.finish(1)
        jobs.finish(2)


async def test_shutdown_lets_running_work_finish() -> None:
    store = FakeStore()
    store.insert()
    jobs = Gated()
    async with make(store, jobs).in_background() as worker:
        await until(lambda: jobs.started == [1], "the row starts")
        worker.stop()
        await anyio.sleep(0.05)  # ample for a worker that wrongly cancels at once
        assert worker.running and jobs.cancelled == [], "the worker quit with work running"
        jobs.finish(1)
    assert store.rows[1].status == "done" and store.rows[1].attempts == 1


async def test_shutdown_hands_back_buffered_claims_at_once() -> None:
    store = FakeStore()
    store.insert(2)
    jobs = Gated()
    async with make(store, jobs, concurrency=1, batch_size=2).in_background() as worker:
        await until(lambda: jobs.started == [1], "row 1 starts, row 2 waits in the buffer")
        worker.stop()
        await until(lambda: store.rows[2].status == "pending", "the buffered claim handed back")
        assert (store.rows[2].attempts, store.rows[2].locked_by) == (0, None)
        assert store.rows[1].status == "processing" and worker.running
        jobs.finish(1)
    assert store.statuses() == {1: "done", 2: "pending"}


async def test_shutdown_releases_stragglers_after_the_timeout() -> None:
    store = FakeStore()
    store.insert()
    jobs = Gated()
    async with make(store, jobs, shutdown_timeout=0.05).in_background() as worker:
        await until(lambda: jobs.started == [1], "the row starts")
        stopped_at = anyio.current_time()
        worker.stop()
    assert anyio.current_time() - stopped_at >= 0.05
    assert jobs.cancelled == [1]
    row = store.rows[1]
    assert (row.status, row.attempts, row.locked_by) == ("pending", 0, None)


async def test_own_retry_timer_runs_a_retry_without_the_sweep() -> None:
    # next_due never answers and the sweep is an hour away: only the worker's own
    # timer for the retry it scheduled can bring the row back.
    store = FakeStore(reports_next_due=False)
    store.insert()
    attempts: list[int] = []

    async def flaky(job: Job) -> Done:
        attempts.append(job.attempts)
        if job.attempts == 1:
            raise TransientError("not yet")
        return Done()

    async with make(store, flaky).in_background():
        await until(lambda: store.statuses() == {1: "done"}, "the retry runs when due")
    assert attempts == [1, 2]


async def test_a_failed_claim_backs_off_then_claims_again() -> None:
    store = FakeStore()
    store.insert()
    store.fail_next("claim", OSError("connection refused"), times=3)
    worker = make(store, done)
    worker.claim_backoff = 0.01  # 0.02, 0.04, 0.08 s after the 1st, 2nd, 3rd failure
    async with worker.in_background():
        await until(lambda: store.statuses() == {1: "done"}, "the row, once claims work")
    claims = [call.at for call in store.calls if call.op == "claim"]
    gaps = [b - a for a, b in itertools.pairwise(claims)][:3]
    assert len(gaps) == 3 and all(gap >= 0.9 * 0.02 * 2**i for i, gap in enumerate(gaps)), gaps


async def test_the_sweep_takes_back_an_expired_lease() -> None:
    store = FakeStore()
    store.insert()
    # What a daemon killed mid-call leaves behind: its lease runs five minutes.
    await store.claim(1, "dead:1", lease=300)
    jobs = Gated()
    async with make(store, jobs, sweep_interval=0.01).in_background():
        await anyio.sleep(0.05)
        assert jobs.started == [], "a row was taken while its lease still ran"
        store.advance(301)
        await until(lambda: jobs.started == [1], "the sweep takes the row back")
        jobs.finish(1)
    assert (store.rows[1].status, store.rows[1].attempts) == ("done", 2)


@pytest.mark.parametrize(
    "error, outcome",
    [
        (psycopg.errors.CheckViolation("new row violates check constraint"), "failed"),
        (psycopg.errors.UniqueViolation("duplicate key"), "failed"),
        (psycopg.errors.InvalidTextRepresentation("invalid input syntax"), "failed"),
        (psycopg.errors.SerializationFailure("could not serialize"), "done"),
        (psycopg.errors.DeadlockDetected("deadlock detected"), "done"),
        (psycopg.OperationalError("server closed the connection"), "done"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v,
)
async def test_database_refusals_fail_at_once_and_the_rest_is_retried(
    error: Exception, outcome: str
) -> None:
    """SQLSTATE classes 22 and 23 fail the same way every time; lost connections,
    serialization failures and deadlocks may pass on the next attempt."""
    store = FakeStore(reports_next_due=False)
    store.insert()

    async def once(job: Job) -> Done:
        if job.attempts == 1:
            raise error
        return Done()

    async with make(store, once).in_background():
        await until(lambda: store.statuses() == {1: outcome}, f"the row {outcome}")


def by_parity(job: Job) -> int:
    """A serial key: odd rows are one object, even rows another."""
    return job.id % 2


async def test_rows_of_one_serial_key_run_one_after_another_in_claim_order() -> None:
    store = FakeStore()
    store.insert(5)
    jobs = Gated()
    async with make(store, jobs, concurrency=4, batch_size=8, serial=by_parity).in_background():
        # One of each key at a time, though there are slots for four.
        await until(lambda: jobs.started == [1, 2], "the first row of each key starts")
        await anyio.wait_all_tasks_blocked()
        assert jobs.started == [1, 2], "a row started beside one of its own key"
        jobs.finish(1)
        await until(lambda: jobs.started == [1, 2, 3], "the next odd row once 1 is done")
        assert store.rows[1].status == "done", "it started before its predecessor was recorded"
        jobs.finish(3)
        await until(lambda: jobs.started == [1, 2, 3, 5], "then 5")
        for job_id in (2, 4, 5):
            jobs.finish(job_id)
        await until(lambda: set(store.statuses().values()) == {"done"}, "all rows done")
    assert jobs.started == [1, 2, 3, 5, 4]


async def test_shutdown_hands_back_rows_waiting_for_their_key_at_once() -> None:
    store = FakeStore()
    store.insert(3)
    jobs = Gated()
    worker = make(store, jobs, concurrency=4, serial=lambda job: "one object")
    async with worker.in_background():
        await until(lambda: jobs.started == [1], "row 1 runs, 2 and 3 wait for it")
        worker.stop()
        await until(lambda: store.count("release") == 1, "the waiting rows handed back")
        assert {id_: r.status for id_, r in store.rows.items()} == {
            1: "processing",
            2: "pending",
            3: "pending",
        }
        jobs.finish(1)
    assert store.rows[1].status == "done" and jobs.started == [1]


async def test_rows_claimed_start_before_the_worker_asks_when_the_next_is_due() -> None:
    """A short claim's rows go first (their requests are L1's path): the store's
    next_due is asked on the next pass, and a row due later still runs on time."""
    store = FakeStore()
    [first] = store.insert()
    [later] = store.insert()
    store.rows[later].next_attempt_at = store.now() + 0.2
    asked: dict[int, int] = {}

    async def handler(job: Job) -> Done:
        asked[job.id] = store.count("next_due")
        return Done()

    async with make(store, handler).in_background():
        # The sweep is an hour away: only next_due's answer brings the later row.
        await until(lambda: store.statuses()[later] == "done", "the later row, on time")
    assert asked[first] == 0
