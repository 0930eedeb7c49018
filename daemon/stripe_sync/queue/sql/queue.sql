-- The one claim/lease/retry mechanism behind both pipelines. {table} is
-- integration.outbox or integration.webhook_events, {type_column} its action_type or
-- event_type column; both share the other columns.
--
-- Durability, decided per statement. A statement that joins `relaxed` commits
-- without waiting for its WAL flush (set_config(..., true) is SET LOCAL: this
-- transaction only, and an autocommit statement is its own transaction; the
-- server's and the session's settings stay as they are). A crash of the
-- PostgreSQL server (not of the daemon: a committed transaction survives that)
-- may then lose the last ~0.6 s of such commits, which leaves the row as it was
-- before the statement; each case below says why that is safe. Rows are then
-- run again with the same idempotency keys, as after a lost Stripe response
-- (docs/reliability.md, "What waits for the disk"). The webhook event INSERT
-- (webhooks.sql) never relaxes: the 200 promises that event is on disk.

-- name: claim
-- Oldest due rows first; SKIP LOCKED lets replicas claim side by side
-- without ever taking the same row. Relaxed: a lost claim leaves the row
-- pending with the attempt uncounted, so it is claimed and run again (any
-- later durable commit flushes it too: WAL is written in order).
WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)),
due AS (
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
FROM due, relaxed
WHERE t.id = due.id
RETURNING t.id, t.{type_column}, t.attempts, t.payload::text

-- name: next_due
-- Seconds until the next pending row is due (NULL when none), so a backoff
-- retry runs on time without waiting for the sweep.
SELECT extract(epoch FROM min(next_attempt_at) - now())::float8
FROM {table} WHERE status = 'pending'

-- name: renew
-- Relaxed: a lost renewal shortens a lease that the next renewal, a third of
-- a lease later, extends again; if the lease lapses the row runs again.
UPDATE {table}
SET locked_until = now() + make_interval(secs => %(lease)s)
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
WHERE id = ANY(%(ids)s) AND locked_by = %(worker)s AND status = 'processing'

-- name: finish
-- The lock check makes a late finisher whose lease expired a no-op.
-- Relaxed, and with it the handler's writes in the same transaction (the
-- mapping, billing.*): if the commit is lost the row is still processing
-- under an expired lease, so the sweep makes it pending and it runs again:
-- an outbox row replays its Stripe call with the same idempotency key and
-- writes the same mapping; a webhook event is applied again from its durable
-- row, and the ordering key makes that a no-op or the same update. A lost
-- 'failed' (Store.fail) runs the row again, to fail again.
UPDATE {table}
SET status = %(status)s, locked_by = NULL, locked_until = NULL,
    note = %(note)s, last_error = %(error)s, processed_at = now()
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
WHERE id = %(id)s AND locked_by = %(worker)s AND status = 'processing'

-- name: finish_rows
-- finish for completions that are data (no handler writes, or only a mapping:
-- outbox.sql's finish_mapped), a whole group in one statement: row i of the
-- arrays is one completion. Each row is done only if still its worker's, and
-- independently of the others: no row's outcome depends on another's. Returns
-- the ids recorded; a missing id lost its lease. Relaxed, as finish is.
UPDATE {table} AS t
SET status = r.status, locked_by = NULL, locked_until = NULL,
    note = r.note, last_error = NULL, processed_at = now()
FROM unnest(%(ids)s::bigint[], %(workers)s::text[], %(statuses)s::text[], %(notes)s::text[])
         AS r(id, worker, status, note),
     (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
WHERE t.id = r.id AND t.locked_by = r.worker AND t.status = 'processing'
RETURNING t.id

-- name: group_lock_wait
-- A group of completions (group_commit.py) waits at most this long for a row
-- lock, then is redone row by row: two groups locking two mapping rows in
-- opposite orders (two webhook events of each of two objects) would otherwise
-- wait for PostgreSQL's deadlock check (deadlock_timeout, 1 s by default).
-- SET LOCAL: this transaction only; a row alone waits as long as it takes.
SET LOCAL lock_timeout = '200ms'

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
