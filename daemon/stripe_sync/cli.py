"""The ``stripe-sync`` command. Every setting is an environment variable
(see ``stripe-sync run --help``); flags override them for one invocation."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import psycopg

from . import __version__, logs
from .config import Settings, load_settings, variables
from .errors import (
    EX_FAILURE,
    CommandStopped,
    PermanentError,
    StripeSyncError,
    TransientError,
)

log = logging.getLogger("stripe_sync")

EX_STOPPED = 3  # reconcile: Stripe or the database stopped it (1 means drift)

# flag → environment variable, for the flags `run` accepts; their meaning and
# default come from Settings, like the environment table of `run --help`.
_RUN_FLAGS: dict[str, str] = {
    "--database-url": "DATABASE_URL",
    "--bind": "STRIPE_SYNC_BIND",
    "--api-base": "STRIPE_API_BASE",
    "--concurrency": "STRIPE_SYNC_CONCURRENCY",
    "--rate-limit": "STRIPE_SYNC_RATE_LIMIT",
    "--sweep-interval": "STRIPE_SYNC_SWEEP_INTERVAL",
    "--log-format": "STRIPE_SYNC_LOG_FORMAT",
    "--log-level": "STRIPE_SYNC_LOG_LEVEL",
}
_VARIABLES = {v.name: v for v in variables()}


def _environment_help() -> str:
    width = max(len(name) for name in _VARIABLES) + 2
    rows = "".join(f"  {v.name:<{width}}{v.meaning} ({v.note})\n" for v in _VARIABLES.values())
    return (
        f"environment:\n{rows}\n"
        "The three secrets may instead come from files: NAME_FILE (e.g. STRIPE_API_KEY_FILE) or\n"
        "systemd credentials ($CREDENTIALS_DIRECTORY/database_url, stripe_api_key, "
        "stripe_webhook_secret).\n"
    )


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        env: getattr(args, flag.lstrip("-").replace("-", "_"), None)
        for flag, env in _RUN_FLAGS.items()
    }
    return load_settings(**overrides)


def cmd_migrate(args: argparse.Namespace) -> int:
    from .migrate import migrate

    settings = _settings(args).require("DATABASE_URL")
    assert settings.database_url is not None
    applied = migrate(settings.database_url)
    print(
        f"applied {len(applied)} migration(s): {', '.join(applied)}"
        if applied
        else "schema is up to date"
    )
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    settings = _settings(args).require("DATABASE_URL")
    assert settings.database_url is not None
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT integration.seed_outbox()").fetchone()
    print(f"enqueued {row[0] if row else 0} outbox row(s) for MC rows without a mapping")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Daemon

    settings = _settings(args)
    logs.setup(settings.log_format, settings.log_level)
    logs.register_secrets(
        s.reveal() for s in (settings.stripe_api_key, *settings.webhook_secrets) if s is not None
    )
    daemon = Daemon(settings)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, daemon.stop)
            await daemon.run()
            tg.cancel_scope.cancel()

    anyio.run(main)
    return 0


async def _stop_on_signal(stop: Callable[[], None]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            stop()


def _dsn(args: argparse.Namespace) -> str:
    settings = _settings(args).require("DATABASE_URL")
    assert settings.database_url is not None
    return settings.database_url


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .status import collect, render, to_json

    status = collect(_dsn(args), failures=args.failures)
    if args.json:
        sys.stdout.buffer.write(to_json(status) + b"\n")
    else:
        render(status, Console())
    return 0 if status.healthy else 1


def cmd_retry(args: argparse.Namespace) -> int:
    from .db import queries

    if not args.ids and not args.all_failed:
        print("stripe-sync retry: give row ids or --all-failed", file=sys.stderr)
        return 2
    query = queries("ops")["retry_outbox" if args.table == "outbox" else "retry_webhooks"]
    with psycopg.connect(_dsn(args), autocommit=True) as conn:
        rows = conn.execute(query, {"ids": args.ids, "all_failed": args.all_failed}).fetchall()
    done = sorted(r[0] for r in rows)
    print(f"{len(done)} {args.table} row(s) due again: {', '.join(map(str, done)) or '-'}")
    missing = sorted(set(args.ids) - set(done))
    if missing:
        print(
            f"not retried (no such row, or not failed): {', '.join(map(str, missing))}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .db import queries

    with psycopg.connect(_dsn(args), autocommit=True) as conn:
        rows = conn.execute(queries("ops")["replay"], {"ids": args.event_ids}).fetchall()
    done = {r[0] for r in rows}
    for event_id in args.event_ids:
        print(
            f"{event_id}: queued for replay"
            if event_id in done
            else f"{event_id}: not stored (or being processed right now)"
        )
    return 0 if len(done) == len(set(args.event_ids)) else 1


def _since(text: str) -> int:
    from .catchup import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@contextmanager
def _stops(command: str, exit_code: int) -> Iterator[None]:
    """Stripe or the database failing midway ends ``command`` with ``exit_code``."""
    try:
        yield
    except (PermanentError, TransientError, psycopg.Error) as exc:
        raise CommandStopped(command, exc, exit_code) from exc


def cmd_catch_up(args: argparse.Namespace) -> int:
    from .catchup import default_since, run

    settings = _settings(args).require("DATABASE_URL", "STRIPE_API_KEY")
    logs.register_secrets([settings.stripe_api_key.reveal()] if settings.stripe_api_key else [])
    since = default_since() if args.since is None else args.since
    with _stops("catch-up", EX_FAILURE):
        result = anyio.run(
            lambda: run(settings, since=since, all_events=args.all, dry_run=args.dry_run)
        )
    print(result.to_json() if args.json else result.summary())
    for error in result.errors or []:
        print(f"stripe-sync catch-up: not stored: {error}", file=sys.stderr)
    return 1 if result.refused else 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from .reconcile import progress_run

    settings = _settings(args).require("DATABASE_URL", "STRIPE_API_KEY")
    logs.register_secrets([settings.stripe_api_key.reveal()] if settings.stripe_api_key else [])
    with _stops("reconcile", EX_STOPPED):
        report = progress_run(settings, fix=args.fix, json_output=args.json)
    return 1 if report.drift else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stripe-sync",
        description="Keep a PostgreSQL billing database and Stripe in sync, both ways.",
    )
    parser.add_argument("--version", action="version", version=f"stripe-sync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        func: Callable[[argparse.Namespace], int],
        help: str,
        flags: Sequence[str] = (),
        **kwargs: Any,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, **kwargs)
        for flag in flags:
            v = _VARIABLES[_RUN_FLAGS[flag]]
            p.add_argument(flag, metavar=v.name, help=f"{v.meaning} ({v.note}) [env {v.name}]")
        p.set_defaults(func=func)
        return p

    command(
        "migrate",
        cmd_migrate,
        "apply schema/*.sql to the database (safe to rerun)",
        ["--database-url"],
    )
    command(
        "seed",
        cmd_seed,
        "enqueue outbox creates for MC accounts/products/prices without a mapping",
        ["--database-url"],
    )
    command(
        "run",
        cmd_run,
        "run the daemon: outbox, webhooks, HTTP",
        list(_RUN_FLAGS),
        epilog=_environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status = command(
        "status",
        cmd_status,
        "queue counts, failures, lag and daemons, from the database alone; "
        "exit 1 when anything is failed or stuck",
        ["--database-url"],
    )
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    status.add_argument(
        "--failures", type=int, default=10, metavar="N", help="recent failures to show (default 10)"
    )
    retry = command(
        "retry",
        cmd_retry,
        "make failed rows due again with a fresh retry budget",
        ["--database-url"],
    )
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="row ids (the id column)")
    retry.add_argument("--all-failed", action="store_true", help="every failed row of the table")
    retry.add_argument(
        "--table",
        choices=["outbox", "webhooks"],
        default="outbox",
        help="integration.outbox (default) or integration.webhook_events",
    )
    replay = command("replay", cmd_replay, "re-apply stored webhook events", ["--database-url"])
    replay.add_argument("event_ids", nargs="+", metavar="evt_ID")
    stripe_flags = ["--database-url", "--api-base", "--rate-limit"]
    catch_up = command(
        "catch-up",
        cmd_catch_up,
        "store the webhook events Stripe could not deliver (listed from GET /v1/events); "
        "the running daemon applies them",
        stripe_flags,
    )
    catch_up.add_argument(
        "--since",
        type=_since,
        metavar="WHEN",
        help="a duration (30m, 6h, 3d, 2w) ago or an ISO date/time (UTC if no offset); "
        "default 30d, all Stripe keeps",
    )
    catch_up.add_argument(
        "--all",
        action="store_true",
        help="every event, not only failed deliveries (after an outage in which a proxy "
        "answered Stripe with 2xx)",
    )
    catch_up.add_argument("--dry-run", action="store_true", help="list and count, store nothing")
    catch_up.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    reconcile = command(
        "reconcile",
        cmd_reconcile,
        "compare every customer/product/price mapping with its Stripe object and report "
        "drift (missing, deleted, changed, metadata); exit 1 when there is drift",
        stripe_flags,
    )
    reconcile.add_argument(
        "--fix",
        action="store_true",
        help="repair: enqueue update_stripe_* for changed/metadata/archived, "
        "mark deleted mappings, re-create missing objects (see docs/stripe.md)",
    )
    reconcile.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    # parsed by stripe_sync.emulator.cli; listed here for the overview
    sub.add_parser("emulator", help="run the Stripe emulator (see `stripe-sync emulator --help`)")
    demo = command(
        "demo", cmd_demo, "play the whole loop on a throwaway PostgreSQL and the emulator"
    )
    demo.add_argument(
        "--keep", action="store_true", help="leave everything running and print the URLs and DSN"
    )
    demo.add_argument(
        "--database-url",
        metavar="URL",
        help="use this database instead of a throwaway one: it must be empty (or an earlier "
        "demo's); DATABASE_URL is never used by the demo",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        # The emulator parses its own options (argparse's REMAINDER drops --help).
        from .emulator.cli import main as emulator_main

        return emulator_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as raised:
        cause = _unwrap(raised)
        if isinstance(cause, psycopg.OperationalError | OSError):
            # The database or the network is not there: as much the
            # operator's to fix as our own errors, and as one line.
            cause = StripeSyncError(str(cause))
        if not isinstance(cause, StripeSyncError):
            raise
        print(logs.scrub(cause.line()), file=sys.stderr)
        return cause.exit_code


def _unwrap(exc: BaseException) -> BaseException:
    """The one failure inside task-group ExceptionGroups, for a one-line message."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


if __name__ == "__main__":
    sys.exit(main())
