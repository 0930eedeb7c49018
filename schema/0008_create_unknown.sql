-- A create whose answer was a 500 that Stripe saved under its idempotency key
-- (Stripe replays it to every retry with that key for 24 hours): the object
-- may or may not exist, and that key can tell no more. create_unknown_since
-- is when the current generation's key first met that 500 (NULL: it has not).
-- The outbox waits STRIPE_SYNC_SEARCH_LAG from then for Stripe's search index,
-- then adopts the object found by its metadata, or bumps the generation (a new
-- key; committed before the request that uses it) and creates.
ALTER TABLE stripe.customer_mappings ADD COLUMN create_unknown_since timestamptz;
ALTER TABLE stripe.product_mappings  ADD COLUMN create_unknown_since timestamptz;
ALTER TABLE stripe.price_mappings    ADD COLUMN create_unknown_since timestamptz;

-- A reset (schema/0006) starts a new generation, whose key has met nothing yet.
CREATE OR REPLACE FUNCTION stripe.bump_create_generation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.create_generation := OLD.create_generation + 1;
    NEW.create_unknown_since := NULL;
    RETURN NEW;
END;
$$;
