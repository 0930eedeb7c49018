from __future__ import annotations

import logging
from pathlib import Path

import pytest

from stripe_sync.config import ConfigError, Secret, load_settings
from stripe_sync.runtime.logs import LogfmtFormatter, register_secrets

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
        ({"STRIPE_SYNC_CONCURRENCY": "many"}, "STRIPE_SYNC_CONCURRENCY=many: expected an integer"),
        ({"STRIPE_SYNC_CONCURRENCY": "0"}, "STRIPE_SYNC_CONCURRENCY: must be > 0, got 0"),
        ({"STRIPE_SYNC_LOG_FORMAT": "xml"}, "STRIPE_SYNC_LOG_FORMAT=xml: expected one of "),
        ({"STRIPE_SYNC_BIND": "localhost"}, "STRIPE_SYNC_BIND=localhost: expected host:port"),
        ({"STRIPE_SYNC_METRICS_BIND": ":x"}, "STRIPE_SYNC_METRICS_BIND=:x: expected host:port"),
        ({"DATABASE_URL": "nonsense=1"}, 'DATABASE_URL: invalid connection option "nonsense"'),
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


# --- secrets from files: systemd credentials and NAME_FILE ---------------------------------


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    """A $CREDENTIALS_DIRECTORY as systemd lays it out for LoadCredential=."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    return directory


def test_each_secret_from_a_credential_newline_stripped(creds: Path) -> None:
    _write(creds / "database_url", "postgresql:///billing\n")
    _write(creds / "stripe_api_key", KEY + "\n")
    _write(creds / "stripe_webhook_secret", "whsec_old,whsec_new\r\n")
    s = load_settings({"CREDENTIALS_DIRECTORY": str(creds)})
    assert s.database_url == "postgresql:///billing"
    assert s.stripe_api_key == Secret(KEY)
    assert [x.reveal() for x in s.webhook_secrets] == ["whsec_old", "whsec_new"]


def test_each_secret_from_a_file_variable(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL_FILE": _write(tmp_path / "db", "postgresql:///billing\n"),
        "STRIPE_API_KEY_FILE": _write(tmp_path / "key", KEY),
        "STRIPE_WEBHOOK_SECRET_FILE": _write(tmp_path / "whsec", "whsec_one\n"),
    }
    s = load_settings(env)
    assert (s.database_url, s.stripe_api_key) == ("postgresql:///billing", Secret(KEY))
    assert [x.reveal() for x in s.webhook_secrets] == ["whsec_one"]


def test_sources_that_agree_are_fine_and_a_credential_may_be_absent(
    creds: Path, tmp_path: Path
) -> None:
    _write(creds / "stripe_api_key", KEY + "\n")
    env = {
        "CREDENTIALS_DIRECTORY": str(creds),
        "STRIPE_API_KEY": KEY,
        "STRIPE_API_KEY_FILE": _write(tmp_path / "key", KEY),
        "DATABASE_URL": "postgresql:///billing",  # no database_url credential: not an error
    }
    s = load_settings(env)
    assert (s.stripe_api_key, s.database_url) == (Secret(KEY), "postgresql:///billing")


@pytest.mark.parametrize(
    "sources,message",
    [
        (
            {"variable", "file"},
            "STRIPE_API_KEY: the variable STRIPE_API_KEY and STRIPE_API_KEY_FILE disagree",
        ),
        (
            {"variable", "credential"},
            "STRIPE_API_KEY: the variable STRIPE_API_KEY and the credential stripe_api_key "
            "disagree",
        ),
        (
            {"file", "credential"},
            "STRIPE_API_KEY: STRIPE_API_KEY_FILE and the credential stripe_api_key disagree",
        ),
    ],
)
def test_sources_that_disagree_name_both_never_the_values(
    sources: set[str], message: str, creds: Path, tmp_path: Path
) -> None:
    # Each source a different key; the first named is the one set first.
    keys = {"variable": KEY, "file": KEY + "_file", "credential": KEY + "_cred"}
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    if "variable" in sources:
        env["STRIPE_API_KEY"] = keys["variable"]
    if "file" in sources:
        env["STRIPE_API_KEY_FILE"] = _write(tmp_path / "key", keys["file"])
    if "credential" in sources:
        _write(creds / "stripe_api_key", keys["credential"])
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert str(err.value) == message + "; set it in one place"
    assert "RECOGNISABLE" not in str(err.value)


@pytest.mark.parametrize(
    "setup,message",
    [
        ("missing", "DATABASE_URL: cannot read DATABASE_URL_FILE ({path}): No such file"),
        ("directory", "DATABASE_URL: cannot read DATABASE_URL_FILE ({path}): Is a directory"),
        ("empty", "DATABASE_URL: DATABASE_URL_FILE ({path}) is empty"),
        ("newline only", "DATABASE_URL: DATABASE_URL_FILE ({path}) is empty"),
        ("binary", "DATABASE_URL: cannot read DATABASE_URL_FILE ({path}): not UTF-8 text"),
    ],
)
def test_a_file_that_cannot_be_used_is_an_error(setup: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "db"
    if setup == "directory":
        path.mkdir()
    elif setup != "missing":
        path.write_bytes({"empty": b"", "newline only": b"\n", "binary": b"\xff\xfe"}[setup])
    with pytest.raises(ConfigError) as err:
        load_settings({"DATABASE_URL_FILE": str(path)})
    assert str(err.value).startswith(message.format(path=path))


def test_an_empty_or_unreadable_credential_is_an_error(creds: Path) -> None:
    _write(creds / "stripe_webhook_secret", "")
    empty = r"^STRIPE_WEBHOOK_SECRET: the credential stripe_webhook_secret \(.*\) is empty$"
    with pytest.raises(ConfigError, match=empty):
        load_settings({"CREDENTIALS_DIRECTORY": str(creds)})
    (creds / "stripe_webhook_secret").unlink()
    (creds / "stripe_webhook_secret").symlink_to(creds / "gone")  # a dangling link
    with pytest.raises(ConfigError, match=r"cannot read the credential stripe_webhook_secret"):
        load_settings({"CREDENTIALS_DIRECTORY": str(creds)})
