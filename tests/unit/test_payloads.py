"""What a DBA's outbox payload may say, and the one line that names a mistake."""

from __future__ import annotations

import pytest

from stripe_sync.errors import PermanentError
from stripe_sync.mappings import CUSTOMERS, PRICES
from stripe_sync.outbox.payloads import decode, decode_as
from stripe_sync.outbox.subscriptions import Cancel, Resume


@pytest.mark.parametrize(
    "payload,error",
    [
        # A typo: the unknown key is named, with the key it resembles.
        ('{"acount_id": 1}', "payload: unknown key acount_id (did you mean account_id?)"),
        ('{"acount_id": 1, "note": "x"}', "payload: unknown key acount_id (did you mean"),
        ('{"customer": 1}', "payload: unknown key customer (expected account_id)"),
        # Nothing unknown: the missing key as before.
        ("{}", 'payload.account_id: missing (expected {"account_id": <id>})'),
        ('{"account_id": "1"}', "payload.account_id: expected int, got str"),
    ],
)
def test_a_customer_payload_error_names_the_key(payload: str, error: str) -> None:
    with pytest.raises(PermanentError) as raised:
        decode(payload, CUSTOMERS)
    assert str(raised.value).startswith(error), str(raised.value)


def test_a_right_key_beside_an_unknown_one_is_still_read() -> None:
    # The ids payloads have always ignored keys they do not read.
    assert decode('{"price_id": 7, "why": "new amount"}', PRICES) == 7


@pytest.mark.parametrize(
    "shape,payload,error",
    [
        (
            Cancel,
            '{"subscription_id": 1, "at_period_ends": true}',
            "payload: unknown key at_period_ends (did you mean at_period_end?)",
        ),
        (
            Resume,
            '{"subscription_id": 1, "at_period_end": false}',
            "payload: unknown key at_period_end (expected subscription_id)",
        ),
    ],
)
def test_a_shape_that_forbids_unknown_keys_names_them(
    shape: type[Cancel] | type[Resume], payload: str, error: str
) -> None:
    with pytest.raises(PermanentError) as raised:
        decode_as(payload, shape)
    assert str(raised.value) == error
