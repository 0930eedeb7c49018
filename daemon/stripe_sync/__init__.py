"""stripe-sync: keeps a PostgreSQL billing database and Stripe in sync, both ways.

MC, the member console, is the application whose billing tables these are:
``billing.*`` holds its rows (an "MC row", an "MC id") and never a Stripe id.
The ``stripe.*_mappings`` tables pair MC rows with Stripe objects, one table
per family of objects (``mappings.py``). ``outbox/`` pushes MC's accounts,
products and prices to Stripe; ``webhooks/`` applies Stripe's events to
MC's subscriptions, invoices and payments.
"""

__version__ = "0.1.0"

# The Stripe API version of every request the daemon sends (Stripe-Version) and of
# the webhook endpoint it manages (ops/endpoint.py): chosen here, not inherited from
# whichever SDK pip installed. It is a version the installed SDK (one major, pinned in
# pyproject.toml) knows; tests/unit/test_stripe_api.py fails when they part. An upgrade
# moves the SDK, this and the endpoint together (docs/stripe.md, "Upgrading Stripe's
# API version").
STRIPE_API_VERSION = "2026-10-28.endive"
