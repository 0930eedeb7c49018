"""The emulator's own HTTP/1.1 server (emulator/http11.py), spoken to over a raw socket:
the parts of HTTP that curl, the SDK and other clients may use."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator

import pytest

from stripe_emulator import EmulatorServer

AUTH = b"Authorization: Basic " + base64.b64encode(b"sk_test_raw:") + b"\r\n"


@pytest.fixture
def conn(emulator: EmulatorServer) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as sock:
        yield sock


def _response(sock: socket.socket, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = 0 if head_only else int(headers.get("content-length", "0"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(status_line.split(" ")[1]), headers, body


def _closed(sock: socket.socket) -> bool:
    return sock.recv(1) == b""


def test_keep_alive_chunked_body_and_head(conn: socket.socket) -> None:
    conn.sendall(
        b"POST /v1/customers HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
        b"6\r\nemail=\r\n8;ext=1\r\nc%40x.io\r\n0\r\n\r\n"
    )
    status, _, body = _response(conn)
    assert status == 200 and b'"email": "c@x.io"' in body
    conn.sendall(b"HEAD /v1/customers HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n")
    status, headers, rest = _response(conn, head_only=True)
    assert status == 200 and int(headers["content-length"]) > 0
    conn.settimeout(0.3)
    with pytest.raises(TimeoutError):
        rest += conn.recv(65536)
    assert rest == b"", "HEAD must not send a body"
    conn.settimeout(5)
    conn.sendall(b"GET /v1/customers?limit=1 HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n")
    status, _, body = _response(conn)
    assert status == 200 and b'"c@x.io"' in body


def test_expect_100_continue(conn: socket.socket) -> None:
    # curl sends this for larger bodies and waits for the interim response.
    body = b"email=big%40x.io&description=" + b"x" * 2000
    conn.sendall(
        b"POST /v1/customers HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Expect: 100-continue\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    assert conn.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.sendall(body)
    status, _, answer = _response(conn)
    assert status == 200 and b'"big@x.io"' in answer


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /v1/customers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n",
        b"GET /v1/customers HTTP/1.0\r\nHost: x\r\n",
    ],
)
def test_connection_close(conn: socket.socket, request_head: bytes) -> None:
    conn.sendall(request_head + AUTH + b"\r\n")
    status, headers, _ = _response(conn)
    assert status == 200 and headers["connection"] == "close"
    assert _closed(conn)


@pytest.mark.parametrize(
    "garbage",
    [
        b"NONSENSE\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded: header\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"POST /v1/customers HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    ],
)
def test_bad_requests_get_400_and_close(conn: socket.socket, garbage: bytes) -> None:
    conn.sendall(garbage)
    status, _, _ = _response(conn)
    assert status == 400
    assert _closed(conn)
