-- The demo's story and what it shows (stripe-sync demo, demo.py).

-- name: story
-- A DBA's plain SQL: three accounts, two products, three prices, and their outbox rows.
INSERT INTO billing.accounts (email, name) VALUES
  ('ada@example.com', 'Ada Lovelace'), ('alan@example.com', 'Alan Turing'),
  ('grace@example.com', 'Grace Hopper');
INSERT INTO billing.products (name, description) VALUES
  ('Member', 'Monthly membership'), ('Workshop', 'One-off workshop seat');
INSERT INTO billing.prices (product_id, currency, unit_amount, recurring_interval, nickname)
  SELECT id, 'eur', 1500, 'month', 'member monthly' FROM billing.products WHERE name = 'Member';
INSERT INTO billing.prices (product_id, currency, unit_amount, recurring_interval, nickname)
  SELECT id, 'eur', 15000, 'year', 'member yearly' FROM billing.products WHERE name = 'Member';
INSERT INTO billing.prices (product_id, currency, unit_amount, nickname)
  SELECT id, 'eur', 4000, 'workshop seat' FROM billing.products WHERE name = 'Workshop';
SELECT integration.seed_outbox();

-- name: has_schema
SELECT to_regclass('billing.accounts') IS NOT NULL

-- name: other_tables
-- Tables of another application: the demo never writes beside them.
SELECT n.nspname || '.' || c.relname FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('billing', 'stripe', 'integration', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_%' ORDER BY 1 LIMIT 3

-- name: database_name
SELECT current_database()

-- name: rows_present
-- What a database already holds, before the demo writes into it.
SELECT t, n FROM (
  SELECT 'billing.accounts' AS t, count(*) AS n FROM billing.accounts
  UNION ALL SELECT 'billing.products', count(*) FROM billing.products
  UNION ALL SELECT 'billing.prices', count(*) FROM billing.prices
  UNION ALL SELECT 'billing.subscriptions', count(*) FROM billing.subscriptions
  UNION ALL SELECT 'billing.invoices', count(*) FROM billing.invoices
  UNION ALL SELECT 'billing.payments', count(*) FROM billing.payments
  UNION ALL SELECT 'integration.outbox', count(*) FROM integration.outbox
  UNION ALL SELECT 'integration.webhook_events', count(*) FROM integration.webhook_events
) AS c WHERE n > 0 ORDER BY t

-- name: mark
-- The demo's own database: a later demo run may empty it again.
COMMENT ON DATABASE {db} IS 'stripe-sync demo: its rows are the demo''s own'

-- name: marked
SELECT shobj_description(oid, 'pg_database') = 'stripe-sync demo: its rows are the demo''s own'
FROM pg_database WHERE datname = current_database()

-- name: wipe
-- Only in a database the demo marked as its own: the previous story's rows
-- point at objects of an emulator that is gone.
TRUNCATE billing.accounts, billing.products, billing.prices, billing.subscriptions,
         billing.subscription_items, billing.invoices, billing.payments,
         stripe.provider_configs, stripe.customer_mappings, stripe.product_mappings,
         stripe.price_mappings, stripe.subscription_mappings, stripe.invoice_mappings,
         stripe.payment_mappings, integration.outbox, integration.webhook_events
  RESTART IDENTITY CASCADE

-- name: moving
-- What has not settled yet; empty when the story is over.
SELECT 'integration.outbox' AS t, status, count(*) FROM integration.outbox
  WHERE status IN ('pending', 'processing') GROUP BY status
UNION ALL
SELECT 'integration.webhook_events', status, count(*) FROM integration.webhook_events
  WHERE status IN ('pending', 'processing') GROUP BY status
ORDER BY 1, 2

-- name: progress
SELECT (SELECT count(*) FROM integration.outbox WHERE status = 'done') AS outbox_done,
       (SELECT count(*) FROM integration.webhook_events) AS events,
       (SELECT count(*) FROM billing.payments WHERE status = 'succeeded') AS payments,
       (SELECT count(*) FROM billing.payments WHERE refund_status = 'full') AS refunded,
       (SELECT count(*) FROM billing.disputes) AS disputes,
       (SELECT count(*) FROM billing.subscriptions WHERE cancel_at_period_end) AS cancelling,
       (SELECT count(*) FROM billing.invoices i JOIN billing.accounts a ON a.id = i.account_id
         WHERE a.email = 'katherine@example.com' AND i.status = 'paid') AS year_paid

-- name: cancel_ada
-- Ada cancels in the member console: the app inserts an outbox row; the daemon asks
-- Stripe, and billing.subscriptions follows from the webhook.
INSERT INTO integration.outbox (action_type, payload)
SELECT 'cancel_stripe_subscription', jsonb_build_object('subscription_id', s.id, 'at_period_end', true)
FROM billing.subscriptions s JOIN billing.accounts a ON a.id = s.account_id
WHERE a.email = 'ada@example.com'

-- name: ada
SELECT c.stripe_customer_id, p.stripe_price_id
FROM billing.accounts a
JOIN stripe.customer_mappings c ON c.account_id = a.id
CROSS JOIN billing.prices bp
JOIN stripe.price_mappings p ON p.price_id = bp.id
WHERE a.email = 'ada@example.com' AND bp.nickname = 'member monthly'

-- name: clock_member
-- Katherine's account. The outbox cannot put a customer on a Stripe test clock,
-- so the demo creates her customer itself and maps it (map_customer) as the outbox would.
INSERT INTO billing.accounts (email, name) VALUES ('katherine@example.com', 'Katherine Johnson')
RETURNING id

-- name: map_customer
INSERT INTO stripe.customer_mappings (account_id, stripe_customer_id)
VALUES (%(account)s, %(customer)s) RETURNING id

-- name: monthly_price
SELECT m.stripe_price_id FROM stripe.price_mappings m JOIN billing.prices p ON p.id = m.price_id
WHERE p.nickname = 'member monthly'

-- name: customer
SELECT c.stripe_customer_id FROM billing.accounts a
JOIN stripe.customer_mappings c ON c.account_id = a.id
WHERE a.email = %(email)s

-- name: created_in_stripe
-- Outbox → Stripe: each MC row and the Stripe object made for it.
SELECT 1 AS family, a.id, 'billing.accounts ' || a.id AS mc_row, a.name || ' <' || a.email || '>' AS what,
       m.stripe_customer_id AS stripe_id, m.sync_status
FROM stripe.customer_mappings m JOIN billing.accounts a ON a.id = m.account_id
UNION ALL
SELECT 2, p.id, 'billing.products ' || p.id, p.name, m.stripe_product_id, m.sync_status
FROM stripe.product_mappings m JOIN billing.products p ON p.id = m.product_id
UNION ALL
SELECT 3, p.id, 'billing.prices ' || p.id,
       p.nickname || ': ' || upper(p.currency) || ' ' || to_char(p.unit_amount / 100.0, 'FM999990.00')
         || coalesce(' / ' || p.recurring_interval, ' once'),
       m.stripe_price_id, m.sync_status
FROM stripe.price_mappings m JOIN billing.prices p ON p.id = m.price_id
ORDER BY 1, 2

-- name: events_received
-- Stripe → webhooks: what arrived and what became of it.
SELECT event_type, status, count(*) FROM integration.webhook_events
GROUP BY event_type, status ORDER BY event_type, status

-- name: billing_rows
-- What the webhooks produced in the member console's tables.
SELECT 1 AS family, s.id, 'billing.subscriptions ' || s.id AS mc_row,
       a.name || ', ' || string_agg(p.nickname, ', ') AS what,
       s.status || CASE WHEN s.cancel_at_period_end THEN ' (cancels at period end)' ELSE '' END AS state
FROM billing.subscriptions s JOIN billing.accounts a ON a.id = s.account_id
LEFT JOIN billing.subscription_items i ON i.subscription_id = s.id
LEFT JOIN billing.prices p ON p.id = i.price_id
GROUP BY s.id, a.name
UNION ALL
-- Alike invoices and payments (a year of renewals) are one line: ids first-last, N times.
SELECT 2, min(id), 'billing.invoices ' || min(id) || CASE WHEN count(*) > 1 THEN '-' || max(id) ELSE '' END,
       what || CASE WHEN count(*) > 1 THEN ', ' || count(*) || ' times' ELSE '' END, state
FROM (SELECT v.id, a.name || ', ' || upper(v.currency) || ' ' || to_char(v.total / 100.0, 'FM999990.00') AS what,
             v.status AS state
      FROM billing.invoices v JOIN billing.accounts a ON a.id = v.account_id) AS v
GROUP BY what, state
UNION ALL
SELECT 3, min(id), 'billing.payments ' || min(id) || CASE WHEN count(*) > 1 THEN '-' || max(id) ELSE '' END,
       what || CASE WHEN count(*) > 1 THEN ', ' || count(*) || ' times' ELSE '' END, state
FROM (SELECT y.id,
             coalesce(a.name || ', ', '') || upper(y.currency) || ' ' || to_char(y.amount / 100.0, 'FM999990.00')
               || CASE WHEN y.amount_refunded > 0
                       THEN ', refunded ' || to_char(y.amount_refunded / 100.0, 'FM999990.00') ELSE '' END AS what,
             y.status || CASE WHEN y.refund_status <> 'none' THEN ' (refund: ' || y.refund_status || ')'
                              ELSE '' END AS state
      FROM billing.payments y LEFT JOIN billing.accounts a ON a.id = y.account_id) AS y
GROUP BY what, state
UNION ALL
SELECT 4, d.id, 'billing.disputes ' || d.id,
       coalesce(a.name || ', ', '') || upper(d.currency) || ' ' || to_char(d.amount / 100.0, 'FM999990.00')
         || ', ' || coalesce(d.reason, 'no reason') || ', respond by '
         || coalesce(to_char(d.evidence_due_by AT TIME ZONE 'UTC', 'YYYY-MM-DD'), '-'),
       d.status
FROM billing.disputes d JOIN billing.payments y ON y.id = d.payment_id
LEFT JOIN billing.accounts a ON a.id = y.account_id
ORDER BY 1, 2
