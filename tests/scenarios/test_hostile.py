"""Hostile input at `stripe-sync run` as deployed: whatever arrives at /webhooks/stripe
(arbitrary bytes, forged or near-valid signatures, validly signed JSON that is no event,
deep nesting, invalid UTF-8, huge or lying bodies, slow senders) is answered with a 4xx,
never a 5xx, stores nothing, and does not slow down anyone else; and malformed rows a DBA
writes by SQL fail with a clear last_error while the daemon keeps going.

The HTTP tests share one daemon and one database (module scope): after all of them,
integration.webhook_events is still empty. Hypothesis examples are bounded so the file
runs in well under a minute.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stripe_emulator.server import EmulatorServer

from daemons import WEBHOOK_SECRET, DaemonProcess
from webhook_helpers import fresh_database, sign

MAX_BODY = 1 << 20
FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Target:
    daemon: DaemonProcess
    dsn: str
    client: httpx.Client

    @property
    def url(self) -> str:
        return f"{self.daemon.url}/webhooks/stripe"

    def post(self, body: bytes, signature: str | None, **headers: str) -> httpx.Response:
        hdrs = {"content-type": "application/json", **headers}
        if signature is not None:
            hdrs["stripe-signature"] = signature
        return self.client.post(self.url, content=body, headers=hdrs)

    def stored(self) -> int:
        with psycopg.connect(self.dsn) as c:
            row = c.execute("SELECT count(*) FROM integration.webhook_events").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture(scope="module")
def target(
    pg_server: dict[str, Any], db_template: str, emulator_server: EmulatorServer
) -> Iterator[Target]:
    with fresh_database(pg_server, db_template, prefix="stripe_sync_hostile") as dsn:
        daemon = DaemonProcess(dsn, emulator_server.base_url, STRIPE_SYNC_LOG_LEVEL="warning")
        daemon.start()
        try:
            with httpx.Client(timeout=30) as client:
                yield Target(daemon, dsn, client)
                # Everything at the shared daemon was invalid: nothing was stored,
                # nothing crashed, nothing answered 500.
                assert Target(daemon, dsn, client).stored() == 0
                assert daemon.proc is not None and daemon.proc.poll() is None
            failed = [
                line
                for line in daemon.output().splitlines()
                if "request failed" in line or "Traceback" in line
            ]
            assert failed == []
        finally:
            daemon.stop()


def mac(body: bytes, t: int, secret: str = WEBHOOK_SECRET) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def a_valid_event(**obj: Any) -> dict[str, Any]:
    return {
        "id": "evt_hostile_valid",
        "object": "event",
        "type": "customer.updated",
        "created": 1_700_000_000,
        "livemode": False,
        "data": {"object": {"id": "cus_hostile", "object": "customer", **obj}},
    }


# -- strategies ------------------------------------------------------------------------------

HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)


@st.composite
def signature_headers(draw: st.DrawFn, body: bytes) -> str | None:
    """Absent, garbage, or near-valid Stripe-Signature values for ``body``; never valid."""
    now = int(time.time())
    other = draw(st.binary(max_size=64).filter(lambda b: b != body))
    kind = draw(st.sampled_from(["none", "text", "wrong_v1", "other_body", "many_v1", "stale",
                                 "wrong_secret", "v0_only", "bad_t", "fields"]))  # fmt: skip
    if kind == "none":
        return None
    if kind == "text":  # HTTP itself forbids leading/trailing blanks in a header value
        return draw(HEADER_TEXT).strip()
    if kind == "wrong_v1":
        return f"t={now},v1={draw(HEX64.filter(lambda h: h != mac(body, now)))}"
    if kind == "other_body":
        return f"t={now},v1={mac(other, now)}"
    if kind == "many_v1":
        wrong = draw(st.lists(HEX64, min_size=2, max_size=20))
        return f"t={now}," + ",".join(f"v1={h}" for h in wrong if h != mac(body, now))
    if kind == "stale":  # the right signature, but too old
        t = now - draw(st.integers(min_value=400, max_value=10**9))
        return f"t={t},v1={mac(body, t)}"
    if kind == "wrong_secret":
        return f"t={now},v1={mac(body, now, 'whsec_not_ours')}"
    if kind == "v0_only":
        return f"t={now},v0={mac(body, now)}"
    if kind == "bad_t":
        bad_t = draw(st.sampled_from(["", "x", "-1", "1e9", " ", str(now) + "0" * 30]))
        return f"t={bad_t},v1={mac(body, now)}"
    # The right parts in odd company: repeated t, spaces, unknown schemes.
    parts = [f"t={now}", f"v1={mac(other, now)}", *draw(st.lists(HEADER_TEXT, max_size=5))]
    return ",".join(draw(st.permutations(parts))).strip()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)

EVENT_KEYS = st.sampled_from(["id", "type", "created", "data", "object", "livemode", "account"])


def is_event_shaped(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    data = value.get("data")
    return (
        isinstance(value.get("id"), str)
        and value["id"].startswith("evt_")
        and isinstance(value.get("type"), str)
        and bool(value["type"])
        and isinstance(value.get("created"), int)
        and isinstance(data, dict)
        and isinstance(data.get("object"), dict)
    )


# -- the endpoint ----------------------------------------------------------------------------


@FAST
@given(data=st.data(), body=st.binary(max_size=2048))
def test_arbitrary_bytes_with_absent_or_forged_signatures(
    target: Target, data: st.DataObject, body: bytes
) -> None:
    header = data.draw(signature_headers(body))
    r = target.post(body, header)
    assert r.status_code == 400, (header, r.text)
    assert "error" in r.json()


@FAST
@given(body=st.binary(max_size=2048))
def test_validly_signed_bytes_that_are_no_event(target: Target, body: bytes) -> None:
    try:
        assume(not is_event_shaped(json.loads(body)))
    except ValueError:
        pass
    r = target.post(body, sign(body, WEBHOOK_SECRET))
    assert r.status_code == 400, r.text


@FAST
@given(value=JSON)
def test_validly_signed_json_that_is_no_event(target: Target, value: Any) -> None:
    assume(not is_event_shaped(value))
    body = json.dumps(value).encode()
    r = target.post(body, sign(body, WEBHOOK_SECRET))
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("not a Stripe event")


@FAST
@given(
    event=st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(JSON, st.text().map(lambda s: "evt_" + s)),
            "type": JSON,
            "created": st.one_of(JSON, st.just(1 << 70), st.just(-(1 << 64))),
            "data": st.one_of(JSON, st.fixed_dictionaries({"object": JSON})),
            "livemode": JSON,
            "account": JSON,
        },
    )
)
def test_validly_signed_near_events_are_refused(target: Target, event: dict[str, Any]) -> None:
    assume(not is_event_shaped(event))
    body = json.dumps(event).encode()
    r = target.post(body, sign(body, WEBHOOK_SECRET))
    assert r.status_code == 400, r.text


DEPTH = 10_000


def test_deeply_nested_arrays_are_refused(target: Target) -> None:
    for body in (b"[" * DEPTH + b"]" * DEPTH, b"[" * 200_000):  # the second unterminated
        r = target.post(body, sign(body, WEBHOOK_SECRET))
        assert r.status_code == 400, (body[:40], r.text)


@pytest.mark.parametrize("where", ["top", "in data.object"])
def test_deeply_nested_objects_are_refused(target: Target, where: str) -> None:
    deep = b'{"a":' * DEPTH + b"1" + b"}" * DEPTH
    if where == "top":
        body = deep
    else:  # an event whose object holds a deep field
        event = json.dumps(a_valid_event(extra="DEEP")).encode()
        body = event.replace(b'"DEEP"', deep)
    r = target.post(body, sign(body, WEBHOOK_SECRET))
    assert r.status_code == 400, (body[:40], r.text)


def test_invalid_utf8_validly_signed(target: Target) -> None:
    base = json.dumps(a_valid_event(name="ok")).encode()
    for bad in (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"):
        body = base.replace(b'"ok"', b'"' + bad + b'"')
        r = target.post(body, sign(body, WEBHOOK_SECRET))
        assert r.status_code == 400 and r.json() == {"error": "body is not valid UTF-8"}


# -- raw HTTP: huge, lying and slow bodies -----------------------------------------------------


def raw_exchange(port: int, head: bytes, body_parts: Iterator[bytes], timeout: float = 20) -> bytes:
    """Send ``head`` and then the parts while reading; stop sending once an answer came
    or the server closed. Returns what the server answered (b"" if it only closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        answer = b""
        sock.setblocking(False)
        deadline = time.monotonic() + timeout
        for part in body_parts:
            try:
                answer += sock.recv(65536)
                if answer or time.monotonic() > deadline:
                    break
            except BlockingIOError:
                pass
            except ConnectionError:
                break
            view = memoryview(part)
            while view:
                try:
                    view = view[sock.send(view) :]
                except BlockingIOError:
                    time.sleep(0.001)
                    try:
                        answer += sock.recv(65536)
                    except BlockingIOError:
                        pass
                    if answer or time.monotonic() > deadline:
                        break
                except (BrokenPipeError, ConnectionError):
                    break
            if answer:
                break
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except (TimeoutError, ConnectionError):
            pass
        return answer


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer.split(b" ", 2)[1])


def head_for(port: int, signature: str, **headers: str) -> bytes:
    lines = [
        "POST /webhooks/stripe HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Stripe-Signature: {signature}",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def huge_event_body(size: int) -> bytes:
    return json.dumps(a_valid_event(description="x" * size)).encode()


def test_huge_bodies_are_413_while_streaming(target: Target) -> None:
    port = target.daemon.port
    body = huge_event_body(3 * MAX_BODY)
    sig = sign(body, WEBHOOK_SECRET)
    parts = [body[i : i + 16384] for i in range(0, len(body), 16384)]

    # Honest Content-Length: refused before the body is read.
    answer = raw_exchange(port, head_for(port, sig, Content_Length=str(len(body))), iter(parts))
    assert status_of(answer) == 413, answer[:200]

    # Chunked, no Content-Length: counted as it streams.
    chunked = (b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    answer = raw_exchange(port, head_for(port, sig, Transfer_Encoding="chunked"), chunked)
    assert status_of(answer) == 413, answer[:200]

    # A lying Content-Length below the limit: the server reads only that much, which
    # does not verify, and the rest is no request.
    lie = head_for(port, sig, Content_Length="1000")
    answer = raw_exchange(port, lie, iter(parts))
    assert status_of(answer) == 400, answer[:200]

    # A Content-Length above what is sent: the sender hangs up mid-body.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head_for(port, sig, Content_Length="5000") + body[:100])
    # And one that is no number at all.
    answer = raw_exchange(port, head_for(port, sig, Content_Length="12abc"), iter([b"{}"]))
    assert status_of(answer) == 400, answer[:200]

    ok = target.post(b"{}", sign(b"{}", WEBHOOK_SECRET))
    assert ok.status_code == 400  # the daemon still answers, and normally


def test_huge_signature_header(target: Target) -> None:
    port = target.daemon.port
    body = b"{}"
    for size in (8_000, 100_000, 1_000_000):
        header = f"t={int(time.time())}," + ",".join(["v1=" + "0" * 64] * (size // 68))
        answer = raw_exchange(port, head_for(port, header, Content_Length="2"), iter([body]))
        status = status_of(answer)
        # Hypercorn may refuse an oversized head itself (4xx) or just close.
        assert status is None or 400 <= status < 500, answer[:200]
    assert target.post(body, sign(body, WEBHOOK_SECRET)).status_code == 400


def test_slow_senders_do_not_block_other_requests(target: Target) -> None:
    port = target.daemon.port
    # Padded so the trickle outlasts the checks below however slow the machine
    # is (1 byte per 10 ms: ~40 s); once they are done the rest goes at once.
    body = json.dumps(a_valid_event()).encode().ljust(4000)
    forged = f"t={int(time.time())},v1={'0' * 64}"
    answers: list[bytes] = []
    hurry = threading.Event()

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head_for(port, forged, Content_Length=str(len(body))))
            for i in range(len(body)):
                if hurry.is_set():
                    sock.sendall(body[i:])
                    break
                sock.sendall(body[i : i + 1])
                time.sleep(0.01)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            answers.append(data)

    slow = [threading.Thread(target=trickle, daemon=True) for _ in range(16)]
    for t in slow:
        t.start()
    try:
        time.sleep(0.3)  # all of them mid-body
        latencies = []
        for _ in range(10):
            t0 = time.monotonic()
            r = target.post(b"[]", sign(b"[]", WEBHOOK_SECRET))
            latencies.append(time.monotonic() - t0)
            assert r.status_code == 400
            ready = httpx.get(f"{target.daemon.url}/readyz", timeout=5)
            assert ready.status_code == 200
        assert all(t.is_alive() for t in slow), "the slow senders finished too soon to matter"
        # Generous: a blocked server would take as long as the trickle (~40 s) or forever.
        assert max(latencies) < 5.0, latencies
    finally:
        hurry.set()
    for t in slow:
        t.join(60)
    assert [status_of(a) for a in answers] == [400] * len(slow)


# -- validly signed events with hostile content (stored, and must not wedge the worker) -------


@pytest.fixture
def own_daemon(dsn: str, emulator: EmulatorServer) -> Iterator[DaemonProcess]:
    d = DaemonProcess(dsn, emulator.base_url, STRIPE_SYNC_LOG_LEVEL="warning")
    try:
        yield d.start()
    finally:
        d.stop()


OBJECT_TYPES = st.sampled_from(
    ["customer.updated", "customer.subscription.updated", "invoice.paid", "charge.refunded",
     "refund.created", "payment_intent.succeeded", "price.deleted", "checkout.session.completed",
     "balance.available"]
)  # fmt: skip


@settings(
    max_examples=100,
    deadline=None,
    # One daemon for all examples: each example's events have ids of their own.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    events=st.lists(
        st.fixed_dictionaries(
            {
                "type": OBJECT_TYPES,
                "created": st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
                "object": st.dictionaries(
                    st.sampled_from(["id", "customer", "status", "items", "amount", "charge",
                                     "payment_intent", "invoice", "metadata", "deleted",
                                     "client_reference_id", "latest_charge", "refunds"]),
                    JSON,
                ),
            },
            optional={"livemode": JSON, "account": JSON},
        ),
        min_size=1,
        max_size=5,
    )
)  # fmt: skip
def test_valid_events_with_hostile_content_never_5xx_and_never_wedge(
    own_daemon: DaemonProcess, dsn: str, events: list[dict[str, Any]]
) -> None:
    accepted: set[str] = set()
    with httpx.Client(timeout=30) as client:
        for n, spec in enumerate(events):
            event_id = f"evt_h{time.monotonic_ns()}_{n}"
            evt = {"id": event_id, "type": spec["type"], "created": spec["created"],
                   "data": {"object": spec["object"]}}  # fmt: skip
            evt.update({k: spec[k] for k in ("livemode", "account") if k in spec})
            body = json.dumps(evt).encode()
            r = client.post(
                f"{own_daemon.url}/webhooks/stripe",
                content=body,
                headers={"stripe-signature": sign(body, WEBHOOK_SECRET)},
            )
            assert r.status_code in (200, 400), r.text
            if r.status_code == 200:
                accepted.add(event_id)
    with psycopg.connect(dsn, autocommit=True) as c:
        stored = {r[0] for r in c.execute("SELECT stripe_event_id FROM integration.webhook_events")}
        assert accepted <= stored
        deadline = time.monotonic() + 30
        while True:
            # Every event tried at least once, none stuck mid-way.
            busy = c.execute(
                "SELECT count(*) FROM integration.webhook_events "
                "WHERE status = 'processing' OR (status = 'pending' AND attempts = 0)"
            ).fetchone()
            if busy == (0,):
                break
            assert time.monotonic() < deadline, "the worker wedged"
            time.sleep(0.05)
    assert own_daemon.proc is not None and own_daemon.proc.poll() is None


# -- malformed rows written by SQL while the daemon runs -------------------------------------------


def test_malformed_outbox_payloads_fail_clearly_and_the_daemon_keeps_going(
    own_daemon: DaemonProcess, dsn: str, emulator: EmulatorServer
) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        # NUL cannot get in at all: PostgreSQL refuses it in text and in jsonb.
        for value, cast in (("a\x00b", "text"), ('{"name": "a\\u0000b"}', "jsonb")):
            with pytest.raises(psycopg.DataError):
                c.execute(f"SELECT %s::{cast}", [value])
        # Odd but legal text in billing rows: control characters, a long name, RTL.
        c.execute(
            "INSERT INTO billing.accounts (id, email, name) VALUES "
            "(1, 'ok@example.com', 'Ada'), "
            "(2, e'ctl\\x01\\x1b[31m@example.com', e'tab\\there\\u202eevil'), "
            "(3, 'long@example.com', repeat('x', 100000))"
        )
        bad = {
            '"a JSON string"': "payload: expected a JSON object, got str",
            "null": "payload: expected a JSON object, got null",
            "123": "payload: expected a JSON object, got int",
            "[]": "payload: expected a JSON object, got array",
            # Beyond bigint: refused before any lookup (jsonb keeps 1e400 as a big integer).
            '{"account_id": 1e400}': "payload.account_id: expected",
            '{"account_id": 123456789012345678901234567890}': "expected a positive 64-bit id",
            '{"account_id": 1.5}': "payload.account_id: expected int, got float",
            '{"account_id": null}': "payload.account_id: expected int, got null",
            '{"account_id": true}': "payload.account_id: expected int, got bool",
            '{"account_id": "1; DROP TABLE x"}': "payload.account_id: expected int, got str",
            '{"account_id": ' + "[" * 500 + "]" * 500 + "}": "account_id: expected int, got array",
            '{"account_id": 1, "x": "' + "y" * 500_000 + '"}': "",  # big, but valid
        }
        ids: dict[int, str] = {}
        for payload, mention in bad.items():
            row = c.execute(
                "INSERT INTO integration.outbox (action_type, payload) "
                "VALUES ('create_stripe_customer', %s) RETURNING id",
                [payload],
            ).fetchone()
            assert row is not None
            ids[row[0]] = mention
        for account in (2, 3):
            c.execute(
                "INSERT INTO integration.outbox (action_type, payload) "
                "VALUES ('create_stripe_customer', %s)",
                [json.dumps({"account_id": account})],
            )
        deadline = time.monotonic() + 60
        while True:
            rows = c.execute(
                "SELECT id, status, last_error, payload->>'account_id' FROM integration.outbox"
            ).fetchall()
            if all(r[1] in ("done", "failed") for r in rows):
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.05)
        by_id = {r[0]: r for r in rows}
        for row_id, mention in ids.items():
            _, status, error, _ = by_id[row_id]
            if mention:
                assert status == "failed", by_id[row_id]
                assert error and mention in error and len(error) < 1000, error
            else:
                assert status == "done", by_id[row_id]
        # Rows after the bad ones still went through; the odd text reached Stripe (or was
        # refused by it with a clear error), and the daemon is alive.
        others = [r for r in rows if r[0] not in ids]
        assert all(r[1] == "done" or (r[1] == "failed" and r[2]) for r in others), others
        synced = c.execute(
            "SELECT count(*) FROM stripe.customer_mappings WHERE sync_status = 'synced'"
        ).fetchone()
        assert synced is not None and synced[0] >= 1
        assert c.execute("SELECT count(*) FROM billing.accounts").fetchone() == (3,)
    assert own_daemon.proc is not None and own_daemon.proc.poll() is None
