"""``python -m mediaserver --host 127.0.0.1 --port 50051 [--fail-first N] [--delay SECONDS]
[--reject-prompts-with TEXT] [--image-backend procedural|openai --image-base-url URL --image-model M
[--image-size WxH] [--image-timeout SECONDS]] [--tls-cert FILE --tls-key FILE]``

The default port is the one of ``MEDIA_GRPC_TARGET`` (the worker's setting), else 50051. Each
``--image-*`` flag defaults to its ``MEDIA_IMAGE_*`` variable; the API key is read from
``MEDIA_IMAGE_API_KEY`` only (a flag would show it in ``ps``)."""

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from mediaserver.openai_images import ImageApiConfig
from mediaserver.server import serve

BACKENDS = ("procedural", "openai")


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
    env = os.environ.get
    parser.add_argument("--tls-cert", default=env("MEDIA_TLS_CERT_FILE", ""), help="PEM chain; MEDIA_TLS_CERT_FILE")
    parser.add_argument("--tls-key", default=env("MEDIA_TLS_KEY_FILE", ""), help="PEM key; MEDIA_TLS_KEY_FILE")
    images = parser.add_argument_group("image backend (each flag defaults to its environment variable)")
    images.add_argument(
        "--image-backend",
        default=env("MEDIA_IMAGE_BACKEND") or "procedural",
        help=f"one of {', '.join(BACKENDS)}; MEDIA_IMAGE_BACKEND (default: procedural)",
    )
    images.add_argument("--image-base-url", default=env("MEDIA_IMAGE_BASE_URL", ""), help="MEDIA_IMAGE_BASE_URL")
    images.add_argument("--image-model", default=env("MEDIA_IMAGE_MODEL", ""), help="MEDIA_IMAGE_MODEL")
    images.add_argument(
        "--image-size", default=env("MEDIA_IMAGE_SIZE", ""), help="MEDIA_IMAGE_SIZE, e.g. 1024x1024 (default: as asked)"
    )
    images.add_argument(
        "--image-timeout", default=env("MEDIA_IMAGE_TIMEOUT_SECONDS", "60"), help="MEDIA_IMAGE_TIMEOUT_SECONDS"
    )
    args = parser.parse_args(argv)
    try:
        image_api = image_api_config(args)
        tls = tls_files(args.tls_key, args.tls_cert)
    except ValueError as exc:
        sys.exit(f"mediaserver: {exc}")
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
                image_api=image_api,
                tls=tls,
            )
        )
    except OSError as exc:
        sys.exit(f"mediaserver: {exc}")


def tls_files(key_file: str, cert_file: str) -> tuple[bytes, bytes] | None:
    """The (key, certificate chain) to serve TLS with, None for plaintext; ValueError if unusable."""
    if not key_file and not cert_file:
        return None
    if not (key_file and cert_file):
        raise ValueError("TLS needs both --tls-cert (MEDIA_TLS_CERT_FILE) and --tls-key (MEDIA_TLS_KEY_FILE)")
    try:
        return Path(key_file).read_bytes(), Path(cert_file).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {exc.filename}: {exc.strerror}") from None


def image_api_config(args: argparse.Namespace) -> ImageApiConfig | None:
    """The OpenAI-compatible API to call, or None for the procedural renderer; ValueError if unusable."""
    backend = args.image_backend.strip().lower()
    if backend not in BACKENDS:
        raise ValueError(f"--image-backend (MEDIA_IMAGE_BACKEND) must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "procedural":
        if args.image_base_url:
            raise ValueError(
                "MEDIA_IMAGE_BASE_URL (--image-base-url) is set but the image backend is procedural; "
                "set MEDIA_IMAGE_BACKEND=openai (--image-backend openai) to use it, or unset it"
            )
        return None
    try:
        timeout = float(args.image_timeout)
    except ValueError:
        raise ValueError(f"MEDIA_IMAGE_TIMEOUT_SECONDS must be a number, got {args.image_timeout!r}") from None
    return ImageApiConfig(
        base_url=args.image_base_url.strip(),
        model=args.image_model.strip(),
        api_key=os.environ.get("MEDIA_IMAGE_API_KEY", "").strip(),
        size=args.image_size.strip(),
        timeout=timeout,
    )


if __name__ == "__main__":
    main()
