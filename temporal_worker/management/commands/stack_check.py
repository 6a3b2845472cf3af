from django.core.management.base import BaseCommand, CommandError

from clients.temporal import TemporalUnavailable
from temporal_worker.stack_check import stack_check_run


class Command(BaseCommand):
    help = "Run a probe on every task queue through Temporal and Mongo; prints which workers answered."

    def add_arguments(self, parser):
        parser.add_argument("--probes", type=int, default=1, help="probes per task queue")
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the result")

    def handle(self, *args, **opts):
        try:
            result = stack_check_run(probes_per_queue=opts["probes"], timeout=opts["timeout"])
        except (ValueError, TemporalUnavailable) as exc:
            raise CommandError(str(exc)) from None
        except Exception as exc:  # e.g. the workflow timed out because no worker serves a queue
            raise CommandError(f"stack check failed: {exc}") from None
        self.stdout.write(
            f"stack check {result.check_id}: {result.probes} probes answered on "
            f"{', '.join(result.task_queues)} by {', '.join(result.workers)}"
        )
