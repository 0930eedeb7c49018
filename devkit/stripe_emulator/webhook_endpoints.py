"""`/v1/webhook_endpoints`: endpoints as the API creates them, and the body each one
is sent.

The Stripe object (``webhook_endpoint``) lives in the store; its delivery side is an
``events.WebhookEndpoint`` of the same id in the dispatcher, with the signing secret
(which only the create answer shows), the enabled event types, whether Stripe may
deliver to it (``disabled`` sets ``status``) and its pinned ``api_version``: each event
reaches an endpoint with the endpoint's version on it (the shape is today's either way).
Endpoints added with ``--webhook-url`` or ``Emulator.add_webhook_endpoint`` are the
dispatcher's alone: they take every event, at the account's version, and the API does
not list them.
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any

from . import events
from .errors import invalid, missing
from .forms import check_known, check_strings, get_bool, get_list, get_str, merge_metadata
from .listing import list_objects
from .state import JSON, new_id, snapshot

if TYPE_CHECKING:
    from .emulator import ApiRequest, Emulator

KIND = "webhook_endpoints"
_CREATE = {"url", "enabled_events", "api_version", "description", "metadata", "connect", "expand"}
_UPDATE = {"url", "enabled_events", "description", "metadata", "disabled", "expand"}
_LIMITS = {"url": 5000, "description": 5000}
# An event type ("invoice.paid", "customer.subscription.updated") or a whole family ("*").
_EVENT_TYPE = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")


def _url(params: dict[str, Any], required: bool) -> str | None:
    url = get_str(params, "url", required=required)
    if url is not None and not re.match(r"^https?://[^/\s]+", url):
        raise invalid("url", f"Invalid URL: {url}", "url_invalid")
    return url


def _enabled_events(params: dict[str, Any], required: bool) -> list[str] | None:
    if "enabled_events" not in params and not required:
        return None
    types = [str(t) for t in get_list(params, "enabled_events")]
    if not types:
        raise missing("enabled_events")
    for i, event_type in enumerate(types):
        if event_type != "*" and not _EVENT_TYPE.match(event_type):
            raise invalid(
                f"enabled_events[{i}]",
                f"Invalid enabled_events[{i}]: {event_type!r} is not an event type",
                "parameter_invalid_string",
            )
    return types


def create(emu: Emulator, req: ApiRequest) -> JSON:
    p = req.params
    check_known(p, _CREATE)
    check_strings(p, _LIMITS)
    url = _url(p, required=True)
    types = _enabled_events(p, required=True)
    version = get_str(p, "api_version")
    if version is not None and not _API_VERSION.match(version):
        raise invalid("api_version", f"Invalid api_version: {version}", "parameter_invalid_string")
    assert url is not None and types is not None
    endpoint: JSON = {
        "id": new_id("we"),
        "object": "webhook_endpoint",
        "api_version": version,
        "application": None,
        "created": emu.now(),
        "description": get_str(p, "description"),
        "enabled_events": types,
        "livemode": req.livemode,
        "metadata": merge_metadata({}, p),
        "status": "enabled",
        "url": url,
    }
    secret = f"whsec_{secrets.token_urlsafe(24)}"
    # Stripe retries a failed delivery for days; here for ~40 s (a daemon's restart, on a
    # loaded machine).
    delivery = events.make_endpoint(url, [secret], enabled_events=types, max_attempts=45)
    delivery.id = endpoint["id"]
    delivery.api_version = version
    emu.store.put(KIND, endpoint)
    emu.webhooks.add_endpoint(delivery)
    # The secret is in this answer only: Stripe never shows it again.
    return {**snapshot(endpoint), "secret": secret}


def retrieve(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require(KIND, req.path_params["webhook_endpoint"], "webhook_endpoint")


def update(emu: Emulator, req: ApiRequest) -> JSON:
    endpoint = emu.store.require(KIND, req.path_params["webhook_endpoint"], "webhook_endpoint")
    p = req.params
    check_known(p, _UPDATE)
    check_strings(p, _LIMITS)
    url = _url(p, required=False)
    types = _enabled_events(p, required=False)
    disabled = get_bool(p, "disabled")
    delivery = emu.webhooks.endpoints[endpoint["id"]]
    if url is not None:
        endpoint["url"] = delivery.url = url
    if types is not None:
        endpoint["enabled_events"] = types
        delivery.enabled_events = list(types)
    if disabled is not None:
        endpoint["status"] = "disabled" if disabled else "enabled"
        delivery.enabled = not disabled
    if "description" in p:
        endpoint["description"] = get_str(p, "description")
    endpoint["metadata"] = merge_metadata(endpoint["metadata"], p)
    emu.store.reindex(endpoint)
    return endpoint


def delete(emu: Emulator, req: ApiRequest) -> JSON:
    endpoint = emu.store.require(KIND, req.path_params["webhook_endpoint"], "webhook_endpoint")
    emu.store.deleted.add(endpoint["id"])
    emu.webhooks.remove_endpoint(endpoint["id"])
    return {"id": endpoint["id"], "object": "webhook_endpoint", "deleted": True}


def list_endpoints(emu: Emulator, req: ApiRequest) -> JSON:
    return list_objects(emu.store, req.params, KIND)


def disable(emu: Emulator, endpoint_id: str) -> None:
    """What Stripe does to an endpoint that failed for days: status disabled, no deliveries."""
    with emu.lock:
        endpoint = emu.store.require(KIND, endpoint_id)
        endpoint["status"] = "disabled"
        emu.webhooks.endpoints[endpoint_id].enabled = False


def enqueue(emu: Emulator, event: JSON, targets: list[str]) -> None:
    """Hand the event to each target endpoint, with the endpoint's API version on it
    (one encoding per version)."""
    from .emulator import encode  # the emulator imports this module

    bodies: dict[str, bytes] = {}
    for endpoint_id in targets:
        endpoint = emu.webhooks.endpoints.get(endpoint_id)
        version = (endpoint.api_version if endpoint else None) or event["api_version"]
        if version not in bodies:
            bodies[version] = encode({**event, "api_version": version})
        emu.webhooks.enqueue(endpoint_id, event["id"], bodies[version])


ROUTES = [
    ("POST", "/v1/webhook_endpoints", create),
    ("GET", "/v1/webhook_endpoints", list_endpoints),
    ("GET", "/v1/webhook_endpoints/{webhook_endpoint}", retrieve),
    ("POST", "/v1/webhook_endpoints/{webhook_endpoint}", update),
    ("DELETE", "/v1/webhook_endpoints/{webhook_endpoint}", delete),
]
