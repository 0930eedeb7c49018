"""`stripe-sync emulator`: run the Stripe emulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from .emulator import Emulator, EmulatorConfig
from .server import EmulatorServer

_CONTROL_HELP = """\
control API (JSON, under /_emulator/; docs/stripe.md section 2.2 has the details):
  GET requests | GET request_log?since=T | POST reset | POST clock {"advance": SECONDS}
  GET objects/{kind} | POST/GET webhook_endpoints | POST/GET/DELETE faults
  POST history {"customers": N, "months": M, "seed": S, "mc_source": SRC}: an empty
    emulator gets an account's past (history.py), no events

faults: POST /_emulator/faults {"kind": K, "endpoint": "POST /v1/customers", "count": N}
  (or "rate": P instead of "count"); K is one of
  rate_limit             429, nothing saved under the idempotency key
  500, 503               from in front of the API: nothing ran, nothing saved
  500 + "stored": true   saved under the key and replayed for 24 h (Idempotent-Replayed);
                         "created": true: the object and its events exist all the same
  latency "seconds": S   the request waits S s first; with "executing": true it waits
                         after it began executing: a request with the same idempotency
                         key meanwhile gets 409 idempotency_key_in_use (nothing saved)
  drop                   connection error, nothing ran
  applied_response_lost  it ran and was saved, then the connection drops
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stripe-sync emulator",
        description="Run a stateful Stripe API emulator (v1 REST dialect) for tests and demos.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_CONTROL_HELP,
    )
    parser.add_argument(
        "--bind", default="127.0.0.1:12111", help="HOST:PORT to listen on (port 0: any free port)"
    )
    parser.add_argument(
        "--webhook-url",
        action="append",
        default=[],
        metavar="URL",
        help="deliver every event to this URL (repeatable; a shortcut for an endpoint "
        "that POST /v1/webhook_endpoints would make, not listed by the API)",
    )
    parser.add_argument(
        "--webhook-secret",
        action="append",
        default=[],
        metavar="WHSEC",
        help="signing secret (repeatable; several sign with each, as during rotation)",
    )
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        metavar="N",
        help="enforce N requests per second (Stripe test mode: 25); off by default",
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, metavar="SECONDS", help="added to every API request"
    )
    parser.add_argument(
        "--search-lag",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="new objects show in search results only after this long (Stripe: under a minute)",
    )
    parser.add_argument(
        "--request-log",
        type=int,
        default=0,
        metavar="N",
        help="keep arrival times of the last N requests for GET /_emulator/request_log "
        "(benchmarks); off by default",
    )
    parser.add_argument(
        "--dunning-retry-days",
        type=_retry_days,
        default=(3, 5, 7),
        metavar="D,D,...",
        help="after a renewal payment fails, retry it this many days after the previous "
        "attempt, once per number (default 3,5,7: about two weeks, like Stripe's)",
    )
    parser.add_argument(
        "--dunning-end",
        choices=("canceled", "unpaid", "past_due"),
        default="canceled",
        help="the subscription's status once the retries are exhausted (default canceled)",
    )
    parser.add_argument("--account-id", default=None, help="id returned by GET /v1/account")
    parser.add_argument("--api-version", default=None, help="api_version stamped on events")
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="accept only these keys (default: any sk_test_/rk_test_ key)",
    )
    parser.add_argument(
        "--allow-live", action="store_true", help="also accept sk_live_ keys (livemode objects)"
    )
    return parser


def _retry_days(text: str) -> tuple[int, ...]:
    try:
        days = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        days = (0,)
    if any(d <= 0 for d in days):
        raise argparse.ArgumentTypeError(f"want positive whole days separated by commas: {text!r}")
    return days


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host, _, port_text = args.bind.rpartition(":")
    if not host or not port_text.isdigit():
        print(f"--bind must be HOST:PORT, got {args.bind!r}")
        return 2
    config = EmulatorConfig(
        rate_limit=args.rate_limit,
        latency=args.latency,
        search_lag=max(args.search_lag, 0.0),
        allow_live=args.allow_live,
        request_log=max(args.request_log, 0),
        dunning_retry_days=args.dunning_retry_days,
        dunning_end=args.dunning_end,
    )
    if args.account_id:
        config.account_id = args.account_id
    if args.api_version:
        config.api_version = args.api_version
    if args.api_key:
        config.allowed_keys = set(args.api_key)
    emulator = Emulator(config)
    secrets = args.webhook_secret or ["whsec_emulator"]
    for url in args.webhook_url:
        emulator.add_webhook_endpoint(url, secrets)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = EmulatorServer(emulator, host=host, port=int(port_text))
    try:
        server.start()
        hooks = f", webhooks -> {', '.join(args.webhook_url)}" if args.webhook_url else ""
        print(f"stripe emulator listening on {server.base_url}{hooks}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
