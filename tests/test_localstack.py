"""`python -m localstack` (what `make demo` runs): up from nothing, admin reachable, clean stop."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from localllm import MODEL_ID
from localstack import servers
from tests.conftest import ROOT

PORT_FLAGS = [
    "--web-port",
    "--temporal-port",
    "--temporal-ui-port",
    "--mongo-port",
    "--worker-health-port",
    "--worker-metrics-port",
    "--llm-port",
    "--media-port",
]


def stack_args(tmp_path) -> tuple[list[str], dict[str, int]]:
    ports = {flag: servers.free_port() for flag in PORT_FLAGS}
    args = [sys.executable, "-m", "localstack", "--data-dir", str(tmp_path / "data")]
    for flag, port in ports.items():
        args += [flag, str(port)]
    return args, ports


# What localstack prints when a port it was given was free when checked and taken before its server bound it:
# the Temporal dev server binds 5 random free ports as it starts, and so can any other process on the machine.
PORT_RACES = ("That port is already in use", "Address already in use", "did not answer a ping")


def start_stack(tmp_path, env: dict) -> tuple[subprocess.Popen, dict[str, int], Path, Path]:
    """Start ``python -m localstack`` on free ports and wait until it says it is up; returns the process, its
    ports, its output file and its data directory. Once only, a stack that lost one of its ports to another
    process is started again on other ports."""
    base = {k: v for k, v in os.environ.items() if k not in ("LLM_BASE_URL", "MEDIA_GRPC_TARGET")}
    for attempt in (1, 2):
        root = tmp_path / f"attempt-{attempt}"
        args, ports = stack_args(root)
        out = tmp_path / f"localstack-{attempt}.out"
        with open(out, "w") as sink:
            stack = subprocess.Popen(args, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env=base | env)
        deadline = time.monotonic() + 180
        while "Press Ctrl-C" not in out.read_text():
            if stack.poll() is not None or time.monotonic() > deadline:
                stack.send_signal(signal.SIGINT)  # it stops what it started
                stack.wait(60)
                text = out.read_text()
                if attempt == 1 and any(race in text for race in PORT_RACES):
                    print(f"a port was taken before the stack bound it; starting again:\n{text}")
                    break
                raise AssertionError(text)
            time.sleep(0.5)
        else:
            return stack, ports, out, root / "data"
    raise AssertionError("unreachable")


def test_a_taken_port_is_reported_clearly_and_nothing_starts(tmp_path):
    args, ports = stack_args(tmp_path)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports["--web-port"]))
        blocker.listen()
        result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"port {ports['--web-port']} (Django web server, change it with --web-port)" in result.stdout
    assert "all processes stopped" not in result.stdout  # nothing was started


def test_stack_comes_up_with_your_llm_and_admin_and_stops_everything_on_ctrl_c(tmp_path, logs_dir):
    """With LLM_BASE_URL, LLM_MODEL and LLM_API_KEY in the environment (here: an LLM endpoint that needs a
    key), the stack uses that endpoint and starts no LLM stand-in; the media server is the stand-in."""
    from tests.conftest import start_localllm

    yours, root = start_localllm(logs_dir, "your-llm", "--api-key", "your-secret-key")
    env = {"LLM_BASE_URL": f"{root}/v1", "LLM_MODEL": MODEL_ID, "LLM_API_KEY": "your-secret-key"}
    try:
        stack, ports, out, data = start_stack(tmp_path, env)
    except BaseException:
        yours.stop()
        raise
    try:
        text = out.read_text()
        assert f"using your LLM_BASE_URL={root}/v1: no stand-in is started for it" in text
        assert "starting the media server (a stand-in; set MEDIA_GRPC_TARGET to use yours)" in text
        assert servers.port_is_free(ports["--llm-port"])  # no stand-in there
        stats = httpx.get(f"{root}/_stats").json()  # your endpoint made the sample world: 22 calls at least
        assert stats["chat_requests"] >= 22 and stats["by_status"] == {"200": stats["chat_requests"]}
        assert "3 probes answered on worldgen-llm, worldgen-media, worldgen-workflows" in text
        assert "Lanternfall Archipelago run 1 completed in" in text and "12 posts, 0 degraded" in text
        password = (data / "admin-password.txt").read_text().strip()
        assert f"user: admin, password: {password}" in text

        with httpx.Client(base_url=f"http://127.0.0.1:{ports['--web-port']}") as web:
            login_page = web.get("/admin/login/")
            assert login_page.status_code == 200
            logged_in = web.post(
                "/admin/login/?next=/admin/",
                data={
                    "username": "admin",
                    "password": password,
                    "csrfmiddlewaretoken": web.cookies["csrftoken"],
                    "next": "/admin/",
                },
                follow_redirects=True,
            )
            assert logged_in.status_code == 200 and "Site administration" in logged_in.text
            assert "Lanternfall Archipelago" in web.get("/admin/worlds/world/").text
            avatar = web.get("/images/img-w1-r1-c0.png")
            assert avatar.status_code == 200 and avatar.headers["content-type"] == "image/png"
            assert avatar.content.startswith(b"\x89PNG")
            assert web.get("/images/img-w1-r1-c99.png").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{ports['--temporal-ui-port']}/", timeout=10).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{ports['--worker-health-port']}/healthz").json()["status"] == "ok"
        assert (data / "temporal.db").exists() and (data / "db.sqlite3").exists()

        stack.send_signal(signal.SIGINT)
        assert stack.wait(60) == 0
        assert "all processes stopped" in out.read_text()
        for port in ports.values():
            assert servers.port_is_free(port), f"port {port} still in use after stop"
    finally:
        if stack.poll() is None:
            stack.kill()
        yours.stop()


def test_the_llm_stand_in_answers_as_its_own_model_and_your_image_api_draws(tmp_path, logs_dir):
    """LLM_MODEL set (for an endpoint of yours) but no LLM_BASE_URL: the stand-in runs, and the sample world
    is made (it used to fail with "model does not exist"). With MEDIA_IMAGE_BASE_URL, the media server draws
    every image with that OpenAI-compatible image API."""
    from tests.conftest import start_localllm

    images, root = start_localllm(logs_dir, "your-image-api")
    env = {
        "LLM_MODEL": "llama3.1",
        "MEDIA_IMAGE_BASE_URL": f"{root}/v1",
        "MEDIA_IMAGE_MODEL": "worldgen-procedural-image-1",
    }
    try:
        stack, _, out, _ = start_stack(tmp_path, env)
    except BaseException:
        images.stop()
        raise
    try:
        text = out.read_text()
        assert "starting the local LLM endpoint (a stand-in; set LLM_BASE_URL to use yours)" in text
        assert f"using your MEDIA_IMAGE_BASE_URL={root}/v1: the media server draws with it" in text
        assert "Lanternfall Archipelago run 1 completed in" in text and "12 posts, 0 degraded" in text
        stats = httpx.get(f"{root}/_stats").json()
        assert stats["image_requests"] >= 12 + 3  # every post and avatar
        assert stats["last_image"]["request"]["model"] == "worldgen-procedural-image-1"
    finally:
        stack.send_signal(signal.SIGINT)
        assert stack.wait(60) == 0
        images.stop()
