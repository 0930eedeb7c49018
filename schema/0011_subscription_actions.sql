-- Subscription changes initiated in MC (#14.5): the outbox may now cancel,
-- resume and update the Stripe subscription of a billing.subscriptions row.
-- The row is done once Stripe accepted the change; billing.subscriptions
-- itself changes only through the customer.subscription.* webhooks that follow.
ALTER TABLE integration.outbox DROP CONSTRAINT outbox_action_type_check,
    ADD CONSTRAINT outbox_action_type_check CHECK (action_type IN (
        'create_stripe_customer', 'update_stripe_customer',
        'create_stripe_product', 'update_stripe_product', 'archive_stripe_product',
        'create_stripe_price', 'update_stripe_price', 'archive_stripe_price',
        'cancel_stripe_subscription', 'resume_stripe_subscription',
        'update_stripe_subscription'));
