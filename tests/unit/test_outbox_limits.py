"""The outbox refuses a value Stripe would refuse before sending it: the limits it
checks (``Pushed.limits``) are Stripe's maxLength for every parameter it sends
from an MC column, on create and on update. Its behaviour at each boundary:
tests/integration/test_outbox.py::test_stripe_length_limits_at_the_boundary."""

from __future__ import annotations

from typing import Any
from unittest.mock import Mock

import pytest
from conftest import SPEC

from stripe_sync.outbox import customers, prices, products
from stripe_sync.outbox.common import Pushed


@pytest.mark.parametrize(
    "pushed", [customers.PUSHED, products.PUSHED, prices.PUSHED], ids=lambda p: p.family.resource
)
@pytest.mark.parametrize(
    "operation", ["POST /v1/{resource}", "POST /v1/{resource}/{{id}}"], ids=["create", "update"]
)
def test_the_outbox_checks_stripes_limit_of_every_column_it_sends(
    pushed: Pushed[Any], operation: str
) -> None:
    op = operation.format(resource=pushed.family.resource)
    sent = pushed.fields(Mock())  # the parameters, by name; any row will do
    spec = {name: SPEC.max_length(op, name) for name in sent}
    assert {name: pushed.limits.get(name) for name in sent} == spec
