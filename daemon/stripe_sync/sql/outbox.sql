-- Queries of the outbox executors. {mapping} is stripe.<family>_mappings,
-- {mc_col} its MC id column, {stripe_col} its Stripe id column. The load_*
-- queries name the mapping's columns stripe_id, status, generation and
-- unknown_for alike (outbox/common.py MappedRow): NULL/0 while the MC row has
-- no mapping. unknown_for: seconds since the current generation's create key
-- met a 500 Stripe saved (schema/0008), by the database's clock; NULL if none.

-- name: claim
-- queue.sql's claim (store.py puts it in here: the same rows, the same lease,
-- relaxed alike), which also reads for each claimed row what its executor
-- reads first, so that a claimed row arrives ready to send (one round trip
-- fewer per row). For the create,
-- update and archive of customers, products and prices: the MC row with its
-- mapping, as the load_account, load_product or load_price query below reads
-- it (store.py puts each in here, reading the row's r.mc_id), as JSON; NULL when
-- the payload is not a plain positive id or the MC row does not exist (the
-- executor then decodes the payload and loads alone, and fails the row naming
-- what is wrong). The payload's id is read with the key the executor decodes
-- (outbox/payloads.py), so both name the same MC row whenever both succeed.
-- For the creates of customers and products, also the pending mapping: a
-- create in flight shows as a pending mapping without a Stripe id yet (a
-- no-op when a mapping exists; the JSON shows the mapping as it was before
-- it). Relaxed: the placeholder is only a sign; if a server crash loses it,
-- the completion (finish_mapped) inserts the mapping anyway.
WITH claimed AS ({queue_claim}),
nouns AS (
    SELECT c.id, c.action_type, c.attempts, c.payload::jsonb AS payload,
           split_part(c.action_type, '_stripe_', 2) AS noun
    FROM claimed c
),
keyed AS (
    SELECT c.*, CASE c.noun WHEN 'customer' THEN 'account_id' WHEN 'product' THEN 'product_id'
                            WHEN 'price' THEN 'price_id' END AS key
    FROM nouns c
),
refs AS (
    SELECT c.*, CASE WHEN jsonb_typeof(c.payload -> c.key) = 'number'
                      AND c.payload ->> c.key ~ '^[1-9][0-9]*$'
                     THEN CASE WHEN (c.payload ->> c.key)::numeric < 9223372036854775808
                               THEN (c.payload ->> c.key)::bigint END
                END AS mc_id
    FROM keyed c
),
pending_customers AS (
    INSERT INTO stripe.customer_mappings (account_id)
    SELECT DISTINCT a.id FROM refs r JOIN billing.accounts a ON a.id = r.mc_id
    WHERE r.action_type = 'create_stripe_customer'
    ON CONFLICT (account_id) DO NOTHING
),
pending_products AS (
    INSERT INTO stripe.product_mappings (product_id)
    SELECT DISTINCT p.id FROM refs r JOIN billing.products p ON p.id = r.mc_id
    WHERE r.action_type = 'create_stripe_product'
    ON CONFLICT (product_id) DO NOTHING
)
SELECT r.id, r.action_type, r.attempts, r.payload::text,
       CASE r.noun
       WHEN 'customer' THEN (SELECT to_jsonb(x) FROM ({load_account}) x)
       WHEN 'product' THEN (SELECT to_jsonb(x) FROM ({load_product}) x)
       WHEN 'price' THEN (SELECT to_jsonb(x) FROM ({load_price}) x)
       END::text
FROM refs r
JOIN integration.outbox o ON o.id = r.id  -- as it was before the claim: oldest first
ORDER BY o.next_attempt_at, o.id

-- name: load_account
SELECT a.email, a.name, m.stripe_customer_id AS stripe_id, m.sync_status AS status,
       coalesce(m.create_generation, 0) AS generation,
       extract(epoch FROM now() - m.create_unknown_since)::float8 AS unknown_for
FROM billing.accounts a
LEFT JOIN stripe.customer_mappings m ON m.account_id = a.id
WHERE a.id = %(id)s

-- name: load_product
SELECT p.name, p.description, p.active, m.stripe_product_id AS stripe_id,
       m.sync_status AS status, coalesce(m.create_generation, 0) AS generation,
       extract(epoch FROM now() - m.create_unknown_since)::float8 AS unknown_for
FROM billing.products p
LEFT JOIN stripe.product_mappings m ON m.product_id = p.id
WHERE p.id = %(id)s

-- name: load_price
-- With the product's mapping: a price can only be created under a synced product.
SELECT p.product_id, p.currency, p.unit_amount, p.recurring_interval,
       p.recurring_interval_count, p.nickname, p.active,
       m.stripe_price_id AS stripe_id, m.sync_status AS status,
       coalesce(m.create_generation, 0) AS generation,
       extract(epoch FROM now() - m.create_unknown_since)::float8 AS unknown_for,
       pm.stripe_product_id, pm.sync_status AS product_status
FROM billing.prices p
LEFT JOIN stripe.price_mappings m ON m.price_id = p.id
LEFT JOIN stripe.product_mappings pm ON pm.product_id = p.product_id
WHERE p.id = %(id)s

-- name: load_subscription
-- A subscription to change (outbox/subscriptions.py), with its mapping: it is
-- born in Stripe, so without a mapping there is nothing to change yet.
SELECT s.status, m.stripe_subscription_id AS stripe_id, m.sync_status
FROM billing.subscriptions s
LEFT JOIN stripe.subscription_mappings m ON m.subscription_id = s.id
WHERE s.id = %(id)s

-- name: mark_pending
-- A create in flight shows as a pending mapping without a Stripe id yet.
-- Relaxed, like the claim's placeholder.
INSERT INTO {mapping} ({mc_col})
SELECT %(mc_id)s::bigint FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
ON CONFLICT ({mc_col}) DO NOTHING

-- name: finish_mapped
-- The completion of outbox rows that write a mapping of one family (queue.sql
-- finish), a group of them in one statement: row i of the arrays is one
-- completion. Per row, independently of the others:
-- lock it if it is still its worker's (else nothing: the lease was lost),
-- write its mapping, and mark it done only if the mapping was written (a
-- mapping naming another Stripe object is never re-pointed: the row stays
-- processing and the executor fails it). Returns (id, done) per row that was
-- still ours. Mappings are written in mc id order, so two groups never lock
-- two mapping rows in opposite orders; two rows of one MC row in one group
-- fail the statement (ON CONFLICT cannot change a row twice), and each row is
-- then recorded alone (group_commit.py). Relaxed, as queue.sql's finish: a
-- lost commit runs the row again, whose Stripe call replays under its key.
WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)),
ours AS (
    SELECT r.* FROM integration.outbox t
    JOIN unnest(%(ids)s::bigint[], %(workers)s::text[], %(statuses)s::text[],
                %(notes)s::text[], %(mc_ids)s::bigint[], %(stripe_ids)s::text[],
                %(map_statuses)s::text[])
        AS r(id, worker, status, note, mc_id, stripe_id, map_status) ON t.id = r.id
    WHERE t.locked_by = r.worker AND t.status = 'processing'
    FOR UPDATE OF t
),
mapped AS (
    INSERT INTO {mapping} AS m ({mc_col}, {stripe_col}, sync_status, synced_at)
    SELECT mc_id, stripe_id, map_status, now() FROM ours ORDER BY mc_id
    ON CONFLICT ({mc_col}) DO UPDATE
    SET {stripe_col} = EXCLUDED.{stripe_col}, sync_status = EXCLUDED.sync_status,
        synced_at = now(), updated_at = now(), create_unknown_since = NULL
    WHERE m.{stripe_col} IS NULL OR m.{stripe_col} = EXCLUDED.{stripe_col}
    RETURNING m.{mc_col} AS mc_id
),
done AS (
    UPDATE integration.outbox AS t
    SET status = o.status, locked_by = NULL, locked_until = NULL,
        note = o.note, last_error = NULL, processed_at = now()
    FROM ours o, relaxed
    WHERE t.id = o.id AND o.mc_id IN (SELECT mc_id FROM mapped)
    RETURNING t.id
)
SELECT o.id, o.id IN (SELECT id FROM done) FROM ours o

-- name: mark_create_unknown
-- The create key of this generation met a 500 that Stripe saved: from the
-- first such answer on, the executor waits for the search index (schema/0008).
-- A no-op once the mapping names an object (a webhook confirmed it meanwhile).
UPDATE {mapping}
SET create_unknown_since = coalesce(create_unknown_since, now()), updated_at = now()
WHERE {mc_col} = %(mc_id)s AND create_generation = %(generation)s AND {stripe_col} IS NULL
RETURNING extract(epoch FROM now() - create_unknown_since)::float8

-- name: next_generation
-- The search found no object after the wait: a new create key. Committed before
-- the request that uses it; no row back means another attempt moved on first.
UPDATE {mapping}
SET create_generation = create_generation + 1, create_unknown_since = NULL, updated_at = now()
WHERE {mc_col} = %(mc_id)s AND create_generation = %(generation)s AND {stripe_col} IS NULL
  AND create_unknown_since IS NOT NULL
RETURNING create_generation

-- name: source
-- This database's name in Stripe metadata and idempotency keys (schema/0007).
SELECT current_database() || '/' || left((SELECT uuid::text FROM integration.installation), 8)
