-- The migration seed: enqueue a create for every MC row that has neither a
-- mapping nor any create in the outbox (a failed one waits for a retry, not a
-- duplicate). Products before prices, so prices rarely wait. Safe to rerun.
-- Text equality on payload keys lets the planner use hash anti-joins.
CREATE FUNCTION integration.seed_outbox() RETURNS integer
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
    ORDER BY p.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN total + n;
END;
$$;
