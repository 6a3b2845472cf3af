"""``python -m mediaserver --host 127.0.0.1 --port 50051 [--fail-first N] [--delay SECONDS]
[--reject-prompts-with TEXT]``

The default port is the one of ``MEDIA_GRPC_TARGET`` (the worker's setting), else 50051."""

import argparse
import asyncio
import logging
import os
import sys

from mediaserver.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mediaserver", description="worldgen reference media server (gRPC)")
    parser.add_argument("--host", default="127.0.0.1")
    target_port = os.environ.get("MEDIA_GRPC_TARGET", "127.0.0.1:50051").rpartition(":")[2]
    parser.add_argument(
        "--port",
        type=int,
        default=int(target_port) if target_port.isdigit() else 50051,
        help="default: the port of MEDIA_GRPC_TARGET, else 50051",
    )
    parser.add_argument("--workers", type=int, default=None, help="render threads (default: Python's choice)")
    parser.add_argument(
        "--fail-first",
        type=int,
        default=0,
        metavar="N",
        help="fault injection: the first N RenderImage calls return UNAVAILABLE",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="fault injection: sleep this long before answering each call",
    )
    parser.add_argument(
        "--reject-prompts-with",
        default="",
        metavar="TEXT",
        help="fault injection: refuse (INVALID_ARGUMENT) every prompt that contains TEXT, as a content policy would",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(
            serve(
                args.host,
                args.port,
                fail_first=args.fail_first,
                delay=args.delay,
                workers=args.workers,
                reject=args.reject_prompts_with,
            )
        )
    except OSError as exc:
        sys.exit(f"mediaserver: {exc}")


if __name__ == "__main__":
    main()
