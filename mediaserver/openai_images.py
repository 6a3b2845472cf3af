"""The OpenAI-compatible backend: asks a real image model for each render.

``POST {base}/images/generations`` with ``{model, prompt, size, n: 1, response_format: "b64_json"}``
(``gpt-image-*`` models always answer in base64 and refuse ``response_format``, so it is left out
for them), decodes ``data[0].b64_json`` and returns a PNG of the requested size (an image of another
size or format is cropped to the aspect, scaled and re-encoded). Upstream failures become the gRPC
codes of ``grpc_code``; the API key is sent only as ``Authorization: Bearer`` and scrubbed from every
message. Unlike the procedural renderer, a model does not promise the same image for the same request.
"""

import asyncio
import base64
import binascii
import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import httpx
from PIL import Image, ImageOps

from generation.llm import error_detail, parse_retry_after
from mediaserver.render import MAX_SIZE, MIN_SIZE

Code = grpc.StatusCode
REFUSALS = frozenset({"content_policy_violation", "moderation_blocked"})  # DALL-E's and gpt-image's codes
QUOTA = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
CLIENT_ERRORS = {401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED, 404: Code.NOT_FOUND}


def grpc_code(http_status: int | None, error_code: str | None = None) -> grpc.StatusCode:
    """The gRPC code for an image API outcome; ``None``: no answer (timeout, connection error); 2xx: an
    answer with no usable image. The worker (``generation.media``) retries UNAVAILABLE, RESOURCE_EXHAUSTED
    and INTERNAL, then keeps the post for a re-render; every other code here rejects the image for good."""
    if http_status is None:
        return Code.UNAVAILABLE
    if 200 <= http_status < 300:
        return Code.INTERNAL  # retried: often a glitch of a proxy; a wrong base URL shows in the message
    if error_code in REFUSALS:
        return Code.INVALID_ARGUMENT  # the content policy refused this prompt
    if error_code in QUOTA:
        return Code.FAILED_PRECONDITION  # retrying cannot help until someone pays
    if http_status == 429:
        return Code.RESOURCE_EXHAUSTED  # rate limited: retried, after Retry-After
    if http_status == 501:
        return Code.UNIMPLEMENTED
    if http_status in (408, 409) or http_status >= 500:
        return Code.UNAVAILABLE
    if 400 <= http_status < 500:
        return CLIENT_ERRORS.get(http_status, Code.INVALID_ARGUMENT)
    return Code.FAILED_PRECONDITION  # a redirect or stranger: the base URL is wrong


class RenderFailed(Exception):
    """A render the server answers with ``code`` (and a ``retry-after`` trailer in seconds, if known)."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return () if self.retry_after is None else (("retry-after", f"{self.retry_after:g}"),)


@dataclass(frozen=True)
class ImageApiConfig:
    base_url: str
    model: str
    api_key: str = field(default="", repr=False)
    size: str = ""  # a fixed "WxH" to ask for (the sizes the model supports); "" = the requested size
    timeout: float = 60.0  # seconds per call, and never past the caller's gRPC deadline

    def __post_init__(self) -> None:
        try:
            url = httpx.URL(self.base_url) if "://" in self.base_url else None
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"MEDIA_IMAGE_BASE_URL must be an http(s) URL like https://api.openai.com/v1, got {self.base_url!r}"
            )
        if not self.model.strip():
            raise ValueError("MEDIA_IMAGE_MODEL is required with the openai image backend (e.g. gpt-image-1)")
        if self.size and parse_size(self.size) is None:
            raise ValueError(f"MEDIA_IMAGE_SIZE must be WIDTHxHEIGHT, each {MIN_SIZE}..{MAX_SIZE}, got {self.size!r}")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError(f"MEDIA_IMAGE_TIMEOUT_SECONDS must be a number above 0, got {self.timeout!r}")


def parse_size(text: str) -> tuple[int, int] | None:
    width, sep, height = text.strip().lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        return None
    size = int(width), int(height)
    return size if all(MIN_SIZE <= n <= MAX_SIZE for n in size) else None


def compose_prompt(prompt: str, style: str, kind: str) -> str:
    subject = f"A square profile portrait: {prompt}" if kind == "avatar" else prompt
    return f"{subject}\nVisual style: {style}" if style.strip() else subject


class OpenAIImageBackend:
    def __init__(self, config: ImageApiConfig, executor: ThreadPoolExecutor) -> None:
        self.config, self._executor = config, executor
        self.renderer = f"openai-compatible-images/{config.model}"
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.AsyncClient(base_url=config.base_url.rstrip("/") + "/", headers=headers)

    def describe(self) -> str:
        key = "with an API key" if self.config.api_key else "without an API key"
        return f"OpenAI-compatible image API {self.config.base_url}, model {self.config.model}, {key}"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def render(self, request, kind: str, time_left: float | None) -> bytes:
        body = {
            "model": self.config.model,
            "prompt": compose_prompt(request.prompt, request.style, kind),
            "size": self.config.size or f"{request.width}x{request.height}",
            "n": 1,
        }
        if not self.config.model.startswith("gpt-image"):
            body["response_format"] = "b64_json"
        timeout = self.config.timeout if time_left is None else max(0.1, min(self.config.timeout, time_left))
        try:
            response = await self._http.post("images/generations", json=body, timeout=timeout)
        except httpx.TimeoutException:
            raise self._failed(None, f"the image API did not answer within {timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise self._failed(None, f"the image API cannot be reached: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise self._http_error(response)
        raw = self._image_bytes(response)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._to_png, raw, request.width, request.height)

    def _http_error(self, response: httpx.Response) -> RenderFailed:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        message, code = error_detail(response, payload)
        retry_after = parse_retry_after(response.headers) if response.status_code == 429 else None
        text = f"the image API answered HTTP {response.status_code}{f' ({code})' if code else ''}: {message}"
        return self._failed(response.status_code, text, code, retry_after)

    def _image_bytes(self, response: httpx.Response) -> bytes:
        try:
            payload = response.json()
        except ValueError:
            raise self._failed(200, f"the image API's reply is not JSON: {response.text[:120]!r}") from None
        data = payload.get("data") if isinstance(payload, dict) else None
        first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
        encoded = first.get("b64_json")
        if not isinstance(encoded, str) or not encoded:
            sent = " (it sent a URL instead)" if first.get("url") else ""
            raise self._failed(200, f"the image API's reply has no data[0].b64_json{sent}")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise self._failed(200, "the image API's data[0].b64_json is not valid base64") from None

    def _to_png(self, raw: bytes, width: int, height: int) -> bytes:
        """``raw`` itself if it is a PNG of the requested size, else cropped, scaled and re-encoded."""
        try:
            with Image.open(io.BytesIO(raw)) as image:
                image.load()
                if image.format == "PNG" and image.size == (width, height):
                    return raw
                mode = "RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB"
                fitted = ImageOps.fit(image.convert(mode), (width, height))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise self._failed(200, f"the image API's image cannot be decoded: {exc}") from None
        out = io.BytesIO()
        fitted.save(out, "PNG", compress_level=1)
        return out.getvalue()

    def _failed(
        self, status: int | None, message: str, code: str | None = None, retry_after: float | None = None
    ) -> RenderFailed:
        if self.config.api_key:
            message = message.replace(self.config.api_key, "***")  # a server may echo the key back
        return RenderFailed(grpc_code(status, code), " ".join(message.split()), retry_after)
