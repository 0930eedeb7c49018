"""Test helpers for driving the Stripe emulator through the official SDK."""

from __future__ import annotations

import stripe


def recurring_price(
    client: stripe.StripeClient, amount: int, currency: str = "usd", name: str = "Gold"
) -> stripe.Price:
    """A monthly price of a new product."""
    product = client.v1.products.create(params={"name": name})
    return client.v1.prices.create(
        params={
            "product": product.id,
            "currency": currency,
            "unit_amount": amount,
            "recurring": {"interval": "month"},
        }
    )


def text_of_length(param: str, length: int, fill: str = "a") -> str:
    """A plausible value of a string parameter of exactly ``length`` characters,
    for testing Stripe's maxLength at the boundary."""
    if param == "email":
        return fill * (length - len("@example.com")) + "@example.com"
    if param == "phone":
        return "+" + "1" * (length - 1)
    return fill * length
