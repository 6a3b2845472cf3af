"""Abuse and access: API throttles counted in the shared database cache, the stricter ``generate`` scope,
admin login limits and the API docs behind a staff login."""

import os
import subprocess
import sys

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.cache import cache
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


def login(client, username: str, password: str):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password})


def test_failed_admin_logins_are_limited_per_username(editor, settings, client):
    settings.ADMIN_LOGIN_FAILURES_PER_USER = 3
    editor.set_password("right password")
    editor.save()
    assert [login(client, "throttled-editor", "wrong").status_code for _ in range(3)] == [200, 200, 200]
    refused = login(client, "Throttled-Editor", "right password")  # the right password no longer helps
    assert refused.status_code == 429 and "Too many failed logins" in refused.content.decode()
    assert int(refused["Retry-After"]) == settings.ADMIN_LOGIN_WINDOW_SECONDS
    assert login(client, "someone-else", "wrong").status_code == 200  # other users are not locked out
    cache.clear()  # the window has passed
    assert login(client, "throttled-editor", "right password").status_code == 302


def test_failed_admin_logins_are_limited_per_address(editor, settings, client):
    settings.ADMIN_LOGIN_FAILURES_PER_ADDRESS = 4
    for name in ("a", "b", "c", "d"):
        assert login(client, name, "wrong").status_code == 200
    assert login(client, "e", "wrong").status_code == 429


def test_a_successful_login_clears_the_username_s_failures(editor, settings, client):
    settings.ADMIN_LOGIN_FAILURES_PER_USER = 2
    editor.set_password("right password")
    editor.save()
    assert login(client, "throttled-editor", "wrong").status_code == 200
    assert login(client, "throttled-editor", "right password").status_code == 302
    client.logout()
    assert login(client, "throttled-editor", "wrong").status_code == 200  # one failure again, not two
    assert login(client, "throttled-editor", "right password").status_code == 302


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
