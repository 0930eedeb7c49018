"""Holds the emulator's traffic to Stripe's OpenAPI spec, so the tests see what
Stripe would do.

Every request the emulator *accepted* during a test is checked against the
request schema of its operation (data/stripe_openapi_spec.json, extracted from
stripe/openapi by data/extract_openapi.py): each parameter exists, has the type,
enum and maxLength the spec gives, and is an empty string only where the spec
allows unsetting it (``enum: [""]``) — Stripe refuses ``name=`` otherwise. Every
response body is checked against the operation's response schema: each field
the spec knows has its type, and a field the spec does not know must be one that
today's Stripe sends (data/stripe_openapi_fixtures.json, API 2025+; the spec is
from 2023). Fields that Stripe removed since (``invoice.subscription`` …) may be
missing.

Checks are cached by the shape of what was checked (which keys, which types), so
a storm of identical requests costs one check.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from stripe_emulator.emulator import INCLUDABLE

DATA = Path(__file__).parent / "data"

Schema = dict[str, Any]


def _shape(value: Any) -> Any:
    """What decides the outcome of a check: keys and types, not values (strings
    keep their emptiness and length class, enums are checked on values)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _shape(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("[]", tuple(_shape(v) for v in value[:3]))
    return type(value).__name__


class SpecCheck:
    def __init__(self) -> None:
        spec = json.loads((DATA / "stripe_openapi_spec.json").read_text())
        self.operations: dict[str, dict[str, Schema]] = spec["operations"]
        self.schemas: dict[str, Schema] = spec["schemas"]
        current = json.loads((DATA / "stripe_openapi_fixtures.json").read_text())["resources"]
        # An object of each type as today's Stripe sends it (API 2025+).
        self.current: dict[str, Any] = current
        self.problems: list[str] = []
        self._seen: set[Any] = set()
        self._lock = threading.Lock()

    def take(self) -> list[str]:
        with self._lock:
            problems, self.problems = self.problems, []
            return problems

    def observe(self, method: str, template: str, params: dict[str, Any], body: bytes) -> None:
        """One accepted request and its response (called by the emulator)."""
        op = self.operations.get(f"{method} {template}")
        if op is None:
            self._report(f"{method} {template}: not an operation of Stripe's spec")
            return
        where = f"{method} {template}"
        key = (where, _shape(params), _enum_values(params))
        if key not in self._seen:
            self._seen.add(key)
            for problem in self._request(op["request"], params, "params"):
                self._report(f"{where}: {problem}")
        obj = json.loads(body)
        key = (where, "response", _shape(obj))
        if key not in self._seen:
            self._seen.add(key)
            for problem in self._response(op["response"], obj, "response"):
                self._report(f"{where}: {problem}")

    def max_length(self, operation: str, param: str) -> int | None:
        """Stripe's maxLength of a top-level string parameter ("POST /v1/customers",
        "email"); None when the spec gives it none."""
        schema = self._resolve(self.operations[operation]["request"])
        found = self._resolve(schema.get("properties", {})[param])
        lengths = [
            self._resolve(alt)["maxLength"]
            for alt in found.get("anyOf", [found])
            if "maxLength" in self._resolve(alt)
        ]
        return lengths[0] if lengths else None

    def _report(self, problem: str) -> None:
        with self._lock:
            if problem not in self.problems:
                self.problems.append(problem)

    def _resolve(self, schema: Schema) -> Schema:
        while "$ref" in schema:
            schema = self.schemas[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    # Requests: every leaf arrives as a string (form or query encoding).

    def _request(self, schema: Schema, value: Any, path: str) -> list[str]:
        schema = self._resolve(schema)
        if "anyOf" in schema:
            results = [self._request(alt, value, path) for alt in schema["anyOf"]]
            if any(not r for r in results):
                return []
            return min(results, key=len)
        if value == "":
            if "" in schema.get("enum", ()):
                return []
            return [
                f"{path}: an empty string, which Stripe takes as unsetting it; not allowed here"
            ]
        kind = schema.get("type")
        if kind == "object":
            if isinstance(value, list):  # items[0][price] decoded as a list
                return [f"{path}: expected an object, got a list"]
            if not isinstance(value, dict):
                return [f"{path}: expected an object, got {value!r}"]
            props = schema.get("properties", {})
            problems = []
            for name, sub in value.items():
                if name in props:
                    problems += self._request(props[name], sub, f"{path}.{name}")
                elif schema.get("additionalProperties") is False:
                    problems.append(f"{path}.{name}: no such parameter")
                elif isinstance(schema.get("additionalProperties"), dict) and sub != "":
                    # (metadata[key]= unsets that key: always allowed)
                    extra = schema["additionalProperties"]
                    problems += self._request(extra, sub, f"{path}.{name}")
            for name in schema.get("required", ()):
                if name not in value:
                    problems.append(f"{path}.{name}: required")
            return problems
        if kind == "array":
            items = list(value.values()) if isinstance(value, dict) else value
            if not isinstance(items, list):
                return [f"{path}: expected a list, got {value!r}"]
            return [
                p
                for i, v in enumerate(items)
                for p in self._request(schema.get("items", {}), v, f"{path}[{i}]")
            ]
        if not isinstance(value, str):
            return [f"{path}: expected {kind}, got a nested value"]
        if kind == "integer" and not re.fullmatch(r"-?\d+", value):
            return [f"{path}: expected an integer, got {value!r}"]
        if kind == "number" and not re.fullmatch(r"-?\d+(\.\d+)?", value):
            return [f"{path}: expected a number, got {value!r}"]
        if kind == "boolean" and value not in ("true", "false"):
            return [f"{path}: expected true or false, got {value!r}"]
        if "enum" in schema and value not in schema["enum"]:
            return [f"{path}: {value!r} is not one of {schema['enum']}"]
        if len(value) > schema.get("maxLength", 10**9):
            return [f"{path}: {len(value)} characters, Stripe's limit is {schema['maxLength']}"]
        return []

    # Responses: JSON as the emulator answered, beside today's Stripe (``today``:
    # the fixture's value at the same place, when there is one).

    def _response(self, schema: Schema, value: Any, path: str, today: Any = None) -> list[str]:
        schema = self._resolve(schema)
        if value is None:
            return [] if schema.get("nullable") else [f"{path}: null, which Stripe never sends"]
        if isinstance(value, dict) and isinstance(value.get("object"), str):
            today = self.current.get(value["object"], today)
        if "anyOf" in schema:
            results = [self._response(alt, value, path, today) for alt in schema["anyOf"]]
            if any(not r for r in results):
                return []
            # The alternative of the value's kind says what is wrong (an expanded
            # object's field, not "expected string").
            fitting = [r for r in results if not r[0].startswith(f"{path}: expected")]
            return min(fitting or results, key=len)
        kind = schema.get("type")
        checks = {"string": str, "boolean": bool, "array": list, "object": dict}
        if kind == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "number":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = kind not in checks or isinstance(value, checks[kind])
        if not ok:
            return [f"{path}: expected {kind}, got {type(value).__name__} {value!r:.60}"]
        if kind == "string" and "enum" in schema and value not in schema["enum"]:
            return [f"{path}: {value!r} is not one of {schema['enum']}"]
        if kind == "array":
            items = schema.get("items", {})
            item_today = today[0] if isinstance(today, list) and today else None
            return [p for v in value[:3] for p in self._response(items, v, f"{path}[]", item_today)]
        if kind != "object" or "properties" not in schema:
            return []
        props = schema["properties"]
        kinds = props.get("object", {}).get("enum")
        if kinds and value.get("object") not in kinds:
            return [f"{path}: expected {kinds[0]}, got a {value.get('object')}"]
        known = today if isinstance(today, dict) else None
        if known is not None and isinstance(value.get("object"), str):
            # Includable fields (the emulator sends them only when expanded) are in
            # neither the 2023 spec nor the fixtures.
            known = {**known, **dict.fromkeys(INCLUDABLE.get(value["object"], ()))}
        problems = []
        for name, sub in value.items():
            sub_today = known.get(name) if known is not None else None
            if name in props:
                problems += self._response(props[name], sub, f"{path}.{name}", sub_today)
            elif known is None or name not in known:
                problems.append(f"{path}.{name}: a field Stripe does not send")
        for name in schema.get("required", ()):
            # Stripe has dropped fields since 2023: missing is fine when today's
            # Stripe does not send it either.
            # ("deleted" marks the deleted_* shapes: never dropped.)
            if name not in value and (known is None or name in known or name == "deleted"):
                problems.append(f"{path}.{name}: missing (Stripe always sends it)")
        return problems


def _enum_values(params: dict[str, Any]) -> Any:
    """Values that matter for the check beyond their shape: short strings (enums,
    booleans, numbers) and the length class of long ones."""
    if isinstance(params, dict):
        return tuple(sorted((k, _enum_values(v)) for k, v in params.items()))
    if isinstance(params, list):
        return tuple(_enum_values(v) for v in params[:3])
    if isinstance(params, str):
        return (
            params
            if len(params) <= 24 and not re.search(r"_[A-Za-z0-9]{8,}", params)
            else len(params) // 128
        )
    return params
