"""Chaos: real servers and real worker processes are killed or restarted while
worlds are being generated; every run must still complete, exactly once.

Randomness is seeded (``CHAOS_SEED`` overrides the default) and the seed is
printed, so a failure can be reproduced. Logs of every process are kept under
``test-artifacts/logs/``.
"""

import collections
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings

from clients import mongo
from generation import documents
from localstack import servers
from tests.test_generation import FINISHED, counts, llm_control, make_world, wait_for
from worlds.models import GenerationRun
from worlds.services import generation_start

pytestmark = pytest.mark.django_db(transaction=True)

SEED = int(os.environ.get("CHAOS_SEED", "20261123"))


def expected_counts(characters: int, posts_per_character: int) -> dict:
    posts = characters * posts_per_character
    # bible, cast, one profile and one plan per character, one per post, one render per avatar and per post
    return {
        "bibles": 1,
        "characters": characters,
        "posts": posts,
        "images": characters + posts,
        "tasks": 1 + 1 + 2 * characters + posts + characters + posts,
    }


def assert_complete_and_exact(run: GenerationRun, characters: int, posts_per_character: int) -> None:
    """The run completed; Mongo holds exactly one of everything it should, nothing degraded or orphaned."""
    assert run.status == "completed", (run.workflow_id, run.status, run.stage, run.error)
    assert (run.characters_done, run.posts_done, run.degraded_items) == (
        characters,
        characters * posts_per_character,
        0,
    ), run.workflow_id
    assert counts(run) == expected_counts(characters, posts_per_character), run.workflow_id

    db, key = mongo.get_db(), run.ref.key
    post_positions = collections.Counter(
        (p["run_key"], p["character_index"], p["index"])
        for p in db.posts.find({"run_key": key}, {"run_key": 1, "character_index": 1, "index": 1})
    )
    assert set(post_positions) == {(key, c, i) for c in range(characters) for i in range(posts_per_character)}
    assert max(post_positions.values()) == 1, post_positions
    character_positions = collections.Counter(c["index"] for c in db.characters.find({"run_key": key}, {"index": 1}))
    assert sorted(character_positions) == list(range(characters)) and max(character_positions.values()) == 1
    assert all(c["image_status"] == documents.ImageStatus.RENDERED for c in db.characters.find({"run_key": key}))
    assert all(p["image_status"] == documents.ImageStatus.RENDERED for p in db.posts.find({"run_key": key}))
    assert {t["status"] for t in db.generation_tasks.find({"run_key": key}, {"status": 1})} == {"succeeded"}

    # GridFS: every file has all of its chunks exactly once, and no chunk is orphaned.
    files = list(db["images.files"].find({"_id": documents.run_images(run.ref)}))
    expected_chunks = 0
    for f in files:
        n = math.ceil(f["length"] / f["chunkSize"])
        expected_chunks += n
        chunk_numbers = sorted(c["n"] for c in db["images.chunks"].find({"files_id": f["_id"]}, {"n": 1}))
        assert chunk_numbers == list(range(n)), (f["_id"], chunk_numbers)
    assert db["images.chunks"].count_documents({"files_id": documents.run_images(run.ref)}) == expected_chunks


def wait_for_all(runs: list[GenerationRun], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    ids = [r.pk for r in runs]
    while GenerationRun.objects.filter(pk__in=ids).exclude(status__in=FINISHED).exists():
        if time.monotonic() > deadline:
            stuck = list(
                GenerationRun.objects.filter(pk__in=ids)
                .exclude(status__in=FINISHED)
                .values_list("workflow_id", "status", "stage", "posts_done")
            )
            raise AssertionError(f"runs still not finished after {timeout:.0f}s: {stuck}")
        time.sleep(0.5)
    for run in runs:
        run.refresh_from_db()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def wait_port_free(port: int, timeout: float = 20) -> None:
    wait_until(lambda: servers.port_is_free(port), timeout, f"port {port} to be released", interval=0.2)


@dataclass
class RestartableServer:
    """A dedicated server on a fixed port and fixed storage, that a test may stop and start again."""

    name: str
    args: list[str]
    port: int
    logs_dir: Path
    ready_timeout: float = 90
    processes: list[servers.ManagedProcess] = field(default_factory=list)

    @property
    def current(self) -> servers.ManagedProcess | None:
        return self.processes[-1] if self.processes else None

    def start(self) -> None:
        wait_port_free(self.port)
        log_path = self.logs_dir / f"{self.name}-{len(self.processes)}.log"
        process = servers.start(self.name, self.args, log_path=log_path)
        self.processes.append(process)
        servers.wait_for_port(process, self.port, timeout=self.ready_timeout)

    def stop(self) -> int:
        """SIGTERM (SIGKILL after a grace period), as an orchestrator would."""
        code = self.current.stop()
        wait_port_free(self.port)
        return code

    def close(self) -> None:
        for process in self.processes:
            if process.alive():
                process.stop()


# --- 1. worker SIGKILLed repeatedly --------------------------------------------------------


def test_worker_killed_five_times_mid_run_every_world_completes_exactly_once(start_worker, llm_server):
    rng = random.Random(SEED)
    print(f"chaos seed: {SEED} (reproduce with CHAOS_SEED={SEED})")
    characters, posts_per_character, world_count, kills = 2, 2, 20, 5

    worker = start_worker()
    llm_control(llm_server, {"latency_s": 0.25})
    unfinished_at_kill, posts_at_kill = [], []
    try:
        runs = [
            generation_start(
                world=make_world(name=f"Chaos {i}", character_count=characters, posts_per_character=posts_per_character)
            )
            for i in range(world_count)
        ]
        ids, keys = [r.pk for r in runs], [r.ref.key for r in runs]
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 2.5))
            unfinished_at_kill.append(GenerationRun.objects.filter(pk__in=ids).exclude(status__in=FINISHED).count())
            posts_at_kill.append(mongo.get_db().posts.count_documents({"run_key": {"$in": keys}}))
            worker.process.kill()
            assert not worker.process.alive()
            worker = start_worker()
        print(f"unfinished runs at each kill: {unfinished_at_kill}; posts made by then: {posts_at_kill}")
        wait_for_all(runs, timeout=180)
    finally:
        llm_control(llm_server, {"reset": True})

    assert unfinished_at_kill[0] > 0, "every run finished before the first kill: nothing was tested"
    assert max(posts_at_kill) > 0, "no kill happened while posts were being generated"
    for run in runs:
        assert_complete_and_exact(run, characters, posts_per_character)


def run_through_outage(
    server: "RestartableServer",
    down_seconds: float,
    llm_server: str,
    characters: int,
    posts_per_character: int,
    before_stop=lambda run: None,
    while_down=lambda: None,
) -> GenerationRun:
    """Start a world; once its first post exists stop ``server``, keep it down, restart it, wait for the end."""
    llm_control(llm_server, {"latency_s": 0.3})
    try:
        run = generation_start(world=make_world(character_count=characters, posts_per_character=posts_per_character))

        def first_post_done():  # in Mongo: the run row's counts are mirrored at most every 2 s
            run.refresh_from_db()
            assert run.status not in FINISHED, (run.status, run.error)
            return mongo.get_db().posts.count_documents({"run_key": run.ref.key}) >= 1

        wait_until(first_post_done, 90, "the first post")
        before_stop(run)
        server.stop()
        time.sleep(down_seconds)
        while_down()
        server.start()
        return wait_for(run, FINISHED, timeout=180)
    finally:
        llm_control(llm_server, {"reset": True})


# --- 2. MongoDB restarted mid-run ----------------------------------------------------------

MONGO_DOWN_SECONDS = float(os.environ.get("CHAOS_MONGO_DOWN_SECONDS", "8"))


@pytest.fixture
def restartable_mongo(stack_env, tmp_path, logs_dir):
    """A dedicated on-disk SecantusDB; this process's Mongo client points at it during the test."""
    port = servers.free_port()
    storage = tmp_path / "mongo"
    storage.mkdir()
    server = RestartableServer(
        "secantus-chaos", servers.secantus_args(port=port, storage=storage), port, logs_dir, ready_timeout=60
    )
    session_uri = settings.MONGO_URI
    try:
        server.start()
        settings.MONGO_URI = servers.mongo_uri(port)
        mongo.close_client()
        mongo.init_client()
        yield server
    finally:
        settings.MONGO_URI = session_uri
        mongo.close_client()
        mongo.init_client()
        server.close()


def test_mongo_restarted_mid_run_the_world_still_completes_exactly(restartable_mongo, llm_server, start_worker):
    characters, posts_per_character = 3, 3
    start_worker(env={"MONGO_URI": servers.mongo_uri(restartable_mongo.port)})

    def first_post_is_in_mongo(run):
        assert mongo.get_db().posts.count_documents({"run_key": run.ref.key}) >= 1

    run = run_through_outage(
        restartable_mongo,
        MONGO_DOWN_SECONDS,
        llm_server,
        characters,
        posts_per_character,
        before_stop=first_post_is_in_mongo,
    )
    assert len(restartable_mongo.processes) == 2
    assert_complete_and_exact(run, characters, posts_per_character)
    key = run.ref.key
    retried = list(mongo.get_db().generation_tasks.find({"run_key": key, "attempt": {"$gt": 1}}, {"attempt": 1}))
    print(f"tasks retried across the Mongo outage: {retried}")


# --- 3. Temporal dev server restarted mid-run ----------------------------------------------

TEMPORAL_DOWN_SECONDS = float(os.environ.get("CHAOS_TEMPORAL_DOWN_SECONDS", "5"))


@pytest.fixture
def restartable_temporal(stack_env, tmp_path, logs_dir):
    """A dedicated file-backed Temporal dev server; this process's client points at it during the test."""
    from clients import temporal as client

    port = servers.free_port()
    args = servers.temporal_dev_server_args(port=port, ui_port=None, db_file=tmp_path / "temporal.db")
    server = RestartableServer("temporal-chaos", args, port, logs_dir, ready_timeout=90)
    session_address = settings.TEMPORAL_ADDRESS
    try:
        server.start()
        settings.TEMPORAL_ADDRESS = f"127.0.0.1:{port}"
        client._thread = None
        yield server
    finally:
        settings.TEMPORAL_ADDRESS = session_address
        client._thread = None
        server.close()


def test_temporal_restarted_mid_run_the_worker_reconnects_and_the_world_completes(
    restartable_temporal, llm_server, start_worker
):
    from temporalio.client import WorkflowExecutionStatus

    from clients.temporal import temporal_call

    characters, posts_per_character = 3, 3
    worker = start_worker(env={"TEMPORAL_ADDRESS": f"127.0.0.1:{restartable_temporal.port}"})

    def worker_survives():
        assert worker.process.alive(), f"worker exited while Temporal was down:\n{worker.process.log_tail(40)}"

    run = run_through_outage(
        restartable_temporal,
        TEMPORAL_DOWN_SECONDS,
        llm_server,
        characters,
        posts_per_character,
        while_down=worker_survives,
    )
    assert worker.process.alive(), f"worker exited:\n{worker.process.log_tail(40)}"
    assert len(restartable_temporal.processes) == 2
    assert run.stage and run.finished_at is not None
    assert_complete_and_exact(run, characters, posts_per_character)
    description = temporal_call(lambda c: c.get_workflow_handle(run.workflow_id).describe())
    assert description.status == WorkflowExecutionStatus.COMPLETED
