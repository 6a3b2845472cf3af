"""Abuse and access: API throttles counted in the shared database cache, the stricter ``generate`` scope,
admin login lockouts per username + client address (django-axes), also behind real reverse proxies, and the
API docs behind a staff login."""

import http.client
import os
import re
import runpy
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.core.cache import cache
from django.db.models import F
from django.http import HttpResponse
from django.test import Client
from rest_framework.settings import api_settings
from rest_framework.test import APIClient

from tests.conftest import ROOT
from worlds.staff_groups import grant_staff_groups


@pytest.fixture
def editor(db) -> User:
    grant_staff_groups(Group, Permission)
    user = User.objects.create_user("throttled-editor", is_staff=True)
    user.groups.add(Group.objects.get(name="Editors"))
    cache.clear()
    yield user
    cache.clear()


@pytest.mark.django_db(transaction=True)
def test_generate_calls_have_a_stricter_limit_counted_in_the_shared_cache(editor, monkeypatch, sql_env):
    monkeypatch.setitem(api_settings.DEFAULT_THROTTLE_RATES, "generate", "3/minute")
    client = APIClient()
    client.force_login(editor)
    paths = ["/api/worlds/999999/generate/", "/api/runs/999999/regenerate/", "/api/runs/999999/resume/"]
    assert [client.post(path, {}, format="json").status_code for path in paths] == [404, 404, 404]
    refused = client.post("/api/runs/999999/rerender/", {}, format="json")
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert "throttled" in refused.json()["detail"].lower()
    assert client.get("/api/worlds/").status_code == 200  # other calls keep the general rate

    # Another process (as a second web process would) reads the same count from the database.
    read = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            f"from django.core.cache import cache; print(len(cache.get('throttle_generate_{editor.pk}')))",
        ],
        cwd=ROOT,
        env={**os.environ, **sql_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert read.stdout.split()[-1] == "3", read.stdout + read.stderr


SPENDING_CALLS = [  # each leads to LLM work (issue 22, finding 22: these had the general rate only)
    "/api/worlds/999999/live/",
    "/api/worlds/999999/live/resume/",
    "/api/worlds/999999/live/budget/",
    "/api/worlds/999999/live/events/",
    "/api/runs/999999/reject/",
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", SPENDING_CALLS)
def test_going_live_live_resume_budget_events_and_reject_have_the_generate_limit(editor, monkeypatch, path):
    monkeypatch.setitem(api_settings.DEFAULT_THROTTLE_RATES, "generate", "1/minute")
    editor.groups.add(Group.objects.get(name="Reviewers"))  # reject is a reviewer's
    client = APIClient()
    client.force_login(editor)
    assert client.post(path, {}, format="json").status_code in (400, 404)  # an empty body, or no such world
    refused = client.post(path, {}, format="json")
    assert refused.status_code == 429 and "throttled" in refused.json()["detail"].lower()


@pytest.mark.django_db(transaction=True)
def test_live_commands_that_spend_nothing_keep_the_general_rate(editor, monkeypatch):
    monkeypatch.setitem(api_settings.DEFAULT_THROTTLE_RATES, "generate", "1/minute")
    client = APIClient()
    client.force_login(editor)
    for path in ["/api/worlds/999999/live/pause/", "/api/worlds/999999/live/stop/"] * 2:
        assert client.post(path, {}, format="json").status_code == 404
    assert client.get("/api/worlds/999999/live/").status_code == 404


# --- Admin login lockouts (django-axes; the AXES_* settings) ---------------------------------------------------
# Failures count per username + client address together. The in-process tests give each request its address
# (REMOTE_ADDR); the proxy tests run real HTTP through reverse proxies in front of the live server.
# Documentation addresses (RFC 5737) stand for clients.
STRANGER, STAFF_HOME, OFFICE = "203.0.113.66", "198.51.100.7", "192.0.2.10"
LOGIN_PATH = "/admin/login/?next=/admin/"
# What worldgen_site/settings.py derives from the login variables, applied by `web_env`.
LOGIN_SETTINGS = (
    "AXES_FAILURE_LIMIT",
    "AXES_COOLOFF_TIME",
    "TRUSTED_PROXY_COUNT",
    "AXES_IPWARE_META_PRECEDENCE_ORDER",
    "AXES_IPWARE_PROXY_COUNT",
    "AXES_IPWARE_PROXY_ORDER",
    "IPWARE_ALGORITHM",
    "IPWARE_STRICT",
)


@pytest.fixture
def web_env(settings, monkeypatch):
    """Gives this process (and its live server) the login settings that worldgen_site/settings.py reads from
    these environment variables, as a web process started with them would have."""

    def apply(**env: str) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        loaded = runpy.run_path(str(ROOT / "worldgen_site" / "settings.py"))
        for name in LOGIN_SETTINGS:
            setattr(settings, name, loaded[name])

    return apply


@pytest.fixture
def staff(db, settings) -> User:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins for the test
    user = User.objects.create_user("locked-editor", password="right password", is_staff=True)
    User.objects.create_user("other-editor", password="other password", is_staff=True)
    return user


def login(username: str, password: str, address: str) -> HttpResponse:
    """A browser at ``address``: GET the login page for the CSRF cookie, then POST the form (CSRF enforced)."""
    client = Client(enforce_csrf_checks=True)
    assert client.get(LOGIN_PATH, REMOTE_ADDR=address).status_code == 200
    form = {"csrfmiddlewaretoken": client.cookies["csrftoken"].value, "username": username, "password": password}
    return client.post(LOGIN_PATH, form, REMOTE_ADDR=address)


def failures(username: str, address: str) -> int:
    rows = AccessAttempt.objects.filter(username=username, ip_address=address)
    return sum(rows.values_list("failures_since_start", flat=True))


def assert_locked_out(response) -> None:
    text = response.content.decode()
    assert response.status_code == 429, text
    assert "Too many failed logins" in text and "locked from your address" in text
    assert "Traceback" not in text and "_auth_user_id" not in response.client.session


def cool_off_passes() -> None:
    """Moves every recorded failure back by the cool-off, as if that much time had passed."""
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - settings.AXES_COOLOFF_TIME)


def test_failures_lock_the_username_and_address_pair_until_the_cool_off(staff, web_env):
    web_env(ADMIN_LOGIN_FAILURES_PER_USER="3", ADMIN_LOGIN_WINDOW_SECONDS="600")
    assert [login("locked-editor", "wrong", OFFICE).status_code for _ in range(2)] == [200, 200]
    locked = login("locked-editor", "wrong", OFFICE)  # the third failure locks the pair
    assert_locked_out(locked)
    assert "until 10 minutes" in " ".join(locked.content.decode().split())
    assert_locked_out(login("locked-editor", "right password", OFFICE))  # the right password no longer helps
    assert failures("locked-editor", OFFICE) == 3  # refused attempts are not counted: they do not extend the lockout
    cool_off_passes()
    assert login("locked-editor", "right password", OFFICE).status_code == 302


def test_a_stranger_cannot_lock_a_username_out_of_other_addresses(staff, settings):
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(3):
        login("locked-editor", "wrong", STRANGER)
    assert_locked_out(login("locked-editor", "right password", STRANGER))
    # The real user, on another address, logs in; no address blocks everyone: other users log in from the
    # stranger's address.
    assert login("locked-editor", "right password", STAFF_HOME).status_code == 302
    assert login("other-editor", "other password", STRANGER).status_code == 302
    for name in ("a", "b", "c", "d", "e", "f"):  # failures for many usernames from one address lock none of them
        assert login(name, "wrong", STRANGER).status_code == 200


def test_a_successful_login_clears_the_pair_s_failures(staff, settings):
    settings.AXES_FAILURE_LIMIT = 2
    assert login("locked-editor", "wrong", OFFICE).status_code == 200
    assert login("locked-editor", "wrong", STRANGER).status_code == 200
    assert login("locked-editor", "right password", OFFICE).status_code == 302
    assert failures("locked-editor", OFFICE) == 0
    assert failures("locked-editor", STRANGER) == 1  # only that username + address was cleared
    assert login("locked-editor", "wrong", OFFICE).status_code == 200  # one failure again, not two
    assert login("locked-editor", "right password", OFFICE).status_code == 302


def test_the_lockout_counts_every_failure_of_concurrent_requests(staff, live_server, settings):
    """Many processes or threads failing at once: each failure is one SQL transaction that adds 1 in the
    database, so none is lost (the old cache counter read, added and wrote back)."""
    settings.AXES_FAILURE_LIMIT = 1000

    def fail(_) -> int:
        return http_login(live_server.url, "locked-editor", "wrong").status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(fail, range(24))) == {200}
    assert failures("locked-editor", "127.0.0.1") == 24


# --- Behind reverse proxies: real HTTP through proxies that append to X-Forwarded-For -------------------------
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


class ForwardingProxy:
    """A threaded HTTP reverse proxy on a free port in front of ``upstream``. Like nginx's
    ``proxy_add_x_forwarded_for``, it appends the address of the client it was given to X-Forwarded-For (a
    client's own X-Forwarded-For is kept in front). Every connection in the test comes from 127.0.0.1, so each
    proxy is given the address it stands for: ``client_address``, the client that connects to it."""

    def __init__(self, upstream: str, client_address: str):
        target = urlsplit(upstream)

        class Handler(BaseHTTPRequestHandler):
            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                forwarded = self.headers.get("X-Forwarded-For")
                headers["X-Forwarded-For"] = f"{forwarded}, {client_address}" if forwarded else client_address
                connection = http.client.HTTPConnection(target.netloc, timeout=30)
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    answer = connection.getresponse()
                    data = answer.read()
                finally:
                    connection.close()
                self.send_response_only(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in HOP_BY_HOP | {"content-length"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = forward

            def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxies(live_server):
    """``proxies(address, ...)``: a proxy in front of the live server for each client address; with several
    addresses, a chain (the first one in front) whose each proxy appends the address of the one before it."""
    started: list[ForwardingProxy] = []

    def chain(*addresses: str) -> str:
        upstream = live_server.url
        for address in reversed(addresses):
            started.append(ForwardingProxy(upstream, address))
            upstream = started[-1].url
        return upstream

    yield chain
    for proxy in started:
        proxy.close()


def http_login(base_url: str, username: str, password: str, headers: dict | None = None) -> httpx.Response:
    """A browser over HTTP: GET the login page (CSRF cookie and token), then POST the form."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as browser:
        page = browser.get(LOGIN_PATH)
        assert page.status_code == 200, page.text
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert match, page.text
        token = match[1]
        form = {"csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/admin/"}
        return browser.post(LOGIN_PATH, data=form)


def assert_http_locked_out(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert "Too many failed logins" in response.text and "Traceback" not in response.text


def test_behind_a_proxy_failures_lock_only_the_forwarded_client_s_pair(staff, proxies, web_env):
    web_env(TRUSTED_PROXY_COUNT="1", ADMIN_LOGIN_FAILURES_PER_USER="3")
    client_a, client_b = proxies(STRANGER), proxies(STAFF_HOME)
    # CSRF stays on behind the proxy: a POST without the token is refused before any password check.
    assert httpx.post(f"{client_a}{LOGIN_PATH}", data={"username": "locked-editor", "password": "x"}).status_code == 403
    assert [http_login(client_a, "locked-editor", "wrong").status_code for _ in range(2)] == [200, 200]
    assert_http_locked_out(http_login(client_a, "locked-editor", "wrong"))
    assert_http_locked_out(http_login(client_a, "locked-editor", "right password"))
    assert failures("locked-editor", STRANGER) == 3
    # Client B, through its own proxy, logs in with the same username.
    assert http_login(client_b, "locked-editor", "right password").headers["location"] == "/admin/"


def test_a_client_s_own_x_forwarded_for_does_not_choose_its_address(staff, proxies, web_env):
    """Only the entry the proxy appended counts: a forged X-Forwarded-For naming the staff member's address
    (plain, or ending in an unclosed quote that a quote-aware parser would let swallow the proxy's entry) is
    still counted against the stranger's own address."""
    web_env(TRUSTED_PROXY_COUNT="1", ADMIN_LOGIN_FAILURES_PER_USER="3")
    stranger, staff_member = proxies(STRANGER), proxies(STAFF_HOME)
    for forged in (STAFF_HOME, f'{STAFF_HOME}, "x', f"{STAFF_HOME}, unknown"):
        http_login(stranger, "locked-editor", "wrong", headers={"X-Forwarded-For": forged})
    assert failures("locked-editor", STRANGER) == 3 and failures("locked-editor", STAFF_HOME) == 0
    assert http_login(staff_member, "locked-editor", "right password").status_code == 302


def test_two_proxies_need_a_trusted_proxy_count_of_two(staff, proxies, web_env):
    web_env(TRUSTED_PROXY_COUNT="2", ADMIN_LOGIN_FAILURES_PER_USER="3")
    # The edge proxy appends the client's address, the inner one the edge proxy's (10.0.0.5).
    client_a, client_b = proxies(STRANGER, "10.0.0.5"), proxies(STAFF_HOME, "10.0.0.5")
    for _ in range(3):
        http_login(client_a, "locked-editor", "wrong", headers={"X-Forwarded-For": STAFF_HOME})
    assert failures("locked-editor", STRANGER) == 3
    assert_http_locked_out(http_login(client_a, "locked-editor", "right password"))
    assert http_login(client_b, "locked-editor", "right password").status_code == 302


def test_without_trusted_proxies_every_client_behind_the_proxy_has_the_proxy_s_address(staff, proxies, web_env):
    """TRUSTED_PROXY_COUNT=0 (the default) ignores X-Forwarded-For: behind a proxy, axes sees the proxy's own
    address for everyone, so client A's failures lock client B out of the same username too."""
    web_env(TRUSTED_PROXY_COUNT="0", ADMIN_LOGIN_FAILURES_PER_USER="3")
    client_a, client_b = proxies(STRANGER), proxies(STAFF_HOME)
    for _ in range(3):
        http_login(client_a, "locked-editor", "wrong")
    assert failures("locked-editor", "127.0.0.1") == 3 and failures("locked-editor", STRANGER) == 0
    assert_http_locked_out(http_login(client_b, "locked-editor", "right password"))


def test_a_successful_login_through_the_proxy_clears_the_pair_s_failures(staff, proxies, web_env):
    web_env(TRUSTED_PROXY_COUNT="1", ADMIN_LOGIN_FAILURES_PER_USER="2")
    client_a = proxies(OFFICE)
    assert http_login(client_a, "locked-editor", "wrong").status_code == 200
    assert http_login(client_a, "locked-editor", "right password").status_code == 302
    assert failures("locked-editor", OFFICE) == 0
    assert http_login(client_a, "locked-editor", "wrong").status_code == 200  # one failure again, not two
    assert http_login(client_a, "locked-editor", "right password").status_code == 302


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
def test_api_docs_need_a_staff_login(editor, path):
    assert APIClient().get(path).status_code == 403
    outsider = APIClient()
    outsider.force_login(User.objects.create_user("not-staff"))
    assert outsider.get(path).status_code == 403
    staff = APIClient()
    staff.force_login(editor)
    assert staff.get(path).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_api_docs_can_be_opened_by_a_setting(sql_env):
    """API_DOCS_PUBLIC=true serves the docs and the schema to anyone (settings are read at start)."""
    script = (
        "from django.test import Client; c = Client(HTTP_HOST='localhost'); "
        "print(c.get('/api/docs/').status_code, c.get('/api/schema/').status_code)"
    )
    read = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env={**os.environ, **sql_env, "API_DOCS_PUBLIC": "true"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert read.stdout.split()[-2:] == ["200", "200"], read.stdout + read.stderr
