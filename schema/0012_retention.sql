-- Retention (STRIPE_SYNC_RETENTION) and status/metrics that cost the same at
-- 10 million rows as at 10.
--
-- Finished rows by when they finished: the pruner finds the oldest ones
-- without reading the live ones or the rest of the table, and `status` finds
-- the newest applied webhook events for the apply lag. dismissed is finished
-- too (terminal, kept with its error; pruned like the others).
CREATE INDEX outbox_finished_idx ON integration.outbox (processed_at)
    WHERE status IN ('done', 'dismissed');
CREATE INDEX webhook_events_finished_idx ON integration.webhook_events (processed_at)
    WHERE status IN ('processed', 'ignored', 'dismissed');
-- Failed rows are counted exactly by `status` and every metrics scrape, and
-- listed newest first; they are few, so this index is small.
CREATE INDEX outbox_failed_idx ON integration.outbox (processed_at) WHERE status = 'failed';
CREATE INDEX webhook_events_failed_idx ON integration.webhook_events (processed_at)
    WHERE status = 'failed';
