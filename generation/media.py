"""Client of the media service (gRPC ``worldgen.media.v1.MediaRenderer``).

No Django imports: used from Temporal activities with the worker's shared
channel. Every call has a deadline. gRPC itself retries UNAVAILABLE a few
times (``GRPC_SERVICE_CONFIG``); what still fails is raised as

- ``MediaUnavailable``: down, overloaded or too slow; retry later or degrade
  (keep the post, mark it for a re-render); ``retry_after`` (seconds) when the
  server sent a ``retry-after`` trailer (an upstream image API's rate limit);
- ``MediaRejected``: the request itself is wrong; retrying cannot help.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import grpc

from generation.media_pb.worldgen.media.v1 import media_pb2, media_pb2_grpc

SERVICE = "worldgen.media.v1.MediaRenderer"

# Transparent retries inside one call (bounded by its deadline). The throttle
# stops retrying when most calls on the channel fail, so an outage is not
# multiplied by four.
GRPC_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": SERVICE}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
)

MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # a 2048x2048 PNG can exceed gRPC's default 4 MB


def open_channel(target: str, *, tls: bool = False, ca_file: str = "") -> grpc.aio.Channel:
    """The channel to the media service: TLS verified with ``ca_file``'s roots (PEM; the system's if empty),
    or plaintext. Must be opened inside the event loop that uses it."""
    if not tls:
        return grpc.aio.insecure_channel(target, options=channel_options())
    roots = Path(ca_file).read_bytes() if ca_file else None
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(roots), options=channel_options())


def channel_options() -> list[tuple[str, object]]:
    """Options of the channel ``open_channel`` makes."""
    return [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", GRPC_SERVICE_CONFIG),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


class MediaError(Exception):
    """A render failed; ``code`` is the gRPC status name."""

    def __init__(self, message: str, code: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class MediaUnavailable(MediaError):
    """The media service is down or too slow (after gRPC's retries). Retry later or degrade."""


class MediaRejected(MediaError):
    """The media service refused the request (bad input, not implemented, ...). Do not retry."""


# Codes that say "this request is wrong"; every other failure is treated as transient.
REJECTED_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)

KINDS = {"avatar": media_pb2.IMAGE_KIND_AVATAR, "post": media_pb2.IMAGE_KIND_POST}


@dataclass
class RenderedImage:
    png: bytes
    width: int
    height: int
    mime_type: str
    renderer: str
    seed: int
    render_ms: int


class MediaClient:
    def __init__(self, channel: grpc.aio.Channel):
        self._stub = media_pb2_grpc.MediaRendererStub(channel)

    async def render_image(
        self, *, prompt: str, style: str, seed: int, width: int, height: int, kind: str, timeout: float = 30.0
    ) -> RenderedImage:
        if kind not in KINDS:
            raise MediaRejected(f"media render rejected: kind must be one of {sorted(KINDS)}, got {kind!r}")
        try:
            request = media_pb2.RenderImageRequest(
                prompt=prompt, style=style, seed=seed, width=width, height=height, kind=KINDS[kind]
            )
        except (TypeError, ValueError) as exc:  # e.g. a negative seed or size
            raise MediaRejected(f"media render rejected: {_one_line(str(exc))}") from None
        try:
            reply = await self._stub.RenderImage(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, timeout) from None
        return RenderedImage(
            png=reply.png,
            width=reply.width,
            height=reply.height,
            mime_type=reply.mime_type,
            renderer=reply.renderer,
            seed=reply.seed,
            render_ms=reply.render_ms,
        )


def _error(exc: grpc.aio.AioRpcError, timeout: float) -> MediaError:
    code = exc.code()
    details = _one_line(exc.details() or "")
    if code in REJECTED_CODES:
        return MediaRejected(f"media render rejected ({code.name}): {details}", code.name)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return MediaUnavailable(f"media service did not answer within {timeout:g}s", code.name)
    return MediaUnavailable(f"media service unavailable ({code.name}): {details}", code.name, _retry_after(exc))


def _retry_after(exc: grpc.aio.AioRpcError) -> float | None:
    """Seconds from the ``retry-after`` trailer, if the server sent a usable one."""
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after":
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                return None
            return seconds if 0 <= seconds < float("inf") else None
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())
