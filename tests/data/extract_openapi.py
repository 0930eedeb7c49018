"""Writes tests/data/stripe_openapi_spec.json: the part of Stripe's OpenAPI spec
(stripe/openapi spec3.yaml, API 2023-08-16, MIT: LICENSE-stripe-openapi.txt) that
tests/openapi_check.py holds the emulator's traffic to — the request schema of each
operation the emulator serves and the response schemas they name, descriptions left
out; operations Stripe added since (``NEWER``: invoice payments) are written here from
Stripe's API reference. Run by hand from the repository root when the spec or the emulator's routes
change (needs PyYAML, which the project itself does not):

    python tests/data/extract_openapi.py ../shared/stripe/openapi/spec3.2023-09-12.yaml
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from stripe_emulator.emulator import _ROUTES

OUT = Path(__file__).parent / "stripe_openapi_spec.json"
DROP = {
    "description",
    "x-expandableFields",
    "x-resourceId",
    "x-stripeBypassValidation",
    "x-stripeMostCommon",
    "x-stripeOperations",
    "x-stripeResource",
    "title",
    "x-expansionResources",
}


# Operations whose request enums marked x-stripeBypassValidation are left out: the
# API versions and event types a webhook endpoint takes today are newer than this spec.
BYPASSED = ("/v1/webhook_endpoints",)

# What the emulator serves that Stripe added after this spec (API 2025-03-31 and
# later), written from Stripe's API reference (docs.stripe.com/api/invoice-payment,
# and the SDK's InvoicePaymentListParams). Responses are held to today's objects
# as well (data/stripe_openapi_fixtures.json: every field it has is required).
_STRING = {"maxLength": 5000, "type": "string"}
_EXPAND = {"items": _STRING, "type": "array"}


def _expandable(schema: str, nullable: bool = False) -> dict[str, Any]:
    found: dict[str, Any] = {"anyOf": [_STRING, {"$ref": f"#/components/schemas/{schema}"}]}
    return {**found, "nullable": True} if nullable else found


NEWER_SCHEMAS: dict[str, Any] = {
    "invoice_payment": {
        "properties": {
            "amount_paid": {"nullable": True, "type": "integer"},
            "amount_requested": {"type": "integer"},
            "created": {"format": "unix-time", "type": "integer"},
            "currency": {"type": "string"},
            "id": _STRING,
            "invoice": {
                "anyOf": [
                    _STRING,
                    {"$ref": "#/components/schemas/invoice"},
                    {"$ref": "#/components/schemas/deleted_invoice"},
                ]
            },
            "is_default": {"type": "boolean"},
            "livemode": {"type": "boolean"},
            "object": {"enum": ["invoice_payment"], "type": "string"},
            "payment": {
                "properties": {
                    "charge": _expandable("charge", nullable=True),
                    "payment_intent": _expandable("payment_intent", nullable=True),
                    "payment_record": {**_STRING, "nullable": True},
                    "type": {
                        "enum": ["charge", "payment_intent", "payment_record"],
                        "type": "string",
                    },
                },
                "required": ["type"],
                "type": "object",
            },
            "status": _STRING,
            "status_transitions": {
                "properties": {
                    "canceled_at": {"format": "unix-time", "nullable": True, "type": "integer"},
                    "paid_at": {"format": "unix-time", "nullable": True, "type": "integer"},
                },
                "required": ["canceled_at", "paid_at"],
                "type": "object",
            },
        },
        "required": [
            "amount_paid",
            "amount_requested",
            "created",
            "currency",
            "id",
            "invoice",
            "is_default",
            "livemode",
            "object",
            "payment",
            "status",
            "status_transitions",
        ],
        "type": "object",
    }
}
NEWER: dict[str, Any] = {
    "GET /v1/invoice_payments": {
        "request": {
            "additionalProperties": False,
            "properties": {
                "created": {
                    "anyOf": [
                        {
                            "properties": {
                                op: {"type": "integer"} for op in ("gt", "gte", "lt", "lte")
                            },
                            "type": "object",
                        },
                        {"type": "integer"},
                    ]
                },
                "ending_before": _STRING,
                "expand": _EXPAND,
                "invoice": _STRING,
                "limit": {"type": "integer"},
                "payment": {
                    "properties": {
                        "payment_intent": _STRING,
                        "payment_record": _STRING,
                        "type": {"enum": ["payment_intent", "payment_record"], "type": "string"},
                    },
                    "required": ["type"],
                    "type": "object",
                },
                "starting_after": _STRING,
                "status": {"enum": ["canceled", "open", "paid"], "type": "string"},
            },
            "required": [],
            "type": "object",
        },
        "response": {
            "properties": {
                "data": {
                    "items": {"$ref": "#/components/schemas/invoice_payment"},
                    "type": "array",
                },
                "has_more": {"type": "boolean"},
                "object": {"enum": ["list"], "type": "string"},
                "url": {**_STRING, "pattern": "^/v1/invoice_payments"},
            },
            "required": ["data", "has_more", "object", "url"],
            "type": "object",
        },
    },
    "GET /v1/invoice_payments/{invoice_payment}": {
        "request": {
            "additionalProperties": False,
            "properties": {"expand": _EXPAND},
            "required": [],
            "type": "object",
        },
        "response": {"$ref": "#/components/schemas/invoice_payment"},
    },
}


def strip(node: Any, bypassed: bool = False) -> Any:
    """The schema without prose and vendor keys (property names are kept as they are);
    with ``bypassed``, without the enums Stripe does not hold requests to either."""
    if isinstance(node, dict):
        drop = bypassed and node.get("x-stripeBypassValidation") is True
        return {
            k: (
                {name: strip(s, bypassed) for name, s in v.items()}
                if k == "properties"
                else strip(v, bypassed)
            )
            for k, v in node.items()
            if k not in DROP and not (drop and k == "enum")
        }
    if isinstance(node, list):
        return [strip(v, bypassed) for v in node]
    return node


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if "$ref" in node:
            found.add(node["$ref"].rsplit("/", 1)[1])
        for v in node.values():
            found |= refs(v)
    elif isinstance(node, list):
        for v in node:
            found |= refs(v)
    return found


def main(spec_path: str) -> None:
    spec = yaml.load(Path(spec_path).read_text(), Loader=yaml.CSafeLoader)
    by_shape = {re.sub(r"\{[^}]+\}", "{}", p): p for p in spec["paths"]}
    operations: dict[str, Any] = {}
    for routes in _ROUTES.values():
        for route in routes:
            shape = re.sub(r"\{[^}]+\}", "{}", route.template)
            name = f"{route.method} {route.template}"
            if shape not in by_shape:
                operations[name] = NEWER[name]  # a KeyError: describe it there
                continue
            op = spec["paths"][by_shape[shape]][route.method.lower()]
            if route.method == "GET":
                params = [p for p in op.get("parameters", []) if p["in"] == "query"]
                request = {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {p["name"]: p["schema"] for p in params},
                    "required": [p["name"] for p in params if p.get("required")],
                }
            else:
                body = op.get("requestBody", {}).get("content", {})
                form = body.get("application/x-www-form-urlencoded", {})
                request = form.get("schema", {"type": "object", "properties": {}})
            response = op["responses"]["200"]["content"]["application/json"]["schema"]
            operations[f"{route.method} {route.template}"] = {
                "request": strip(request, route.template.startswith(BYPASSED)),
                "response": strip(response),
            }
    schemas: dict[str, Any] = {}
    todo = refs(operations)
    while todo:
        name = todo.pop()
        if name not in schemas:
            schemas[name] = NEWER_SCHEMAS.get(name) or strip(spec["components"]["schemas"][name])
            todo |= refs(schemas[name]) - schemas.keys()
    OUT.write_text(
        json.dumps(
            {
                "source": "stripe/openapi spec3.yaml, API " + spec["info"]["version"],
                "operations": operations,
                "schemas": dict(sorted(schemas.items())),
            },
            indent=None,
            separators=(",", ":"),
            sort_keys=True,
        )
        + "\n"
    )
    print(
        f"{OUT}: {len(operations)} operations, {len(schemas)} schemas, {OUT.stat().st_size} bytes"
    )


if __name__ == "__main__":
    main(sys.argv[1])
