-- What the webhook processor needs beyond 0002: a tie-breaker for events of
-- the same second, and the refunds of each payment.

-- Stripe's event.created has 1-second resolution, so events about one object
-- often share it. The processor orders them by (created, rank, event id),
-- where rank is the lifecycle position of the object's status in the event
-- (e.g. a subscription's "canceled" ranks above "active"); the rank of the
-- newest applied event is kept next to last_event_created/last_event_id.
ALTER TABLE stripe.customer_mappings     ADD COLUMN last_event_rank smallint;
ALTER TABLE stripe.product_mappings      ADD COLUMN last_event_rank smallint;
ALTER TABLE stripe.price_mappings        ADD COLUMN last_event_rank smallint;
ALTER TABLE stripe.subscription_mappings ADD COLUMN last_event_rank smallint;
ALTER TABLE stripe.invoice_mappings      ADD COLUMN last_event_rank smallint;
ALTER TABLE stripe.payment_mappings      ADD COLUMN last_event_rank smallint;

-- The largest charge.amount_refunded any event reported for the payment's
-- charge. Only grows, so charge events need no ordering.
ALTER TABLE stripe.payment_mappings
    ADD COLUMN charge_amount_refunded bigint NOT NULL DEFAULT 0
    CHECK (charge_amount_refunded >= 0);

-- One row per Stripe refund, each ordered by its own events. A payment's
-- billing.payments.amount_refunded is the larger of the charge's figure and
-- the sum of its refunds that did not fail or get canceled, so refunds
-- arriving in any order add up to the same amount.
CREATE TABLE stripe.payment_refunds (
    stripe_refund_id   text PRIMARY KEY CHECK (stripe_refund_id ~ '^(re|pyr)_'),
    payment_id         bigint NOT NULL REFERENCES billing.payments (id),
    amount             bigint NOT NULL DEFAULT 0 CHECK (amount >= 0),
    status             text,
    last_event_created bigint NOT NULL,
    last_event_rank    smallint NOT NULL,
    last_event_id      text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON stripe.payment_refunds (payment_id);
