-- Adopting an existing Stripe account (#24): `stripe-sync backfill` imports
-- Stripe's current state one family at a time, a page at a time; each page
-- commits with its checkpoint, so a run stopped anywhere (Ctrl-C, SIGTERM, a
-- crash) resumes after the last page it committed.
CREATE TABLE integration.backfill_checkpoints (
    -- What the run covers: "all" or one customer, and --since.
    scope      text NOT NULL,
    family     text NOT NULL,
    -- The last object (payment methods: the last customer) done; NULL: none yet.
    cursor     text,
    done       boolean NOT NULL DEFAULT false,
    objects    bigint NOT NULL DEFAULT 0 CHECK (objects >= 0),
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, family)
);

-- `seed` looks in Stripe before it creates: MC rows whose twin it found (and
-- linked) or could not tell apart (several by email) are held back from the
-- creates. Without arguments, as before.
DROP FUNCTION integration.seed_outbox();
CREATE FUNCTION integration.seed_outbox(
    held_accounts bigint[] DEFAULT '{}',
    held_products bigint[] DEFAULT '{}',
    held_prices bigint[] DEFAULT '{}'
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    total integer := 0;
    n integer;
BEGIN
    INSERT INTO integration.outbox (action_type, payload)
    SELECT 'create_stripe_customer', jsonb_build_object('account_id', a.id)
    FROM billing.accounts a
    WHERE NOT EXISTS (SELECT 1 FROM stripe.customer_mappings m WHERE m.account_id = a.id)
      AND NOT EXISTS (SELECT 1 FROM integration.outbox o
                      WHERE o.action_type = 'create_stripe_customer'
                        AND o.payload ->> 'account_id' = a.id::text)
      AND a.id <> ALL (held_accounts)
    ORDER BY a.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    total := total + n;

    INSERT INTO integration.outbox (action_type, payload)
    SELECT 'create_stripe_product', jsonb_build_object('product_id', p.id)
    FROM billing.products p
    WHERE NOT EXISTS (SELECT 1 FROM stripe.product_mappings m WHERE m.product_id = p.id)
      AND NOT EXISTS (SELECT 1 FROM integration.outbox o
                      WHERE o.action_type = 'create_stripe_product'
                        AND o.payload ->> 'product_id' = p.id::text)
      AND p.id <> ALL (held_products)
    ORDER BY p.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    total := total + n;

    INSERT INTO integration.outbox (action_type, payload)
    SELECT 'create_stripe_price', jsonb_build_object('price_id', p.id)
    FROM billing.prices p
    WHERE NOT EXISTS (SELECT 1 FROM stripe.price_mappings m WHERE m.price_id = p.id)
      AND NOT EXISTS (SELECT 1 FROM integration.outbox o
                      WHERE o.action_type = 'create_stripe_price'
                        AND o.payload ->> 'price_id' = p.id::text)
      AND p.id <> ALL (held_prices)
    ORDER BY p.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN total + n;
END;
$$;
