"""What a DBA may put in ``integration.outbox.payload``, and errors that say what is wrong."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from ..errors import PermanentError


class AccountRef(msgspec.Struct, frozen=True):
    account_id: int


class ProductRef(msgspec.Struct, frozen=True):
    product_id: int


class PriceRef(msgspec.Struct, frozen=True):
    price_id: int


R = TypeVar("R", AccountRef, ProductRef, PriceRef)


def decode(raw: str, shape: type[R]) -> R:
    """Decode a payload; a bad one is a PermanentError naming the field.

    e.g. ``payload.account_id: expected int, got str``.
    """
    try:
        ref = msgspec.json.decode(raw, type=shape)
    except msgspec.ValidationError as exc:
        raise PermanentError(_describe(exc)) from None
    except msgspec.DecodeError as exc:
        raise PermanentError(f"payload: not valid JSON ({exc})") from None
    for field in msgspec.structs.fields(ref):
        value = getattr(ref, field.name)
        if not 0 < value < 2**63:  # ids are bigint
            raise PermanentError(f"payload.{field.name}: expected a positive 64-bit id")
    return ref


def _describe(exc: msgspec.ValidationError) -> str:
    text, _, where = str(exc).partition(" - at `$")
    path = "payload" + where.rstrip("`")
    text = text.replace("`", "")
    if text.startswith("Object missing required field"):
        field = text.rsplit(" ", 1)[-1]
        return f'payload.{field}: missing (expected {{"{field}": <id>}})'
    if text.startswith("Expected object"):
        return f"payload: expected a JSON object, {text.split(', ', 1)[-1]}"
    return f"{path}: {text[0].lower()}{text[1:]}"
