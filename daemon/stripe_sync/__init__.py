"""stripe-sync: keeps a PostgreSQL billing database and Stripe in sync, both ways.

MC, the member console, is the application whose billing tables these are:
``billing.*`` holds its rows (an "MC row", an "MC id") and never a Stripe id.
The ``stripe.*_mappings`` tables pair MC rows with Stripe objects, one table
per family of objects (``mappings.py``). ``outbox/`` pushes MC's accounts,
products and prices to Stripe; ``webhooks/`` applies Stripe's events to
MC's subscriptions, invoices and payments.
"""

__version__ = "0.1.0"
