"""The ``stripe-sync`` command. Every setting is an environment variable
(see ``stripe-sync run --help``); flags override them for one invocation.

Each operator command parses, runs its module's async collect and shows the
:class:`~.outcome.Outcome` (text, or ``--json``). :func:`main` maps every
:class:`~.errors.StripeSyncError` to its one line and exit code."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import anyio
import msgspec
import psycopg

from . import STRIPE_API_VERSION, __version__
from .config import CREDENTIALS, Settings, load_settings, variables
from .errors import EX_FAILURE, CommandStopped, PermanentError, StripeSyncError, TransientError
from .ops.outcome import show
from .runtime import logs, processes

log = logging.getLogger("stripe_sync")

EX_STOPPED = 3  # reconcile: Stripe or the database stopped it (1 means drift)

# flag → environment variable, for the flags `run` accepts; their meaning and
# default come from Settings, like the environment table of `run --help`.
_RUN_FLAGS: dict[str, str] = {
    "--database-url": "DATABASE_URL",
    "--bind": "STRIPE_SYNC_BIND",
    "--api-base": "STRIPE_API_BASE",
    "--concurrency": "STRIPE_SYNC_CONCURRENCY",
    "--processes": "STRIPE_SYNC_PROCESSES",
    "--rate-limit": "STRIPE_SYNC_RATE_LIMIT",
    "--sweep-interval": "STRIPE_SYNC_SWEEP_INTERVAL",
    "--retention": "STRIPE_SYNC_RETENTION",
    "--log-format": "STRIPE_SYNC_LOG_FORMAT",
    "--log-level": "STRIPE_SYNC_LOG_LEVEL",
}
_VARIABLES = {v.name: v for v in variables()}


def _environment_help(command: str) -> str:
    """The settings ``command`` reads, from the settings table (config.Settings)."""
    read = variables(command)
    if not read:
        return ""
    width = max(len(name) for name in _VARIABLES) + 2
    rows = "".join(f"  {v.name:<{width}}{v.meaning} ({v.note})\n" for v in read)
    secrets = [v.name for v in read if v.name in CREDENTIALS]
    files = (
        textwrap.fill(
            f"Secrets from files instead: {', '.join(f'{n}_FILE' for n in secrets)}, or the "
            f"systemd credentials {', '.join(CREDENTIALS[n] for n in secrets)} "
            "(in $CREDENTIALS_DIRECTORY).",
            79,
        )
        + "\n"
        if secrets
        else ""
    )
    return f"environment (the settings this command reads):\n{rows}\n{files}"


def _flags(args: argparse.Namespace) -> dict[str, str]:
    """The settings given as flags (``--bind`` …), by flag."""
    given = {flag: getattr(args, flag.lstrip("-").replace("-", "_"), None) for flag in _RUN_FLAGS}
    return {flag: value for flag, value in given.items() if value is not None}


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {_RUN_FLAGS[flag]: v for flag, v in _flags(args).items()}
    return load_settings(**overrides)


def _dsn(args: argparse.Namespace) -> str:
    settings = _settings(args).require("DATABASE_URL")
    assert settings.database_url is not None
    return settings.database_url


def _stripe_settings(args: argparse.Namespace) -> Settings:
    """The settings of a command that calls Stripe; its key is scrubbed from every line."""
    settings = _settings(args).require("DATABASE_URL", "STRIPE_API_KEY")
    logs.register_secrets([settings.stripe_api_key.reveal()] if settings.stripe_api_key else [])
    return settings


# The commands below all have one shape: settings → collect (async, in
# daemon modules) → show the Outcome (text or --json) → its exit code.


def cmd_migrate(args: argparse.Namespace) -> int:
    from .migrate import Applied, migrate

    return show(Applied(migrate(_dsn(args))), json=args.json)


def cmd_seed(args: argparse.Namespace) -> int:
    from .ops.link import seed

    settings = _settings(args).require("DATABASE_URL")
    logs.register_secrets([settings.stripe_api_key.reveal()] if settings.stripe_api_key else [])
    with _stops("seed", EX_FAILURE):
        result = anyio.run(seed, settings)
    return show(result, json=args.json)


def cmd_status(args: argparse.Namespace) -> int:
    from .ops.status import collect

    settings = _settings(args).require("DATABASE_URL")
    assert settings.database_url is not None
    endpoint = None
    if settings.stripe_api_key:  # then status also asks Stripe how the webhook endpoint is
        from .ops.endpoint import status_check

        endpoint = partial(status_check, _stripe_settings(args))
    collect_status = partial(
        collect,
        settings.database_url,
        failures=args.failures,
        wait_alarm=settings.wait_alarm_seconds,
        endpoint=endpoint,
    )
    return show(anyio.run(collect_status), json=args.json)


def cmd_retry(args: argparse.Namespace) -> int:
    from .ops.rows import retry, rows

    if not args.ids and not args.all_failed:
        print("stripe-sync retry: give row ids or --all-failed", file=sys.stderr)
        return 2
    target = rows(args.ids, args.table)
    collect = partial(retry, _dsn(args), target, all_failed=args.all_failed)
    return show(anyio.run(collect), json=args.json)


def cmd_dismiss(args: argparse.Namespace) -> int:
    from .ops.rows import dismiss, rows

    collect = partial(dismiss, _dsn(args), rows(args.ids, args.table), args.reason)
    return show(anyio.run(collect), json=args.json)


def cmd_replay(args: argparse.Namespace) -> int:
    from .ops.rows import replay

    return show(anyio.run(replay, _dsn(args), args.event_ids), json=args.json)


def cmd_prune(args: argparse.Namespace) -> int:
    from .ops.retention import prune

    settings = _settings(args).require("DATABASE_URL")
    assert settings.database_url is not None
    collect = partial(
        prune,
        settings.database_url,
        settings.retention,
        settings.retention_seconds,
        dry_run=args.dry_run,
    )
    return show(anyio.run(collect), json=args.json)


def cmd_catch_up(args: argparse.Namespace) -> int:
    from .ops.catchup import default_since, run

    settings = _stripe_settings(args)
    since = default_since() if args.since is None else args.since
    collect = partial(run, settings, since=since, all_events=args.all, dry_run=args.dry_run)
    with _stops("catch-up", EX_FAILURE):
        result = anyio.run(collect)
    return show(result, json=args.json)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from .ops.progress import reconcile_progress
    from .ops.reconcile import run

    settings = _stripe_settings(args)
    with _stops("reconcile", EX_STOPPED), reconcile_progress() as watch:
        collect = partial(
            run, settings, fix=args.fix, on_start=watch.on_start, on_checked=watch.on_checked
        )
        report = anyio.run(collect)
    return show(report, json=args.json)


def cmd_backfill(args: argparse.Namespace) -> int:
    from .ops.backfill import run
    from .ops.progress import backfill_progress

    settings = _stripe_settings(args)
    # SIGTERM stops it as Ctrl-C does: every committed page stays, the rerun resumes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with _stops("backfill", EX_FAILURE), backfill_progress() as on_page:
            collect = partial(
                run,
                settings,
                customer=args.customer,
                since=args.since,
                dry_run=args.dry_run,
                on_page=on_page,
            )
            result = anyio.run(collect)
    except KeyboardInterrupt:
        print("stripe-sync backfill: stopped; run it again to resume", file=sys.stderr)
        return 130
    return show(result, json=args.json)


def cmd_endpoint(args: argparse.Namespace) -> int:
    from .ops.endpoint import check_url, check_version, run

    action, secret_file = args.endpoint_command, args.secret_file
    version = None if args.api_version is None else check_version(args.api_version)
    if action == "ensure":
        url = check_url(args.url)
        collect = partial(run, _stripe_settings(args), "ensure", url=url)
        collect = partial(collect, secret_file=secret_file, **_given(api_version=version))
    elif args.finish:
        collect = partial(
            run, _stripe_settings(args), "finish", command=action, secret_file=secret_file
        )
        collect = partial(collect, force=args.force)
    else:
        collect = partial(run, _stripe_settings(args), "start", command=action)
        collect = partial(collect, api_version=version, secret_file=secret_file)
    with _stops(f"endpoint {action}", EX_FAILURE):
        result = anyio.run(collect)
    return show(result, json=args.json)


def cmd_link(args: argparse.Namespace) -> int:
    from .ops.link import parse_pairs, run

    settings = _stripe_settings(args)
    pairs = parse_pairs(args.pairs, args.product or [], args.price or [])
    collect = partial(run, settings, pairs, by_email=args.by_email, dry_run=args.dry_run)
    with _stops("link", EX_FAILURE):
        result = anyio.run(collect)
    return show(result, json=args.json)


def _given(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def without_unused_http_clients() -> None:
    """Keep the SDK's sync HTTP libraries out of the daemon's memory.

    The stripe SDK imports requests and httpx as it loads, to pick default
    clients for code that names none; the daemon names AIOHTTPClient
    (stripe_api.py), so the two are never used, yet they cost 6.6 MB of the
    64 MB idle target (issue 11, M). A None in sys.modules makes their import
    fail, and the SDK then falls back to clients it never builds either.
    """
    for name in ("requests", "httpx"):
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]


def cmd_run(args: argparse.Namespace) -> int:
    without_unused_http_clients()
    from .runtime.daemon import Daemon
    from .runtime.http import bind_socket

    settings = _settings(args)
    logs.setup(settings.log_format, settings.log_level)
    logs.register_secrets(
        s.reveal() for s in (settings.stripe_api_key, *settings.webhook_secrets) if s is not None
    )
    sock = others = None
    if args.socket_fd is not None:  # started by the first process (processes.py)
        sock = processes.inherited_socket(args.socket_fd, args.parent_pid)
    elif settings.processes > 1:
        sock = bind_socket(settings.bind)
        env = dict(os.environ)
        env.update((_RUN_FLAGS[f], v) for f, v in _flags(args).items())
        others = processes.Processes(settings, sock, env)
        settings = msgspec.structs.replace(settings, rate_limit=processes.rate_share(settings))
    daemon = Daemon(settings, sock)

    def stop() -> None:
        if others is not None:
            others.signal()
        daemon.stop()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, stop)
            if others is not None:
                others.start()
                tg.start_soon(others.watch, stop)
            try:
                await daemon.run()
            finally:
                if others is not None:
                    with anyio.CancelScope(shield=True):
                        await others.wait()
            tg.cancel_scope.cancel()

    # uvloop (a dependency on Linux and macOS) runs the same asyncio code with a
    # faster loop: docs/benchmarks.md, issue 27; plain asyncio where it is absent.
    anyio.run(main, backend_options={"use_uvloop": True})
    if others is not None and others.failed:
        print(f"stripe-sync: {others.failed}", file=sys.stderr)
        return 1
    return 0


async def _stop_on_signal(stop: Callable[[], None]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            stop()


def _since(text: str) -> int:
    from .ops.catchup import parse_since

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


def cmd_demo(args: argparse.Namespace) -> int:
    from stripe_sync_demo.demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stripe-sync",
        description="Keep a PostgreSQL billing database and Stripe in sync, both ways.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"stripe-sync {__version__} (Stripe API {STRIPE_API_VERSION})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        func: Callable[[argparse.Namespace], int],
        help: str,
        flags: Sequence[str] = (),
        *,
        outcome: bool = True,
        under: Any = sub,
        reads: str | None = None,
        **kwargs: Any,
    ) -> argparse.ArgumentParser:
        """A subcommand (of ``under``); with ``outcome``, one whose result ``show`` prints
        (so: --json). Its help ends with the settings it reads (those of ``reads``)."""
        p: argparse.ArgumentParser = under.add_parser(
            name,
            help=help,
            description=help,
            epilog=_environment_help(reads or name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )
        for flag in flags:
            v = _VARIABLES[_RUN_FLAGS[flag]]
            p.add_argument(flag, metavar=v.name, help=f"{v.meaning} ({v.note}) [env {v.name}]")
        if outcome:
            p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
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
        "enqueue outbox creates for MC accounts/products/prices without a mapping; with "
        "STRIPE_API_KEY set it first links their twins in Stripe (this database's metadata, "
        "or a unique email) instead of creating duplicates",
        ["--database-url", "--api-base"],
    )
    run = command(
        "run",
        cmd_run,
        "run the daemon: outbox, webhooks, HTTP",
        list(_RUN_FLAGS),
        outcome=False,
    )
    # How the first process of STRIPE_SYNC_PROCESSES starts the others; not for people.
    run.add_argument("--socket-fd", type=int, help=argparse.SUPPRESS)
    run.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    status = command(
        "status",
        cmd_status,
        "queue counts, failures, lag and daemons, from the database alone; "
        "exit 1 when anything is failed or stuck",
        ["--database-url"],
    )
    status.add_argument(
        "--failures", type=int, default=10, metavar="N", help="recent failures to show (default 10)"
    )
    retry = command(
        "retry",
        cmd_retry,
        "make failed rows due again with a fresh retry budget",
        ["--database-url"],
    )
    ids_help = "ids as `status` shows them: outbox row ids, webhook events' evt_ ids (or row ids)"
    table_help = (
        "the table of numeric ids: integration.outbox (default) or "
        "integration.webhook_events (implied by evt_ ids)"
    )
    retry.add_argument("ids", nargs="*", metavar="ID", help=ids_help)
    retry.add_argument("--all-failed", action="store_true", help="every failed row of the table")
    retry.add_argument("--table", choices=["outbox", "webhooks"], help=table_help)
    dismiss = command(
        "dismiss",
        cmd_dismiss,
        "set failed rows aside for good (status dismissed, with the reason; "
        "`status` stops counting them; `retry` brings them back)",
        ["--database-url"],
    )
    dismiss.add_argument("ids", nargs="+", metavar="ID", help=ids_help)
    dismiss.add_argument("--reason", required=True, help="why, kept in the row's note")
    dismiss.add_argument("--table", choices=["outbox", "webhooks"], help=table_help)
    replay = command("replay", cmd_replay, "re-apply stored webhook events", ["--database-url"])
    replay.add_argument("event_ids", nargs="+", metavar="evt_ID")
    prune = command(
        "prune",
        cmd_prune,
        "delete finished rows older than STRIPE_SYNC_RETENTION now, as the daemon does "
        "every minute (outbox done/dismissed; webhook events processed/ignored/dismissed)",
        ["--database-url", "--retention"],
    )
    prune.add_argument("--dry-run", action="store_true", help="count them, delete nothing")
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
    link = command(
        "link",
        cmd_link,
        "link existing Stripe objects to MC rows: customers (ACCOUNT_ID cus_… pairs, or "
        "--by-email), products and prices; pushes MC's metadata to each once (outbox)",
        stripe_flags,
    )
    link.add_argument(
        "pairs", nargs="*", metavar="ACCOUNT_ID cus_ID", help="billing.accounts id, Stripe customer"
    )
    link.add_argument(
        "--product",
        nargs=2,
        action="append",
        metavar=("PRODUCT_ID", "prod_ID"),
        help="billing.products id and a Stripe product (repeatable)",
    )
    link.add_argument(
        "--price",
        nargs=2,
        action="append",
        metavar=("PRICE_ID", "price_ID"),
        help="billing.prices id and a Stripe price (repeatable)",
    )
    link.add_argument(
        "--by-email",
        action="store_true",
        help="link each unlinked account to the one Stripe customer with its email; "
        "ambiguous and unmatched ones are listed, not linked",
    )
    link.add_argument(
        "--dry-run", action="store_true", help="say what would be linked, write nothing"
    )
    backfill = command(
        "backfill",
        cmd_backfill,
        "import Stripe's current subscriptions, invoices, payments, refunds, disputes, "
        "payment methods and credit notes of linked customers, as events would apply them "
        "(idempotent, resumable, safe beside the daemon)",
        stripe_flags,
    )
    backfill.add_argument(
        "--since",
        type=_since,
        metavar="WHEN",
        help="only objects created since: a duration (30m, 6h, 3d, 2w) ago or an ISO date/time",
    )
    backfill.add_argument(
        "--customer", metavar="cus_ID", help="only this linked customer's objects"
    )
    backfill.add_argument("--dry-run", action="store_true", help="list and compare, change nothing")
    # -- endpoint: the webhook endpoint, managed (ops/endpoint.py, docs/stripe.md §1) --
    endpoint = sub.add_parser(
        "endpoint",
        help="create and keep the Stripe webhook endpoint: exactly the events the daemon "
        "applies, a pinned API version; rotate its secret, upgrade its version",
        description="The webhook endpoint tagged as this database's (metadata mc_source).",
        epilog=_environment_help("endpoint"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = endpoint.add_subparsers(dest="endpoint_command", required=True, metavar="ACTION")
    secret_help = (
        "write the signing secret(s) here, mode 0600 (for STRIPE_WEBHOOK_SECRET_FILE or "
        "systemd's LoadCredential=); without it the secret is printed once"
    )
    ensure = command(
        "ensure",
        cmd_endpoint,
        "create the endpoint unless this database has one; else fix a drifted URL, event "
        'list or disabled status, or say "up to date"',
        stripe_flags,
        under=actions,
        reads="endpoint",
    )
    ensure.add_argument(
        "--url", required=True, help="where Stripe posts: https://host/webhooks/stripe"
    )
    side_by_side = {
        "rotate": "a second endpoint with a fresh secret beside the first; --finish deletes "
        "the old one after a graceful restart",
        "upgrade": "a second endpoint at a new API version beside the first; --finish "
        "deletes the old one after a graceful restart",
    }
    for name, help_text in {"ensure": "", **side_by_side}.items():
        p = (
            ensure
            if name == "ensure"
            else command(
                name, cmd_endpoint, help_text, stripe_flags, under=actions, reads="endpoint"
            )
        )
        p.add_argument("--secret-file", metavar="PATH", help=secret_help)
        if name != "rotate":
            p.add_argument(
                "--api-version",
                metavar="V",
                help=f"the endpoint's API version (default {STRIPE_API_VERSION}, the pinned one)",
            )
        else:
            p.set_defaults(api_version=None)
        if name != "ensure":
            p.add_argument(
                "--finish", action="store_true", help="delete the old endpoint, keep the new"
            )
            p.add_argument(
                "--force",
                action="store_true",
                help="with --finish: even if a running daemon started before the new endpoint",
            )
    # parsed by stripe_emulator.cli; listed here for the overview
    sub.add_parser("emulator", help="run the Stripe emulator (see `stripe-sync emulator --help`)")
    demo = command(
        "demo",
        cmd_demo,
        "play the whole loop on a throwaway PostgreSQL and the emulator",
        outcome=False,
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
        from stripe_emulator.cli import main as emulator_main

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
