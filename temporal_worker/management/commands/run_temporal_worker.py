import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from temporal_worker.backoff import DependencyUnavailable
from temporal_worker.search_attributes import SearchAttributesMissing
from temporal_worker.worker import QUEUE_KINDS, WorkerExtensions, WorkerOptions, run_worker


def _queues(value: str) -> list[str]:
    kinds = list(QUEUE_KINDS) if value == "all" else [kind.strip() for kind in value.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(QUEUE_KINDS))
    if unknown or not kinds:
        raise CommandError(f"--queues takes 'all' or a comma list of {', '.join(QUEUE_KINDS)}; got {value!r}")
    return kinds


def _port(value: int) -> int | None:
    return None if value < 0 else value


class Command(BaseCommand):
    help = "Run a Temporal worker for worldgen's task queues until SIGINT/SIGTERM."

    def add_arguments(self, parser):
        parser.add_argument("--queues", default="all", help="'all' (default) or a comma list of: workflows, llm, media")
        parser.add_argument(
            "--max-concurrent-activities",
            type=int,
            default=settings.WORKER_MAX_CONCURRENT_ACTIVITIES,
            help="activity slots per task queue in this process",
        )
        parser.add_argument(
            "--max-concurrent-workflow-tasks", type=int, default=settings.WORKER_MAX_CONCURRENT_WORKFLOW_TASKS
        )
        parser.add_argument(
            "--max-cached-workflows",
            type=int,
            default=settings.WORKER_MAX_CACHED_WORKFLOWS,
            help="workflows kept in memory between their tasks (0: none; an evicted one replays its history)",
        )
        parser.add_argument(
            "--llm-rate-limit",
            type=float,
            default=settings.LLM_RATE_LIMIT_PER_SECOND,
            help="LLM activities per second across ALL workers (enforced by Temporal)",
        )
        parser.add_argument(
            "--max-activities-per-second",
            type=float,
            default=None,
            help="activities per second for this worker, per task queue",
        )
        parser.add_argument(
            "--graceful-shutdown-timeout",
            type=float,
            default=settings.WORKER_GRACEFUL_SHUTDOWN_SECONDS,
            help="seconds in-flight activities get to finish on shutdown",
        )
        parser.add_argument(
            "--connect-timeout",
            type=float,
            default=settings.WORKER_CONNECT_TIMEOUT_SECONDS,
            help="seconds to keep retrying Temporal and Mongo at start-up",
        )
        parser.add_argument("--health-host", default="127.0.0.1")
        parser.add_argument(
            "--health-port",
            type=int,
            default=8081,
            help="GET /healthz on this port; 0 picks a free port, -1 disables it",
        )
        parser.add_argument(
            "--metrics-port", type=int, default=9464, help="Prometheus metrics from the Temporal SDK; -1 disables them"
        )

    def extensions(self, opts) -> WorkerExtensions | None:
        """What a subclass adds to the workers (benchmarks/worker.py does)."""
        return None

    def handle(self, *args, **opts):
        for name in ("max_concurrent_activities", "max_concurrent_workflow_tasks"):
            if opts[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
        if opts["max_cached_workflows"] < 0:
            raise CommandError("--max-cached-workflows must be at least 0")
        if opts["llm_rate_limit"] <= 0:
            raise CommandError("--llm-rate-limit must be greater than 0")
        options = WorkerOptions(
            queues=_queues(opts["queues"]),
            max_concurrent_activities=opts["max_concurrent_activities"],
            max_concurrent_workflow_tasks=opts["max_concurrent_workflow_tasks"],
            max_cached_workflows=opts["max_cached_workflows"],
            llm_rate_limit=opts["llm_rate_limit"],
            max_activities_per_second=opts["max_activities_per_second"],
            graceful_shutdown_seconds=opts["graceful_shutdown_timeout"],
            connect_timeout=opts["connect_timeout"],
            health_host=opts["health_host"],
            health_port=_port(opts["health_port"]),
            metrics_port=_port(opts["metrics_port"]),
        )
        try:
            asyncio.run(run_worker(options, self.extensions(opts)))
        except DependencyUnavailable as exc:
            raise CommandError(f"giving up: {exc}") from None
        except SearchAttributesMissing as exc:
            raise CommandError(str(exc)) from None
