"""The retry policy: backoff with jitter, Retry-After as a floor."""

from __future__ import annotations

from stripe_sync.queue.retry import Retry


def test_backoff_grows_and_honours_retry_after() -> None:
    retry = Retry(10, base_seconds=1.0, max_seconds=60.0)
    assert 0.5 <= retry.delay(1) <= 1.0
    assert 4.0 <= retry.delay(4) <= 8.0
    assert 30.0 <= retry.delay(30) <= 60.0
    assert retry.delay(1, retry_after=7.0) == 7.0
    assert 0.05 <= retry.delay(1, base=0.1) <= 0.1
