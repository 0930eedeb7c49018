"""``stripe-sync endpoint ensure|rotate|upgrade``: the Stripe webhook endpoint, managed.

The endpoint is this database's when its metadata carries the database's ``mc_source``
(outbox/common.py ``source_of``, as on every object the outbox writes), so two
databases (staging, production) on one Stripe account each manage their own. Its
enabled events are exactly the types the daemon applies (webhooks/execute.py
``applied_event_types``); its API version is pinned (``STRIPE_API_VERSION`` unless
told otherwise).

* ``ensure`` creates it when none is tagged, else repairs a drifted URL, event list
  or disabled status, else says "up to date". It never creates a second one.
* ``rotate`` and ``upgrade`` create a second, tagged endpoint beside the first (a new
  secret; for ``upgrade`` a new API version). The secret file then holds both secrets,
  new first, and a graceful restart of the daemon makes it accept both (it takes
  several, comma-separated). While both deliver, every event arrives twice and is
  stored once (integration.webhook_events is unique on the event id). ``--finish``
  deletes the older endpoint once every running daemon started after the newer one
  existed, and leaves only the new secret in the file.

:func:`health` is what ``status`` asks: the problems of the tagged endpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TextIO

import anyio
import msgspec
import stripe
from psycopg_pool import AsyncConnectionPool

from .. import STRIPE_API_VERSION
from ..config import Settings
from ..db import queries
from ..errors import PermanentError, StripeSyncError, UsageError
from ..outbox.common import source_of
from ..runtime.metrics import WEBHOOK_ENDPOINT_PROBLEM
from ..stripe_api import StripeApi, call_with_retries, for_command, from_settings
from ..webhooks.execute import applied_event_types
from .outcome import Record

TAG = "mc_source"  # the metadata key naming the database an endpoint belongs to
PAGE = 100
STATUS_TIMEOUT = 15.0  # seconds status waits for Stripe
WATCH_SECONDS = 600.0  # how often the daemon checks its endpoint (metrics on)
log = logging.getLogger(__name__)
_URL = re.compile(r"^https?://[^/\s]+\S*$")
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")


@dataclass(frozen=True)
class Endpoint:
    """What is read of a Stripe webhook_endpoint."""

    id: str
    url: str
    api_version: str | None
    status: str
    enabled_events: tuple[str, ...]
    created: int

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Endpoint:
        return cls(
            obj["id"],
            obj["url"],
            obj.get("api_version"),
            obj.get("status", "enabled"),
            tuple(obj.get("enabled_events") or ()),
            int(obj.get("created") or 0),
        )

    def missing(self, applied: frozenset[str]) -> list[str]:
        """Applied event types this endpoint does not enable."""
        return [] if "*" in self.enabled_events else sorted(applied - set(self.enabled_events))


class EndpointResult(Record):
    """One command's outcome: what it did and what the operator does next."""

    command: str
    action: str  # created, updated, up to date, started, finished
    endpoint_id: str
    url: str
    api_version: str | None
    enabled_events: int
    changes: list[str] = msgspec.field(default_factory=list)
    # Only when no --secret-file was given: shown once, never stored by us.
    secret: str | None = None
    secret_file: str | None = None
    next_step: str | None = None
    old_endpoint_id: str | None = None

    @property
    def exit_code(self) -> int:
        return 0

    def render(self, out: TextIO, err: TextIO) -> None:
        head = {
            "created": "created",
            "updated": "updated",
            "up to date": "up to date:",
            "started": "created the new endpoint",
            "finished": "deleted the old endpoint; kept",
        }[self.action]
        print(
            f"{head} {self.endpoint_id} → {self.url} (API {self.api_version}, "
            f"{self.enabled_events} event types)",
            file=out,
        )
        for change in self.changes:
            print(f"  {change}", file=out)
        if self.old_endpoint_id and self.action == "finished":
            print(f"  deleted {self.old_endpoint_id}", file=out)
        if self.secret_file and self.action == "finished":
            print(f"{self.secret_file} now holds the new signing secret only", file=out)
        elif self.secret_file:
            print(f"signing secret written to {self.secret_file} (mode 0600)", file=out)
        elif self.secret:
            print(f"signing secret (shown once): {self.secret}", file=out)
        if self.next_step:
            print(f"next: {self.next_step}", file=out)


# The kinds of trouble health() finds, as the metric's `problem` label names them.
PROBLEMS = ("disabled", "missing_event_types", "api_version", "untagged")


@dataclass
class Health:
    """What ``status`` reports of the tagged endpoint(s), and the kinds for the metric."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)


# -- the parts ---------------------------------------------------------------------------
def check_url(url: str) -> str:
    if not _URL.match(url):
        raise UsageError(f"--url: expected http(s)://host/path, got {url!r}")
    return url


def check_version(version: str) -> str:
    if not _VERSION.match(version):
        raise UsageError(
            f"--api-version: expected a version like {STRIPE_API_VERSION}, got {version!r}"
        )
    return version


async def tagged(api: StripeApi, source: str, attempts: int = 5) -> list[Endpoint]:
    """This database's endpoints, oldest first (Stripe lists newest first)."""
    found: list[Endpoint] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": PAGE}
        if after:
            params["starting_after"] = after
        page = await call_with_retries(
            api,
            "list webhook endpoints",
            partial(api.client.v1.webhook_endpoints.list_async, params=params),  # type: ignore[arg-type]
            attempts,
        )
        objects: list[dict[str, Any]] = [obj.to_dict() for obj in page.data]
        found += [Endpoint.of(o) for o in objects if (o.get("metadata") or {}).get(TAG) == source]
        if not page.has_more or not objects:
            break
        after = objects[-1]["id"]
    return sorted(found, key=lambda e: (e.created, e.id))


def _key(source: str, *parts: str) -> str:
    """An idempotency key for one create: a retry (of the call, or of the command after
    a crash) replays Stripe's answer, secret included, instead of making another."""
    digest = hashlib.sha256("\0".join((source, *parts)).encode()).hexdigest()[:32]
    return f"stripe-sync-endpoint-{digest}"


async def _create(
    api: StripeApi, source: str, url: str, version: str, basis: str
) -> tuple[Endpoint, str]:
    events = sorted(applied_event_types())
    params: dict[str, Any] = {
        "url": url,
        "enabled_events": events,
        "api_version": version,
        "description": f"stripe-sync for {source}",
        "metadata": {TAG: source},
    }
    gone: list[str] = []
    while True:
        key = _key(source, basis, url, version, *events, *gone)
        created = await call_with_retries(
            api,
            "create webhook endpoint",
            partial(
                api.client.v1.webhook_endpoints.create_async,
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": key},
            ),
        )
        if await _exists(api, created.id):
            break
        # The replay of a create (same key within 24 h) whose endpoint was deleted since.
        gone.append(created.id)
    assert created.secret is not None, "Stripe answers a create with the secret"
    return Endpoint.of(created.to_dict()), created.secret


async def _exists(api: StripeApi, endpoint_id: str) -> bool:
    try:
        await call_with_retries(
            api,
            "retrieve webhook endpoint",
            partial(api.client.v1.webhook_endpoints.retrieve_async, endpoint_id),
        )
    except PermanentError as exc:
        cause = exc.__cause__
        if isinstance(cause, stripe.StripeError) and cause.http_status == 404:
            return False
        raise
    return True


def drift(endpoint: Endpoint, url: str | None) -> dict[str, Any]:
    """The update that brings the endpoint back to what the daemon needs."""
    update: dict[str, Any] = {}
    if url is not None and endpoint.url != url:
        update["url"] = url
    wanted = applied_event_types()
    if set(endpoint.enabled_events) != wanted:
        update["enabled_events"] = sorted(wanted)
    if endpoint.status == "disabled":
        update["disabled"] = False
    return update


def _describe(endpoint: Endpoint, update: dict[str, Any]) -> list[str]:
    changes = []
    if "url" in update:
        changes.append(f"url: {endpoint.url} → {update['url']}")
    if "enabled_events" in update:
        wanted = set(update["enabled_events"])
        added = sorted(wanted - set(endpoint.enabled_events))
        removed = sorted(set(endpoint.enabled_events) - wanted)
        if added:
            changes.append(f"enabled: {', '.join(added)}")
        if removed:
            changes.append(f"no longer enabled: {', '.join(removed)}")
    if "disabled" in update:
        changes.append("status: disabled → enabled")
    return changes


def write_secret(path: str, secrets: Sequence[str]) -> None:
    """The secrets, comma-separated, in a file only its owner reads (systemd's
    LoadCredential= or STRIPE_WEBHOOK_SECRET_FILE), replaced atomically."""
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # a leftover tmp may have had another mode
            f.write(",".join(secrets) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise StripeSyncError(f"--secret-file: cannot write {path}: {exc.strerror}") from None


def check_writable(path: str | None) -> None:
    """Fail before creating anything when the secret could not be written after."""
    if path is None:
        return
    tmp = f"{path}.tmp"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))
        os.unlink(tmp)
    except OSError as exc:
        raise StripeSyncError(f"--secret-file: cannot write {path}: {exc.strerror}") from None


def read_secrets(path: str) -> list[str]:
    """The secrets a file holds now ([] when it does not exist)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StripeSyncError(f"--secret-file: cannot read {path}: {exc.strerror}") from None
    return [s.strip() for s in text.split(",") if s.strip().startswith("whsec_")]


def _in_rotation(endpoints: Sequence[Endpoint]) -> StripeSyncError:
    ids = ", ".join(e.id for e in endpoints)
    return StripeSyncError(
        f"{len(endpoints)} webhook endpoints are tagged as this database's ({ids}): a "
        "rotation or upgrade is under way; finish it with `stripe-sync endpoint rotate "
        "--finish` (or delete the extra endpoint in the Stripe Dashboard)"
    )


def _result(command: str, action: str, endpoint: Endpoint, **kw: Any) -> EndpointResult:
    return EndpointResult(
        command,
        action,
        endpoint.id,
        endpoint.url,
        endpoint.api_version,
        len(endpoint.enabled_events),
        **kw,
    )


def _secret_out(secret: str, secret_file: str | None, keep: Sequence[str] = ()) -> dict[str, Any]:
    if secret_file is None:
        return {"secret": secret}
    write_secret(secret_file, [secret, *(s for s in keep if s != secret)])
    return {"secret_file": secret_file}


# -- the commands ------------------------------------------------------------------------
async def ensure(
    api: StripeApi,
    pool: AsyncConnectionPool,
    *,
    url: str,
    api_version: str = STRIPE_API_VERSION,
    secret_file: str | None = None,
) -> EndpointResult:
    source = await source_of(pool)
    endpoints = await tagged(api, source)
    if len(endpoints) > 1:
        raise _in_rotation(endpoints)
    if not endpoints:
        check_writable(secret_file)
        endpoint, secret = await _create(api, source, url, api_version, "ensure")
        restart = "" if secret_file else "set STRIPE_WEBHOOK_SECRET to it, then "
        return _result(
            "ensure",
            "created",
            endpoint,
            **_secret_out(secret, secret_file),
            next_step=f"{restart}(re)start the daemon",
        )
    (endpoint,) = endpoints
    update = drift(endpoint, url)
    note = None
    if endpoint.api_version != api_version:
        # Stripe cannot change an endpoint's version: a new endpoint takes it.
        note = (
            f"its API version is {endpoint.api_version}, not {api_version}: "
            f"`stripe-sync endpoint upgrade --api-version {api_version}`"
        )
    if not update:
        return _result("ensure", "up to date", endpoint, next_step=note)
    changes = _describe(endpoint, update)
    await call_with_retries(
        api,
        "update webhook endpoint",
        partial(api.client.v1.webhook_endpoints.update_async, endpoint.id, params=update),  # type: ignore[arg-type]
    )
    endpoint = Endpoint(
        endpoint.id,
        update.get("url", endpoint.url),
        endpoint.api_version,
        "enabled",
        tuple(update.get("enabled_events", endpoint.enabled_events)),
        endpoint.created,
    )
    return _result("ensure", "updated", endpoint, changes=changes, next_step=note)


async def start_side_by_side(
    api: StripeApi,
    pool: AsyncConnectionPool,
    *,
    command: str,
    api_version: str | None = None,
    secret_file: str | None = None,
) -> EndpointResult:
    """``rotate`` (same version, new secret) or ``upgrade`` (new version): a second
    endpoint beside the one in use."""
    source = await source_of(pool)
    endpoints = await tagged(api, source)
    if not endpoints:
        raise StripeSyncError(
            "no webhook endpoint is tagged as this database's: create it with "
            "`stripe-sync endpoint ensure --url URL`"
        )
    if len(endpoints) > 1:
        raise _in_rotation(endpoints)
    (old,) = endpoints
    # rotate keeps the version; upgrade moves to the pinned one unless told
    default = STRIPE_API_VERSION if command == "upgrade" else old.api_version
    version = api_version or default or STRIPE_API_VERSION
    if command == "upgrade" and version == old.api_version:
        raise UsageError(f"--api-version: the endpoint already has {version}")
    check_writable(secret_file)
    new, secret = await _create(api, source, old.url, version, f"{command} {old.id}")
    old_secrets = read_secrets(secret_file) if secret_file else []
    if secret_file:
        restart = "restart the daemon gracefully (it reads both secrets from the file)"
    else:
        restart = "set STRIPE_WEBHOOK_SECRET=<new>,<old> and restart the daemon gracefully"
    return _result(
        command,
        "started",
        new,
        **_secret_out(secret, secret_file, old_secrets),
        old_endpoint_id=old.id,
        changes=[f"beside {old.id} (API {old.api_version}); both deliver every event"],
        next_step=f"{restart}, then `stripe-sync endpoint {command} --finish`",
    )


async def finish(
    api: StripeApi,
    pool: AsyncConnectionPool,
    *,
    command: str,
    secret_file: str | None = None,
    force: bool = False,
) -> EndpointResult:
    """Delete the older of the two tagged endpoints, once the daemons accept the new."""
    source = await source_of(pool)
    endpoints = await tagged(api, source)
    if len(endpoints) != 2:
        raise StripeSyncError(
            f"nothing to finish: {len(endpoints)} webhook endpoint(s) tagged as this "
            f"database's, not 2 (start with `stripe-sync endpoint {command}`)"
        )
    old, new = endpoints
    if not force:
        # Stripe's `created` is whole seconds: a daemon started in that second counts.
        since = datetime.fromtimestamp(new.created + 1, UTC)
        async with pool.connection() as conn:
            cur = await conn.execute(
                queries("endpoint")["daemons_started_before"], {"before": since}
            )
            row = await cur.fetchone()
        stale = int(row[0]) if row else 0
        if stale:
            raise StripeSyncError(
                f"{stale} running daemon(s) started before {new.id} existed (or under a "
                "role whose start time this one cannot see) and may not accept its secret: "
                "restart them gracefully first (or --force)"
            )
    await call_with_retries(
        api,
        "delete webhook endpoint",
        partial(api.client.v1.webhook_endpoints.delete_async, old.id),
    )
    kept: dict[str, Any] = {}
    if secret_file:
        secrets = read_secrets(secret_file)
        if len(secrets) > 1:
            # The new secret was written first; the old one signs nothing any more.
            write_secret(secret_file, secrets[:1])
            kept = {"secret_file": secret_file}
    return _result(command, "finished", new, old_endpoint_id=old.id, **kept)


async def health(
    api: StripeApi, source: str, pinned: str = STRIPE_API_VERSION, attempts: int = 5
) -> Health:
    """The tagged endpoint's problems: an applied event type it does not enable, an API
    version that is not the pinned one, disabled by Stripe."""
    result = Health()
    endpoints = await tagged(api, source, attempts)
    if not endpoints:
        result.kinds.add("untagged")
        result.warnings.append(
            "no webhook endpoint is tagged as this database's (`stripe-sync endpoint ensure` "
            "creates one; an endpoint made by hand is not checked)"
        )
        return result
    if len(endpoints) > 1:
        result.warnings.append(
            f"{len(endpoints)} tagged webhook endpoints: a rotation or upgrade is under way "
            "(`stripe-sync endpoint rotate --finish` ends it)"
        )
    applied = applied_event_types()
    for e in endpoints:
        if e.status == "disabled":
            result.kinds.add("disabled")
            result.problems.append(f"webhook endpoint {e.id} is disabled in Stripe")
        missing = e.missing(applied)
        if missing:
            result.kinds.add("missing_event_types")
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            result.problems.append(f"webhook endpoint {e.id} does not enable {shown}")
    if all(e.api_version != pinned for e in endpoints):
        result.kinds.add("api_version")
        versions = ", ".join(sorted({str(e.api_version) for e in endpoints}))
        result.problems.append(
            f"webhook endpoint API version {versions} is not the pinned {pinned} "
            f"(`stripe-sync endpoint upgrade --api-version {pinned}`)"
        )
    return result


async def status_check(settings: Settings, source: str) -> tuple[list[str], list[str]]:
    """``status``'s look at the endpoint (problems, warnings): one list call, no
    retries, 15 s at most; Stripe out of reach is a warning, not a problem."""
    try:
        with anyio.fail_after(STATUS_TIMEOUT):
            async with from_settings(settings) as api:
                found = await health(api, source, attempts=1)
    except (StripeSyncError, TimeoutError) as exc:
        return [], [f"cannot check the webhook endpoint in Stripe: {exc}"]
    return found.problems, found.warnings


async def watch(api: StripeApi, source: str, interval: float = WATCH_SECONDS) -> None:
    """The daemon's cached look at its endpoint (with metrics on): one list call every
    ``interval``, into stripe_sync_webhook_endpoint_problem and a warning in the log."""
    while True:
        try:
            found = await health(api, source, attempts=1)
        except StripeSyncError as exc:
            log.info("webhook endpoint: cannot check it", extra={"error": str(exc)[:200]})
        else:
            for kind in PROBLEMS:
                WEBHOOK_ENDPOINT_PROBLEM.labels(kind).set(1 if kind in found.kinds else 0)
            if found.problems:
                log.warning(
                    "webhook endpoint problems", extra={"problems": "; ".join(found.problems)}
                )
        await anyio.sleep(interval)


async def run(settings: Settings, action: str, **options: Any) -> EndpointResult:
    """The command's collect: ``action`` is ensure, start (rotate/upgrade) or finish."""
    async with for_command(settings, "endpoint") as (api, pool):
        if action == "ensure":
            return await ensure(api, pool, **options)
        if action == "start":
            return await start_side_by_side(api, pool, **options)
        return await finish(api, pool, **options)
