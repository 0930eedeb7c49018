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

-- name: webhook_oldest_waiting
-- The age of the oldest webhook event still waiting (each status on its
-- partial index).
SELECT extract(epoch FROM now() - least(
           (SELECT min(received_at) FROM integration.webhook_events WHERE status = 'pending'),
           (SELECT min(received_at) FROM integration.webhook_events
            WHERE status = 'processing')))::float8

-- name: apply_lag
-- From first arrival to applied, for the newest rows applied in the last hour
-- (at most 1,000 per queue, read backwards on the finished indexes), as
-- percentiles. Retried rows apart: those that ran more than once, or were
-- made due again after they arrived (backoff, `stripe-sync retry` of an old
-- failure, a lapsed lease); a first try has next_attempt_at = its arrival,
-- both set by the INSERT's now(). An average over both would show the days a
-- retried failure sat failed.
WITH recent AS (
    (SELECT 'outbox' AS queue, attempts > 1 OR next_attempt_at > created_at AS retried,
            extract(epoch FROM processed_at - created_at)::float8 AS lag
     FROM integration.outbox
     WHERE status = 'done' AND processed_at > now() - interval '1 hour'
     ORDER BY processed_at DESC LIMIT 1000)
    UNION ALL
    (SELECT 'webhooks', attempts > 1 OR next_attempt_at > received_at,
            extract(epoch FROM processed_at - received_at)::float8
     FROM integration.webhook_events
     WHERE status IN ('processed', 'ignored') AND processed_at > now() - interval '1 hour'
     ORDER BY processed_at DESC LIMIT 1000)
)
SELECT queue, retried, count(*)::int,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lag),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY lag),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY lag),
       max(lag)
FROM recent GROUP BY queue, retried ORDER BY queue, retried

-- name: waiting
-- Why pending rows wait, per queue: their last_error with Stripe ids blanked
-- (cus_…: 16 events about 16 customers are one reason), counted, each with the
-- age since it arrived of its oldest row, and of its oldest row that was tried
-- (attempts > 0: in backoff, not new nor just made due again by `retry`); a
-- NULL reason: never failed. The reasons of at most 10,000 rows per queue,
-- the soonest due (on the due index); the oldest arrival of them all.
WITH pending AS (
    (SELECT 'outbox' AS queue, last_error, attempts, created_at AS arrived
     FROM integration.outbox
     WHERE status = 'pending' ORDER BY next_attempt_at, id LIMIT 10000)
    UNION ALL
    (SELECT 'webhooks', last_error, attempts, received_at FROM integration.webhook_events
     WHERE status = 'pending' ORDER BY next_attempt_at, id LIMIT 10000)
), oldest AS (
    SELECT 'outbox' AS queue, min(created_at) AS arrived
    FROM integration.outbox WHERE status = 'pending'
    UNION ALL
    SELECT 'webhooks', min(received_at) FROM integration.webhook_events WHERE status = 'pending'
)
SELECT p.queue, extract(epoch FROM now() - o.arrived)::float8,
       regexp_replace(p.last_error, '\m(acct|ba|card|ch|cn|cs|cus|dp|evt|ii|il|in|pi|pm|price'
                      '|prod|py|re|seti|si|sub|txn)_[A-Za-z0-9]{3,}', '\1_…', 'g') AS reason,
       count(*)::int, extract(epoch FROM now() - min(p.arrived))::float8,
       extract(epoch FROM now() - min(p.arrived) FILTER (WHERE p.attempts > 0))::float8
FROM pending p JOIN oldest o USING (queue)
GROUP BY p.queue, o.arrived, reason
ORDER BY p.queue, count(*) DESC, reason NULLS FIRST

-- name: unlinked_customers
-- Events ignored in the last 24 hours because their customer is not linked
-- to an MC account (the note of webhooks/references.not_linked), per
-- customer, most first, with the total over all customers. On
-- webhook_events_finished_idx: only the day's finished rows are read.
SELECT customer, events, sum(events) OVER ()::int AS total
FROM (SELECT substring(note FROM '^customer (\S+) is not linked') AS customer,
             count(*)::int AS events
      FROM integration.webhook_events
      WHERE status = 'ignored' AND processed_at > now() - interval '24 hours'
        AND note LIKE 'customer %% is not linked to an MC account'
      GROUP BY 1) AS t
ORDER BY events DESC, customer
LIMIT %(limit)s

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
