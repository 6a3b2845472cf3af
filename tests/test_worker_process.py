"""`run_temporal_worker` as a real process against the real dev server and Mongo."""

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from django.conf import settings

from clients import mongo
from clients.temporal import temporal_call
from generation.workflows import StackCheckInput, StackCheckResult, StackCheckWorkflow
from localstack import servers
from temporal_worker.stack_check import stack_check_run
from tests.conftest import ROOT


def log_messages(worker) -> list[str]:
    messages = []
    for line in worker.log().splitlines():
        try:
            messages.append(json.loads(line)["msg"])
        except (ValueError, KeyError):
            pass
    return messages


def test_health_reports_temporal_and_mongo_and_metrics_are_served(start_worker):
    worker = start_worker()
    body = worker.health().json()
    assert body["status"] == "ok"
    assert body["temporal"]["ok"] and body["temporal"]["address"] == settings.TEMPORAL_ADDRESS
    assert body["mongo"]["ok"] and body["mongo"]["max_pool_size"] == settings.MONGO_MAX_POOL_SIZE
    assert sorted(body["task_queues"]) == sorted(
        [settings.TEMPORAL_TASK_QUEUE_WORKFLOWS, settings.TEMPORAL_TASK_QUEUE_LLM, settings.TEMPORAL_TASK_QUEUE_MEDIA]
    )
    assert httpx.get(worker.health_url.replace("/healthz", "/nope"), timeout=5).status_code == 404

    stack_check_run()  # some traffic, so request and poll metrics exist
    metrics = httpx.get(worker.metrics_url, timeout=5)
    assert metrics.status_code == 200
    assert "temporal_request" in metrics.text and "temporal_activity_execution_latency" in metrics.text


def test_logs_are_structured_and_clients_are_opened_once_and_closed(start_worker):
    worker = start_worker()
    stack_check_run(probes_per_queue=5)
    assert worker.process.stop() == 0
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    messages = [line["msg"] for line in lines]
    assert messages.count("shared clients opened") == 1
    assert messages.count("shared clients closed") == 1
    assert messages.index("worker stopped") < messages.index("shared clients closed")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown_lets_in_flight_activities_finish(start_worker, stop_signal):
    worker = start_worker("--queues", "workflows", "--graceful-shutdown-timeout", "20")
    check_id = f"graceful-{uuid.uuid4().hex[:8]}"
    queue = settings.TEMPORAL_TASK_QUEUE_WORKFLOWS

    async def start(client):
        return await client.start_workflow(
            StackCheckWorkflow.run,
            StackCheckInput(check_id, [queue], 1, hold_seconds=3.0),
            id=check_id,
            task_queue=queue,
            execution_timeout=timedelta(minutes=2),
        )

    handle = temporal_call(start)

    async def pending_activities(client):
        return len((await handle.describe()).raw_description.pending_activities)

    deadline = time.monotonic() + 30
    while temporal_call(pending_activities) == 0:  # wait until the probe is running
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.1)
    time.sleep(0.5)

    worker.process.signal(stop_signal)
    assert worker.process.popen.wait(30) == 0, worker.log()
    assert "worker stopped" in log_messages(worker)
    # The probe finished during the shutdown: its document is there already.
    assert mongo.get_db().stack_checks.count_documents({"check_id": check_id}) == 1

    start_worker("--queues", "workflows")
    result = temporal_call(
        lambda client: client.get_workflow_handle(check_id, result_type=StackCheckResult).result(), timeout=60
    )
    assert result.probes == 1
    docs = list(mongo.get_db().stack_checks.find({"check_id": check_id}))
    assert len(docs) == 1 and docs[0]["attempt"] == 1  # completed once, not retried


def run_worker_command(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "run_temporal_worker", "--health-port", "-1", "--metrics-port", "-1", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_gives_up_clearly_when_temporal_never_comes_up(stack_env):
    address = f"127.0.0.1:{servers.free_port()}"
    result = run_worker_command("--connect-timeout", "3", env={**stack_env, "TEMPORAL_ADDRESS": address})
    assert result.returncode != 0
    assert f"giving up: Temporal at {address} is unreachable after 3s" in result.stderr
    assert "Traceback" not in result.stderr
    assert "is not reachable yet (attempt 1); retrying" in result.stderr


def test_gives_up_clearly_when_mongo_never_comes_up(stack_env):
    port = servers.free_port()
    env = {
        **stack_env,
        "MONGO_URI": f"mongodb://user:secret@127.0.0.1:{port}/?retryWrites=false",
        "MONGO_SERVER_SELECTION_TIMEOUT_MS": "300",
    }
    result = run_worker_command("--connect-timeout", "2", env=env)
    assert result.returncode != 0
    assert f"giving up: MongoDB at mongodb://127.0.0.1:{port}/" in result.stderr
    assert "secret" not in result.stderr  # credentials never reach the logs


def test_waits_for_temporal_that_starts_late(stack_env, logs_dir):
    port = servers.free_port()
    worker = servers.start(
        "worker",
        [
            sys.executable,
            "manage.py",
            "run_temporal_worker",
            "--health-port",
            "-1",
            "--metrics-port",
            "-1",
            "--connect-timeout",
            "60",
        ],
        log_path=logs_dir / "worker-late-temporal.log",
        env={**stack_env, "TEMPORAL_ADDRESS": f"127.0.0.1:{port}"},
        cwd=ROOT,
    )
    temporal = None
    try:
        time.sleep(3)
        assert worker.alive() and "not reachable yet" in worker.log_path.read_text()
        temporal = servers.start(
            "late temporal",
            servers.temporal_dev_server_args(port=port, ui_port=None),
            log_path=logs_dir / "temporal-late.log",
        )
        deadline = time.monotonic() + 60
        while "worker started" not in worker.log_path.read_text():
            assert worker.alive() and time.monotonic() < deadline, worker.log_tail(30)
            time.sleep(0.2)
        assert worker.stop() == 0
    finally:
        worker.stop()
        if temporal:
            temporal.stop()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--queues", "images"], "--queues takes 'all' or a comma list of workflows, llm, media"),
        (["--max-concurrent-activities", "0"], "--max-concurrent-activities must be at least 1"),
        (["--llm-rate-limit", "0"], "--llm-rate-limit must be greater than 0"),
        (["--max-cached-workflows", "-1"], "--max-cached-workflows must be at least 0"),
    ],
)
def test_bad_options_are_refused_with_a_message(stack_env, args, message):
    result = run_worker_command(*args, env=stack_env, timeout=30)
    assert result.returncode != 0 and message in result.stderr
