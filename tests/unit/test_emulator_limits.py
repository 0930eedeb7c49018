"""Stripe's length limits in the emulator, at the boundary: a value of exactly the
limit is accepted whole, one character more is refused naming the parameter and
changes nothing. The limits are read from Stripe's OpenAPI spec, not from the
emulator's own tables."""

from __future__ import annotations

from typing import Any

import pytest
import stripe
from conftest import SPEC
from emulator_helpers import text_of_length as text

from stripe_emulator import EmulatorServer

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

# Every string parameter the emulator limits (customers.py, catalog.py), on create and update.
LIMITED = [
    (resource, param)
    for resource, params in (
        ("customers", ("email", "name", "description", "phone")),
        ("products", ("name", "description")),
        ("prices", ("nickname",)),
    )
    for param in params
]


def base_params(client: stripe.StripeClient, resource: str) -> dict[str, Any]:
    """What a create of ``resource`` needs besides the parameter under test."""
    if resource == "products":
        return {"name": "Gold"}
    if resource == "prices":
        product = client.v1.products.create(params={"name": "Gold"})
        return {"product": product.id, "currency": "eur", "unit_amount": 1500}
    return {}


@pytest.mark.parametrize("update", [False, True], ids=["create", "update"])
@pytest.mark.parametrize(("resource", "param"), LIMITED)
def test_at_the_limit_accepted_and_one_over_refused(
    stripe_client: stripe.StripeClient,
    emulator: EmulatorServer,
    resource: str,
    param: str,
    update: bool,
) -> None:
    limit = SPEC.max_length(f"POST /v1/{resource}" + ("/{id}" if update else ""), param)
    assert limit is not None
    service = getattr(stripe_client.v1, resource)
    base = base_params(stripe_client, resource)
    if update:
        obj = service.create(params=base)

    def send(params: dict[str, str]) -> Any:
        if update:
            return service.update(obj.id, params=params)
        return service.create(params={**base, **params})

    assert send({param: text(param, limit)})[param] == text(param, limit)
    before = emulator.emulator.objects(resource)
    with pytest.raises(stripe.InvalidRequestError) as err:
        send({param: text(param, limit + 1, "b")})
    assert (err.value.param, err.value.code) == (param, "parameter_invalid_string"), err.value
    assert f"must be at most {limit} characters" in str(err.value)
    assert emulator.emulator.objects(resource) == before


# Not in the spec; Stripe's documentation: "keys up to 40 characters long and
# values up to 500 characters long".
@pytest.mark.parametrize(
    ("make", "limit"),
    [
        pytest.param(lambda n: {"k" * n: "v"}, 40, id="key"),
        pytest.param(lambda n: {"k": "v" * n}, 500, id="value"),
    ],
)
def test_metadata_at_the_limit_is_accepted_and_one_over_refused(
    stripe_client: stripe.StripeClient, emulator: EmulatorServer, make: Any, limit: int
) -> None:
    created = stripe_client.v1.customers.create(params={"metadata": make(limit)})
    assert created.metadata is not None and created.metadata.to_dict() == make(limit)
    before = emulator.emulator.objects("customers")
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.customers.create(params={"metadata": make(limit + 1)})
    assert err.value.param == "metadata"
    with pytest.raises(stripe.InvalidRequestError) as err:
        stripe_client.v1.customers.update(created.id, params={"metadata": make(limit + 1)})
    assert err.value.param == "metadata"
    assert emulator.emulator.objects("customers") == before
