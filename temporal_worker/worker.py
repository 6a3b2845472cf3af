"""Worker assembly: which task queues this process serves, with which limits.

Three task queues, so each kind of work scales and is rate-limited alone:
``workflows`` (workflow tasks and Mongo/DB activities), ``llm`` (LLM calls;
its rate limit holds across every worker) and ``media`` (gRPC rendering).
Benchmarks add their own workflows, activities and interceptors through
``WorkerExtensions``; nothing here imports them.
"""

import asyncio
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from pymongo.database import Database
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Interceptor, Worker

from clients import tracing
from clients.temporal import connect_client
from generation import metrics as app_metrics
from generation.activities import (
    CleanupActivities,
    LlmActivities,
    MediaActivities,
    Snapshots,
    StackCheckActivities,
    StoreActivities,
)
from generation.documents import ensure_indexes
from generation.living.activities import LivingActivities
from generation.living.workflows import LiveWorldWorkflow
from generation.llm import LlmClient
from generation.media import MediaClient
from generation.workflows import (
    CharacterWorkflow,
    RegenerateItemWorkflow,
    RegenerateVersionWorkflow,
    RenderMissingImagesWorkflow,
    RerenderImagesWorkflow,
    StackCheckWorkflow,
    WorldCleanupWorkflow,
    WorldGenerationWorkflow,
    WorldRunWorkflow,
)
from temporal_worker.backoff import wait_until_ready
from temporal_worker.health import HealthServer
from temporal_worker.heartbeat import HeartbeatInterceptor
from temporal_worker.resources import SharedClients
from temporal_worker.search_attributes import require_search_attributes
from worlds.activities import RunMirrorActivities
from worlds.reconciler import reconcile_forever

log = logging.getLogger(__name__)

QUEUE_KINDS = ("workflows", "llm", "media")
# Heartbeats reach the server at least this often (the SDK's default waits 80% of the heartbeat
# timeout): a cancel reaches a running activity within about this long.
HEARTBEAT_FLUSH_INTERVAL = timedelta(seconds=2)


def task_queue_for(kind: str) -> str:
    return {
        "workflows": settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
        "llm": settings.TEMPORAL_TASK_QUEUE_LLM,
        "media": settings.TEMPORAL_TASK_QUEUE_MEDIA,
    }[kind]


@dataclass
class WorkerOptions:
    queues: list[str]  # kinds of QUEUE_KINDS this process serves
    max_concurrent_activities: int
    max_concurrent_workflow_tasks: int
    llm_rate_limit: float  # activities/s on the LLM task queue, across all workers
    max_activities_per_second: float | None  # this worker only
    graceful_shutdown_seconds: float
    connect_timeout: float
    health_host: str = "127.0.0.1"
    health_port: int | None = 0  # 0: any free port; None: no endpoint
    max_cached_workflows: int = 1000  # the SDK's default
    metrics_port: int | None = None


@dataclass
class WorkerExtensions:
    """What a caller adds to the pipeline's workers (the benchmarks do: their baseline and their
    client-per-activity anti-pattern)."""

    workflows: list = field(default_factory=list)  # on the workflows queue
    activities: list = field(default_factory=list)  # on every queue
    interceptors: list[Interceptor] = field(default_factory=list)
    database: Callable[[Database], Any] | None = None  # what activities get instead of the shared database


def build_workers(
    client: Client,
    clients: SharedClients,
    options: WorkerOptions,
    executor: ThreadPoolExecutor,
    extensions: WorkerExtensions | None = None,
) -> list[Worker]:
    extensions = extensions or WorkerExtensions()
    db = clients.mongo[settings.MONGO_DB]
    if extensions.database is not None:
        db = extensions.database(db)
    stack_check = StackCheckActivities(db)
    llm_client = LlmClient(clients.llm_http, default_model=settings.LLM_MODEL, send_sampling=settings.LLM_SEND_SAMPLING)
    snapshots = Snapshots(db)  # the runs' world snapshots, read once per worker
    llm = LlmActivities(llm_client, db, snapshots)
    media = MediaActivities(MediaClient(clients.media_channel), db, snapshots)
    living = LivingActivities(llm_client, db, media)
    store_activities, mirror = StoreActivities(db), RunMirrorActivities()
    cleanup = CleanupActivities(client, db)
    activities_by_kind: dict[str, list[Callable[..., Any]]] = {
        "workflows": [
            store_activities.mark_image_for_rerender,
            store_activities.mark_character_for_rerender,
            store_activities.list_images_to_rerender,
            store_activities.list_images_to_rerender_page,
            store_activities.count_images_to_rerender,
            store_activities.archive_versions,
            store_activities.prepare_versions,
            store_activities.promote_versions,
            mirror.record_run_status,
            mirror.record_regeneration,
            mirror.record_live_state,
            living.react,
            mirror.record_degraded_items,
            cleanup.stop_workflows,
            cleanup.delete_world_content,
        ],
        "llm": [
            llm.generate_bible,
            llm.generate_cast,
            llm.generate_character,
            llm.plan_posts,
            llm.generate_post,
            llm.write_character,
            living.live_day,
            living.write_event,
            living.write_day_post,
            living.write_comment,
            living.update_memory,
        ],
        "media": [media.render_image, media.render_character, media.render_images],
    }
    workers = []
    for kind in options.queues:
        kwargs: dict[str, Any] = {}
        if kind == "workflows":
            kwargs["workflows"] = [
                WorldRunWorkflow,
                WorldGenerationWorkflow,
                CharacterWorkflow,
                RerenderImagesWorkflow,
                RenderMissingImagesWorkflow,
                RegenerateItemWorkflow,
                RegenerateVersionWorkflow,
                LiveWorldWorkflow,
                WorldCleanupWorkflow,
                StackCheckWorkflow,
                *extensions.workflows,
            ]
            kwargs["max_concurrent_workflow_tasks"] = options.max_concurrent_workflow_tasks
            kwargs["max_cached_workflows"] = options.max_cached_workflows
        if kind == "llm":
            kwargs["max_task_queue_activities_per_second"] = options.llm_rate_limit
        workers.append(
            Worker(
                client,
                task_queue=task_queue_for(kind),
                activities=[stack_check.record_probe, *activities_by_kind[kind], *extensions.activities],
                activity_executor=executor,
                max_concurrent_activities=options.max_concurrent_activities,
                max_activities_per_second=options.max_activities_per_second,
                graceful_shutdown_timeout=timedelta(seconds=options.graceful_shutdown_seconds),
                max_heartbeat_throttle_interval=HEARTBEAT_FLUSH_INTERVAL,
                interceptors=[HeartbeatInterceptor(), *extensions.interceptors],
                **kwargs,
            )
        )
    return workers


def make_runtime(options: WorkerOptions) -> Runtime | None:
    if options.metrics_port is None:
        return None
    bind = f"{options.health_host}:{options.metrics_port}"
    log.info("prometheus metrics", extra={"url": f"http://{bind}/metrics"})
    # The application's metrics (generation/metrics.py) are served here too, with their own buckets.
    prometheus = PrometheusConfig(bind_address=bind, histogram_bucket_overrides=app_metrics.BUCKETS)
    return Runtime(telemetry=TelemetryConfig(metrics=prometheus))


async def run_worker(options: WorkerOptions, extensions: WorkerExtensions | None = None) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully. Raises
    ``DependencyUnavailable`` if Temporal or Mongo never comes up."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Async activities reach the (sync) PyMongo client through asyncio.to_thread:
    # as many threads as the pool has connections.
    loop.set_default_executor(ThreadPoolExecutor(settings.MONGO_MAX_POOL_SIZE, thread_name_prefix="mongo"))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    clients = SharedClients.open(max_connections=options.max_concurrent_activities)
    health = None
    try:
        await wait_until_ready(
            lambda: asyncio.to_thread(clients.mongo.admin.command, "ping"),
            what="MongoDB",
            address=_redact(settings.MONGO_URI),
            timeout=options.connect_timeout,
        )
        await asyncio.to_thread(ensure_indexes, clients.mongo[settings.MONGO_DB])
        runtime = make_runtime(options)
        client = await wait_until_ready(
            lambda: connect_client(runtime=runtime),
            what="Temporal",
            address=settings.TEMPORAL_ADDRESS,
            timeout=options.connect_timeout,
        )
        await require_search_attributes(client)  # SearchAttributesMissing names the fix
        executor = ThreadPoolExecutor(
            max_workers=options.max_concurrent_activities * len(options.queues), thread_name_prefix="activity"
        )
        workers = build_workers(client, clients, options, executor, extensions)
        if options.health_port is not None:
            health = HealthServer(
                host=options.health_host,
                port=options.health_port,
                checks={"temporal": lambda: _temporal_check(client), "mongo": lambda: _mongo_check(clients)},
                info={"task_queues": [task_queue_for(kind) for kind in options.queues]},
            )
            await health.start()
        runs = [asyncio.create_task(worker.run()) for worker in workers]
        reconciler = None
        if "workflows" in options.queues and settings.RECONCILE_INTERVAL_SECONDS:
            reconciler = asyncio.create_task(reconcile_forever(client))
        log.info(
            "worker started",
            extra={
                "task_queues": [task_queue_for(kind) for kind in options.queues],
                "max_concurrent_activities": options.max_concurrent_activities,
            },
        )
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, *runs], return_when=asyncio.FIRST_COMPLETED)
        failed = [task for task in runs if task in done]
        log.info("worker shutting down", extra={"graceful_timeout_s": options.graceful_shutdown_seconds})
        if reconciler is not None:
            reconciler.cancel()
        await asyncio.gather(*(worker.shutdown() for worker in workers))
        await asyncio.gather(*runs, return_exceptions=True)
        executor.shutdown(wait=True)
        for task in failed:
            task.result()  # re-raise a worker's fatal error
        log.info("worker stopped")
    finally:
        if health is not None:
            await health.close()
        await clients.aclose()
        await asyncio.to_thread(tracing.shutdown)  # sends the spans still buffered (manage.py ends with os._exit)


async def _temporal_check(client: Client) -> dict:
    await client.service_client.check_health()
    return {"address": settings.TEMPORAL_ADDRESS, "namespace": settings.TEMPORAL_NAMESPACE}


async def _mongo_check(clients: SharedClients) -> dict:
    from clients.mongo import pool_stats

    await asyncio.to_thread(clients.mongo.admin.command, "ping")
    return {"pool": pool_stats.snapshot(), "max_pool_size": settings.MONGO_MAX_POOL_SIZE}


def _redact(uri: str) -> str:
    """Drop credentials from a URI before it reaches a log line."""
    scheme, sep, rest = uri.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if "@" in rest else uri
