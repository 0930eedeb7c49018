"""Settings from the environment, decoded and checked by msgspec.

Every field is named after its environment variable, so a decoding error
names the variable the operator has to fix. Each field's default and meaning
are written once, here: :func:`variables` gives them to ``run --help``, and
:data:`DEFAULTS` to the constructors that take them (``Worker``, ``Retry``,
``WebhookEndpoint``, ``StripeApi``). Secrets are wrapped in :class:`Secret`,
whose repr and str never show the value.

The three secrets (``DATABASE_URL``, ``STRIPE_API_KEY``,
``STRIPE_WEBHOOK_SECRET``) may also come from files: systemd credentials
(``LoadCredential=``/``LoadCredentialEncrypted=``, read from
``$CREDENTIALS_DIRECTORY/database_url`` etc.) and ``NAME_FILE`` variables (the
container convention). Sources that disagree, and unreadable or empty files,
are configuration errors.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, TypeVar, get_args

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict

from . import duration
from .errors import EX_CONFIG, StripeSyncError, validation_parts


class Secret:
    """A credential that does not leak through repr, str, format or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class ConfigError(StripeSyncError):
    """One line naming the variable that is missing or wrong."""

    exit_code = EX_CONFIG
    label = "configuration error: "


def _choices(name: str) -> list[str]:
    """The values a Literal setting accepts."""
    field = next(f for f in msgspec.structs.fields(Settings) if f.encode_name == name)
    return [str(a) for a in get_args(field.type) if a is not type(None)]


def split_address(name: str, address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080``; an empty host is 127.0.0.1), or a ValueError
    naming the variable."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{name}={address}: expected host:port, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "127.0.0.1", int(port)


def cannot_listen(name: str, address: str, exc: OSError) -> StripeSyncError:
    """A configured address we cannot listen on: a configuration error (exit 78),
    except a port in use, which a restart may find free (exit 1)."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return StripeSyncError(
            f"{name}={address}: cannot listen there: {reason} (another process?)"
        )
    return ConfigError(f"{name}={address}: cannot listen there: {reason}")


# Stripe's default rate limits per mode (requests/s), when STRIPE_SYNC_RATE_LIMIT is unset.
RATE_LIMITS: dict[str, float] = {"live": 100.0, "test": 25.0}


T = TypeVar("T")
# Variable → (meaning, what unset means when there is no default value, the
# commands that read it), for each command's ``--help``.
_MEANINGS: dict[str, tuple[str, str, tuple[str, ...]]] = {}

# The commands that read a setting, for their --help. Every command that opens
# the database reads DATABASE_URL; those that call Stripe read its settings.
DATABASE_COMMANDS = (
    "migrate", "seed", "run", "status", "retry", "dismiss", "replay", "prune", "catch-up",
    "reconcile", "link", "backfill", "endpoint",
)  # fmt: skip
# seed looks in Stripe before it creates; status asks it how the webhook endpoint is.
STRIPE_COMMANDS = (
    "run", "catch-up", "reconcile", "link", "backfill", "endpoint", "seed", "status",
)  # fmt: skip


def _setting(
    name: str, default: T, meaning: str, unset: str = "", read_by: tuple[str, ...] = ("run",)
) -> T:
    """A field read from the variable ``name`` by the commands ``read_by``; its
    meaning is written beside it."""
    _MEANINGS[name] = (meaning, unset, read_by)
    return msgspec.field(default=default, name=name)


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Every setting: its variable, type, default and meaning are written here
    once; ``stripe-sync run --help`` is generated from them, and tests hold
    docs/stripe.md and systemd/stripe-sync.env.example to them."""

    database_url: str | None = _setting(
        "DATABASE_URL",
        None,
        "libpq URL or conninfo of the billing database",
        "required",
        DATABASE_COMMANDS,
    )
    stripe_api_key: Secret | None = _setting(
        "STRIPE_API_KEY",
        None,
        "sk_test_…, sk_live_…, rk_…; never logged",
        "required for Stripe",
        STRIPE_COMMANDS,
    )
    # Several comma-separated secrets while a webhook secret is being rotated.
    webhook_secrets: tuple[Secret, ...] = _setting(
        "STRIPE_WEBHOOK_SECRET",
        (),
        "whsec_…; several, comma-separated, while rotating",
        "required by run",
    )
    stripe_api_base: str | None = _setting(
        "STRIPE_API_BASE",
        None,
        "Stripe API base URL; the emulator's in development",
        "default Stripe's",
        STRIPE_COMMANDS,
    )
    bind: str = _setting(
        "STRIPE_SYNC_BIND", "127.0.0.1:8080", "HTTP address for webhooks and health"
    )
    metrics_bind: str | None = _setting(
        "STRIPE_SYNC_METRICS_BIND",
        None,
        "Prometheus metrics address, e.g. 127.0.0.1:9108",
        "default off",
    )
    # Requests/s for all Stripe calls of the process; None picks Stripe's
    # default for the key's mode, 0 disables pacing (emulator, benchmarks).
    rate_limit: float | None = _setting(
        "STRIPE_SYNC_RATE_LIMIT",
        None,
        "Stripe requests/s for the service; 0 = unpaced",
        f"default {RATE_LIMITS['test']:g} test / {RATE_LIMITS['live']:g} live",
        STRIPE_COMMANDS,
    )
    # `stripe-sync backfill` shares the account's rate limit with a daemon
    # running on the same database, if one is: unset, it takes the whole limit
    # while none runs (the runbook's link -> backfill -> run) and half while one
    # does, looked at again every few seconds (ops/backfill.py); set, it takes
    # this share whatever runs.
    backfill_share: float | None = _setting(
        "STRIPE_SYNC_BACKFILL_SHARE",
        None,
        "share of STRIPE_SYNC_RATE_LIMIT that `backfill` uses (0 < share <= 1)",
        "default 1 with no daemon running on the database, 0.5 while one runs",
        read_by=("backfill",),
    )
    concurrency: int = _setting("STRIPE_SYNC_CONCURRENCY", 16, "rows in flight at once, per queue")
    # One process uses one core; more share the webhook port and the queues
    # (processes.py). Concurrency and the pool are per process; the rate limit
    # is split between them.
    processes: int = _setting(
        "STRIPE_SYNC_PROCESSES", 1, "daemon processes in this service, sharing the webhook port"
    )
    batch_size: int = _setting("STRIPE_SYNC_BATCH_SIZE", 32, "rows per claim")
    sweep_interval: float = _setting(
        "STRIPE_SYNC_SWEEP_INTERVAL", 5.0, "seconds between sweeps for missed work"
    )
    lease_seconds: float = _setting(
        "STRIPE_SYNC_LEASE_SECONDS", 15.0, "claim lease in seconds, renewed while working"
    )
    max_attempts: int = _setting("STRIPE_SYNC_MAX_ATTEMPTS", 10, "attempts before a row is failed")
    retry_base_seconds: float = _setting(
        "STRIPE_SYNC_RETRY_BASE_SECONDS", 1.0, "first backoff step in seconds"
    )
    retry_max_seconds: float = _setting(
        "STRIPE_SYNC_RETRY_MAX_SECONDS", 600.0, "backoff ceiling in seconds"
    )
    pool_size: int = _setting(
        "STRIPE_SYNC_POOL_SIZE", 10, "database connections, plus one for LISTEN"
    )
    shutdown_timeout: float = _setting(
        "STRIPE_SYNC_SHUTDOWN_TIMEOUT", 30.0, "seconds in-flight work gets on SIGTERM"
    )
    stripe_timeout: float = _setting(
        "STRIPE_SYNC_STRIPE_TIMEOUT", 30.0, "seconds per Stripe request", read_by=STRIPE_COMMANDS
    )
    # Seconds a create whose 500 Stripe saved waits before its metadata search
    # is trusted (then: adopt what it finds, or create with a new key). Stripe
    # documents data as searchable "in under 1 minute" normally, later during
    # an outage; 5 minutes leaves room, and a webhook maps the object sooner.
    search_lag: float = _setting(
        "STRIPE_SYNC_SEARCH_LAG", 300.0, "seconds a create that met a saved 500 waits for search"
    )
    # Stripe keeps events 30 days and catch-up reaches back as far: every
    # event it can list is still stored (so recognised, not stored again) and
    # replayable, with two months to spare for an investigation. About 2 KB
    # per event: 90 days of 100,000 events a month is ~0.6 GB.
    retention: str = _setting(
        "STRIPE_SYNC_RETENTION",
        "90d",
        "finished rows older than this (30m, 12h, 90d, 2w) are deleted; 0 keeps all",
        read_by=("run", "prune"),
    )
    # When waiting becomes a problem for `status` (exit 1): the alert rule
    # StripeSyncQueueStuck (monitoring/prometheus-alerts.yml) pages when a due
    # row has waited 10 minutes; with the default retry settings a row that
    # keeps failing for a passing reason is failed within ~9 minutes of backoff.
    wait_alarm: str = _setting(
        "STRIPE_SYNC_WAIT_ALARM",
        "10m",
        "status: a row due this long, or in backoff this long since it arrived, is a problem",
        read_by=("status",),
    )
    webhook_tolerance: int = _setting(
        "STRIPE_SYNC_WEBHOOK_TOLERANCE", 300, "signature timestamp tolerance in seconds"
    )
    webhook_refetch: bool = _setting(
        "STRIPE_SYNC_WEBHOOK_REFETCH", False, "true: refetch objects before applying events"
    )
    log_format: Literal["logfmt", "json"] = _setting(
        "STRIPE_SYNC_LOG_FORMAT", "logfmt", "logfmt or json"
    )
    log_level: Literal["debug", "info", "warning", "error"] = _setting(
        "STRIPE_SYNC_LOG_LEVEL", "info", "debug, info, warning or error"
    )

    def __post_init__(self) -> None:
        positive = {
            "STRIPE_SYNC_CONCURRENCY": self.concurrency,
            "STRIPE_SYNC_BATCH_SIZE": self.batch_size,
            "STRIPE_SYNC_SWEEP_INTERVAL": self.sweep_interval,
            "STRIPE_SYNC_LEASE_SECONDS": self.lease_seconds,
            "STRIPE_SYNC_MAX_ATTEMPTS": self.max_attempts,
            "STRIPE_SYNC_POOL_SIZE": self.pool_size,
            "STRIPE_SYNC_PROCESSES": self.processes,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name}: must be > 0, got {value}")
        for name, text in (
            ("STRIPE_SYNC_RETENTION", self.retention),
            ("STRIPE_SYNC_WAIT_ALARM", self.wait_alarm),
        ):
            if duration.seconds(text) is None:
                raise ValueError(f"{name}: expected a duration such as 90d, 12h or 0, got {text!r}")
        if self.search_lag < 0:
            raise ValueError(f"STRIPE_SYNC_SEARCH_LAG: must be >= 0, got {self.search_lag}")
        if self.backfill_share is not None and not 0 < self.backfill_share <= 1:
            raise ValueError(
                f"STRIPE_SYNC_BACKFILL_SHARE: must be > 0 and <= 1, got {self.backfill_share}"
            )
        if self.rate_limit is not None and self.rate_limit < 0:
            raise ValueError(f"STRIPE_SYNC_RATE_LIMIT: must be >= 0, got {self.rate_limit}")
        if self.stripe_api_key is not None:
            key = self.stripe_api_key.reveal()
            if not key.startswith(("sk_test_", "sk_live_", "rk_test_", "rk_live_")):
                raise ValueError(
                    "STRIPE_API_KEY: expected a secret or restricted key "
                    "(sk_test_…, sk_live_…, rk_test_…, rk_live_…)"
                )
        for secret in self.webhook_secrets:
            if not secret.reveal().startswith("whsec_"):
                raise ValueError("STRIPE_WEBHOOK_SECRET: each secret must start with whsec_")
        for name, address in (
            ("STRIPE_SYNC_BIND", self.bind),
            ("STRIPE_SYNC_METRICS_BIND", self.metrics_bind),
        ):
            if address is not None:
                split_address(name, address)
        if self.database_url is not None:
            try:
                conninfo_to_dict(self.database_url)
            except psycopg.ProgrammingError as exc:
                # libpq's reason names the option; the value may hold a password.
                raise ValueError(f"DATABASE_URL: {str(exc).strip()}") from None

    @property
    def mode(self) -> Literal["test", "live"] | None:
        if self.stripe_api_key is None:
            return None
        return "live" if "_live_" in self.stripe_api_key.reveal()[:8] else "test"

    @property
    def retention_seconds(self) -> float:
        """Seconds finished rows are kept; 0 keeps them all."""
        return duration.seconds(self.retention) or 0.0

    @property
    def wait_alarm_seconds(self) -> float:
        """Seconds a pending row may wait before ``status`` calls it a problem; 0: never."""
        return duration.seconds(self.wait_alarm) or 0.0

    @property
    def effective_rate_limit(self) -> float:
        """Requests/s; 0 means unpaced."""
        if self.rate_limit is not None:
            return self.rate_limit
        return RATE_LIMITS[self.mode or "test"]

    def require(self, *names: str) -> Settings:
        """Fail with one line for the first required variable that is unset."""
        for field in msgspec.structs.fields(self):
            if field.encode_name in names and getattr(self, field.name) in (None, ()):
                raise ConfigError(f"{field.encode_name} is not set")
        return self


# What an unset setting amounts to: the values the constructors of Worker,
# Retry and WebhookEndpoint take by default.
DEFAULTS = Settings()
ENV_NAMES = frozenset(f.encode_name for f in msgspec.structs.fields(Settings))


class Variable(NamedTuple):
    """One setting as the operator sees it (``run --help``, docs, the systemd example)."""

    name: str  # the environment variable
    value: str | None  # the default as it would be written in the environment; None: unset
    meaning: str
    unset: str  # what unset means, when there is no default value: "required", "default off"
    read_by: tuple[str, ...] = ("run",)  # the commands that read it

    @property
    def note(self) -> str:
        """``default 16``, or what unset means."""
        return self.unset if self.value is None else f"default {self.value}"


def env_value(value: Any) -> str | None:
    """A default as an operator writes it: ``5``, not ``5.0``; ``false``; None when unset."""
    if value is None or value == ():
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def variables(command: str | None = None) -> list[Variable]:
    """Every setting (or those ``command`` reads), in the order of :class:`Settings`."""
    found = []
    for field in msgspec.structs.fields(Settings):
        meaning, unset, read_by = _MEANINGS[field.encode_name]
        if command is None or command in read_by:
            value = env_value(field.default)
            found.append(Variable(field.encode_name, value, meaning, unset, read_by))
    return found


_LIST_FIELDS = frozenset({"STRIPE_WEBHOOK_SECRET"})
# Variable → its systemd credential name (a file in $CREDENTIALS_DIRECTORY).
CREDENTIALS = {
    "DATABASE_URL": "database_url",
    "STRIPE_API_KEY": "stripe_api_key",
    "STRIPE_WEBHOOK_SECRET": "stripe_webhook_secret",
}


def _read_secret_file(name: str, source: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            # `echo key > file` and systemd-creds keep a trailing newline; it is no part of it.
            value = f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{name}: cannot read {source} ({path}): {reason}") from None
    if not value:
        raise ConfigError(f"{name}: {source} ({path}) is empty")
    return value


def _secret_sources(env: Mapping[str, str], name: str) -> list[tuple[str, str]]:
    """(where, value) of every place that sets ``name``: variable, NAME_FILE, credential."""
    found = [(f"the variable {name}", env[name])] if env.get(name) else []
    if path := env.get(f"{name}_FILE"):
        found.append((f"{name}_FILE", _read_secret_file(name, f"{name}_FILE", path)))
    if directory := env.get("CREDENTIALS_DIRECTORY"):
        path = os.path.join(directory, CREDENTIALS[name])
        if os.path.lexists(path):
            source = f"the credential {CREDENTIALS[name]}"
            found.append((source, _read_secret_file(name, source, path)))
    return found


def _secrets(env: Mapping[str, str]) -> dict[str, str]:
    """The secrets from wherever they are set; two places must agree."""
    values = {}
    for name in CREDENTIALS:
        found = _secret_sources(env, name)
        if not found:
            continue
        (first, value), *others = found
        for other, other_value in others:
            if other_value != value:
                # Never the values: they are secrets.
                raise ConfigError(f"{name}: {first} and {other} disagree; set it in one place")
        values[name] = value
    return values


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from ``env`` (default: os.environ); CLI flags come in as overrides.

    Overrides use the environment variable names, so flags and variables
    share one decoding path and one kind of error message.
    """
    source = os.environ if env is None else env
    raw: dict[str, Any] = {
        k: v for k, v in source.items() if k in ENV_NAMES - CREDENTIALS.keys() and v != ""
    }
    raw.update(_secrets(source))
    raw.update({k: v for k, v in overrides.items() if v is not None})
    for name in _LIST_FIELDS & raw.keys():
        if isinstance(raw[name], str):
            raw[name] = [part.strip() for part in raw[name].split(",") if part.strip()]
    try:
        return msgspec.convert(raw, Settings, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc, raw)) from None


_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "text",
    "array": "a comma-separated list",
}


def _describe(exc: msgspec.ValidationError, raw: Mapping[str, Any]) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.STRIPE_SYNC_CONCURRENCY`";
    # operators want the variable and what they gave first, in words.
    text, where = validation_parts(exc)
    if not where.startswith("."):
        return text
    name = where[1:].split("[")[0]
    expected = re.match(r"Expected `(\w+)`", text)
    if expected and expected[1] in _EXPECTED:
        text = f"expected {_EXPECTED[expected[1]]}"
    elif text.startswith("Invalid enum value"):
        text = f"expected one of {', '.join(_choices(name))}"
    shown = f"={raw[name]}" if name in raw and name not in CREDENTIALS else ""
    return f"{name}{shown}: {text}"
