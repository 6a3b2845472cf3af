"""The production web process: gunicorn with worldgen_site/gunicorn.conf.py, production settings, and the
/healthz and /readyz probes against the real database, Mongo and Temporal dev server."""

import os
import secrets
import socket
import subprocess

import httpx
import pytest

from localstack import servers
from tests.conftest import ROOT

CONFIG = "worldgen_site/gunicorn.conf.py"
GUNICORN = str(servers.VENV_BIN / "gunicorn")


def production_env(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY")}
    return {
        **base,
        "WORLDGEN_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(60),
        "ALLOWED_HOSTS": "worldgen.example.com",
        **env,
    }


def gunicorn_config(**env: str) -> dict[str, str]:
    result = subprocess.run(
        [GUNICORN, "-c", CONFIG, "--print-config", "worldgen_site.wsgi"],
        cwd=ROOT,
        env=production_env(DATABASE_URL="postgres://u:p@db:5432/worldgen", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    pairs = (line.split(" = ", 1) for line in result.stdout.splitlines() if " = " in line)
    return {key.strip(): value.strip() for key, value in pairs}


def test_gunicorn_kills_a_request_only_after_the_temporal_call_timeout_has_answered_it():
    default = gunicorn_config()
    assert (default["timeout"], default["workers"], default["preload_app"]) == ("60", "4", "True")
    assert gunicorn_config(TEMPORAL_CALL_TIMEOUT_SECONDS="45")["timeout"] == "75"
    bad = subprocess.run(
        [GUNICORN, "-c", CONFIG, "--print-config", "worldgen_site.wsgi"],
        cwd=ROOT,
        env=production_env(TEMPORAL_CALL_TIMEOUT_SECONDS="soon", DATABASE_URL="postgres://u:p@db:5432/worldgen"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "TEMPORAL_CALL_TIMEOUT_SECONDS must be a number" in bad.stderr
    assert "Traceback" not in bad.stderr


def start_gunicorn(logs_dir, name: str, env: dict) -> tuple[servers.ManagedProcess, str]:
    port = servers.free_port()
    process = servers.start(
        name,
        [GUNICORN, "-c", CONFIG, "--workers", "1", "--bind", f"127.0.0.1:{port}", "worldgen_site.wsgi"],
        log_path=logs_dir / f"{name}.log",
        env=env,
        cwd=ROOT,
    )
    servers.wait_for_port(process, port, timeout=60)
    return process, f"http://127.0.0.1:{port}"


@pytest.mark.django_db
def test_probes_answer_plain_http_on_the_pod_ip_and_readiness_names_what_is_down(
    logs_dir, temporal_env, mongo_env, sql_env
):
    process, url = start_gunicorn(logs_dir, "gunicorn", production_env(**temporal_env, **mongo_env, **sql_env))
    try:
        # Plain HTTP to an address not in ALLOWED_HOSTS, as a kubelet probes: the probes answer...
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200, process.log_tail()
        assert ready.json() == {"status": "ok", "database": "ok", "mongo": "ok", "temporal": "ok"}
        # ...while every other request still goes through the host check.
        assert httpx.get(f"{url}/worlds/", timeout=10).status_code == 400
    finally:
        process.stop()

    with socket.socket() as closed, socket.socket() as silent:
        closed.bind(("127.0.0.1", 0))
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections and never answers
        down = {
            "MONGO_URI": f"mongodb://127.0.0.1:{closed.getsockname()[1]}/?retryWrites=false",
            "TEMPORAL_ADDRESS": f"127.0.0.1:{silent.getsockname()[1]}",
        }
        process, url = start_gunicorn(logs_dir, "gunicorn-deps-down", production_env(**sql_env, **down))
        try:
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200  # alive, so not restarted
            ready = httpx.get(f"{url}/readyz", timeout=15)
            assert ready.status_code == 503
            assert ready.json() == {
                "status": "unavailable",
                "database": "ok",
                "mongo": "unavailable",
                "temporal": "unavailable",
            }
        finally:
            process.stop()
    assert "readiness check failed" in process.log_path.read_text()
