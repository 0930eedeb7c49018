-- Queries of the webhook endpoint and processor. {mapping} is one of the
-- stripe.*_mappings tables, {mc_col} its MC id column, {stripe_col} its
-- Stripe id column. Event ids are compared with COLLATE "C", byte order, as
-- Python compares them, so both sides agree on which event is newer.

-- name: insert_events
-- Group commit: one statement for all events that queued up meanwhile. A
-- redelivered event is a no-op; RETURNING names the rows that are new. The
-- arrays go in binary (the b placeholders): in text, psycopg quotes and
-- escapes each element of each ~1 KB payload in Python, which cost 3x the
-- CPU of the whole statement.
INSERT INTO integration.webhook_events
    (stripe_event_id, event_type, api_version, livemode, event_created, object_id, account, payload)
SELECT * FROM unnest(%(ids)b::text[], %(types)b::text[], %(versions)b::text[],
                     %(livemodes)b::boolean[], %(created)b::bigint[], %(objects)b::text[],
                     %(accounts)b::text[], %(payloads)b::text[]::jsonb[])
ON CONFLICT (stripe_event_id) DO NOTHING
RETURNING stripe_event_id

-- name: claim
-- The webhook queue's claim: queue.sql's (queue_claim), and per event what the
-- worker reads before its handler runs (Job.loaded, JSON): the event and object
-- ids the endpoint stored, and for an event of two-part type (customer.updated,
-- not customer.subscription.updated) of the customers, products, prices or
-- plans the object's mapping row by Stripe id (find_mappings' columns; null
-- when there is none): execute.make_preload's read, in the claim's round trip.
-- Which events' handlers check that row is the dispatch table's to say.
WITH claimed AS ({queue_claim})
SELECT c.id, c.event_type, c.attempts, c.payload,
       json_build_object(
           'event', e.stripe_event_id,
           'object', e.object_id,
           'row', CASE
               WHEN k.kind = 'customer' THEN (
                   SELECT to_json(m) FROM (
                       SELECT id, account_id AS mc_id, sync_status, last_event_created,
                              last_event_rank, last_event_id
                       FROM stripe.customer_mappings WHERE stripe_customer_id = e.object_id) m)
               WHEN k.kind = 'product' THEN (
                   SELECT to_json(m) FROM (
                       SELECT id, product_id AS mc_id, sync_status, last_event_created,
                              last_event_rank, last_event_id
                       FROM stripe.product_mappings WHERE stripe_product_id = e.object_id) m)
               WHEN k.kind IN ('price', 'plan') THEN (
                   SELECT to_json(m) FROM (
                       SELECT id, price_id AS mc_id, sync_status, last_event_created,
                              last_event_rank, last_event_id
                       FROM stripe.price_mappings WHERE stripe_price_id = e.object_id) m)
               END)::text
FROM claimed c
JOIN integration.webhook_events e ON e.id = c.id,
LATERAL (SELECT CASE WHEN c.event_type NOT LIKE '%%.%%.%%'
                     THEN split_part(c.event_type, '.', 1) END AS kind) k

-- name: find_mapping
-- By Stripe id, or (customers, products, prices) by the MC id its metadata
-- names while the outbox has not recorded the Stripe id yet.
SELECT id, {mc_col} AS mc_id, sync_status, last_event_created, last_event_rank, last_event_id
FROM {mapping}
WHERE {stripe_col} = %(stripe_id)s OR ({stripe_col} IS NULL AND {mc_col} = %(mc_id)s)
ORDER BY {stripe_col} IS NULL
LIMIT 1

-- name: find_mappings
-- The rows find_mapping finds by Stripe id, for many objects at once: the
-- pre-check reads of a whole claimed batch in one round trip (Preloaded).
SELECT {stripe_col} AS stripe_id, id, {mc_col} AS mc_id, sync_status,
       last_event_created, last_event_rank, last_event_id
FROM {mapping}
WHERE {stripe_col} = ANY(%(ids)s)

-- name: lock_mapping
-- The same, row-locked: events about one object apply one at a time.
SELECT id, {mc_col} AS mc_id, sync_status, last_event_created, last_event_rank, last_event_id
FROM {mapping}
WHERE {stripe_col} = %(stripe_id)s OR ({stripe_col} IS NULL AND {mc_col} = %(mc_id)s)
ORDER BY {stripe_col} IS NULL
LIMIT 1
FOR UPDATE

-- name: mark_if_newer
-- confirm's apply in one round trip: lock the row lock_mapping locks and mark
-- it as mark_mapping does, only if the event's key is above the newest one
-- applied, in common.Key's order (as MappingRow.last reads the row: no key yet
-- is older than any, a missing rank is -1). A tie of second and rank
-- (common.same_second) is decided by the flags: %(current)s, the event shows
-- Stripe's current object: applied, keeping the higher id; %(ask)s, the
-- handler must ask Stripe first: not applied; neither: the higher id wins. No
-- row updated: a newer event (or a tie) was applied meanwhile, or the row is gone.
UPDATE {mapping} AS m
SET {stripe_col} = %(stripe_id)s, sync_status = %(status)s,
    last_event_created = %(created)s, last_event_rank = %(rank)s,
    last_event_id = CASE
        WHEN (m.last_event_created, coalesce(m.last_event_rank, -1))
             = (%(created)s::bigint, %(rank)s::integer)
        THEN greatest(%(event_id)s::text COLLATE "C", m.last_event_id COLLATE "C")
        ELSE %(event_id)s END,
    synced_at = now(), updated_at = now()
WHERE m.id = (
    SELECT id FROM {mapping}
    WHERE {stripe_col} = %(stripe_id)s OR ({stripe_col} IS NULL AND {mc_col} = %(mc_id)s)
    ORDER BY {stripe_col} IS NULL
    LIMIT 1
    FOR UPDATE
)
AND (m.last_event_created IS NULL
     OR (%(created)s::bigint, %(rank)s::integer)
        > (m.last_event_created, coalesce(m.last_event_rank, -1))
     OR ((%(created)s::bigint, %(rank)s::integer)
         = (m.last_event_created, coalesce(m.last_event_rank, -1))
         AND CASE WHEN m.sync_status = 'deleted' OR %(status)s = 'deleted'
                    OR NOT (%(current)s OR %(ask)s)
                  THEN %(event_id)s::text COLLATE "C" > coalesce(m.last_event_id, '') COLLATE "C"
                  ELSE %(current)s AND %(event_id)s::text <> m.last_event_id END))
RETURNING m.{mc_col}

-- name: archived_product
-- An event shows the product archived (active=false) and MC's row is inactive
-- too: archived as MC asked, so the mapping is deleted, as the outbox's archive
-- records it (an archive in Stripe alone, MC's row active, stays synced: drift
-- that reconcile reports). Runs after mark_if_newer, in its transaction.
UPDATE stripe.product_mappings AS m
SET sync_status = 'deleted', updated_at = now()
FROM billing.products AS p
WHERE m.product_id = %(mc_id)s AND p.id = m.product_id AND NOT p.active

-- name: archived_price
-- The same for a price (and a legacy plan).
UPDATE stripe.price_mappings AS m
SET sync_status = 'deleted', updated_at = now()
FROM billing.prices AS p
WHERE m.price_id = %(mc_id)s AND p.id = m.price_id AND NOT p.active

-- name: confirm_rows
-- confirm's apply (mark_if_newer) and queue.sql's finish for a group of events
-- of one family in one statement (common.ConfirmWrite, webhooks/queue.py): row
-- i of the arrays is one event. Per row, independently of the others: lock the
-- event if it is still its worker's (else nothing: the lease was lost), mark
-- its mapping where mark_if_newer would (the same key and tie rules) and where
-- the mapping's default_payment_method is the event's (customers: set_default
-- then has nothing to write; the other families have no such column, which
-- to_jsonb reads as NULL, and their events name none), and finish the event
-- only if its mapping was marked. Returns (id, marked) per event still ours;
-- one not marked (a newer key, a tie, a new default, no row) is declined and
-- its apply runs alone (group_commit.py), which says why. Mappings are locked
-- in id order, so two groups never wait for each other in opposite orders.
-- Relaxed, as queue.sql's finish: a lost commit applies the event again.
WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)),
ours AS (
    SELECT r.* FROM integration.webhook_events e
    JOIN unnest(%(ids)s::bigint[], %(workers)s::text[], %(statuses)s::text[],
                %(notes)s::text[], %(stripe_ids)s::text[], %(mc_ids)s::bigint[],
                %(map_statuses)s::text[], %(created)s::bigint[], %(ranks)s::integer[],
                %(event_ids)s::text[], %(currents)s::boolean[], %(asks)s::boolean[],
                %(defaults)s::text[])
        AS r(id, worker, status, note, stripe_id, mc_id, map_status, created, rank,
             event_id, current, ask, default_pm) ON e.id = r.id
    WHERE e.locked_by = r.worker AND e.status = 'processing'
    FOR UPDATE OF e
),
targets AS (
    SELECT o.*, (SELECT m.id FROM {mapping} m
                 WHERE m.{stripe_col} = o.stripe_id
                    OR (m.{stripe_col} IS NULL AND m.{mc_col} = o.mc_id)
                 ORDER BY m.{stripe_col} IS NULL
                 LIMIT 1) AS mapping_id
    FROM ours o
),
locked AS (
    SELECT m.id FROM {mapping} m
    WHERE m.id IN (SELECT mapping_id FROM targets)
    ORDER BY m.id
    FOR UPDATE
),
marked AS (
    UPDATE {mapping} AS m
    SET {stripe_col} = t.stripe_id, sync_status = t.map_status,
        last_event_created = t.created, last_event_rank = t.rank,
        last_event_id = CASE
            WHEN (m.last_event_created, coalesce(m.last_event_rank, -1)) = (t.created, t.rank)
            THEN greatest(t.event_id COLLATE "C", m.last_event_id COLLATE "C")
            ELSE t.event_id END,
        synced_at = now(), updated_at = now()
    FROM targets t
    WHERE m.id = t.mapping_id AND m.id IN (SELECT id FROM locked)
      AND (m.{stripe_col} = t.stripe_id OR (m.{stripe_col} IS NULL AND m.{mc_col} = t.mc_id))
      AND (to_jsonb(m) ->> 'default_payment_method') IS NOT DISTINCT FROM t.default_pm
      AND (m.last_event_created IS NULL
           OR (t.created, t.rank) > (m.last_event_created, coalesce(m.last_event_rank, -1))
           OR ((t.created, t.rank) = (m.last_event_created, coalesce(m.last_event_rank, -1))
               AND CASE WHEN m.sync_status = 'deleted' OR t.map_status = 'deleted'
                          OR NOT (t.current OR t.ask)
                        THEN t.event_id COLLATE "C" > coalesce(m.last_event_id, '') COLLATE "C"
                        ELSE t.current AND t.event_id <> m.last_event_id END))
    RETURNING t.id
),
done AS (
    UPDATE integration.webhook_events AS e
    SET status = o.status, locked_by = NULL, locked_until = NULL,
        note = o.note, last_error = NULL, processed_at = now()
    FROM ours o, relaxed
    WHERE e.id = o.id AND o.id IN (SELECT id FROM marked)
    RETURNING e.id
)
SELECT o.id, o.id IN (SELECT id FROM done) FROM ours o

-- name: mark_mapping
UPDATE {mapping}
SET {stripe_col} = %(stripe_id)s, sync_status = %(status)s,
    last_event_created = %(created)s, last_event_rank = %(rank)s, last_event_id = %(event_id)s,
    synced_at = now(), updated_at = now()
WHERE id = %(id)s

-- name: insert_mapping
-- First sight of an object born in Stripe (subscription, invoice, payment).
INSERT INTO {mapping}
    ({mc_col}, {stripe_col}, sync_status, last_event_created, last_event_rank, last_event_id,
     synced_at)
VALUES (%(mc_id)s, %(stripe_id)s, %(status)s, %(created)s, %(rank)s, %(event_id)s, now())
RETURNING id

-- name: mc_ids
-- References: which MC rows these Stripe ids map to.
SELECT {stripe_col} AS stripe_id, {mc_col} AS mc_id FROM {mapping} WHERE {stripe_col} = ANY(%(ids)s)

-- name: object_lock
-- Serializes the first sight of one Stripe object, before its mapping row exists.
SELECT pg_advisory_xact_lock(hashtextextended(%(stripe_id)s, 5711))

-- name: insert_subscription
INSERT INTO billing.subscriptions
    (account_id, status, current_period_start, current_period_end, cancel_at_period_end,
     canceled_at, ended_at, trial_start, trial_end, paused)
VALUES (%(account_id)s, %(status)s, %(current_period_start)s, %(current_period_end)s,
        %(cancel_at_period_end)s, %(canceled_at)s, %(ended_at)s, %(trial_start)s,
        %(trial_end)s, %(paused)s)
RETURNING id

-- name: update_subscription
UPDATE billing.subscriptions
SET account_id = %(account_id)s, status = %(status)s,
    current_period_start = %(current_period_start)s, current_period_end = %(current_period_end)s,
    cancel_at_period_end = %(cancel_at_period_end)s, canceled_at = %(canceled_at)s,
    ended_at = %(ended_at)s, trial_start = %(trial_start)s, trial_end = %(trial_end)s,
    paused = %(paused)s, updated_at = now()
WHERE id = %(id)s

-- name: delete_other_items
DELETE FROM billing.subscription_items
WHERE subscription_id = %(subscription_id)s AND NOT (price_id = ANY(%(prices)s::bigint[]))

-- name: upsert_items
INSERT INTO billing.subscription_items AS i
    (subscription_id, price_id, quantity, current_period_start, current_period_end)
SELECT %(subscription_id)s, p, q, s, e
FROM unnest(%(prices)s::bigint[], %(quantities)s::integer[], %(starts)s::timestamptz[],
            %(ends)s::timestamptz[]) AS t (p, q, s, e)
ON CONFLICT (subscription_id, price_id) DO UPDATE
SET quantity = EXCLUDED.quantity, current_period_start = EXCLUDED.current_period_start,
    current_period_end = EXCLUDED.current_period_end, updated_at = now()

-- name: insert_invoice
INSERT INTO billing.invoices
    (account_id, subscription_id, status, number, currency, amount_due, amount_paid,
     amount_remaining, total, period_start, period_end, due_date, paid_at)
VALUES (%(account_id)s, %(subscription_id)s, %(status)s, %(number)s, %(currency)s,
        %(amount_due)s, %(amount_paid)s, %(amount_remaining)s, %(total)s, %(period_start)s,
        %(period_end)s, %(due_date)s, %(paid_at)s)
RETURNING id

-- name: update_invoice
UPDATE billing.invoices
SET account_id = %(account_id)s, subscription_id = %(subscription_id)s, status = %(status)s,
    number = %(number)s, currency = %(currency)s, amount_due = %(amount_due)s,
    amount_paid = %(amount_paid)s, amount_remaining = %(amount_remaining)s, total = %(total)s,
    period_start = %(period_start)s, period_end = %(period_end)s, due_date = %(due_date)s,
    paid_at = %(paid_at)s, updated_at = now()
WHERE id = %(id)s

-- name: insert_payment
INSERT INTO billing.payments
    (account_id, invoice_id, status, currency, amount, amount_received, failure_message)
VALUES (%(account_id)s, %(invoice_id)s, %(status)s, %(currency)s, %(amount)s,
        %(amount_received)s, %(failure_message)s)
RETURNING id

-- name: update_payment
-- invoice_id: newer API versions no longer name the invoice on a PaymentIntent;
-- a link made by another event is kept.
UPDATE billing.payments
SET account_id = %(account_id)s, invoice_id = coalesce(%(invoice_id)s, invoice_id),
    status = %(status)s,
    currency = %(currency)s, amount = %(amount)s, amount_received = %(amount_received)s,
    failure_message = %(failure_message)s, updated_at = now()
WHERE id = %(id)s

-- name: set_charge
-- Remember the charge that carried the money, for refunds that name only the
-- charge. Never steal a charge id another payment already has.
UPDATE stripe.payment_mappings AS m
SET stripe_charge_id = %(charge_id)s, updated_at = now()
WHERE m.id = %(id)s
  AND m.stripe_charge_id IS DISTINCT FROM %(charge_id)s
  AND (NOT %(only_if_unset)s OR m.stripe_charge_id IS NULL)
  AND NOT EXISTS (SELECT 1 FROM stripe.payment_mappings o WHERE o.stripe_charge_id = %(charge_id)s)

-- name: payment_by_charge
SELECT stripe_payment_intent_id FROM stripe.payment_mappings WHERE stripe_charge_id = %(charge_id)s

-- name: charge_refunded
UPDATE stripe.payment_mappings
SET charge_amount_refunded = greatest(charge_amount_refunded, %(amount)s), updated_at = now()
WHERE id = %(id)s

-- name: refund_state
-- Named as common.Key's fields.
SELECT last_event_created AS created, last_event_rank AS rank, last_event_id AS event_id
FROM stripe.payment_refunds WHERE stripe_refund_id = %(refund_id)s

-- name: upsert_refund
-- Ordered per refund: an older event never overwrites a newer one's state.
INSERT INTO stripe.payment_refunds AS r
    (stripe_refund_id, payment_id, amount, status, last_event_created, last_event_rank,
     last_event_id)
VALUES (%(refund_id)s, %(payment_id)s, %(amount)s, %(status)s, %(created)s, %(rank)s,
        %(event_id)s)
ON CONFLICT (stripe_refund_id) DO UPDATE
SET payment_id = EXCLUDED.payment_id, amount = EXCLUDED.amount, status = EXCLUDED.status,
    last_event_created = EXCLUDED.last_event_created,
    last_event_rank = EXCLUDED.last_event_rank, last_event_id = EXCLUDED.last_event_id,
    updated_at = now()
WHERE (EXCLUDED.last_event_created, EXCLUDED.last_event_rank, EXCLUDED.last_event_id COLLATE "C")
    > (r.last_event_created, r.last_event_rank, r.last_event_id COLLATE "C")

-- name: recompute_refunds
-- amount_refunded: the larger of what the charge reported and what its live
-- refunds add up to; both only depend on the set of events seen, not their order.
UPDATE billing.payments AS p
SET amount_refunded = t.refunded,
    refund_status = CASE
        WHEN t.refunded <= 0 THEN 'none'
        WHEN t.refunded >= CASE WHEN p.amount_received > 0 THEN p.amount_received
                                ELSE p.amount END THEN 'full'
        ELSE 'partial' END,
    updated_at = now()
FROM (
    SELECT m.payment_id,
           greatest(m.charge_amount_refunded,
                    coalesce((SELECT sum(r.amount) FROM stripe.payment_refunds r
                              WHERE r.payment_id = m.payment_id
                                AND coalesce(r.status, '') NOT IN ('failed', 'canceled')),
                             0))::bigint AS refunded
    FROM stripe.payment_mappings m
    WHERE m.payment_id = %(payment_id)s
) AS t
WHERE p.id = t.payment_id

-- name: link_customer
-- Checkout: adopt the customer a session created for an MC account that has
-- no Stripe customer yet.
INSERT INTO stripe.customer_mappings AS m (account_id, stripe_customer_id, sync_status, synced_at)
SELECT a.id, %(stripe_id)s, 'synced', now() FROM billing.accounts a WHERE a.id = %(account_id)s
ON CONFLICT (account_id) DO UPDATE
SET stripe_customer_id = EXCLUDED.stripe_customer_id, sync_status = 'synced',
    synced_at = now(), updated_at = now()
WHERE m.stripe_customer_id IS NULL
RETURNING m.id

-- name: requeue_unlinked
-- Checkout linked a customer: its events of the last hours that were ignored
-- because it was not linked yet (references.not_linked) are due again. On
-- webhook_events_finished_idx: only the rows finished since then are read.
UPDATE integration.webhook_events
SET status = 'pending', attempts = 0, next_attempt_at = now(), note = NULL
WHERE status = 'ignored' AND processed_at > now() - interval '6 hours' AND note = %(note)s

-- name: account_customer
SELECT a.id, m.stripe_customer_id AS stripe_id
FROM billing.accounts a LEFT JOIN stripe.customer_mappings m ON m.account_id = a.id
WHERE a.id = %(account_id)s

-- name: link_payment_to_invoice
-- A payment learns its invoice from whichever event names both first.
UPDATE billing.payments
SET invoice_id = %(invoice_id)s, updated_at = now()
WHERE id = %(payment_id)s AND invoice_id IS DISTINCT FROM %(invoice_id)s

-- name: link_invoice_payments
-- An invoice event of the old shape names its PaymentIntent or charge: link
-- the payment if MC has it already (else its own event will name the invoice).
UPDATE billing.payments AS p
SET invoice_id = %(invoice_id)s, updated_at = now()
FROM stripe.payment_mappings AS m
WHERE m.payment_id = p.id
  AND (m.stripe_payment_intent_id = %(payment_intent)s OR m.stripe_charge_id = %(charge)s)
  AND p.invoice_id IS DISTINCT FROM %(invoice_id)s

-- name: insert_dispute
INSERT INTO billing.disputes
    (payment_id, status, reason, amount, currency, evidence_due_by)
VALUES (%(payment_id)s, %(status)s, %(reason)s, %(amount)s, %(currency)s, %(evidence_due_by)s)
RETURNING id

-- name: update_dispute
-- closed_at is not here: dispute_closed sets it, from stale events too.
UPDATE billing.disputes
SET payment_id = %(payment_id)s, status = %(status)s, reason = %(reason)s, amount = %(amount)s,
    currency = %(currency)s, evidence_due_by = %(evidence_due_by)s, updated_at = now()
WHERE id = %(id)s

-- name: dispute_closed
-- The earliest event that shows the dispute closed: the same whatever order
-- the events came in, so it is also taken from events too old to apply.
UPDATE billing.disputes
SET closed_at = least(coalesce(closed_at, %(closed_at)s), %(closed_at)s), updated_at = now()
WHERE id = %(id)s AND closed_at IS DISTINCT FROM least(coalesce(closed_at, %(closed_at)s), %(closed_at)s)

-- name: insert_payment_method
INSERT INTO billing.payment_methods (account_id, type, brand, last4, exp_month, exp_year)
VALUES (%(account_id)s, %(type)s, %(brand)s, %(last4)s, %(exp_month)s, %(exp_year)s)
RETURNING id

-- name: update_payment_method
-- is_default is not here: default_payment_methods derives it.
UPDATE billing.payment_methods
SET account_id = %(account_id)s, type = %(type)s, brand = %(brand)s, last4 = %(last4)s,
    exp_month = %(exp_month)s, exp_year = %(exp_year)s, updated_at = now()
WHERE id = %(id)s

-- name: set_default_payment_method
-- The customer's invoice_settings.default_payment_method, as its newest
-- applied event shows it.
UPDATE stripe.customer_mappings
SET default_payment_method = %(payment_method)s, updated_at = now()
WHERE account_id = %(account_id)s AND default_payment_method IS DISTINCT FROM %(payment_method)s

-- name: payment_method_account
SELECT p.account_id FROM billing.payment_methods p
JOIN stripe.payment_method_mappings m ON m.payment_method_id = p.id
WHERE m.stripe_payment_method_id = %(stripe_id)s

-- name: account_locks
-- Serializes the writers of an account's is_default (its customer's events and
-- its payment methods'), in account order: without it a customer event and
-- an attach committing together would each miss the other's write.
SELECT pg_advisory_xact_lock(hashtextextended('account ' || a, 5711))
FROM (SELECT DISTINCT a FROM unnest(%(accounts)s::bigint[]) AS a ORDER BY a) AS t

-- name: default_payment_methods
-- is_default of the payment methods of an account (and of one payment method,
-- which may just have been detached from it): the one its customer names, if
-- it is still attached to that customer's account.
UPDATE billing.payment_methods AS p
SET is_default = t.is_default, updated_at = now()
FROM (
    SELECT p2.id,
           coalesce(pm.stripe_payment_method_id = c.default_payment_method, false) AS is_default
    FROM billing.payment_methods p2
    JOIN stripe.payment_method_mappings pm ON pm.payment_method_id = p2.id
    LEFT JOIN stripe.customer_mappings c ON c.account_id = p2.account_id
    WHERE p2.account_id = %(account_id)s OR p2.id = %(payment_method_id)s
) AS t
WHERE p.id = t.id AND p.is_default IS DISTINCT FROM t.is_default

-- name: insert_credit_note
INSERT INTO billing.credit_notes (invoice_id, status, amount, currency, reason, memo)
VALUES (%(invoice_id)s, %(status)s, %(amount)s, %(currency)s, %(reason)s, %(memo)s)
RETURNING id

-- name: update_credit_note
UPDATE billing.credit_notes
SET invoice_id = %(invoice_id)s, status = %(status)s, amount = %(amount)s,
    currency = %(currency)s, reason = %(reason)s, memo = %(memo)s, updated_at = now()
WHERE id = %(id)s
