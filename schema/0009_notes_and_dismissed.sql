-- Notes apart from errors: a row that succeeded may carry a note ("stale:
-- older than evt_…", "already mapped to cus_…"); last_error now only ever
-- holds an error. Existing notes of finished rows move over.
ALTER TABLE integration.outbox ADD COLUMN note text;
ALTER TABLE integration.webhook_events ADD COLUMN note text;
UPDATE integration.outbox SET note = last_error, last_error = NULL
WHERE status = 'done' AND last_error IS NOT NULL;
UPDATE integration.webhook_events SET note = last_error, last_error = NULL
WHERE status IN ('processed', 'ignored') AND last_error IS NOT NULL;

-- A failed row an operator has given up on (`stripe-sync dismiss ID --reason …`):
-- terminal, not a problem for `status`, kept with its error and the reason
-- (in note). `stripe-sync retry` brings it back.
ALTER TABLE integration.outbox DROP CONSTRAINT outbox_status_check,
    ADD CONSTRAINT outbox_status_check
    CHECK (status IN ('pending', 'processing', 'done', 'failed', 'dismissed'));
ALTER TABLE integration.webhook_events DROP CONSTRAINT webhook_events_status_check,
    ADD CONSTRAINT webhook_events_status_check
    CHECK (status IN ('pending', 'processing', 'processed', 'ignored', 'failed', 'dismissed'));
