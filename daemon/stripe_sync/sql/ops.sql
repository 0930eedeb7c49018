-- Operator commands: status, seed, retry, replay. Read-mostly, and cheap on
-- the partial indexes.

-- name: queue_counts
-- The same cost at 10 million rows as at 10: live rows (pending, processing,
-- failed) are counted exactly, each on its partial index; finished rows are
-- never read: their number is the table's live tuples by the statistics
-- counters (kept by every insert and delete, flushed within seconds) minus
-- the live rows, marked estimated.
WITH live AS (
    SELECT 'outbox' AS queue, 'pending' AS status, count(*)::int AS count,
           extract(epoch FROM now() - min(next_attempt_at) FILTER (
               WHERE next_attempt_at <= now()))::float8 AS oldest_due_s
    FROM integration.outbox WHERE status = 'pending'
    UNION ALL
    SELECT 'outbox', 'processing', count(*)::int, NULL
    FROM integration.outbox WHERE status = 'processing'
    UNION ALL
    SELECT 'outbox', 'failed', count(*)::int, NULL FROM integration.outbox WHERE status = 'failed'
    UNION ALL
    SELECT 'webhooks', 'pending', count(*)::int,
           extract(epoch FROM now() - min(next_attempt_at) FILTER (
               WHERE next_attempt_at <= now()))::float8
    FROM integration.webhook_events WHERE status = 'pending'
    UNION ALL
    SELECT 'webhooks', 'processing', count(*)::int, NULL
    FROM integration.webhook_events WHERE status = 'processing'
    UNION ALL
    SELECT 'webhooks', 'failed', count(*)::int, NULL
    FROM integration.webhook_events WHERE status = 'failed'
), tuples AS (
    SELECT 'outbox' AS queue, pg_stat_get_live_tuples('integration.outbox'::regclass) AS n
    UNION ALL
    SELECT 'webhooks', pg_stat_get_live_tuples('integration.webhook_events'::regclass)
)
SELECT queue, status, count, oldest_due_s, false AS estimated FROM live
UNION ALL
SELECT t.queue, 'finished',
       greatest(t.n - (SELECT sum(l.count) FROM live l WHERE l.queue = t.queue), 0)::int,
       NULL, true
FROM tuples t
ORDER BY 1, 2

-- name: recent_failures
(SELECT 'outbox' AS queue, id::text, action_type AS kind, attempts, last_error,
        coalesce(processed_at, created_at) AS at
 FROM integration.outbox WHERE status = 'failed' ORDER BY at DESC LIMIT %(limit)s)
UNION ALL
(SELECT 'webhooks', stripe_event_id, event_type, attempts, last_error,
        coalesce(processed_at, received_at) AS at
 FROM integration.webhook_events WHERE status = 'failed' ORDER BY at DESC LIMIT %(limit)s)
ORDER BY at DESC LIMIT %(limit)s

-- name: stuck
-- Claims whose lease ran out long ago: nobody is sweeping (no daemon running).
SELECT (SELECT count(*) FROM integration.outbox
        WHERE status = 'processing' AND locked_until < now() - interval '1 minute')
     + (SELECT count(*) FROM integration.webhook_events
        WHERE status = 'processing' AND locked_until < now() - interval '1 minute')

-- name: webhook_lag
-- Seconds between receipt and processing of the newest applied events (the
-- end of webhook_events_finished_idx), and the age of the oldest event still
-- waiting (each status on its partial index).
SELECT (SELECT extract(epoch FROM avg(processed_at - received_at))::float8
        FROM (SELECT processed_at, received_at FROM integration.webhook_events
              WHERE status IN ('processed', 'ignored') AND processed_at IS NOT NULL
              ORDER BY processed_at DESC LIMIT 100) recent),
       (SELECT extract(epoch FROM now() - least(
            (SELECT min(received_at) FROM integration.webhook_events WHERE status = 'pending'),
            (SELECT min(received_at) FROM integration.webhook_events
             WHERE status = 'processing')))::float8)

-- name: daemons
SELECT count(*)::int FROM pg_stat_activity
WHERE application_name = 'stripe-sync/listen' AND datname = current_database()

-- name: retry_outbox
-- A fresh retry budget; the due-again trigger wakes the daemon. A dismissed
-- row named by id comes back too.
UPDATE integration.outbox
SET status = 'pending', attempts = 0, next_attempt_at = now()
WHERE (id = ANY(%(ids)s) OR (%(all_failed)s AND status = 'failed'))
  AND status IN ('failed', 'pending', 'dismissed')
RETURNING id::text

-- name: retry_webhooks
-- Rows by id or by the evt_ id that `status` shows.
UPDATE integration.webhook_events
SET status = 'pending', attempts = 0, next_attempt_at = now()
WHERE (id = ANY(%(ids)s) OR stripe_event_id = ANY(%(event_ids)s)
       OR (%(all_failed)s AND status = 'failed'))
  AND status IN ('failed', 'pending', 'dismissed')
RETURNING id::text, stripe_event_id

-- name: dismiss_outbox
-- Failed rows an operator gives up on: terminal, kept with the error and why.
UPDATE integration.outbox
SET status = 'dismissed', note = 'dismissed: ' || %(reason)s, processed_at = now()
WHERE id = ANY(%(ids)s) AND status = 'failed'
RETURNING id::text

-- name: dismiss_webhooks
UPDATE integration.webhook_events
SET status = 'dismissed', note = 'dismissed: ' || %(reason)s, processed_at = now()
WHERE (id = ANY(%(ids)s) OR stripe_event_id = ANY(%(event_ids)s)) AND status = 'failed'
RETURNING id::text, stripe_event_id

-- name: replay
-- Re-apply a stored event whatever became of it; ordering still protects
-- newer state from an older event.
UPDATE integration.webhook_events
SET status = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL
WHERE stripe_event_id = ANY(%(ids)s) AND status <> 'processing'
RETURNING stripe_event_id

-- name: stored_event_ids
-- catch-up: which of these listed events are stored already.
SELECT stripe_event_id FROM integration.webhook_events WHERE stripe_event_id = ANY(%(ids)s)

-- name: open_disputes
-- Disputes that still need a response, soonest deadline first (no deadline last).
SELECT d.id, m.stripe_dispute_id, d.payment_id, p.account_id, d.status, d.reason, d.amount,
       d.currency, d.evidence_due_by
FROM billing.disputes d
JOIN billing.payments p ON p.id = d.payment_id
LEFT JOIN stripe.dispute_mappings m ON m.dispute_id = d.id
WHERE d.status IN ('needs_response', 'warning_needs_response')
ORDER BY d.evidence_due_by NULLS LAST, d.id
LIMIT %(limit)s
