from __future__ import annotations

import logging

import pytest

from stripe_sync.config import ConfigError, Secret, load_settings
from stripe_sync.logs import LogfmtFormatter, register_secrets

KEY = "sk_test_RECOGNISABLE_key_12345"


def test_defaults_and_types() -> None:
    s = load_settings(
        {
            "DATABASE_URL": "postgresql:///x",
            "STRIPE_API_KEY": KEY,
            "STRIPE_SYNC_CONCURRENCY": "4",
            "STRIPE_SYNC_WEBHOOK_REFETCH": "true",
        }
    )
    assert (s.concurrency, s.webhook_refetch, s.bind) == (4, True, "127.0.0.1:8080")
    assert (s.mode, s.effective_rate_limit) == ("test", 25.0)
    live = load_settings({"STRIPE_API_KEY": "rk_live_abc"})
    assert (live.mode, live.effective_rate_limit) == ("live", 100.0)
    assert load_settings({"STRIPE_SYNC_RATE_LIMIT": "0"}).effective_rate_limit == 0.0


@pytest.mark.parametrize(
    "env,message",
    [
        ({"STRIPE_SYNC_CONCURRENCY": "many"}, "STRIPE_SYNC_CONCURRENCY: Expected `int`, got `str`"),
        ({"STRIPE_SYNC_CONCURRENCY": "0"}, "STRIPE_SYNC_CONCURRENCY: must be > 0, got 0"),
        ({"STRIPE_SYNC_LOG_FORMAT": "xml"}, "STRIPE_SYNC_LOG_FORMAT: Invalid enum value 'xml'"),
        ({"STRIPE_API_KEY": "pk_test_123"}, "STRIPE_API_KEY: expected a secret or restricted key"),
        ({"STRIPE_WEBHOOK_SECRET": "whsec_a,nope"}, "STRIPE_WEBHOOK_SECRET: each secret must"),
        ({"STRIPE_SYNC_RATE_LIMIT": "-1"}, "STRIPE_SYNC_RATE_LIMIT: must be >= 0"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_required_variable() -> None:
    with pytest.raises(ConfigError, match=r"^DATABASE_URL is not set$"):
        load_settings({}).require("DATABASE_URL")


def test_webhook_secrets_rotate_comma_separated() -> None:
    s = load_settings({"STRIPE_WEBHOOK_SECRET": "whsec_old, whsec_new"})
    assert [x.reveal() for x in s.webhook_secrets] == ["whsec_old", "whsec_new"]


def test_secrets_never_show() -> None:
    s = load_settings({"STRIPE_API_KEY": KEY, "STRIPE_WEBHOOK_SECRET": "whsec_SECRETSECRET"})
    for text in (repr(s), str(s), f"{s}", f"{s.stripe_api_key}", str(s.webhook_secrets)):
        assert KEY not in text and "whsec_SECRET" not in text
    assert s.stripe_api_key == Secret(KEY)


def test_log_lines_scrub_registered_secrets() -> None:
    register_secrets([KEY])
    record = logging.makeLogRecord(
        {"msg": f"calling with {KEY}", "levelno": 20, "levelname": "INFO", "detail": KEY}
    )
    line = LogfmtFormatter().format(record)
    assert KEY not in line and "**********" in line
