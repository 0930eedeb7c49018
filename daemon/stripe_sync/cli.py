"""The ``stripe-sync`` command. Every setting is an environment variable
(see ``stripe-sync run --help``); flags override them for one invocation."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import psycopg

from . import __version__, logs
from .config import ConfigError, Settings, load_settings

log = logging.getLogger("stripe_sync")

EX_CONFIG = 78  # sysexits.h; the systemd unit does not restart on it

# flag → environment variable, for the flags `run` accepts
_RUN_FLAGS: dict[str, tuple[str, str]] = {
    "--database-url": ("DATABASE_URL", "libpq URL or conninfo of the billing database"),
    "--bind": ("STRIPE_SYNC_BIND", "HTTP address for webhooks and health (default 127.0.0.1:8080)"),
    "--api-base": (
        "STRIPE_API_BASE",
        "Stripe API base URL (default Stripe's; the emulator's in dev)",
    ),
    "--concurrency": ("STRIPE_SYNC_CONCURRENCY", "rows processed at once per queue (default 16)"),
    "--rate-limit": (
        "STRIPE_SYNC_RATE_LIMIT",
        "Stripe requests/s for the process; 0 = unpaced (default 25 test, 100 live)",
    ),
    "--sweep-interval": ("STRIPE_SYNC_SWEEP_INTERVAL", "seconds between sweeps (default 5)"),
    "--log-format": ("STRIPE_SYNC_LOG_FORMAT", "logfmt or json (default logfmt)"),
    "--log-level": ("STRIPE_SYNC_LOG_LEVEL", "debug, info, warning, error (default info)"),
}

_ENVIRONMENT_HELP = """\
environment:
  DATABASE_URL                  billing database (required)
  STRIPE_API_KEY                sk_test_…/sk_live_…/rk_… (required; never logged)
  STRIPE_WEBHOOK_SECRET         whsec_…; several comma-separated while rotating
  STRIPE_API_BASE               Stripe API base URL (the emulator's in development)
  STRIPE_SYNC_BIND              HTTP address (default 127.0.0.1:8080)
  STRIPE_SYNC_RATE_LIMIT        Stripe requests/s; 0 = unpaced (default 25 test / 100 live)
  STRIPE_SYNC_CONCURRENCY       rows in flight per queue (default 16)
  STRIPE_SYNC_BATCH_SIZE        rows per claim (default 32)
  STRIPE_SYNC_SWEEP_INTERVAL    seconds between sweeps for missed work (default 5)
  STRIPE_SYNC_LEASE_SECONDS     claim lease, renewed while working (default 15)
  STRIPE_SYNC_MAX_ATTEMPTS      attempts before a row is failed (default 10)
  STRIPE_SYNC_RETRY_BASE_SECONDS / STRIPE_SYNC_RETRY_MAX_SECONDS  backoff (default 1 / 600)
  STRIPE_SYNC_POOL_SIZE         database connections (default 10)
  STRIPE_SYNC_SHUTDOWN_TIMEOUT  seconds in-flight work gets on SIGTERM (default 30)
  STRIPE_SYNC_STRIPE_TIMEOUT    seconds per Stripe request (default 30)
  STRIPE_SYNC_WEBHOOK_TOLERANCE signature timestamp tolerance in seconds (default 300)
  STRIPE_SYNC_WEBHOOK_REFETCH   true: refetch objects from Stripe before applying (default false)
  STRIPE_SYNC_LOG_FORMAT        logfmt or json (default logfmt)
  STRIPE_SYNC_LOG_LEVEL         debug, info, warning, error (default info)
"""


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        env: getattr(args, flag.lstrip("-").replace("-", "_"), None)
        for flag, (env, _) in _RUN_FLAGS.items()
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


def cmd_emulator(args: argparse.Namespace) -> int:
    from .emulator.cli import main as emulator_main

    return emulator_main(args.emulator_args)


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
            env, text = _RUN_FLAGS[flag]
            p.add_argument(flag, metavar=env, help=f"{text} [env {env}]")
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
        epilog=_ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    emulator = command(
        "emulator",
        cmd_emulator,
        "run the Stripe emulator (see `stripe-sync emulator --help`)",
        add_help=False,
    )
    emulator.add_argument("emulator_args", nargs=argparse.REMAINDER)
    demo = command(
        "demo", cmd_demo, "play the whole loop on a throwaway PostgreSQL and the emulator"
    )
    demo.add_argument(
        "--keep", action="store_true", help="leave everything running and print the URLs and DSN"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"stripe-sync: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from .migrate import MigrationError
        from .provider import ProviderMismatch

        if isinstance(exc, ProviderMismatch | MigrationError | psycopg.OperationalError | OSError):
            print(f"stripe-sync: {logs.scrub(str(exc)).strip()}", file=sys.stderr)
            return EX_CONFIG if isinstance(exc, ProviderMismatch) else 1
        raise


if __name__ == "__main__":
    sys.exit(main())
