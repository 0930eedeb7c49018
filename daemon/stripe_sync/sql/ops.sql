-- Operator commands: status, seed, retry, replay. Read-mostly, and cheap on
-- the partial indexes.

-- name: seed
-- Outbox creates for MC rows that have no mapping yet (schema: integration.seed_outbox).
SELECT integration.seed_outbox()

-- name: queue_counts
SELECT 'outbox' AS queue, status, count(*)::int,
       extract(epoch FROM now() - min(next_attempt_at) FILTER (
           WHERE status = 'pending' AND next_attempt_at <= now()))::float8 AS oldest_due_s
FROM integration.outbox GROUP BY status
UNION ALL
SELECT 'webhooks', status, count(*)::int,
       extract(epoch FROM now() - min(next_attempt_at) FILTER (
           WHERE status = 'pending' AND next_attempt_at <= now()))::float8
FROM integration.webhook_events GROUP BY status
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
-- Seconds between receipt and processing of the newest applied events, and
-- the age of the oldest event still waiting.
SELECT (SELECT extract(epoch FROM avg(processed_at - received_at))::float8
        FROM (SELECT processed_at, received_at FROM integration.webhook_events
              WHERE status IN ('processed', 'ignored') AND processed_at IS NOT NULL
              ORDER BY processed_at DESC LIMIT 100) recent),
       (SELECT extract(epoch FROM now() - min(received_at))::float8
        FROM integration.webhook_events WHERE status IN ('pending', 'processing'))

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
