"""The gRPC server: validates requests, renders with its backend (procedural, or an OpenAI-compatible
image API), stops gracefully."""

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from generation.media_pb.worldgen.media.v1 import media_pb2, media_pb2_grpc
from mediaserver.openai_images import ImageApiConfig, OpenAIImageBackend, RenderFailed
from mediaserver.render import MAX_SIZE, MIN_SIZE, RENDERER, render_png

log = logging.getLogger("mediaserver")

KIND_NAMES = {media_pb2.IMAGE_KIND_AVATAR: "avatar", media_pb2.IMAGE_KIND_POST: "post"}
MAX_PROMPT_CHARS = 4000


class ProceduralBackend:
    """The default: draws the image here (``mediaserver.render``), in the thread pool."""

    renderer = RENDERER

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor

    def describe(self) -> str:
        return RENDERER

    async def aclose(self) -> None:
        pass

    async def render(self, request, kind: str, time_left: float | None) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor,
            lambda: render_png(
                prompt=request.prompt,
                style=request.style,
                seed=request.seed,
                width=request.width,
                height=request.height,
                kind=kind,
            ),
        )


class MediaRenderer(media_pb2_grpc.MediaRendererServicer):
    def __init__(
        self,
        backend: ProceduralBackend | OpenAIImageBackend,
        *,
        fail_first: int = 0,
        delay: float = 0.0,
        reject: str = "",
    ):
        self._backend = backend
        self._reject = reject  # fault injection: a content policy that refuses prompts containing this
        self._failures_left = fail_first  # fault injection: answer UNAVAILABLE this many times
        self._delay = delay  # fault injection: sleep before answering

    async def RenderImage(self, request, context):
        if self._failures_left > 0:
            self._failures_left -= 1
            log.warning("injected UNAVAILABLE (%d more to come)", self._failures_left)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected failure (--fail-first)")
        if self._delay:
            await asyncio.sleep(self._delay)
        problem = _invalid(request)
        if self._reject and self._reject in request.prompt:
            problem = f"prompt refused by the content policy (it contains {self._reject!r})"
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        kind = KIND_NAMES.get(request.kind, "post")  # UNSPECIFIED draws a post
        started = time.perf_counter()
        try:
            png = await self._backend.render(request, kind, context.time_remaining())
        except RenderFailed as exc:
            log.warning("render failed (%s): %s", exc.code.name, exc.message)
            await context.abort(exc.code, exc.message, trailing_metadata=exc.trailing_metadata())
        render_ms = round((time.perf_counter() - started) * 1000)
        log.info("rendered %s %dx%d seed=%d in %d ms", kind, request.width, request.height, request.seed, render_ms)
        return media_pb2.RenderImageReply(
            png=png,
            width=request.width,
            height=request.height,
            mime_type="image/png",
            renderer=self._backend.renderer,
            seed=request.seed,
            render_ms=render_ms,
        )


def _invalid(request) -> str | None:
    if not request.prompt.strip():
        return "prompt must not be empty"
    if len(request.prompt) > MAX_PROMPT_CHARS:
        return f"prompt must be at most {MAX_PROMPT_CHARS} characters, got {len(request.prompt)}"
    for name in ("width", "height"):
        value = getattr(request, name)
        if not MIN_SIZE <= value <= MAX_SIZE:
            return f"{name} must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {value}"
    return None


async def serve(
    host: str,
    port: int,
    *,
    stop_event: asyncio.Event | None = None,
    fail_first: int = 0,
    delay: float = 0.0,
    workers: int | None = None,
    grace: float = 5.0,
    reject: str = "",
    image_api: ImageApiConfig | None = None,
    tls: tuple[bytes, bytes] | None = None,
) -> None:
    """Serve until ``stop_event`` is set (or, without one, until SIGINT/SIGTERM); then
    stop taking calls and give in-flight renders ``grace`` seconds to finish. With ``image_api``,
    images come from that OpenAI-compatible API instead of the procedural renderer. With ``tls`` (PEM private
    key, certificate chain), it serves TLS only."""
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="render")
    backend = ProceduralBackend(executor) if image_api is None else OpenAIImageBackend(image_api, executor)
    # so_reuseport=0: a second server on a taken port fails instead of silently sharing it.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    media_pb2_grpc.add_MediaRendererServicer_to_server(
        MediaRenderer(backend, fail_first=fail_first, delay=delay, reject=reject), server
    )
    try:
        address = f"{host}:{port}"
        bound = (
            server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
            if tls
            else server.add_insecure_port(address)
        )
    except RuntimeError:
        bound = 0
    if not bound:
        await backend.aclose()
        executor.shutdown()
        raise OSError(f"media server cannot listen on {host}:{port} (port taken or bad host)")
    loop = asyncio.get_running_loop()
    if stop_event is None:
        stop_event = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop_event.set)
    await server.start()
    log.info("media server listening on %s:%d (%s%s)", host, bound, backend.describe(), ", TLS" if tls else "")
    try:
        await stop_event.wait()
    finally:
        log.info("media server stopping (grace %.0fs)", grace)
        await server.stop(grace)
        await backend.aclose()
        executor.shutdown(wait=False, cancel_futures=True)
        log.info("media server stopped")
