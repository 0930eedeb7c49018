"""Decode Stripe's v1 form dialect (`metadata[k]=v`, `items[0][price]=p`, `expand[]=a`).

Values stay strings, as on the wire; handlers coerce with the helpers below so a bad
value produces the same 400 with `param` that Stripe would send.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from .errors import StripeError, invalid, missing, unknown_param

_TOKEN = re.compile(r"\[([^\]]*)\]")


def _split_key(key: str) -> list[str]:
    head, bracket, _ = key.partition("[")
    if not bracket:
        return [key]
    return [head, *_TOKEN.findall(key[len(head) :])]


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    converted = {k: _listify(v) for k, v in value.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def decode(raw: str | bytes) -> dict[str, Any]:
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    root: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        tokens = _split_key(key)
        node = root
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            if token == "":
                # `expand[]=a&expand[]=b`: PHP-style append.
                token = str(len(node))
            if last:
                node[token] = value
            else:
                child = node.get(token)
                if not isinstance(child, dict):
                    child = {}
                    node[token] = child
                node = child
    result = _listify(root)
    assert isinstance(result, dict)
    return result


_canonical = msgspec.json.Encoder(order="sorted")


def fingerprint(params: dict[str, Any]) -> bytes:
    """Canonical form for comparing idempotent requests' parameters."""
    return _canonical.encode(params)


def _given(params: dict[str, Any], name: str, required: bool) -> Any:
    """The parameter's value; None when absent or empty (Stripe's "unset"), unless required."""
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise missing(name)
        return None
    return value


def get_str(params: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = _given(params, name, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise StripeError(
            400, f"Invalid string: {value!r}", code="parameter_invalid_string", param=name
        )
    return value


def get_int(params: dict[str, Any], name: str, *, required: bool = False) -> int | None:
    value = _given(params, name, required)
    if value is None:
        return None
    try:
        return int(str(value))
    except ValueError:
        raise StripeError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=name
        ) from None


def get_bool(params: dict[str, Any], name: str) -> bool | None:
    value = _given(params, name, False)
    if value is None:
        return None
    if value in ("true", True):
        return True
    if value in ("false", False):
        return False
    raise StripeError(
        400, f"Invalid boolean: {value}", code="parameter_invalid_boolean", param=name
    )


def get_list(params: dict[str, Any], name: str) -> list[Any]:
    value = params.get(name)
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def get_dict(params: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = params.get(name)
    if value is None:
        return None
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise StripeError(
            400, f"Invalid object: {name}", code="parameter_invalid_object", param=name
        )
    return value


def assign(obj: dict[str, Any], params: dict[str, Any], names: tuple[str, ...]) -> None:
    """Copy plain fields that the request sets; an empty string unsets (null)."""
    for name in names:
        if name in params:
            value = params[name]
            obj[name] = None if value == "" else value


def check_strings(
    params: dict[str, Any], limits: dict[str, int], unsettable: AbstractSet[str] = frozenset()
) -> None:
    """Stripe's string rules for the named parameters (limits from its OpenAPI spec):
    at most ``limits[name]`` characters, and an empty string only where it unsets."""
    for name, limit in limits.items():
        value = params.get(name)
        if not isinstance(value, str):
            continue
        if value == "" and name not in unsettable:
            raise invalid(
                name,
                f"You passed an empty string for '{name}'. We assume empty values are an "
                f"attempt to unset a parameter; however '{name}' cannot be unset. You should "
                f"remove '{name}' from your request or supply a non-empty value.",
            )
        if len(value) > limit:
            shown = value if len(value) <= 23 else f"{value[:10]}...{value[-10:]}"
            raise invalid(
                name,
                f"Invalid string: {shown}; must be at most {limit} characters",
                "parameter_invalid_string",
            )


def merge_metadata(current: dict[str, str], params: dict[str, Any]) -> dict[str, str]:
    """`metadata=""` clears; `metadata[k]=""` removes one key; other keys merge."""
    if "metadata" not in params:
        return current
    update = params["metadata"]
    if update == "":
        return {}
    if not isinstance(update, dict):
        raise StripeError(
            400, "Invalid metadata", code="parameter_invalid_object", param="metadata"
        )
    merged = dict(current)
    for key, value in update.items():
        if len(str(key)) > 40:
            raise invalid("metadata", f"Invalid key: {key} must be a string under 40 characters")
        if len(str(value)) > 500:
            shown = f"{str(value)[:10]}...{str(value)[-10:]}"
            raise invalid("metadata", f"Invalid val: {shown} must be a string under 500 characters")
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    return merged


def check_known(params: dict[str, Any], allowed: AbstractSet[str]) -> None:
    """Stripe rejects parameters an endpoint does not know; catching typos early here
    keeps the daemon honest."""
    for key in params:
        if key not in allowed and key != "expand":
            raise unknown_param(key)
