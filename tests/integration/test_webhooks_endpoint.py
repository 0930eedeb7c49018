"""POST /webhooks/stripe over real HTTP (Hypercorn): verify, store, answer."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import stripe

from stripe_sync.db import make_pool

from webhook_helpers import SECRET, Server, event, serve_endpoint, sign

pytestmark = pytest.mark.anyio

CUSTOMER = {"id": "cus_1", "object": "customer", "metadata": {}}


@pytest.fixture
async def server(dsn: str) -> AsyncIterator[Server]:
    async with make_pool(dsn, size=4) as pool, serve_endpoint(pool, max_body=4096) as srv:
        yield srv


def rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT stripe_event_id, event_type, api_version, livemode, event_created, object_id, "
        "account, payload, status FROM integration.webhook_events ORDER BY id"
    ).fetchall()


@pytest.mark.parametrize("payload", ['{"id": "evt_1"}', "héllo ✓", ""])
def test_sign_helper_matches_the_sdk(payload: str) -> None:
    header = sign(payload)
    assert stripe.WebhookSignature.verify_header(payload, header, SECRET, 300)
    assert header == stripe.WebhookSignature.generate_signature_header(
        payload, SECRET, int(header.split(",")[0][2:])
    )
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(payload, header, "whsec_other", 300)


async def test_valid_event_is_stored_before_200(
    server: Server, conn: psycopg.Connection[Any]
) -> None:
    evt = event("customer.created", CUSTOMER, event_id="evt_ok", account=None)
    body = json.dumps(evt)
    resp = await server.post(body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"received": True, "duplicate": False}
    # Committed by the time the answer arrived: another session sees it.
    [row] = rows(conn)
    assert row[:7] == (
        "evt_ok",
        "customer.created",
        "2024-06-20",
        False,
        1_700_000_000,
        "cus_1",
        None,
    )
    assert row[7] == evt and row[8] == "pending"


async def test_connect_event_keeps_its_account(
    server: Server, conn: psycopg.Connection[Any]
) -> None:
    resp = await server.send(event("customer.created", CUSTOMER, account="acct_9"))
    assert resp.status_code == 200
    assert rows(conn)[0][6] == "acct_9"


async def test_duplicate_id_is_one_row_and_two_200s(
    server: Server, conn: psycopg.Connection[Any]
) -> None:
    evt = event("customer.created", CUSTOMER, event_id="evt_dup")
    first = await server.send(evt)
    second = await server.send(evt)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["duplicate"] is False and second.json()["duplicate"] is True
    assert len(rows(conn)) == 1


async def test_missing_signature(server: Server, conn: psycopg.Connection[Any]) -> None:
    resp = await server.post(json.dumps(event("customer.created", CUSTOMER)), signed=False)
    assert resp.status_code == 400
    assert resp.json() == {"error": "missing Stripe-Signature header"}
    assert rows(conn) == []


async def test_malformed_signature(server: Server, conn: psycopg.Connection[Any]) -> None:
    # One test, many cases: each test pays for a fresh database.
    for header in ["garbage", "t=abc,v1=00", "t=1700000000", "v1=deadbeef", "t=1,v0=abc"]:
        resp = await server.post(
            json.dumps(event("customer.created", CUSTOMER)), headers={"stripe-signature": header}
        )
        assert resp.status_code == 400, header
        assert resp.json() == {"error": "invalid signature"}
    assert rows(conn) == []


async def test_wrong_secret(server: Server, conn: psycopg.Connection[Any]) -> None:
    resp = await server.post(json.dumps(event("customer.created", CUSTOMER)), secret="whsec_x")
    assert resp.status_code == 400 and resp.json() == {"error": "invalid signature"}
    assert rows(conn) == []


async def test_stale_timestamp(server: Server, conn: psycopg.Connection[Any]) -> None:
    body = json.dumps(event("customer.created", CUSTOMER))
    resp = await server.post(
        body, headers={"stripe-signature": sign(body, timestamp=int(time.time()) - 301)}
    )
    assert resp.status_code == 400
    assert resp.json() == {"error": "signature timestamp outside the tolerance"}
    assert rows(conn) == []


async def test_body_altered_after_signing(server: Server, conn: psycopg.Connection[Any]) -> None:
    body = json.dumps(event("customer.created", CUSTOMER))
    header = sign(body)
    resp = await server.post(body.replace("cus_1", "cus_2"), headers={"stripe-signature": header})
    assert resp.status_code == 400 and resp.json() == {"error": "invalid signature"}
    assert rows(conn) == []


async def test_rotation_either_secret_verifies(dsn: str, conn: psycopg.Connection[Any]) -> None:
    async with (
        make_pool(dsn, size=2) as pool,
        serve_endpoint(pool, ["whsec_old", "whsec_new"]) as srv,
    ):
        for i, secret in enumerate(["whsec_old", "whsec_new", "whsec_neither"]):
            resp = await srv.post(
                json.dumps(event("customer.created", CUSTOMER, event_id=f"evt_rot{i}")),
                secret=secret,
            )
            assert resp.status_code == (400 if secret == "whsec_neither" else 200)
    assert [r[0] for r in rows(conn)] == ["evt_rot0", "evt_rot1"]


async def test_too_large_by_content_length(server: Server, conn: psycopg.Connection[Any]) -> None:
    evt = event("customer.created", {**CUSTOMER, "description": "x" * 5000})
    resp = await server.send(evt)
    assert resp.status_code == 413
    assert "4096" in resp.json()["error"]
    assert rows(conn) == []


async def test_too_large_while_streaming(server: Server, conn: psycopg.Connection[Any]) -> None:
    body = json.dumps(event("customer.created", {**CUSTOMER, "description": "x" * 5000})).encode()

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked encoding
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    resp = await server.client.post(
        server.url, content=chunks(), headers={"stripe-signature": sign(body)}
    )
    assert resp.status_code == 413
    assert rows(conn) == []


async def test_chunked_body_within_limit_is_accepted(
    server: Server, conn: psycopg.Connection[Any]
) -> None:
    body = json.dumps(event("customer.created", CUSTOMER)).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 50):
            yield body[i : i + 50]

    resp = await server.client.post(
        server.url, content=chunks(), headers={"stripe-signature": sign(body)}
    )
    assert resp.status_code == 200
    assert len(rows(conn)) == 1


NOT_EVENTS = [
    ("[1, 2]", "not a Stripe event: Expected `object`, got `array`"),
    ('"evt_1"', "not a Stripe event: Expected `object`, got `str`"),
    ("{not json", "not a Stripe event: body is not JSON"),
    ("", "not a Stripe event: body is not JSON"),
    (
        '{"type": "customer.created", "created": 1, "data": {"object": {}}}',
        "not a Stripe event: no id starting with evt_",
    ),
    (
        '{"id": "cus_1", "type": "customer.created", "created": 1, "data": {"object": {}}}',
        "not a Stripe event: no id starting with evt_",
    ),
    ('{"id": "evt_1", "created": 1, "data": {"object": {}}}', "not a Stripe event: no type"),
    ('{"id": "evt_1", "type": "x", "data": {"object": {}}}', "not a Stripe event: no created"),
    ('{"id": "evt_1", "type": "x", "created": 1}', "not a Stripe event: no data.object"),
    (
        '{"id": "evt_1", "type": "x", "created": 1, "data": {}}',
        "not a Stripe event: no data.object",
    ),
    (
        '{"id": "evt_1", "type": "x", "created": 1, "data": {"object": [1]}}',
        "not a Stripe event: data.object is not an object",
    ),
    (
        '{"id": "evt_1", "type": "x", "created": "soon", "data": {"object": {}}}',
        "not a Stripe event: Expected `int | null`, got `str` - at `$.created`",
    ),
]


async def test_not_an_event(server: Server, conn: psycopg.Connection[Any]) -> None:
    for body, reason in NOT_EVENTS:
        resp = await server.post(body)
        assert resp.status_code == 400, body
        assert resp.json() == {"error": reason}
    assert rows(conn) == []


async def test_invalid_utf8_is_400(server: Server, conn: psycopg.Connection[Any]) -> None:
    body = (
        json.dumps(event("customer.created", CUSTOMER)).encode().replace(b"cus_1", b"cus_\xff\xfe")
    )
    resp = await server.post(body)
    assert resp.status_code == 400
    assert resp.json() == {"error": "body is not valid UTF-8"}
    assert rows(conn) == []


async def test_nul_character_cannot_be_stored_is_400_not_500(
    server: Server,
    conn: psycopg.Connection[Any],
) -> None:
    # jsonb cannot hold \u0000; the event is refused, nothing else breaks.
    resp = await server.post(json.dumps(event("customer.created", {**CUSTOMER, "name": "a\x00b"})))
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("cannot be stored")
    ok = await server.send(event("customer.created", CUSTOMER))
    assert ok.status_code == 200
    assert len(rows(conn)) == 1


async def test_get_is_not_allowed(server: Server) -> None:
    resp = await server.client.get(server.url)
    assert resp.status_code == 405
    assert resp.json() == {"error": "Method Not Allowed"}
    assert resp.headers["allow"] == "POST"


async def test_a_bug_is_a_short_500_and_stores_nothing(
    server: Server, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(raw: bytes, envelope: Any) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.endpoint.ingestor, "store", broken)
    resp = await server.send(event("customer.created", CUSTOMER))
    assert resp.status_code == 500
    assert resp.json() == {"error": "internal error"}
    assert rows(conn) == []


async def test_other_paths_are_starlettes(server: Server) -> None:
    base = server.url.removesuffix("/webhooks/stripe")
    health = await server.client.get(f"{base}/healthz")
    assert health.status_code == 200 and health.json() == {"status": "alive"}
    missing = await server.client.post(f"{base}/webhooks/other", content=b"{}")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}


def test_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        from stripe_sync.webhooks.endpoint import WebhookEndpoint
        from stripe_sync.webhooks.ingest import Ingestor

        WebhookEndpoint(Ingestor(None), [""])  # type: ignore[arg-type]
