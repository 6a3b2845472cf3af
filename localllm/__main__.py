"""``python -m localllm``: run the procedural OpenAI-compatible stand-in server.

    python -m localllm --host 127.0.0.1 --port 8090 [--latency SECONDS] [--api-key KEY]
                       [--faults '{"queue": [{"status": 503}]}']

Prints one line when listening; stops cleanly on SIGINT/SIGTERM.
"""

import argparse
import asyncio
import json
import logging
import signal
import sys

from localllm import MODEL_ID
from localllm.server import LocalLlmServer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m localllm",
        description="Procedural OpenAI-compatible stand-in (not a language model): "
        "schema-valid, deterministic JSON replies with fault injection for tests.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 = a free port (printed)")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS", help="delay of every chat reply")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    parser.add_argument(
        "--faults", default=None, metavar="JSON", help="initial switches, same JSON as POST /_control (e.g. a 'queue')"
    )
    parser.add_argument("--log-level", default="INFO", help="INFO logs one line per request")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    server = LocalLlmServer(host=args.host, port=args.port, latency_s=args.latency, api_key=args.api_key)
    if args.faults:
        try:
            server.apply_control(json.loads(args.faults))
        except (TypeError, ValueError) as exc:
            sys.exit(f"localllm: --faults must be a JSON object like POST /_control takes: {exc}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = await server.start()
    except OSError as exc:
        sys.exit(f"localllm: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    print(
        f"localllm: listening on http://{args.host}:{port}/v1 (model {MODEL_ID}, procedural stand-in; "
        f"latency {args.latency:g}s, api key {'required' if args.api_key else 'not required'})",
        flush=True,
    )
    await stop.wait()
    await server.stop()
    print("localllm: stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
