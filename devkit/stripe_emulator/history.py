"""An account's past: objects made "before MC", for the adoption story (issue 24).

``seed_history(emu, customers=500, months=24)`` fills an empty emulator with
what a Stripe account that ran for ``months`` without MC holds: customers
(some carrying an earlier MC install's metadata, most not), their cards, a
catalog made in the Dashboard, subscriptions renewed every month (an invoice,
a PaymentIntent, its charge and the invoice_payment each time), some
cancellations, refunds, credit notes and a dispute, one-off payments.

Every object is made by the emulator's own operations (the API handlers, with
the clock set back), so each has Stripe's shape; its ``created`` is in the
past, and the store keeps them oldest first as Stripe lists them. No event is
recorded: Stripe keeps events for 30 days, and no endpoint existed to be sent
them. What is random comes from ``random.Random(seed)``: the same arguments
give the same account (up to Stripe's random ids). Also served as
``POST /_emulator/history`` (app.py).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from . import billing, cards, catalog, credit_notes, customers, payments, subscriptions
from .state import JSON, new_id

if TYPE_CHECKING:
    from .emulator import ApiRequest, Emulator

MONTH = 30 * 86400
# The catalog made in the Dashboard: (product, nickname, monthly amount in cents).
PLANS = (
    ("Basic", "basic-monthly", 900),
    ("Pro", "pro-monthly", 2900),
    ("Team", "team-monthly", 9900),
)
CARDS = ("pm_card_visa", "pm_card_mastercard", "pm_card_amex", "pm_card_visa_debit")


@dataclass
class History:
    """What ``seed_history`` made: counts per kind, and the ids a test links."""

    counts: dict[str, int] = field(default_factory=dict)
    customers: list[str] = field(default_factory=list)  # cus_ ids, in order of index
    emails: list[str] = field(default_factory=list)
    products: list[str] = field(default_factory=list)
    prices: list[str] = field(default_factory=list)
    # Customer index → the mc_account_id its metadata carries (an earlier MC install).
    with_metadata: dict[int, int] = field(default_factory=dict)

    @property
    def objects(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> JSON:
        return {**asdict(self), "objects": self.objects}


def email_of(index: int) -> str:
    """Customer ``index``'s email: what ``link --by-email`` matches on."""
    return f"member{index + 1}@example.com"


def seed_history(
    emu: Emulator,
    *,
    customers: int = 50,
    months: int = 12,
    seed: int = 0,
    mc_source: str | None = None,
    metadata_every: int = 4,
    disputes: int = 1,
) -> History:
    """Fill the (empty) emulator with ``months`` of an account's past.

    With ``mc_source``, every ``metadata_every``-th customer carries
    ``mc_account_id`` (its index + 1) and that ``mc_source``, as one an earlier
    MC install created; the others are plain Dashboard customers. The first
    ``disputes`` subscribing customers pay with a card whose charges are disputed.
    """
    if customers < 1 or months < 1:
        raise ValueError("customers and months must be at least 1")
    with emu.lock:
        if any(emu.store.count(kind) for kind in emu.store.kinds()):
            # Stripe lists newest first = the store's insertion order, which an
            # object created in the past after a present one would break.
            raise ValueError("seed_history needs an empty emulator (reset it first)")
        offset = emu.clock.offset
        emu.recording = False
        try:
            return _Seeder(emu, random.Random(seed)).run(
                customers, months, mc_source, metadata_every, disputes
            )
        finally:
            emu.recording = True
            emu.clock.offset = offset


class _Seeder:
    def __init__(self, emu: Emulator, rng: random.Random) -> None:
        self.emu = emu
        self.rng = rng
        self.history = History()

    def call(self, operation: Any, template: str, params: JSON, **path: str) -> JSON:
        from .emulator import ApiRequest

        req = ApiRequest(
            method="POST",
            path=template,
            template=template,
            params=params,
            path_params=path,
            request_id=new_id("req", 14),
            idempotency_key=None,
            api_key="sk_test_history",
            livemode=False,
        )
        result: JSON = operation(self.emu, req)
        return result

    def at(self, when: float) -> None:
        """Set the emulator's clock to ``when`` (never backwards within a run)."""
        clock = self.emu.clock
        clock.offset += when - clock.now()

    def run(self, n: int, months: int, source: str | None, every: int, disputes: int) -> History:
        start = self.emu.clock.now() - (months + 1) * MONTH
        self.at(start)
        prices = self.catalog()
        subs: list[tuple[int, JSON]] = []
        for i in range(n):
            self.at(start + 3600 + i * 30)
            metadata = None
            if source is not None and i % every == 0:
                metadata = {"mc_account_id": str(i + 1), "mc_source": source}
                self.history.with_metadata[i] = i + 1
            card = "pm_card_createDispute" if len(subs) < disputes else self.rng.choice(CARDS)
            cus = self.customer(i, metadata, card)
            if self.rng.random() < 0.9 or card == "pm_card_createDispute":
                price = self.rng.choice(prices)
                sub = self.call(
                    subscriptions.create_subscription,
                    "/v1/subscriptions",
                    {"customer": cus["id"], "items": [{"price": price}]},
                )
                subs.append((i, sub))
                if card == "pm_card_createDispute":
                    # One disputed charge (the first invoice's), then a card that pays.
                    self.default_card(cus["id"], "pm_card_visa")
        charges: list[JSON] = []
        for month in range(1, months + 1):
            for i, sub in subs:
                if sub["status"] == "canceled":
                    continue
                self.at(start + month * MONTH + i * 30)
                inv = billing.renewal_invoice(self.emu, self.request(), sub)
                self.after_invoice(inv, charges)
                if self.rng.random() < 0.02:
                    self.call(
                        subscriptions.cancel_subscription,
                        "/v1/subscriptions/{id}",
                        {},
                        id=sub["id"],
                    )
            self.one_off_payments(month, start, n)
        self.count()
        return self.history

    def request(self) -> ApiRequest:
        from .emulator import ApiRequest

        return ApiRequest(
            "POST", "/", "/", {}, {}, new_id("req", 14), None, "sk_test_history", False
        )

    def catalog(self) -> list[str]:
        prices = []
        for name, nickname, amount in PLANS:
            prod = self.call(catalog.create_product, "/v1/products", {"name": name})
            price = self.call(
                catalog.create_price,
                "/v1/prices",
                {
                    "product": prod["id"],
                    "currency": "usd",
                    "unit_amount": amount,
                    "nickname": nickname,
                    "recurring": {"interval": "month"},
                },
            )
            self.history.products.append(prod["id"])
            self.history.prices.append(price["id"])
            prices.append(price["id"])
        return prices

    def customer(self, i: int, metadata: dict[str, str] | None, card: str) -> JSON:
        params: JSON = {"email": email_of(i), "name": f"Member {i + 1}"}
        if metadata:
            params["metadata"] = metadata
        cus = self.call(customers.create_customer, "/v1/customers", params)
        if self.rng.random() < 0.2:  # a second card on file, not the default
            self.attach(cus["id"], self.rng.choice(CARDS))
        self.default_card(cus["id"], card)
        self.history.customers.append(cus["id"])
        self.history.emails.append(cus["email"])
        return cus

    def attach(self, customer: str, card: str) -> JSON:
        return self.call(
            cards.attach_payment_method,
            "/v1/payment_methods/{payment_method}/attach",
            {"customer": customer},
            payment_method=card,
        )

    def default_card(self, customer: str, card: str) -> None:
        """A new card on file, made the customer's default (invoices charge it)."""
        pm = self.attach(customer, card)
        self.call(
            customers.update_customer,
            "/v1/customers/{id}",
            {"invoice_settings": {"default_payment_method": pm["id"]}},
            id=customer,
        )

    def after_invoice(self, inv: JSON, charges: list[JSON]) -> None:
        """Now and then a refund (part or all of the payment) or a credit note."""
        roll = self.rng.random()
        if roll < 0.03 and inv["total"] > 0:
            pi_id = inv["payments"]["data"][0]["payment"]["payment_intent"]
            pi = self.emu.store.require("payment_intents", pi_id)
            ch = self.emu.store.require("charges", pi["latest_charge"])
            if ch["status"] == "succeeded" and not ch["disputed"]:
                amount = ch["amount"] if roll < 0.015 else ch["amount"] // 2
                payments.refund_charge(
                    self.emu, self.request(), ch, amount, "requested_by_customer"
                )
        elif roll < 0.05 and inv["total"] > 0:
            amount = inv["total"] // 4
            self.call(
                credit_notes.create_credit_note,
                "/v1/credit_notes",
                {
                    "invoice": inv["id"],
                    "amount": amount,
                    "credit_amount": amount,
                    "reason": "order_change",
                },
            )

    def one_off_payments(self, month: int, start: float, n: int) -> None:
        """A few payments outside any invoice (a checkout, an add-on) each month."""
        for k in range(max(1, n // 50)):
            i = self.rng.randrange(n)
            self.at(start + month * MONTH + n * 30 + k * 30)
            self.call(
                payments.create_payment_intent,
                "/v1/payment_intents",
                {
                    "amount": self.rng.choice((500, 1500, 4000)),
                    "currency": "usd",
                    "customer": self.history.customers[i],
                    "payment_method": "pm_card_visa",
                    "confirm": True,
                },
            )

    def count(self) -> None:
        kinds = (
            "customers",
            "products",
            "prices",
            "payment_methods",
            "subscriptions",
            "invoices",
            "payment_intents",
            "charges",
            "refunds",
            "disputes",
            "credit_notes",
        )
        self.history.counts = {kind: self.emu.store.count(kind) for kind in kinds}
