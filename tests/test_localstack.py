"""`python -m localstack` (what `make demo` runs): up from nothing, admin reachable, clean stop."""

import signal
import socket
import subprocess
import sys
import time

import httpx

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


def test_a_taken_port_is_reported_clearly_and_nothing_starts(tmp_path):
    args, ports = stack_args(tmp_path)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports["--web-port"]))
        blocker.listen()
        result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"port {ports['--web-port']} (Django web server, change it with --web-port)" in result.stdout
    assert "all processes stopped" not in result.stdout  # nothing was started


def test_stack_comes_up_with_admin_and_stops_everything_on_ctrl_c(tmp_path):
    args, ports = stack_args(tmp_path)
    out = tmp_path / "localstack.out"
    with open(out, "w") as sink:
        stack = subprocess.Popen(args, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "Press Ctrl-C" not in out.read_text():
            assert stack.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.5)
        text = out.read_text()
        assert "3 probes answered on worldgen-llm, worldgen-media, worldgen-workflows" in text
        assert "Lanternfall Archipelago run 1 completed in" in text and "12 posts, 0 degraded" in text
        password = (tmp_path / "data" / "admin-password.txt").read_text().strip()
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
        assert (tmp_path / "data" / "temporal.db").exists() and (tmp_path / "data" / "db.sqlite3").exists()

        stack.send_signal(signal.SIGINT)
        assert stack.wait(60) == 0
        assert "all processes stopped" in out.read_text()
        for port in ports.values():
            assert servers.port_is_free(port), f"port {port} still in use after stop"
    finally:
        if stack.poll() is None:
            stack.kill()
