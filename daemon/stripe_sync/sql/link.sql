-- stripe-sync link and seed's look (ops/link.py). Bound per family:
-- {mapping}, {mc_table}, {mc_col}, {stripe_col}.

-- name: lock_mc_row
SELECT id FROM {mc_table} WHERE id = %(mc_id)s FOR UPDATE

-- name: mapping_of_mc
SELECT {stripe_col}, sync_status FROM {mapping} WHERE {mc_col} = %(mc_id)s

-- name: mapping_of_stripe
SELECT {mc_col} FROM {mapping} WHERE {stripe_col} = %(stripe_id)s

-- name: insert_link
INSERT INTO {mapping} ({mc_col}, {stripe_col}, sync_status, synced_at)
VALUES (%(mc_id)s, %(stripe_id)s, 'synced', now())

-- name: unlinked
-- MC rows without a mapping, with what a twin is recognised by.
SELECT t.id, lower(t.email) FROM {mc_table} t
WHERE NOT EXISTS (SELECT 1 FROM {mapping} m WHERE m.{mc_col} = t.id)
ORDER BY t.id

-- name: unlinked_ids
SELECT t.id FROM {mc_table} t
WHERE NOT EXISTS (SELECT 1 FROM {mapping} m WHERE m.{mc_col} = t.id)
ORDER BY t.id

-- name: linked_stripe_ids
SELECT {stripe_col} FROM {mapping} WHERE {stripe_col} IS NOT NULL

-- name: push_metadata
-- The link's one metadata push: update_stripe_<noun> sends MC's fields and
-- metadata (mc_*_id, mc_source) with the outbox row's idempotency key.
INSERT INTO integration.outbox (action_type, payload)
VALUES (%(action)s, jsonb_build_object(%(key)s::text, %(mc_id)s::bigint))
RETURNING id

-- name: seed_holding
SELECT integration.seed_outbox(%(accounts)s, %(products)s, %(prices)s)

-- name: price_product
-- The Stripe product an MC price's product is linked to (NULL: not linked).
SELECT pm.stripe_product_id FROM billing.prices p
LEFT JOIN stripe.product_mappings pm ON pm.product_id = p.product_id
WHERE p.id = %(price_id)s
