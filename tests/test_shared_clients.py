"""Many concurrent activities share one Mongo client; connections stay bounded by its pool."""

import threading

import pymongo
from django.conf import settings

from clients import mongo
from temporal_worker.stack_check import stack_check_run

POOL_SIZE = 4
CONCURRENT_ACTIVITIES = 64
PROBES_PER_QUEUE = 150


def run_probes_watching_connections(stack_env) -> tuple:
    """Run the probes; returns (result, the most connections the server saw above its count before)."""
    observer = pymongo.MongoClient(stack_env["MONGO_URI"], maxPoolSize=1)
    baseline = observer.admin.command("serverStatus")["connections"]["current"]
    server_peak = baseline
    running = threading.Event()
    running.set()

    def watch_server_connections():
        nonlocal server_peak
        while running.is_set():
            server_peak = max(server_peak, observer.admin.command("serverStatus")["connections"]["current"])

    watcher = threading.Thread(target=watch_server_connections)
    watcher.start()
    try:
        result = stack_check_run(probes_per_queue=PROBES_PER_QUEUE, timeout=180)
    finally:
        running.clear()
        watcher.join()
        observer.close()
    assert result.probes == 3 * PROBES_PER_QUEUE
    assert len(result.workers) == 1
    assert mongo.get_db().stack_checks.count_documents({"check_id": result.check_id}) == result.probes
    return result, server_peak - baseline


def test_concurrent_activities_share_one_bounded_mongo_pool(start_worker, stack_env):
    worker = start_worker(
        "--max-concurrent-activities", str(CONCURRENT_ACTIVITIES), env={"MONGO_MAX_POOL_SIZE": str(POOL_SIZE)}
    )
    _, added_connections = run_probes_watching_connections(stack_env)

    pool = worker.health().json()["mongo"]["pool"]
    # The pool really was used concurrently, and never went beyond its bound.
    assert 1 < pool["peak_open"] <= POOL_SIZE
    assert pool["created"] <= POOL_SIZE
    # The server agrees: this worker added at most its pool plus the driver's
    # two monitoring sockets, although 64 activities ran at once.
    assert added_connections <= POOL_SIZE + 2, added_connections
    assert settings.MONGO_MAX_POOL_SIZE != POOL_SIZE  # the bound came from the worker's own env


def test_the_benchmarks_client_per_activity_mode_really_opens_clients_per_activity(start_worker, stack_env):
    """The anti-pattern bench_generation compares against: same probes, a MongoClient each."""
    worker = start_worker(
        "--max-concurrent-activities",
        str(CONCURRENT_ACTIVITIES),
        "--mongo-client-per-activity",
        env={"MONGO_MAX_POOL_SIZE": str(POOL_SIZE)},
        command=("-m", "benchmarks.worker"),
    )
    _, added_connections = run_probes_watching_connections(stack_env)

    assert worker.health().json()["mongo"]["pool"]["created"] <= 2  # the shared client only pinged and made indexes
    assert added_connections > POOL_SIZE + 2, added_connections
