-- stripe-sync backfill (ops/backfill.py): the linked customers, checkpoints,
-- and a fingerprint of what each imported object shows in MC, so a page that
-- changes nothing is rolled back and counted unchanged.

-- name: linked_customers
-- Linked (synced) customers, by Stripe id; one when %(customer)s is given.
SELECT stripe_customer_id FROM stripe.customer_mappings
WHERE sync_status = 'synced' AND stripe_customer_id IS NOT NULL
  AND (%(customer)s::text IS NULL OR stripe_customer_id = %(customer)s)
ORDER BY stripe_customer_id

-- name: mapped_payment_intents
-- Which of these PaymentIntents MC has (refunds and disputes are imported for
-- those); with %(customer)s, only that customer's.
SELECT m.stripe_payment_intent_id FROM stripe.payment_mappings m
JOIN billing.payments p ON p.id = m.payment_id
LEFT JOIN stripe.customer_mappings c ON c.account_id = p.account_id
WHERE m.stripe_payment_intent_id = ANY (%(ids)s)
  AND (%(customer)s::text IS NULL OR c.stripe_customer_id = %(customer)s)

-- name: checkpoints
SELECT family, cursor, done, objects FROM integration.backfill_checkpoints
WHERE scope = %(scope)s

-- name: restart
-- A new run of the scope: the previous one finished (or never started).
DELETE FROM integration.backfill_checkpoints WHERE scope = %(scope)s

-- name: relaxed
-- A page's commit need not wait for the WAL flush: a page lost in a crash
-- lost the checkpoint after it too (the WAL keeps their order), so the rerun
-- applies it again.
SELECT set_config('synchronous_commit', 'off', true)

-- name: checkpoint
WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO integration.backfill_checkpoints AS c (scope, family, cursor, done, objects)
SELECT %(scope)s, %(family)s, %(cursor)s, %(done)s, %(objects)s FROM relaxed
ON CONFLICT (scope, family) DO UPDATE
SET cursor = coalesce(EXCLUDED.cursor, c.cursor), done = EXCLUDED.done,
    objects = c.objects + EXCLUDED.objects, updated_at = now()

-- name: fingerprints
-- The MC row and its mapping, without timestamps and the ordering key.
SELECT m.{stripe_col},
       (to_jsonb(t) - 'created_at' - 'updated_at')::text || '|' ||
       (to_jsonb(m) - 'id' - 'created_at' - 'updated_at' - 'synced_at' - 'last_event_created'
        - 'last_event_rank' - 'last_event_id')::text
FROM {mapping} m JOIN {mc_table} t ON t.id = m.{mc_col}
WHERE m.{stripe_col} = ANY (%(ids)s)

-- name: fingerprints_customer
-- A customer's default payment method shows as is_default of its cards.
SELECT m.stripe_customer_id,
       coalesce(m.default_payment_method, '') || '|' || m.sync_status || '|' ||
       coalesce((SELECT string_agg(p.id || ':' || p.is_default, ',' ORDER BY p.id)
                 FROM billing.payment_methods p WHERE p.account_id = m.account_id), '')
FROM stripe.customer_mappings m WHERE m.stripe_customer_id = ANY (%(ids)s)

-- name: fingerprints_subscription
SELECT m.stripe_subscription_id,
       coalesce((SELECT string_agg(i.price_id || 'x' || i.quantity || '@'
                                   || coalesce(i.current_period_start::text, '') || '-'
                                   || coalesce(i.current_period_end::text, ''), ','
                                   ORDER BY i.price_id)
                 FROM billing.subscription_items i WHERE i.subscription_id = m.subscription_id), '')
FROM stripe.subscription_mappings m WHERE m.stripe_subscription_id = ANY (%(ids)s)

-- name: fingerprints_invoice
-- The payments an invoice's invoice_payment links name.
SELECT m.stripe_invoice_id,
       coalesce((SELECT string_agg(p.id::text, ',' ORDER BY p.id)
                 FROM billing.payments p WHERE p.invoice_id = m.invoice_id), '')
FROM stripe.invoice_mappings m WHERE m.stripe_invoice_id = ANY (%(ids)s)

-- name: fingerprints_refund
SELECT r.stripe_refund_id,
       r.payment_id || ':' || r.amount || ':' || coalesce(r.status, '') || '|'
       || p.amount_refunded || ':' || p.refund_status
FROM stripe.payment_refunds r JOIN billing.payments p ON p.id = r.payment_id
WHERE r.stripe_refund_id = ANY (%(ids)s)
