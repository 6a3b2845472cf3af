import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mediaserver.server import serve


class Command(BaseCommand):
    help = "Run the reference gRPC media server (procedural images) until SIGINT/SIGTERM."
    requires_system_checks = []  # a standalone server: needs no models or database

    def add_arguments(self, parser):
        default_port = int(settings.MEDIA_GRPC_TARGET.rpartition(":")[2])
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
        parser.add_argument("--port", type=int, default=default_port,
                            help=f"port to listen on (default: from MEDIA_GRPC_TARGET, {default_port})")
        parser.add_argument("--workers", type=int, default=None, help="render threads (default: Python's choice)")

    def handle(self, *args, **opts):
        try:
            asyncio.run(serve(opts["host"], opts["port"], workers=opts["workers"]))
        except OSError as exc:
            raise CommandError(str(exc)) from None
