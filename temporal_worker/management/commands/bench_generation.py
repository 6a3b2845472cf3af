import subprocess
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Benchmark the pipeline against a no-op baseline on a stack of its own "
            "(runs `python -m benchmarks.generation`; --help lists its options).")

    def run_from_argv(self, argv):
        # The benchmark starts its own servers and configures Django for them, so it
        # runs in a fresh process with the same arguments.
        code = subprocess.call([sys.executable, "-m", "benchmarks.generation", *argv[2:]], cwd=settings.BASE_DIR)
        if code:
            raise SystemExit(code)

    def handle(self, *args, **options):
        raise CommandError("run as: python manage.py bench_generation [options]")
