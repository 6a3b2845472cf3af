"""Benchmark: the generation pipeline against a no-op baseline of the same shape.

Starts its own stack on free ports (Temporal dev server in memory, SecantusDB in
memory, the local LLM endpoint with ``--llm-latency``, the media server) and
``--workers`` worker processes, then runs, one after the other on the same
Temporal server:

- ``baseline``: ``BaselineWorldWorkflow`` (same activities per world, no-op);
- ``pipeline``: the real generation of ``--worlds`` worlds;
- ``per-activity-connections``: the same pipeline, but the workers open a new
  MongoClient for every activity (the anti-pattern), for comparison.

Prints a table and writes ``--json``. Figures are measured: activity counts from
the workers' Prometheus metrics, Mongo connections from the server's
``serverStatus``, worker RSS from ``/proc``.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.orchestration import MongoOps, history_figures, pipeline_workflow_ids
from localstack import servers

ROOT = Path(__file__).resolve().parent.parent


MODES = ("baseline", "pipeline", "per-activity-connections")
BENCH_WORKER = (sys.executable, "-m", "benchmarks.worker")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generation", description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=20)
    parser.add_argument("--characters", type=int, default=3)
    parser.add_argument("--posts", type=int, default=3, help="posts per character")
    parser.add_argument("--llm-latency", type=float, default=0.0, help="seconds the local LLM waits per call")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--max-concurrent-activities", type=int, default=200)
    parser.add_argument("--max-cached-workflows", type=int, default=1000, help="each worker's workflow cache")
    parser.add_argument("--premise-chars", type=int, default=0, help="pad each world's premise to this length")
    parser.add_argument("--database-url", help="the SQL database (default: a fresh SQLite file)")
    parser.add_argument(
        "--start-concurrency", type=int, default=1, help="runs started at once, as many web requests would (PostgreSQL)"
    )
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--json", type=Path, help="write the figures here")
    living = parser.add_argument_group("living mode (benchmarks/living.py; runs instead of --modes)")
    living.add_argument("--live-worlds", type=int, default=0, help="seed this many worlds and take them live")
    living.add_argument("--day-seconds", type=float, default=60.0, help="a world day every this many seconds")
    living.add_argument("--days", type=int, default=3, help="world days each live world lives")
    living.add_argument("--live-posts", type=int, default=1, help="posts per world day")
    living.add_argument("--live-comments", type=int, default=0, help="comments per world day (each answered)")
    living.add_argument(
        "--idle-seconds", type=float, default=20.0, help="at most this long to measure idle CPU after the days"
    )
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--mongo-auth",
        action="store_true",
        help="run Mongo with SCRAM-SHA-256 authentication, as production does "
        "(every new connection then authenticates)",
    )
    return parser.parse_args(argv)


class Stack:
    """The servers of one benchmark invocation, all on free ports, all stopped at the end.

    With ``llm_base_url`` the workers call that LLM endpoint instead of a local ``localllm``
    (``benchmarks.quality`` passes its model server)."""

    def __init__(self, opts: argparse.Namespace, workdir: Path, *, llm_base_url: str | None = None) -> None:
        self.opts, self.workdir, self.processes = opts, workdir, []
        self.worker_processes: list[servers.ManagedProcess] = []  # stopped with the stack if a mode fails
        try:
            self._start_all(llm_base_url)
        except BaseException:
            self.stop()
            raise

    def _start_all(self, llm_base_url: str | None) -> None:
        opts, workdir = self.opts, self.workdir
        ports = {name: servers.free_port() for name in ("temporal", "mongo", "llm", "media")}
        self.start_server(
            "Temporal", servers.temporal_dev_server_args(port=ports["temporal"], ui_port=None), ports["temporal"]
        )
        mongo_uri = self._start_mongo(ports["mongo"])
        if llm_base_url is None:
            self.start_server(
                "localllm",
                [sys.executable, "-m", "localllm", "--port", str(ports["llm"]), "--latency", str(opts.llm_latency)],
                ports["llm"],
            )
            llm_base_url = f"http://127.0.0.1:{ports['llm']}/v1"
        self.start_server(
            "mediaserver", [sys.executable, "-m", "mediaserver", "--port", str(ports["media"])], ports["media"]
        )
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "worldgen_site.settings",
            "LOG_FORMAT": "json",
            "TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}",
            "MONGO_URI": mongo_uri,
            "MONGO_DB": "worldgen_bench",
            "DATABASE_URL": opts.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}",
            "LLM_BASE_URL": llm_base_url,
            "MEDIA_GRPC_TARGET": f"127.0.0.1:{ports['media']}",
            "LLM_RATE_LIMIT_PER_SECOND": "100000",
            "GENERATION_CHARACTER_CONCURRENCY": "5",
        }

    def start_server(self, name: str, args: list[str], port: int, timeout: float = 90) -> servers.ManagedProcess:
        """Start a server (log in ``logs/<name>.log``), stopped with the stack, and wait for its port."""
        process = servers.start(name, args, log_path=self.workdir / "logs" / f"{name}.log", cwd=ROOT)
        self.processes.append(process)
        servers.wait_for_port(process, port, timeout=timeout)
        return process

    def _start_mongo(self, port: int) -> str:
        """SecantusDB in memory; with --mongo-auth on disk, restarted with a user and --auth. Returns the URI."""
        uri = servers.mongo_uri(port)
        if not self.opts.mongo_auth:
            self.start_server("SecantusDB", servers.secantus_args(port=port, storage=None), port)
            return uri
        import pymongo

        storage = self.workdir / "mongo"
        setup = self.start_server("SecantusDB-setup", servers.secantus_args(port=port, storage=storage), port)
        with pymongo.MongoClient(uri) as client:
            client.admin.command("createUser", "bench", pwd="bench-password", roles=["root"])
        setup.stop()
        self.processes.remove(setup)
        self.start_server("SecantusDB", [*servers.secantus_args(port=port, storage=storage), "--auth"], port)
        return uri.replace("mongodb://", "mongodb://bench:bench-password@")

    def start_workers(
        self, tag: str, *extra_args: str, command: tuple[str, ...] = BENCH_WORKER, cwd: Path = ROOT
    ) -> list["BenchWorker"]:
        """``opts.workers`` worker processes: ``command`` (run in ``cwd``) plus the worker options."""
        workers = []
        for index in range(self.opts.workers):
            metrics, health = servers.free_port(), servers.free_port()
            process = servers.start(
                f"worker-{tag}-{index}",
                [
                    *command,
                    "--metrics-port",
                    str(metrics),
                    "--health-port",
                    str(health),
                    "--max-concurrent-activities",
                    str(self.opts.max_concurrent_activities),
                    "--max-concurrent-workflow-tasks",
                    "200",
                    "--max-cached-workflows",
                    str(self.opts.max_cached_workflows),
                    *extra_args,
                ],
                log_path=self.workdir / "logs" / f"worker-{tag}-{index}.log",
                env=self.env,
                cwd=cwd,
            )
            self.worker_processes.append(process)
            servers.wait_for_port(process, health, timeout=120)
            workers.append(
                BenchWorker(process, f"http://127.0.0.1:{metrics}/metrics", f"http://127.0.0.1:{health}/healthz")
            )
        return workers

    def stop(self) -> None:
        for process in [*self.worker_processes, *reversed(self.processes)]:
            process.stop()


@dataclass
class BenchWorker:
    process: servers.ManagedProcess
    metrics_url: str
    health_url: str

    def mongo_pool_peak(self) -> int:
        """The most pooled connections its shared client had open (pymongo's pool listener)."""
        return httpx.get(self.health_url, timeout=10).json()["mongo"]["pool"]["peak_open"]


class Sampler(threading.Thread):
    """Samples the server's Mongo connection count and the workers' RSS until stopped."""

    def __init__(self, mongo_uri: str, pids: list[int]) -> None:
        super().__init__(daemon=True)
        import pymongo

        self.observer = pymongo.MongoClient(mongo_uri, maxPoolSize=1)
        self.calls = 0  # serverStatus commands sent (the Mongo operation counts leave them out)
        self.baseline = self._connections()
        self.pids, self.peak_connections, self.peak_rss_mb = pids, 0, 0.0
        self.running = True

    def _connections(self) -> int:
        self.calls += 1
        return self.observer.admin.command("serverStatus")["connections"]["current"]

    def run(self) -> None:
        while self.running:
            self.peak_connections = max(self.peak_connections, self._connections() - self.baseline)
            self.peak_rss_mb = max(self.peak_rss_mb, max(_rss_mb(pid) for pid in self.pids))
            time.sleep(0.2)

    def stop(self) -> None:
        self.running = False
        self.join()
        self.observer.close()


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric_total(metrics_urls: list[str], name: str, label: str = "") -> int:
    """The sum of a Prometheus metric's samples (every label set, or those with ``label``) over the workers."""
    total = 0.0
    for url in metrics_urls:
        for line in httpx.get(url, timeout=10).text.splitlines():
            if line.startswith((f"{name} ", f"{name}{{")) and label in line:
                total += float(line.rsplit(" ", 1)[1])
    return int(total)


def completed_activities(metrics_urls: list[str]) -> int:
    return metric_total(metrics_urls, "temporal_activity_execution_latency_count")


def workflow_cache(metrics_urls: list[str]) -> dict:
    """The workers' workflow (sticky) cache: hits, misses (a replay from history) and forced evictions."""
    names = ("sticky_cache_hit", "sticky_cache_miss", "sticky_cache_total_forced_eviction")
    return {name.removeprefix("sticky_cache_"): metric_total(metrics_urls, f"temporal_{name}") for name in names}


def run_mode(mode: str, stack: Stack, opts: argparse.Namespace) -> dict:
    workers = stack.start_workers(
        mode, *(["--mongo-client-per-activity"] if mode == "per-activity-connections" else [])
    )
    sampler = Sampler(stack.env["MONGO_URI"], [worker.process.popen.pid for worker in workers])
    mongo_ops = MongoOps(sampler.observer)
    rest_rate = mongo_ops.rest_rate()
    sampler.start()
    processes = {p.name: p.popen.pid for p in stack.processes} | {
        f"worker {index}": worker.process.popen.pid for index, worker in enumerate(workers)
    }
    cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()} | {"benchmark": time.process_time()}
    ops_before, sampled_before = mongo_ops.total(), sampler.calls
    started = time.monotonic()
    try:
        outcome = (run_baseline if mode == "baseline" else run_pipeline)(opts, tag=mode)
    finally:
        wall = time.monotonic() - started
        ops_after = mongo_ops.total()
        sampler.stop()
    cpu_after = {name: cpu_seconds(pid) for name, pid in processes.items()} | {"benchmark": time.process_time()}
    ops = ops_after - ops_before - (sampler.calls - sampled_before) - 1 - rest_rate * wall
    activities = completed_activities([worker.metrics_url for worker in workers])
    cache = workflow_cache([worker.metrics_url for worker in workers])
    # Heartbeats leave no history event, but each is a request to Temporal and a billed action on Temporal Cloud.
    heartbeats = metric_total(
        [worker.metrics_url for worker in workers], "temporal_request", 'operation="RecordActivityTaskHeartbeat"'
    )
    orchestration_cpu = sum(
        cpu_after[n] - cpu_before[n] for n in cpu_before if n == "Temporal" or n.startswith("worker")
    )
    items = opts.worlds * opts.characters * (1 + opts.posts)
    histories = outcome.pop("histories")
    pool_peaks = [worker.mongo_pool_peak() for worker in workers]
    for worker in workers:
        worker.process.stop()
    return {
        **outcome,
        "wall_s": round(wall, 2),
        "activities": activities,
        "activities_per_s": round(activities / wall, 1),
        "peak_mongo_connections": sampler.peak_connections,
        "worker_mongo_pool_peaks": pool_peaks,
        "worker_peak_rss_mb": round(sampler.peak_rss_mb, 1),
        "workflow_cache": cache,
        "cpu_s_by_process": {name: round(cpu_after[name] - cpu_before[name], 1) for name in cpu_before},
        # Temporal server + workers, per completed activity and per item (issue 14's orchestration_cpu_ratio
        # compares modes; per item too, as the pipeline makes an item in fewer, larger activities)
        "orchestration_cpu_ms_per_activity": round(1000 * orchestration_cpu / max(1, activities), 2),
        "orchestration_cpu_ms_per_item": round(1000 * orchestration_cpu / items, 2),
        "items_per_s": round(items / wall, 1),
        "mongo_ops": round(ops),
        "mongo_ops_per_activity": round(ops / max(1, activities), 2),
        "mongo_ops_per_item": round(ops / items, 2),
        "mongo_ops_at_rest_per_s": round(rest_rate, 2),
        "items": items,
        **histories,
        "history_bytes_per_item": round(histories["history_bytes"] / items),
        "temporal_actions_per_item": round(histories["temporal_actions"] / items, 3),
        "activity_heartbeats": heartbeats,
        "temporal_actions_per_item_with_heartbeats": round((histories["temporal_actions"] + heartbeats) / items, 3),
    }


def run_baseline(opts: argparse.Namespace, tag: str) -> dict:
    from django.conf import settings

    from benchmarks.baseline import BaselineInput, BaselineWorldWorkflow
    from clients.temporal import temporal_call

    workflow_ids = [f"baseline-{index}-{time.time_ns()}" for index in range(opts.worlds)]

    async def all_worlds(client):
        async def one(index: int) -> float:
            started = time.monotonic()
            await client.execute_workflow(
                BaselineWorldWorkflow.run,
                BaselineInput(
                    index,
                    opts.characters,
                    opts.posts,
                    settings.GENERATION_CHARACTER_CONCURRENCY,
                    settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
                    settings.TEMPORAL_TASK_QUEUE_LLM,
                    settings.TEMPORAL_TASK_QUEUE_MEDIA,
                ),
                id=workflow_ids[index],
                task_queue=settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
            )
            return time.monotonic() - started

        return await asyncio.gather(*(one(index) for index in range(opts.worlds)))

    durations = temporal_call(all_worlds, timeout=opts.timeout)
    children = [f"{wid}-c{index}" for wid in workflow_ids for index in range(opts.characters)]
    histories = temporal_call(lambda client: history_figures(client, [*workflow_ids, *children]), timeout=600)
    return {"worlds_completed": len(durations), "worlds_failed": 0, **_percentiles(durations), "histories": histories}


def run_pipeline(opts: argparse.Namespace, tag: str) -> dict:
    from django.conf import settings

    from clients import mongo
    from clients.temporal import temporal_call
    from worlds.models import GenerationRun, World
    from worlds.services import generation_start

    worlds = [
        World.objects.create(
            name=f"Bench {tag} world {index}",
            premise=_premise(opts.premise_chars),
            character_count=opts.characters,
            posts_per_character=opts.posts,
            token_budget=settings.GENERATION_MAX_TOKEN_BUDGET,
        )
        for index in range(opts.worlds)
    ]
    starting = time.monotonic()
    with ThreadPoolExecutor(opts.start_concurrency) as starts:
        runs = list(starts.map(lambda world: generation_start(world=world), worlds))
    starts_s = time.monotonic() - starting
    finished = wait_for_runs(runs, timeout=opts.timeout)
    db, keys = mongo.get_db(), [run.ref.key for run in finished]
    expected_posts, expected_characters = opts.characters * opts.posts, opts.characters
    duplicates = 0
    for key in keys:  # documents beyond what a world should have (keys are deterministic, so 0)
        duplicates += max(0, db.posts.count_documents({"run_key": key}) - expected_posts)
        duplicates += max(0, db.characters.count_documents({"run_key": key}) - expected_characters)
    workflow_ids = pipeline_workflow_ids(finished)
    histories = temporal_call(lambda client: history_figures(client, workflow_ids), timeout=600)
    return {
        "worlds_completed": sum(run.status == GenerationRun.Status.COMPLETED for run in finished),
        "worlds_failed": sum(run.status != GenerationRun.Status.COMPLETED for run in finished),
        "duplicates": duplicates,
        "starts_s": round(starts_s, 1),
        "peak_runs_in_flight": _peak_overlap([(run.started_at, run.finished_at) for run in finished]),
        **_percentiles([(run.finished_at - run.started_at).total_seconds() for run in finished]),
        "histories": histories,
    }


def _peak_overlap(spans: list[tuple]) -> int:
    """The most runs active at one time, from their rows' start and finish times."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    active = peak = 0
    for _, step in edges:
        active += step
        peak = max(peak, active)
    return peak


def _premise(chars: int) -> str:
    """The benchmark's premise, padded to ``chars`` characters if it is shorter."""
    premise = base = "A benchmark archipelago of tea houses."
    while len(premise) < chars:
        premise += " The tea houses trade letters by kite, and every island keeps its own calendar."
    return premise[: max(chars, len(base))]


def wait_for_runs(runs: list, *, timeout: float) -> list:
    """The run rows once none of ``runs`` is active any more (SystemExit after ``timeout`` seconds)."""
    from worlds.models import GenerationRun

    ids, deadline = [run.pk for run in runs], time.monotonic() + timeout
    while GenerationRun.objects.filter(pk__in=ids, status__in=GenerationRun.ACTIVE).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"generation did not finish within {timeout:.0f}s")
        time.sleep(0.5)
    return list(GenerationRun.objects.filter(pk__in=ids))


def _percentiles(durations: list[float]) -> dict:
    ordered = sorted(durations)
    return {
        "p50_world_s": round(statistics.median(ordered), 2),
        "p95_world_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
    }


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    modes = [mode.strip() for mode in opts.modes.split(",") if mode.strip()]
    if not modes or set(modes) - set(MODES):
        raise SystemExit(f"--modes takes a comma list of {', '.join(MODES)}; got {opts.modes!r}")
    workdir = Path(tempfile.mkdtemp(prefix="worldgen-bench-"))
    stack = Stack(opts, workdir)
    try:
        os.environ.update(stack.env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        if opts.live_worlds:
            from benchmarks.living import run_living

            results = {"living": run_living(stack, opts)}
        else:
            results = {mode: run_mode(mode, stack, opts) for mode in modes}
    finally:
        stack.stop()
    from django.conf import settings

    report = {
        "machine": f"{os.cpu_count()} cores",
        "options": {k: str(v) for k, v in vars(opts).items()},
        "mongo_pool_size": settings.MONGO_MAX_POOL_SIZE,
        **_summary(results),
        "modes": results,
    }
    if "living" not in results:
        print(_table(results))
        for mode, figures in results.items():
            print(f"{mode} CPU seconds by process: {figures['cpu_s_by_process']}")
    print(json.dumps({k: v for k, v in report.items() if k != "modes"}, indent=2))
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(report, indent=2))
    return 0 if not any(r.get("worlds_failed") for r in results.values()) else 1


def _summary(results: dict) -> dict:
    summary = dict(results.get("living", {}))
    if "pipeline" in results:
        pipeline = results["pipeline"]
        summary.update(
            {
                key: pipeline[key]
                for key in (
                    "worlds_completed",
                    "worlds_failed",
                    "duplicates",
                    "activities",
                    "wall_s",
                    "p50_world_s",
                    "p95_world_s",
                    "peak_mongo_connections",
                    "worker_mongo_pool_peaks",
                    "worker_peak_rss_mb",
                    "starts_s",
                    "peak_runs_in_flight",
                    "mongo_ops_per_activity",
                    "mongo_ops_per_item",
                    "history_bytes_per_item",
                    "temporal_actions_per_item",
                    "activity_heartbeats",
                    "temporal_actions_per_item_with_heartbeats",
                )
            }
        )
        summary["pipeline_activities_per_s"] = pipeline["activities_per_s"]
    if "baseline" in results:
        summary["baseline_activities_per_s"] = results["baseline"]["activities_per_s"]
    if "baseline" in results and "pipeline" in results:
        summary["ratio"] = round(summary["pipeline_activities_per_s"] / summary["baseline_activities_per_s"], 3)
        summary["items_ratio"] = round(results["pipeline"]["items_per_s"] / results["baseline"]["items_per_s"], 3)
        for unit in ("activity", "item"):
            key = f"orchestration_cpu_ms_per_{unit}"
            summary[f"orchestration_cpu_ratio{'' if unit == 'activity' else '_per_item'}"] = round(
                results["pipeline"][key] / results["baseline"][key], 2
            )
    if "per-activity-connections" in results:
        anti = results["per-activity-connections"]
        summary["per_activity_activities_per_s"] = anti["activities_per_s"]
        summary["per_activity_peak_mongo_connections"] = anti["peak_mongo_connections"]
        summary["per_activity_worlds_failed"] = anti["worlds_failed"]
    return summary


def _table(results: dict) -> str:
    columns = [
        "worlds_completed",
        "worlds_failed",
        "activities",
        "wall_s",
        "activities_per_s",
        "p50_world_s",
        "p95_world_s",
        "peak_mongo_connections",
        "worker_peak_rss_mb",
    ]
    lines = [f"{'mode':<26}" + "".join(f"{c:>24}" for c in columns)]
    for mode, figures in results.items():
        lines.append(f"{mode:<26}" + "".join(f"{figures.get(c, '-')!s:>24}" for c in columns))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
