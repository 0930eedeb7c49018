-- Retention: finished rows older than STRIPE_SYNC_RETENTION are deleted in
-- small batches (retention.py). Finished: outbox done/dismissed, webhook
-- events processed/ignored/dismissed; pending, processing and failed rows are
-- never touched. The finished indexes (schema/0012) find the oldest without
-- reading the rest. FOR UPDATE SKIP LOCKED: replicas pruning at once take
-- disjoint rows and never wait for each other, and a row `retry` or `replay`
-- made pending meanwhile is rechecked under the lock and left alone.

-- name: prune_outbox
WITH doomed AS (
    SELECT id FROM integration.outbox
    WHERE status IN ('done', 'dismissed')
      AND processed_at < now() - make_interval(secs => %(keep_seconds)s)
    ORDER BY processed_at LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM integration.outbox o USING doomed WHERE o.id = doomed.id RETURNING o.status
)
SELECT status, count(*)::int FROM gone GROUP BY status

-- name: prune_webhooks
WITH doomed AS (
    SELECT id FROM integration.webhook_events
    WHERE status IN ('processed', 'ignored', 'dismissed')
      AND processed_at < now() - make_interval(secs => %(keep_seconds)s)
    ORDER BY processed_at LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM integration.webhook_events w USING doomed WHERE w.id = doomed.id
    RETURNING w.status
)
SELECT status, count(*)::int FROM gone GROUP BY status

-- name: prunable_outbox
-- --dry-run: what a prune would delete now.
SELECT status, count(*)::int FROM integration.outbox
WHERE status IN ('done', 'dismissed')
  AND processed_at < now() - make_interval(secs => %(keep_seconds)s)
GROUP BY status

-- name: prunable_webhooks
SELECT status, count(*)::int FROM integration.webhook_events
WHERE status IN ('processed', 'ignored', 'dismissed')
  AND processed_at < now() - make_interval(secs => %(keep_seconds)s)
GROUP BY status
