"""``POST /v1/images/generations`` of the stand-in: a real PNG, drawn procedurally, as ``b64_json``.

The picture comes from the media server's procedural renderer (seeded by the prompt, so the same
request gives the same bytes) under a style of its own. Request checks follow OpenAI's replies:
unknown model → 404 ``model_not_found``; ``response_format`` other than ``b64_json`` → 400 (this
stand-in serves no URLs); a prompt containing the refusal marker (switch ``refuse_images_with``) →
400 ``content_policy_violation``, as a provider's safety system answers.
"""

import base64
import hashlib

from mediaserver.render import MAX_SIZE, MIN_SIZE, render_png

IMAGE_MODEL_ID = "worldgen-procedural-image-1"
DEFAULT_SIZE = "1024x1024"  # OpenAI's default
STYLE = "localllm image stand-in"
NOT_AN_IMAGE = base64.b64encode(b"these bytes are not an image").decode("ascii")  # fault: invalid_image
REFUSAL = (
    "Your request was rejected as a result of our safety system. "
    "Your prompt may contain text that is not allowed by our safety system."
)


class ImageRequestError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def check(body: dict, refuse_with: str) -> tuple[str, int, int]:
    """(prompt, width, height) of a valid request; ``ImageRequestError`` as OpenAI would answer."""
    model = body.get("model") or IMAGE_MODEL_ID  # OpenAI has a default model too
    if model != IMAGE_MODEL_ID:
        raise ImageRequestError(
            404, f"The model `{model}` does not exist or you do not have access to it.", "model_not_found"
        )
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ImageRequestError(400, "'prompt' must be a non-empty string", "invalid_value")
    if body.get("response_format", "b64_json") != "b64_json":
        raise ImageRequestError(400, "This stand-in only answers with response_format 'b64_json'.", "invalid_value")
    if body.get("n", 1) != 1:
        raise ImageRequestError(400, "This stand-in makes one image per request ('n': 1).", "invalid_value")
    size = str(body.get("size") or DEFAULT_SIZE)
    width, _, height = size.partition("x")
    if not (width.isdigit() and height.isdigit() and all(MIN_SIZE <= int(n) <= MAX_SIZE for n in (width, height))):
        raise ImageRequestError(
            400, f"Invalid value: '{size}'. Size must be WIDTHxHEIGHT, each {MIN_SIZE}..{MAX_SIZE}.", "invalid_size"
        )
    if refuse_with and refuse_with in prompt:
        raise ImageRequestError(400, REFUSAL, "content_policy_violation")
    return prompt, int(width), int(height)


def draw(prompt: str, width: int, height: int) -> tuple[str, str]:
    """(base64 PNG, sha256 hex of the PNG) for the prompt; CPU-bound, call it in a thread."""
    png = render_png(prompt=prompt, style=STYLE, seed=0, width=width, height=height, kind="post")
    return base64.b64encode(png).decode("ascii"), hashlib.sha256(png).hexdigest()
