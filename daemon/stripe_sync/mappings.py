"""The ``stripe.*_mappings`` tables: one entry per family of Stripe objects.

MC (the member console) is the application whose billing tables these are:
``billing.*`` holds its rows and never a Stripe id. Schema ``stripe`` is the
only join point: for each family of Stripe objects one mapping table pairs an
MC row (its MC column) with a Stripe object (its Stripe id column), plus the
sync status and the key of the newest webhook event applied to it.

This module is the only description of those tables; the outbox executors,
the webhook handlers and ``reconcile`` all bind their SQL through
:meth:`Family.query`. Adding a family is one entry below (and its migration).
"""

from __future__ import annotations

from dataclasses import dataclass

from .db import bound_query


@dataclass(frozen=True, kw_only=True)
class Family:
    """A family of Stripe objects and the mapping table that pairs them with MC rows."""

    noun: str  # "customer": in messages, idempotency keys and action types
    table: str  # stripe.customer_mappings
    mc_table: str  # billing.accounts: the MC rows
    mc_col: str  # account_id: the MC row's id in the mapping table (and in outbox payloads)
    stripe_col: str  # stripe_customer_id: the Stripe object's id in the mapping table
    # What Stripe's own ids of this family start with (products and prices
    # also take custom ids, so the schema only checks cus_, sub_, in_ and pi_).
    id_prefix: str
    resource: str  # customers: the SDK's service under client.v1 (and the path /v1/customers)
    # How a Stripe object the outbox created names its MC row in its metadata
    # (with mc_source); None for objects born in Stripe.
    metadata_key: str | None = None

    def query(self, module: str, name: str) -> bytes:
        """Named query ``name`` of ``sql/<module>.sql`` with {mapping}, {mc_col}
        and {stripe_col} bound to this family's table and columns."""
        return bound_query(
            module, name, mapping=self.table, mc_col=self.mc_col, stripe_col=self.stripe_col
        )


@dataclass(frozen=True)
class MappingWrite:
    """The mapping row an outbox row writes as it is marked done: data, not a
    callback, so that the completions of a group are one statement
    (outbox/queue.py, ``finish_mapped`` in sql/outbox.sql). It never re-points a mapping that
    names another Stripe object."""

    family: Family
    mc_id: int
    stripe_id: str
    status: str = "synced"  # or "deleted": archived

    @property
    def group(self) -> Family:
        """Writes of one family share a ``finish_mapped`` statement (queue.jobs.Written)."""
        return self.family

    def refused(self) -> str:
        """Why the write was refused, for the row's last_error."""
        return (
            f"{self.family.mc_table} id={self.mc_id} is already mapped to another Stripe "
            f"{self.family.noun}; refusing to re-point it at {self.stripe_id}"
        )


CUSTOMERS = Family(
    noun="customer",
    table="stripe.customer_mappings",
    mc_table="billing.accounts",
    mc_col="account_id",
    stripe_col="stripe_customer_id",
    id_prefix="cus_",
    resource="customers",
    metadata_key="mc_account_id",
)
PRODUCTS = Family(
    noun="product",
    table="stripe.product_mappings",
    mc_table="billing.products",
    mc_col="product_id",
    stripe_col="stripe_product_id",
    id_prefix="prod_",
    resource="products",
    metadata_key="mc_product_id",
)
# Legacy plans are prices too: a plan id is a price id.
PRICES = Family(
    noun="price",
    table="stripe.price_mappings",
    mc_table="billing.prices",
    mc_col="price_id",
    stripe_col="stripe_price_id",
    id_prefix="price_",
    resource="prices",
    metadata_key="mc_price_id",
)
SUBSCRIPTIONS = Family(
    noun="subscription",
    table="stripe.subscription_mappings",
    mc_table="billing.subscriptions",
    mc_col="subscription_id",
    stripe_col="stripe_subscription_id",
    id_prefix="sub_",
    resource="subscriptions",
)
INVOICES = Family(
    noun="invoice",
    table="stripe.invoice_mappings",
    mc_table="billing.invoices",
    mc_col="invoice_id",
    stripe_col="stripe_invoice_id",
    id_prefix="in_",
    resource="invoices",
)
# MC tracks payments by PaymentIntent.
PAYMENTS = Family(
    noun="payment",
    table="stripe.payment_mappings",
    mc_table="billing.payments",
    mc_col="payment_id",
    stripe_col="stripe_payment_intent_id",
    id_prefix="pi_",
    resource="payment_intents",
)

# Issue 14: born in Stripe, written only by webhooks (schema/0010).
DISPUTES = Family(
    noun="dispute",
    table="stripe.dispute_mappings",
    mc_table="billing.disputes",
    mc_col="dispute_id",
    stripe_col="stripe_dispute_id",
    id_prefix="dp_",
    resource="disputes",
)
PAYMENT_METHODS = Family(
    noun="payment_method",
    table="stripe.payment_method_mappings",
    mc_table="billing.payment_methods",
    mc_col="payment_method_id",
    stripe_col="stripe_payment_method_id",
    id_prefix="pm_",
    resource="payment_methods",
)
CREDIT_NOTES = Family(
    noun="credit_note",
    table="stripe.credit_note_mappings",
    mc_table="billing.credit_notes",
    mc_col="credit_note_id",
    stripe_col="stripe_credit_note_id",
    id_prefix="cn_",
    resource="credit_notes",
)

FAMILIES: tuple[Family, ...] = (
    CUSTOMERS,
    PRODUCTS,
    PRICES,
    SUBSCRIPTIONS,
    INVOICES,
    PAYMENTS,
    DISPUTES,
    PAYMENT_METHODS,
    CREDIT_NOTES,
)
