"""Settings come from the environment; a bad value fails with one clear line."""

import json
import os
import re
import secrets
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from worldgen_site.env import SettingsError, env_database, env_host_port, env_int


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("WORLDGEN_ENV", "SECRET_KEY", "DEBUG")}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


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
        ("TRUSTED_PROXY_COUNT", "one"),
        ("TRUSTED_PROXY_COUNT", "-1"),
        ("ADMIN_LOGIN_WINDOW_SECONDS", "0"),
    ],
)
def test_malformed_variable_fails_with_one_line_naming_it(name, value):
    result = manage("check", WORLDGEN_ENV="development", **{name: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("worldgen: configuration error: ")
    assert name in lines[0] and "Traceback" not in result.stderr


def test_defaults_work_for_local_development():
    result = manage("check", WORLDGEN_ENV="development")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_unset_environment_is_production_and_fails_closed():
    result = manage("check")  # manage() drops WORLDGEN_ENV, SECRET_KEY and DEBUG
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "worldgen: configuration error: SECRET_KEY is required in production (WORLDGEN_ENV is not development)"
    ]


@pytest.mark.parametrize("value", ["staging", "prod", "Development", "developmnet"])
def test_any_other_environment_name_is_production(value):
    show = (
        "from django.conf import settings as s; print(s.WORLDGEN_ENV, s.DEBUG, s.SESSION_COOKIE_SECURE, "
        "s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS)"
    )
    result = manage(
        "shell",
        "-c",
        show,
        WORLDGEN_ENV=value,
        SECRET_KEY=secrets.token_urlsafe(60),
        ALLOWED_HOSTS="worldgen.example.com",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "production False True True True 31536000"
    debug_on = manage(
        "check",
        WORLDGEN_ENV=value,
        SECRET_KEY=secrets.token_urlsafe(60),
        ALLOWED_HOSTS="worldgen.example.com",
        DEBUG="true",
    )
    assert debug_on.returncode == 2 and "DEBUG must be false in production" in debug_on.stderr


def test_production_requires_secret_key_and_hosts():
    missing_key = manage("check", WORLDGEN_ENV="production", ALLOWED_HOSTS="worldgen.example.com")
    assert missing_key.returncode == 2 and "SECRET_KEY is required" in missing_key.stderr
    short_key = manage("check", WORLDGEN_ENV="production", SECRET_KEY="short", ALLOWED_HOSTS="x.example.com")
    assert short_key.returncode == 2 and "at least 50 characters" in short_key.stderr
    no_hosts = manage("check", WORLDGEN_ENV="production", SECRET_KEY=secrets.token_urlsafe(60))
    assert no_hosts.returncode == 2 and "ALLOWED_HOSTS" in no_hosts.stderr
    debug_on = manage(
        "check",
        WORLDGEN_ENV="production",
        SECRET_KEY=secrets.token_urlsafe(60),
        ALLOWED_HOSTS="x.example.com",
        DEBUG="true",
    )
    assert debug_on.returncode == 2 and "DEBUG must be false" in debug_on.stderr


def test_production_settings_pass_check_deploy():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        WORLDGEN_ENV="production",
        SECRET_KEY=secrets.token_urlsafe(60),
        ALLOWED_HOSTS="worldgen.example.com",
        DATABASE_URL="postgres://worldgen:pw@db.internal:5432/worldgen",
    )
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


MONGO_PASSWORD, DB_PASSWORD, LLM_TOKEN, LLM_API_KEY, TEMPORAL_API_KEY = (
    "s3cretpw",
    "pgs3cret",
    "llmt0ken",
    "sk-llm-9f8e7d6c5b4a",
    "tmprl-5ecret-api-key",
)
SECRET_ENV = {
    "MONGO_URI": f"mongodb://worldgen:{MONGO_PASSWORD}@127.0.0.1:27017/?retryWrites=false",
    "DATABASE_URL": f"postgres://worldgen:{DB_PASSWORD}@127.0.0.1:1/worldgen",
    "LLM_BASE_URL": f"https://bot:{LLM_TOKEN}@llm.example.com/v1",
    "LLM_API_KEY": LLM_API_KEY,
    "TEMPORAL_API_KEY": TEMPORAL_API_KEY,
}
SECRETS = (MONGO_PASSWORD, DB_PASSWORD, LLM_TOKEN, LLM_API_KEY, TEMPORAL_API_KEY)


def run_with_secrets(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` after django.setup() in a development process whose settings hold secrets."""
    base = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "LOG_LEVEL")}
    setup = "import django, os, sys\nos.environ['DJANGO_SETTINGS_MODULE'] = 'worldgen_site.settings'\ndjango.setup()\n"
    return subprocess.run(
        [sys.executable, "-c", setup + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "WORLDGEN_ENV": "development", **SECRET_ENV, **env},
    )


DEBUG_PAGE = """
from django.conf import settings
from django.test import Client, override_settings
from django.urls import path

def boom(request):
    uri, base_url = settings.MONGO_URI, settings.LLM_BASE_URL  # frame locals shown on the page
    raise RuntimeError(f"cannot reach {uri} with key {settings.LLM_API_KEY}")

urlpatterns = [path("boom/", boom)]
# runserver copies os.environ into request.META; pass the secret variables the same way.
meta = {name: os.environ[name] for name in SECRET_NAMES}
with override_settings(ROOT_URLCONF="__main__"):
    client = Client(raise_request_exception=False)
    page = client.get("/boom/", **meta)
    text = client.get("/boom/", HTTP_ACCEPT="text/plain", **meta)
assert settings.DEBUG and page.status_code == text.status_code == 500
assert page["Content-Type"].startswith("text/html") and text["Content-Type"].startswith("text/plain")
print(page.content.decode() + "\\n=====\\n" + text.content.decode())
""".replace("SECRET_NAMES", repr(tuple(SECRET_ENV)))


def test_debug_page_masks_secret_settings_and_values():
    result = run_with_secrets(DEBUG_PAGE, DEBUG="true", ALLOWED_HOSTS="testserver", LOG_LEVEL="ERROR")
    assert result.returncode == 0, result.stderr[-3000:]
    html, text = result.stdout.split("\n=====\n")
    assert "RuntimeError" in html and "RuntimeError" in text
    for secret in SECRETS:
        assert secret not in result.stdout and secret not in result.stderr, secret
    for name in ("MONGO_URI", "LLM_BASE_URL", "LLM_API_KEY", "TEMPORAL_API_KEY", "DATABASES"):
        assert name in html and name in text, name
    hidden = "&#x27;********************&#x27;"  # the filter's substitute, pprinted and escaped
    for name in SECRET_ENV:  # a row in settings (but DATABASE_URL) and one in META, both hidden by name
        rows = re.findall(rf"<td>{name}</td>\s*<td class=\"code\"><pre>(.*?)</pre>", html)
        assert rows == [hidden] * (1 if name == "DATABASE_URL" else 2), (name, rows)
    # The exception message and frame locals keep their shape; only the secret values are masked.
    uri = "mongodb://worldgen:***@127.0.0.1:27017/?retryWrites=false"
    assert f"cannot reach {uri} with key ***" in text
    for local, value in (("uri", uri), ("base_url", "https://***@llm.example.com/v1")):
        assert re.search(rf"<td>{local}</td>\s*<td class=\"code\"><pre>&#x27;{re.escape(value)}&#x27;", html), local


LOG_LINE = """
import logging
from django.conf import settings
try:
    raise ConnectionError(f"cannot reach {settings.MONGO_URI}")
except ConnectionError:
    logging.getLogger("worldgen.test").error("connecting to %s with %s", settings.LLM_BASE_URL, settings.LLM_API_KEY,
                                             exc_info=True, extra={"temporal_key": settings.TEMPORAL_API_KEY,
                                                                   "db": settings.DATABASES["default"]})
"""


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_log_lines_mask_secrets_in_message_extra_and_exception(log_format):
    result = run_with_secrets(LOG_LINE, LOG_FORMAT=log_format)
    assert result.returncode == 0 and result.stdout == "", result.stderr
    for secret in SECRETS:
        assert secret not in result.stderr, secret
    assert "connecting to https://***@llm.example.com/v1 with ***" in result.stderr
    assert "ConnectionError: cannot reach mongodb://worldgen:***@127.0.0.1:27017/?retryWrites=false" in result.stderr
    if log_format == "json":
        entry = json.loads(result.stderr)  # still one JSON object on one line
        assert entry["temporal_key"] == "***" and "'PASSWORD': '***'" in entry["db"]
        assert entry["exc"].startswith("Traceback") and entry["msg"].startswith("connecting to")


STACK_CHECK_RUNS = 12


def test_a_command_that_made_a_temporal_client_exits_cleanly_every_time():
    """The client's Rust threads can abort a finalizing interpreter ("PyGILState_Release ... finalizing",
    exit 134: temporalio/sdk-python#300); without manage.py's os._exit, 1 run of 20 of this command aborted.
    Run it again and again: every run keeps its exit code and message, and none aborts."""
    from concurrent.futures import ThreadPoolExecutor

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    env = {"WORLDGEN_ENV": "development", "TEMPORAL_ADDRESS": f"127.0.0.1:{closed_port}"}
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: manage("stack_check", "--timeout", "2", **env), range(STACK_CHECK_RUNS)))
    for result in runs:
        assert result.returncode == 1, result.stderr
        assert f"Temporal is not reachable at 127.0.0.1:{closed_port}" in result.stderr
        assert "Fatal Python error" not in result.stderr


@pytest.mark.django_db
def test_the_suite_runs_on_the_database_it_was_asked_for(sql_env):
    """make test runs on PostgreSQL, as production does; make test-fast on SQLite."""
    from django.db import connection

    wanted = os.environ.get("WORLDGEN_TEST_DATABASE", "sqlite")
    assert connection.vendor == wanted
    assert sql_env["DATABASE_URL"].startswith(f"{wanted}://")
    assert connection.settings_dict["NAME"].endswith("worldgen" if wanted == "postgresql" else ".sqlite3")


def test_a_media_ca_file_needs_tls_and_must_exist():
    without_tls = manage("check", WORLDGEN_ENV="development", MEDIA_GRPC_CA_FILE=__file__)
    assert without_tls.returncode == 2 and "MEDIA_GRPC_TLS is false" in without_tls.stderr
    missing = manage("check", WORLDGEN_ENV="development", MEDIA_GRPC_TLS="true", MEDIA_GRPC_CA_FILE="/nope/ca.pem")
    assert missing.returncode == 2 and "MEDIA_GRPC_CA_FILE must be a readable PEM file" in missing.stderr
    assert (
        manage("check", WORLDGEN_ENV="development", MEDIA_GRPC_TLS="true", MEDIA_GRPC_CA_FILE=__file__).returncode == 0
    )
