"""ASGI app: Stripe's v1 dialect (auth, faults, idempotency) plus `/_emulator/` control."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import errors, forms
from .emulator import ApiRequest, ApiRoute, Emulator, LoggedRequest, encode, match_route
from .errors import StripeError
from .faults import FaultRule, parse_rule
from .history import seed_history
from .idempotency import StoredResponse
from .state import new_id


class ConnectionDropped(Exception):
    """Raised mid-response so the server tears the connection down (client sees a network error)."""


# Sent with every API response.
_BASE_HEADERS = [(b"content-type", b"application/json"), (b"access-control-allow-origin", b"*")]
_SHOULD_RETRY = {"Stripe-Should-Retry": "true"}


def _headers(request_id: str, extra: dict[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    headers = [*_BASE_HEADERS, (b"request-id", request_id.encode())]
    if extra:
        headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    return headers


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drop(send: Send) -> None:
    # Promise more bytes than we send, then fail: the client gets an incomplete read.
    headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"id": ', "more_body": True})
    raise ConnectionDropped("emulated dropped connection")


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _api_key(authorization: str) -> str | None:
    """The key from `Bearer KEY`, or from HTTP basic auth as `curl -u KEY:` sends it:
    Stripe takes the user name as the key and ignores the password."""
    scheme, _, credentials = authorization.partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    if scheme == "bearer":
        return credentials
    if scheme == "basic":
        try:
            return base64.b64decode(credentials, validate=True).decode().partition(":")[0]
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            return ""
    return None


def _authenticate(emu: Emulator, authorization: str) -> tuple[str, bool]:
    if not authorization:
        raise errors.authentication(
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth "
            "(e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
        )
    key = _api_key(authorization)
    live = key is not None and key.startswith(("sk_live_", "rk_live_"))
    if key:
        allowed = emu.config.allowed_keys
        if allowed is not None:
            ok = key in allowed
        else:
            ok = key.startswith(("sk_test_", "rk_test_")) or (live and emu.config.allow_live)
        if ok:
            return key, live
    # An unknown scheme: name what was sent, as for a bad key.
    shown = authorization.partition(" ")[2].strip() if key is None else key
    if len(shown) > 12:
        shown = shown[:8] + "*" * (len(shown) - 12) + shown[-4:]
    raise errors.authentication(f"Invalid API Key provided: {shown}")


class ApiApp:
    """Handles everything outside /_emulator as Stripe would: a bare ASGI app, since
    it is in the path of every test and benchmark request."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Counted so a reset can wait for requests still sleeping in a latency
        # fault: otherwise they would land in the next test's state.
        self.emu.requests_in_flight += 1
        try:
            await self._handle(scope, receive, send)
        finally:
            self.emu.requests_in_flight -= 1

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        emu = self.emu
        arrived = time.monotonic()
        # HEAD is GET without the body (the server leaves the body out).
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        path = scope["path"].rstrip("/") or "/"
        request_id = new_id("req", 14)
        authorization = idem_header = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"idempotency-key":
                idem_header = value.decode("latin-1")
        raw_body = await _read_body(receive)
        route, path_params = match_route(method, path)
        template = route.template if route else path
        emu.count_request(method, template)

        async def error(err: StripeError, extra: dict[str, str] | None = None) -> None:
            await _respond(send, err.status, encode(err.body()), _headers(request_id, extra))

        try:
            api_key, live = _authenticate(emu, authorization)
            params = forms.decode(scope["query_string"])
            if method == "POST":
                params.update(forms.decode(raw_body))
        except StripeError as err:
            await error(err)
            return
        if emu.request_log is not None:
            metadata = params.get("metadata")
            emu.log_request(
                LoggedRequest(
                    t=arrived,
                    method=method,
                    path=path,
                    idempotency_key=idem_header or None,
                    metadata=dict(metadata) if isinstance(metadata, dict) else {},
                )
            )
        if not emu.rate_limiter.allow():
            emu.count_rate_limited()
            await error(errors.rate_limited(), _SHOULD_RETRY)
            return

        lose_response = False
        inside: FaultRule | None = None
        delay = emu.config.latency
        executing_for = 0.0  # a latency fault "executing": after the key is taken
        for rule in emu.faults.triggered(method, path, template):
            if rule.kind == "latency" and rule.executing:
                executing_for += rule.seconds
            elif rule.kind == "latency":
                delay += rule.seconds
            elif rule.kind == "applied_response_lost":
                lose_response = True
            elif rule.kind == "drop":
                await _drop(send)
            elif rule.kind == "rate_limit":
                emu.count_rate_limited()
                await error(errors.rate_limited(), _SHOULD_RETRY)
                return
            elif rule.kind == "403":
                await error(errors.permission_denied(method, path))
                return
            elif rule.stored:
                inside = rule
            else:  # a 500 from in front of the API: nothing ran, nothing is saved
                await error(errors.api_error(int(rule.kind)), _SHOULD_RETRY)
                return
        await _sleep(delay)

        idem_key = idem_header if method in ("POST", "DELETE") else ""
        fingerprint = forms.fingerprint(params)
        if idem_key:
            stored = emu.idempotency.lookup(api_key, idem_key, emu.clock.now())
            if stored is not None:
                if (stored.method, stored.path, stored.fingerprint) != (method, path, fingerprint):
                    await error(errors.idempotency_mismatch(idem_key))
                    return
                if lose_response:
                    await _drop(send)
                replayed = {
                    **stored.headers,
                    "Idempotent-Replayed": "true",
                    "Idempotency-Key": idem_key,
                }
                headers = _headers(stored.request_id, replayed)
                await _respond(send, stored.status, stored.body, headers)
                return
            if not emu.idempotency.begin(api_key, idem_key):
                # The first request with this key is still executing: nothing is saved.
                await error(errors.idempotency_key_in_use(idem_key))
                return

        api_request = ApiRequest(
            method=method,
            path=path,
            template=template,
            params=params,
            path_params=path_params,
            request_id=request_id,
            idempotency_key=idem_key or None,
            api_key=api_key,
            livemode=live,
        )
        try:
            await _sleep(executing_for)
            status, body, extra = self._execute(api_request, route, inside)
            if idem_key:
                saved = StoredResponse(
                    method, path, fingerprint, status, body, request_id, emu.clock.now(), extra
                )
                emu.idempotency.store(api_key, idem_key, saved)
                extra = {**extra, "Idempotency-Key": idem_key}
        finally:
            if idem_key:
                emu.idempotency.end(api_key, idem_key)
        if emu.observer is not None and status < 300:
            emu.observer(method, template, params, body)
        if lose_response:
            await _drop(send)
        await _respond(send, status, body, _headers(request_id, extra))

    def _execute(
        self, req: ApiRequest, route: ApiRoute | None, fault: FaultRule | None
    ) -> tuple[int, bytes, dict[str, str]]:
        """The operation's status, body and extra headers; a stored 500 fault replaces
        its response, after it ran if the fault says `created`."""
        if fault is None:
            status, body = self.emu.dispatch(req, route)
            return status, body, {}
        if fault.created:
            self.emu.dispatch(req, route)
        err = errors.api_error(int(fault.kind))
        # The SDK expects Stripe-Should-Retry: false on a 500 that Stripe's idempotency
        # layer saved (stripe/_http_client.py, _should_retry): a retry only replays it.
        return err.status, encode(err.body()), {"Stripe-Should-Retry": "false"}


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


# -- control API -------------------------------------------------------------------------
def _control_routes(emu: Emulator) -> list[Route]:
    async def requests(_: Request) -> Response:
        return JSONResponse(emu.stats())

    async def request_log(request: Request) -> Response:
        try:
            since = float(request.query_params.get("since", "0"))
        except ValueError:
            return JSONResponse({"error": "since must be a number"}, status_code=400)
        data = [vars(r) for r in emu.logged_requests(since)]
        return JSONResponse({"enabled": emu.request_log is not None, "data": data})

    async def reset(_: Request) -> Response:
        emu.reset()
        return JSONResponse({"reset": True})

    async def add_faults(request: Request) -> Response:
        payload = await _json(request)
        specs = payload.get("faults", [payload]) if isinstance(payload, dict) else payload
        try:
            rules = [emu.faults.add(parse_rule(spec)) for spec in specs]
        except (KeyError, ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"faults": [vars(rule) for rule in rules]})

    async def list_faults(_: Request) -> Response:
        return JSONResponse({"faults": [vars(rule) for rule in emu.faults.rules()]})

    async def clear_faults(_: Request) -> Response:
        emu.clear_faults()
        return JSONResponse({"faults": []})

    async def add_endpoint(request: Request) -> Response:
        payload = await _json(request)
        try:
            url = str(payload["url"])
            secrets = payload.get("secrets") or payload.get("secret")
            options = dict(payload.get("options") or {})
            endpoint = emu.add_webhook_endpoint(url, secrets or [], **options)
        except (KeyError, ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(endpoint.describe())

    async def list_endpoints(_: Request) -> Response:
        return JSONResponse({"data": [e.describe() for e in emu.webhooks.endpoints.values()]})

    async def clock(request: Request) -> Response:
        payload = await _json(request)
        emu.advance_clock(float(payload.get("advance", payload.get("seconds", 0))))
        return JSONResponse({"now": emu.clock.now(), "offset": emu.clock.offset})

    async def objects(request: Request) -> Response:
        kind = request.path_params["kind"]
        try:
            data = emu.objects(kind)
        except KeyError:
            return JSONResponse({"error": f"unknown kind {kind!r}"}, status_code=404)
        return JSONResponse({"kind": kind, "count": len(data), "data": data})

    async def put_objects(request: Request) -> Response:
        kind = request.path_params["kind"]
        payload = await _json(request)
        try:
            if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
                raise ValueError('objects takes {"data": [object, ...]}')
            count = emu.put_objects(kind, payload["data"])
        except KeyError:
            return JSONResponse({"error": f"unknown kind {kind!r}"}, status_code=404)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"kind": kind, "count": count})

    async def history(request: Request) -> Response:
        payload = await _json(request)
        allowed = {"customers", "months", "seed", "mc_source", "metadata_every", "disputes"}
        try:
            if not isinstance(payload, dict) or set(payload) - allowed:
                raise ValueError(f"history takes an object with keys among {sorted(allowed)}")
            made = seed_history(emu, **payload)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(made.to_json())

    return [
        Route("/_emulator/history", history, methods=["POST"]),
        Route("/_emulator/requests", requests, methods=["GET"]),
        Route("/_emulator/request_log", request_log, methods=["GET"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
        Route("/_emulator/faults", add_faults, methods=["POST"]),
        Route("/_emulator/faults", list_faults, methods=["GET"]),
        Route("/_emulator/faults", clear_faults, methods=["DELETE"]),
        Route("/_emulator/webhook_endpoints", add_endpoint, methods=["POST"]),
        Route("/_emulator/webhook_endpoints", list_endpoints, methods=["GET"]),
        Route("/_emulator/clock", clock, methods=["POST"]),
        Route("/_emulator/objects/{kind}", objects, methods=["GET"]),
        Route("/_emulator/objects/{kind}", put_objects, methods=["POST"]),
    ]


async def _json(request: Request) -> Any:
    body = await request.body()
    return json.loads(body) if body.strip() else {}


def create_app(emulator: Emulator) -> ASGIApp:
    """The API for every path but /_emulator/..., which is the control API (and lifespan)."""
    api = ApiApp(emulator)
    control = Starlette(routes=_control_routes(emulator))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/_emulator/"):
            await api(scope, receive, send)
        else:
            await control(scope, receive, send)

    return app
