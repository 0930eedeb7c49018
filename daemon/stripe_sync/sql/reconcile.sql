-- stripe-sync reconcile: the mappings to compare with Stripe, and the repairs
-- --fix makes. {mapping} is stripe.<family>_mappings, {mc_col} its MC id
-- column, {stripe_col} its Stripe id column. Mappings marked deleted are not
-- compared: they record a deletion or archive Stripe already confirmed.

-- name: count
SELECT count(*)::int FROM {mapping}
WHERE {stripe_col} IS NOT NULL AND sync_status <> 'deleted'

-- name: page_customer
-- Keyset pages over the mapping table; "expected" is what the outbox pushes.
SELECT m.id, m.account_id, m.stripe_customer_id,
       jsonb_build_object('email', a.email, 'name', a.name)
FROM stripe.customer_mappings m JOIN billing.accounts a ON a.id = m.account_id
WHERE m.stripe_customer_id IS NOT NULL AND m.sync_status <> 'deleted' AND m.id > %(after)s
ORDER BY m.id LIMIT %(limit)s

-- name: page_product
SELECT m.id, m.product_id, m.stripe_product_id,
       jsonb_build_object('name', p.name, 'description', p.description, 'active', p.active)
FROM stripe.product_mappings m JOIN billing.products p ON p.id = m.product_id
WHERE m.stripe_product_id IS NOT NULL AND m.sync_status <> 'deleted' AND m.id > %(after)s
ORDER BY m.id LIMIT %(limit)s

-- name: page_price
SELECT m.id, m.price_id, m.stripe_price_id,
       jsonb_build_object('nickname', p.nickname, 'active', p.active)
FROM stripe.price_mappings m JOIN billing.prices p ON p.id = m.price_id
WHERE m.stripe_price_id IS NOT NULL AND m.sync_status <> 'deleted' AND m.id > %(after)s
ORDER BY m.id LIMIT %(limit)s

-- name: enqueue
-- One outbox row, unless the same action for the same MC row is already
-- waiting or running (a second --fix before the daemon got to the first).
INSERT INTO integration.outbox (action_type, payload)
SELECT %(action)s, %(payload)s::jsonb
WHERE NOT EXISTS (SELECT 1 FROM integration.outbox
                  WHERE action_type = %(action)s AND payload = %(payload)s::jsonb
                    AND status IN ('pending', 'processing'))
RETURNING id

-- name: forget
-- The Stripe object is gone (404): the mapping goes back to "create in
-- flight", only if it still names that object. Commits with the create row.
UPDATE {mapping}
SET {stripe_col} = NULL, sync_status = 'pending', synced_at = NULL, updated_at = now()
WHERE {mc_col} = %(mc_id)s AND {stripe_col} = %(stripe_id)s AND sync_status <> 'deleted'
RETURNING id

-- name: mark_deleted
-- What the missed *.deleted webhook would have recorded.
UPDATE {mapping}
SET sync_status = 'deleted', updated_at = now()
WHERE {mc_col} = %(mc_id)s AND {stripe_col} = %(stripe_id)s AND sync_status <> 'deleted'
RETURNING id

-- name: mapped_id
-- The Stripe object an MC row is mapped to (for a duplicate's report).
SELECT {stripe_col} FROM {mapping} WHERE {mc_col} = %(mc_id)s
