"""Settings from the environment, decoded and checked by msgspec.

Every field is named after its environment variable, so a decoding error
names the variable the operator has to fix. Secrets are wrapped in
:class:`Secret`, whose repr and str never show the value.

The three secrets (``DATABASE_URL``, ``STRIPE_API_KEY``,
``STRIPE_WEBHOOK_SECRET``) may also come from files: systemd credentials
(``LoadCredential=``/``LoadCredentialEncrypted=``, read from
``$CREDENTIALS_DIRECTORY/database_url`` etc.) and ``NAME_FILE`` variables (the
container convention). Sources that disagree, and unreadable or empty files,
are configuration errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

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


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    database_url: str | None = msgspec.field(default=None, name="DATABASE_URL")
    stripe_api_key: Secret | None = msgspec.field(default=None, name="STRIPE_API_KEY")
    # Several comma-separated secrets while a webhook secret is being rotated.
    webhook_secrets: tuple[Secret, ...] = msgspec.field(default=(), name="STRIPE_WEBHOOK_SECRET")
    stripe_api_base: str | None = msgspec.field(default=None, name="STRIPE_API_BASE")
    bind: str = msgspec.field(default="127.0.0.1:8080", name="STRIPE_SYNC_BIND")
    metrics_bind: str | None = msgspec.field(default=None, name="STRIPE_SYNC_METRICS_BIND")
    # Requests/s for all Stripe calls of the process; None picks Stripe's
    # default for the key's mode, 0 disables pacing (emulator, benchmarks).
    rate_limit: float | None = msgspec.field(default=None, name="STRIPE_SYNC_RATE_LIMIT")
    concurrency: int = msgspec.field(default=16, name="STRIPE_SYNC_CONCURRENCY")
    batch_size: int = msgspec.field(default=32, name="STRIPE_SYNC_BATCH_SIZE")
    sweep_interval: float = msgspec.field(default=5.0, name="STRIPE_SYNC_SWEEP_INTERVAL")
    lease_seconds: float = msgspec.field(default=15.0, name="STRIPE_SYNC_LEASE_SECONDS")
    max_attempts: int = msgspec.field(default=10, name="STRIPE_SYNC_MAX_ATTEMPTS")
    retry_base_seconds: float = msgspec.field(default=1.0, name="STRIPE_SYNC_RETRY_BASE_SECONDS")
    retry_max_seconds: float = msgspec.field(default=600.0, name="STRIPE_SYNC_RETRY_MAX_SECONDS")
    pool_size: int = msgspec.field(default=10, name="STRIPE_SYNC_POOL_SIZE")
    shutdown_timeout: float = msgspec.field(default=30.0, name="STRIPE_SYNC_SHUTDOWN_TIMEOUT")
    stripe_timeout: float = msgspec.field(default=30.0, name="STRIPE_SYNC_STRIPE_TIMEOUT")
    # Seconds a create whose 500 Stripe saved waits before its metadata search
    # is trusted (then: adopt what it finds, or create with a new key). Stripe
    # documents data as searchable "in under 1 minute" normally, later during
    # an outage; 5 minutes leaves room, and a webhook maps the object sooner.
    search_lag: float = msgspec.field(default=300.0, name="STRIPE_SYNC_SEARCH_LAG")
    webhook_tolerance: int = msgspec.field(default=300, name="STRIPE_SYNC_WEBHOOK_TOLERANCE")
    webhook_refetch: bool = msgspec.field(default=False, name="STRIPE_SYNC_WEBHOOK_REFETCH")
    log_format: Literal["logfmt", "json"] = msgspec.field(
        default="logfmt", name="STRIPE_SYNC_LOG_FORMAT"
    )
    log_level: Literal["debug", "info", "warning", "error"] = msgspec.field(
        default="info", name="STRIPE_SYNC_LOG_LEVEL"
    )

    def __post_init__(self) -> None:
        positive = {
            "STRIPE_SYNC_CONCURRENCY": self.concurrency,
            "STRIPE_SYNC_BATCH_SIZE": self.batch_size,
            "STRIPE_SYNC_SWEEP_INTERVAL": self.sweep_interval,
            "STRIPE_SYNC_LEASE_SECONDS": self.lease_seconds,
            "STRIPE_SYNC_MAX_ATTEMPTS": self.max_attempts,
            "STRIPE_SYNC_POOL_SIZE": self.pool_size,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name}: must be > 0, got {value}")
        if self.search_lag < 0:
            raise ValueError(f"STRIPE_SYNC_SEARCH_LAG: must be >= 0, got {self.search_lag}")
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

    @property
    def mode(self) -> Literal["test", "live"] | None:
        if self.stripe_api_key is None:
            return None
        return "live" if "_live_" in self.stripe_api_key.reveal()[:8] else "test"

    @property
    def effective_rate_limit(self) -> float:
        """Requests/s; 0 means unpaced."""
        if self.rate_limit is not None:
            return self.rate_limit
        return 100.0 if self.mode == "live" else 25.0

    def require(self, *names: str) -> Settings:
        """Fail with one line for the first required variable that is unset."""
        for field in msgspec.structs.fields(self):
            if field.encode_name in names and getattr(self, field.name) in (None, ()):
                raise ConfigError(f"{field.encode_name} is not set")
        return self


ENV_NAMES = frozenset(f.encode_name for f in msgspec.structs.fields(Settings))
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
        raise ConfigError(_describe(exc)) from None


def _describe(exc: msgspec.ValidationError) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.STRIPE_SYNC_CONCURRENCY`";
    # operators want the variable first.
    text, where = validation_parts(exc)
    if where.startswith("."):
        return f"{where[1:].split('[')[0]}: {text}"
    return str(exc)
