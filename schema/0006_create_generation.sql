-- A create's idempotency key names the MC row, so two outbox rows for one
-- account make one customer. When the Stripe object is gone for good and the
-- mapping is reset for a re-create (reconcile --fix, or a DBA), the key must
-- change too, or Stripe would replay the first create's answer for 24 h:
-- resetting bumps the generation, which is part of the key.
ALTER TABLE stripe.customer_mappings ADD COLUMN create_generation integer NOT NULL DEFAULT 0;
ALTER TABLE stripe.product_mappings  ADD COLUMN create_generation integer NOT NULL DEFAULT 0;
ALTER TABLE stripe.price_mappings    ADD COLUMN create_generation integer NOT NULL DEFAULT 0;

-- Any reset of a mapping to "no Stripe object" starts a new generation,
-- whoever does it.
CREATE FUNCTION stripe.bump_create_generation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.create_generation := OLD.create_generation + 1;
    RETURN NEW;
END;
$$;

CREATE TRIGGER customer_mappings_reset BEFORE UPDATE ON stripe.customer_mappings
    FOR EACH ROW WHEN (OLD.stripe_customer_id IS NOT NULL AND NEW.stripe_customer_id IS NULL)
    EXECUTE FUNCTION stripe.bump_create_generation();
CREATE TRIGGER product_mappings_reset BEFORE UPDATE ON stripe.product_mappings
    FOR EACH ROW WHEN (OLD.stripe_product_id IS NOT NULL AND NEW.stripe_product_id IS NULL)
    EXECUTE FUNCTION stripe.bump_create_generation();
CREATE TRIGGER price_mappings_reset BEFORE UPDATE ON stripe.price_mappings
    FOR EACH ROW WHEN (OLD.stripe_price_id IS NOT NULL AND NEW.stripe_price_id IS NULL)
    EXECUTE FUNCTION stripe.bump_create_generation();
