"""stripe-sync: keeps a PostgreSQL billing database and Stripe in sync, both ways."""

__version__ = "0.1.0"
