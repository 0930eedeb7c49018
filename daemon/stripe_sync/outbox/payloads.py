"""What a DBA may put in ``integration.outbox.payload``, and errors that say what is wrong."""

from __future__ import annotations

import difflib
from functools import cache
from typing import TypeVar

import msgspec

from ..errors import PermanentError, validation_parts
from ..mappings import Family


@cache
def _ref(family: Family) -> type[msgspec.Struct]:
    """The payload's shape: ``{"<mc_col>": <id>}`` (``{"account_id": 1}``)."""
    return msgspec.defstruct(f"{family.noun}_ref", [(family.mc_col, int)], frozen=True)


S = TypeVar("S", bound=msgspec.Struct)


def decode(raw: str, family: Family) -> int:
    """The MC row id a payload names; a bad one is a PermanentError naming the field.

    e.g. ``payload.account_id: expected int, got str``.
    """
    ref = decode_as(raw, _ref(family))
    mc_id: int = getattr(ref, family.mc_col)
    return require_id(family.mc_col, mc_id)


def decode_as(raw: str, shape: type[S]) -> S:
    """A payload of the given shape; a bad one is a PermanentError naming the field."""
    try:
        return msgspec.json.decode(raw, type=shape)
    except msgspec.ValidationError as exc:
        raise PermanentError(_unknown_key(raw, shape, exc) or _describe(exc)) from None
    except msgspec.DecodeError as exc:
        raise PermanentError(f"payload: not valid JSON ({exc})") from None


def require_id(field: str, mc_id: int) -> int:
    if not 0 < mc_id < 2**63:  # ids are bigint
        raise PermanentError(f"payload.{field}: expected a positive 64-bit id")
    return mc_id


def _unknown_key(raw: str, shape: type[msgspec.Struct], exc: msgspec.ValidationError) -> str:
    """A key the shape does not know, when it is why decoding failed (a key the
    shape forbids, or a required key missing beside one it does not know: most
    often a typo), e.g. ``payload: unknown key acount_id (did you mean account_id?)``;
    "" otherwise."""
    text, where = validation_parts(exc)
    if where or not text.startswith(("Object contains unknown field", "Object missing required")):
        return ""
    payload = msgspec.json.decode(raw)
    known = [f.encode_name for f in msgspec.structs.fields(shape)]
    unknown = [k for k in payload if k not in known] if isinstance(payload, dict) else []
    if not unknown:
        return ""
    # The one msgspec names, else the first one.
    key = text.split("`")[1] if "unknown field `" in text else unknown[0]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}?" if close else f"expected {', '.join(known)}"
    return f"payload: unknown key {key} ({hint})"


def _describe(exc: msgspec.ValidationError) -> str:
    text, where = validation_parts(exc)
    path = "payload" + where
    text = text.replace("`", "")
    if text.startswith("Object missing required field"):
        field = text.rsplit(" ", 1)[-1]
        example = "<id>" if field.endswith("_id") else "…"
        return f'payload.{field}: missing (expected {{"{field}": {example}}})'
    if text.startswith("Expected object"):
        return f"payload: expected a JSON object, {text.split(', ', 1)[-1]}"
    return f"{path}: {text[0].lower()}{text[1:]}"
