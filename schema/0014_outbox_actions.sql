-- An unknown action_type is refused with a message that lists the valid ones
-- (#28): a CHECK's message names only the constraint, and cannot be changed.
--
-- The valid actions are written once, in integration.outbox_actions(): the
-- CHECK (same set as 0011's, so the same rows pass) and the trigger that names
-- them both read it. A migration that adds an action replaces the function
-- (CREATE OR REPLACE); tests/integration/test_outbox.py holds it to the
-- daemon's executors (outbox/execute.py).
CREATE FUNCTION integration.outbox_actions() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT ARRAY[
    'create_stripe_customer', 'update_stripe_customer',
    'create_stripe_product', 'update_stripe_product', 'archive_stripe_product',
    'create_stripe_price', 'update_stripe_price', 'archive_stripe_price',
    'cancel_stripe_subscription', 'resume_stripe_subscription',
    'update_stripe_subscription']
$$;

ALTER TABLE integration.outbox DROP CONSTRAINT outbox_action_type_check,
    ADD CONSTRAINT outbox_action_type_check
    CHECK (action_type = ANY (integration.outbox_actions()));

-- Runs only for a row the CHECK would refuse (WHEN), before it: the same
-- error class and constraint name (check_violation, outbox_action_type_check),
-- with the valid actions in the message.
CREATE FUNCTION integration.refuse_unknown_action() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'integration.outbox: unknown action_type %; valid: %',
        quote_nullable(NEW.action_type), array_to_string(integration.outbox_actions(), ', ')
        USING ERRCODE = 'check_violation', SCHEMA = 'integration', TABLE = 'outbox',
              COLUMN = 'action_type', CONSTRAINT = 'outbox_action_type_check',
              HINT = 'docs/stripe.md 6.3 lists each action with its payload';
END
$$;

CREATE TRIGGER outbox_unknown_action BEFORE INSERT OR UPDATE OF action_type
ON integration.outbox FOR EACH ROW
WHEN (NEW.action_type IS NOT NULL AND NOT (NEW.action_type = ANY (integration.outbox_actions())))
EXECUTE FUNCTION integration.refuse_unknown_action();
