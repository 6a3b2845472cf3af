"""Settings come from the environment; a bad value fails with one clear line."""

import os
import secrets
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from worldgen_site.env import SettingsError, env_database, env_host_port, env_int


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("WORLDGEN_ENV", "SECRET_KEY", "DEBUG")}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "name, value",
    [
        ("MONGO_URI", "ftp://example.com"),
        ("TEMPORAL_ADDRESS", "no-port-here"),
        ("MEDIA_GRPC_TARGET", "host:99999"),
        ("DEBUG", "maybe"),
        ("WORKER_MAX_CONCURRENT_ACTIVITIES", "0"),
        ("MONGO_MAX_POOL_SIZE", "ten"),
        ("LLM_RATE_LIMIT_PER_SECOND", "fast"),
        ("DATABASE_URL", "mysql://u:p@db/worldgen"),
        ("LLM_BASE_URL", "not a url"),
        ("LOG_FORMAT", "xml"),
        ("WORLDGEN_ENV", "staging"),
    ],
)
def test_malformed_variable_fails_with_one_line_naming_it(name, value):
    result = manage("check", **{name: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("worldgen: configuration error: ")
    assert name in lines[0] and "Traceback" not in result.stderr


def test_defaults_work_for_local_development():
    result = manage("check")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_production_requires_secret_key_and_hosts():
    missing_key = manage("check", WORLDGEN_ENV="production", ALLOWED_HOSTS="worldgen.example.com")
    assert missing_key.returncode == 2 and "SECRET_KEY is required" in missing_key.stderr
    short_key = manage("check", WORLDGEN_ENV="production", SECRET_KEY="short", ALLOWED_HOSTS="x.example.com")
    assert short_key.returncode == 2 and "at least 50 characters" in short_key.stderr
    no_hosts = manage("check", WORLDGEN_ENV="production", SECRET_KEY=secrets.token_urlsafe(60))
    assert no_hosts.returncode == 2 and "ALLOWED_HOSTS" in no_hosts.stderr
    debug_on = manage("check", WORLDGEN_ENV="production", SECRET_KEY=secrets.token_urlsafe(60),
                      ALLOWED_HOSTS="x.example.com", DEBUG="true")
    assert debug_on.returncode == 2 and "DEBUG must be false" in debug_on.stderr


def test_production_settings_pass_check_deploy():
    result = manage("check", "--deploy", "--fail-level", "WARNING", WORLDGEN_ENV="production",
                    SECRET_KEY=secrets.token_urlsafe(60), ALLOWED_HOSTS="worldgen.example.com",
                    DATABASE_URL="postgres://worldgen:pw@db.internal:5432/worldgen")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_database_url_supports_sqlite_and_postgresql():
    pg = env_database("UNSET_FOR_TEST", "postgres://worldgen:pw@db.internal:5432/worldgen")
    assert pg["ENGINE"] == "django.db.backends.postgresql"
    assert (pg["HOST"], pg["PORT"], pg["NAME"], pg["USER"]) == ("db.internal", 5432, "worldgen", "worldgen")
    lite = env_database("UNSET_FOR_TEST", "sqlite:////tmp/worldgen.sqlite3")
    assert lite["ENGINE"] == "django.db.backends.sqlite3" and lite["NAME"] == "/tmp/worldgen.sqlite3"


def test_readers_reject_out_of_range_values(monkeypatch):
    monkeypatch.setenv("SOME_PORT_SETTING", "127.0.0.1:0")
    with pytest.raises(SettingsError, match="SOME_PORT_SETTING must be host:port"):
        env_host_port("SOME_PORT_SETTING", "127.0.0.1:1")
    monkeypatch.setenv("SOME_COUNT", "51")
    with pytest.raises(SettingsError, match="SOME_COUNT must be at least 1 and at most 50, got 51"):
        env_int("SOME_COUNT", 5, minimum=1, maximum=50)
