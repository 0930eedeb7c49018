-- name: daemons_started_before
-- Running daemons (their LISTEN connection) that started before a point in time: they
-- read STRIPE_WEBHOOK_SECRET before the newest endpoint's secret existed. A session of
-- another role shows no backend_start without pg_read_all_stats: counted, to be safe.
SELECT count(*)::int FROM pg_stat_activity
WHERE application_name = 'stripe-sync/listen' AND datname = current_database()
  AND (backend_start IS NULL OR backend_start < %(before)s)
