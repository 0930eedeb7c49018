-- name: daemons_started_before
-- Running daemons (their LISTEN connection) that started before a point in time: they
-- read STRIPE_WEBHOOK_SECRET before the newest endpoint's secret existed.
SELECT count(*)::int FROM pg_stat_activity
WHERE application_name = 'stripe-sync/listen' AND datname = current_database()
  AND backend_start < %(before)s
