-- name: load
SELECT account_id, mode FROM stripe.provider_configs WHERE id = 1

-- name: fill
-- First start: remember which account and mode this database belongs to.
INSERT INTO stripe.provider_configs (id, account_id, mode) VALUES (1, %(account_id)s, %(mode)s)
ON CONFLICT (id) DO UPDATE SET account_id = coalesce(stripe.provider_configs.account_id,
                                                     EXCLUDED.account_id),
                               updated_at = now()
RETURNING account_id, mode
