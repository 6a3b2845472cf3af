"""A worker for the benchmarks: ``run_temporal_worker`` plus the no-op baseline workflows and,
with ``--mongo-client-per-activity``, the anti-pattern of a new MongoClient for every activity.

    python -m benchmarks.worker [run_temporal_worker options] [--mongo-client-per-activity]
"""

import os
import sys


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "worldgen_site.settings")
    import django

    django.setup()
    from django.conf import settings

    from benchmarks.baseline import BaselineCharacterWorkflow, BaselineWorldWorkflow, baseline_noop
    from benchmarks.per_activity_mongo import MongoClientPerActivity, PerActivityDatabase
    from temporal_worker.management.commands.run_temporal_worker import Command
    from temporal_worker.worker import WorkerExtensions

    class BenchWorker(Command):
        def add_arguments(self, parser):
            super().add_arguments(parser)
            parser.add_argument(
                "--mongo-client-per-activity",
                action="store_true",
                help="a new MongoClient for every activity (the anti-pattern the benchmark measures)",
            )

        def extensions(self, opts) -> WorkerExtensions:
            extensions = WorkerExtensions(
                workflows=[BaselineWorldWorkflow, BaselineCharacterWorkflow], activities=[baseline_noop]
            )
            if opts["mongo_client_per_activity"]:
                extensions.database = lambda shared: PerActivityDatabase()
                extensions.interceptors.append(MongoClientPerActivity(settings.MONGO_URI, settings.MONGO_DB))
            return extensions

    BenchWorker().run_from_argv(["manage.py", "bench_worker", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
