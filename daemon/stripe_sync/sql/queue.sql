-- The one claim/lease/retry mechanism behind both pipelines. {table} is
-- integration.outbox or integration.webhook_events, {kind} its action_type or
-- event_type column; both share the other columns.

-- name: claim
-- Oldest due rows first; SKIP LOCKED lets replicas claim side by side
-- without ever taking the same row.
WITH due AS (
    SELECT id FROM {table}
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {table} AS t
SET status = 'processing',
    attempts = t.attempts + 1,
    locked_by = %(worker)s,
    locked_until = now() + make_interval(secs => %(lease)s)
FROM due
WHERE t.id = due.id
RETURNING t.id, t.{kind}, t.attempts, t.payload::text

-- name: next_due
-- Seconds until the next pending row is due (NULL when none), so a backoff
-- retry runs on time without waiting for the sweep.
SELECT extract(epoch FROM min(next_attempt_at) - now())::float8
FROM {table} WHERE status = 'pending'

-- name: renew
UPDATE {table}
SET locked_until = now() + make_interval(secs => %(lease)s)
WHERE id = ANY(%(ids)s) AND locked_by = %(worker)s AND status = 'processing'

-- name: finish
-- The lock check makes a late finisher whose lease expired a no-op.
UPDATE {table}
SET status = %(status)s, locked_by = NULL, locked_until = NULL,
    last_error = %(error)s, processed_at = now()
WHERE id = %(id)s AND locked_by = %(worker)s AND status = 'processing'

-- name: retry
UPDATE {table}
SET status = 'pending', locked_by = NULL, locked_until = NULL, last_error = %(error)s,
    next_attempt_at = now() + make_interval(secs => %(delay)s)
WHERE id = %(id)s AND locked_by = %(worker)s AND status = 'processing'

-- name: release
-- Graceful shutdown: hand unfinished claims back, not counted as an attempt.
UPDATE {table}
SET status = 'pending', locked_by = NULL, locked_until = NULL,
    attempts = greatest(attempts - 1, 0), next_attempt_at = now()
WHERE id = ANY(%(ids)s) AND locked_by = %(worker)s AND status = 'processing'

-- name: reclaim_expired
-- A crashed daemon's claims: due again once their lease lapsed. Making them
-- pending fires the due-again trigger, which wakes every daemon.
UPDATE {table}
SET status = 'pending', locked_by = NULL, locked_until = NULL, next_attempt_at = now(),
    last_error = 'lease expired: the daemon that claimed it stopped or stalled'
WHERE status = 'processing' AND locked_until < now()
