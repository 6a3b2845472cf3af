"""The LLM client: JSON-schema completions from an OpenAI-compatible endpoint.

It works over ONE shared ``httpx.AsyncClient`` (opened by the worker with
``base_url=LLM_BASE_URL``, the bearer token and timeouts; see
``temporal_worker/resources.py``). It makes no retries of its own: Temporal
retries activities, and the point of this module is to classify failures:

- ``LlmRetryableError`` (``.retry_after`` from ``Retry-After``): 408, 409, 429,
  5xx, connection errors and timeouts;
- ``LlmFatalError``: bad credentials (401/403), exhausted quota (429
  ``insufficient_quota``), bad request / unknown model (400/404/422), other 4xx;
- ``LlmInvalidOutput`` (``.raw``, ``.errors``): the reply is not JSON, does
  not validate against the schema, was refused, or was cut off by
  ``max_tokens`` (``finish_reason`` "length"); the caller may ask for a repair.

The schema is a pydantic model (``generation.schemas``): its inlined JSON schema is
sent in ``response_format`` and the reply is validated with it; ``LlmReply.content``
is the validated model dumped to a plain dict.

Every call sends ``max_tokens``. Tokens the provider reports (its ``usage``)
are on the reply and also on any ``LlmError`` whose body carried ``usage``
(``.prompt_tokens``, ``.completion_tokens``, ``.tokens``; 0 when not reported),
so a caller can count every billed token, failed attempts included.

Messages are one readable line and never contain the API key.
Imports nothing from Django (used from Temporal activities).
"""

import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypedDict

import httpx
from pydantic import BaseModel, ValidationError

from generation.schemas import error_lines, json_schema

RETRYABLE_STATUSES = {408, 409, 429, 500, 502, 503, 504}
MAX_MESSAGE_CHARS = 400


class LlmError(Exception):
    """Base of every LLM failure. ``retryable`` says whether trying again later may help."""

    retryable = False

    def __init__(
        self, message: str, *, status_code: int | None = None, prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens

    @property
    def tokens(self) -> int:
        """Tokens the provider reported for this failed call (0 when it reported none)."""
        return self.prompt_tokens + self.completion_tokens


class LlmRetryableError(LlmError):
    """Transient: rate limited, server error, connection failure or timeout."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class LlmFatalError(LlmError):
    """Trying again will not help: credentials, quota, or a request the server rejects."""


class LlmInvalidOutput(LlmError):
    """The reply is not JSON, does not validate, was refused or cut off; ``raw`` keeps it as received."""

    def __init__(
        self,
        message: str,
        *,
        raw: str = "",
        errors: list[str] | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        super().__init__(message, status_code=200, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        self.raw = raw
        self.errors = errors or []


@dataclass
class LlmReply:
    content: dict
    raw: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


class LlmClient:
    def __init__(self, http: httpx.AsyncClient, *, default_model: str, send_sampling: bool = True) -> None:
        self.http = http
        self.default_model = default_model
        self.send_sampling = send_sampling  # some providers refuse sampling parameters (LLM_SEND_SAMPLING)

    async def complete_json(
        self,
        *,
        messages: list[dict],
        schema: type[BaseModel],
        schema_name: str,
        max_tokens: int,
        model: str | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        sampling: dict | None = None,
    ) -> LlmReply:
        """One chat completion constrained to ``schema`` and ``max_tokens``; the parsed, validated content.
        ``sampling`` (temperature, top_p, penalties) and ``seed`` are sent unless the client was made without them."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        model = model or self.default_model
        payload: dict = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": json_schema(schema), "strict": True},
            },
        }
        if self.send_sampling:
            payload.update(sampling or {})
            if seed is not None:
                payload["seed"] = seed
        started = time.monotonic()
        try:
            response = await self.http.post(
                "chat/completions", json=payload, timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
            )
        except httpx.TimeoutException as exc:
            raise LlmRetryableError(
                self.clean(
                    f"LLM request to {self.endpoint()} timed out after {time.monotonic() - started:.1f}s "
                    f"({type(exc).__name__})"
                )
            ) from exc
        except httpx.UnsupportedProtocol as exc:
            raise LlmFatalError(self.clean(f"LLM base URL is not usable: {exc}")) from exc
        except httpx.TransportError as exc:
            raise LlmRetryableError(
                self.clean(f"LLM connection to {self.endpoint()} failed ({type(exc).__name__}): {exc}")
            ) from exc
        latency_s = time.monotonic() - started
        if not response.is_success:
            raise self.status_error(response)
        return self.parse_reply(response, schema=schema, schema_name=schema_name, model=model, latency_s=latency_s)

    def parse_reply(
        self, response: httpx.Response, *, schema: type[BaseModel], schema_name: str, model: str, latency_s: float
    ) -> LlmReply:
        envelope = json_body(response)
        usage = reported_usage(envelope)
        try:
            choice = envelope["choices"][0]
            message = choice["message"]
            if not isinstance(message, dict):
                raise TypeError("message is not an object")
        except (KeyError, IndexError, TypeError) as exc:
            raise LlmRetryableError(
                self.clean(f"LLM returned a malformed response ({response.status_code}): {response.text[:200]}"),
                status_code=response.status_code,
                **usage,
            ) from exc
        if message.get("refusal"):
            raise LlmInvalidOutput(
                self.clean(f"LLM refused to answer '{schema_name}': {message['refusal']}"),
                raw=str(message["refusal"]),
                **usage,
            )
        raw = message.get("content")
        if not isinstance(raw, str):
            raise LlmInvalidOutput(
                f"LLM reply for '{schema_name}' has no text content", raw=json.dumps(message), **usage
            )
        cut_off = choice.get("finish_reason") == "length"
        try:
            content = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LlmInvalidOutput(
                f"LLM output for '{schema_name}' is not valid JSON: {exc.msg} at line {exc.lineno} "
                f"column {exc.colno}{' (finish_reason=length: cut off by max_tokens)' if cut_off else ''}",
                raw=raw,
                **usage,
            ) from None
        if cut_off:
            raise LlmInvalidOutput(
                f"LLM output for '{schema_name}' was cut off by max_tokens (finish_reason=length)", raw=raw, **usage
            )
        try:
            content = schema.model_validate(content).model_dump()
        except ValidationError as exc:
            errors = error_lines(exc)
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise LlmInvalidOutput(
                self.clean(f"LLM output does not match schema '{schema_name}': {errors[0]}{more}"),
                raw=raw,
                errors=errors,
                **usage,
            ) from None
        return LlmReply(content=content, raw=raw, model=envelope.get("model") or model, latency_s=latency_s, **usage)

    def status_error(self, response: httpx.Response) -> LlmError:
        status = response.status_code
        body = json_body(response)
        message, code = error_detail(response, body)
        usage = reported_usage(body)
        if status in (401, 403):
            return LlmFatalError(
                self.clean(f"LLM rejected the credentials ({status}): {message}"), status_code=status, **usage
            )
        if status == 429 and code == "insufficient_quota":
            return LlmFatalError(self.clean(f"LLM quota exhausted ({status}): {message}"), status_code=status, **usage)
        if status in RETRYABLE_STATUSES or status >= 500:
            what = "rate limited" if status == 429 else "unavailable"
            return LlmRetryableError(
                self.clean(f"LLM {what} ({status}): {message}"),
                retry_after=parse_retry_after(response.headers),
                status_code=status,
                **usage,
            )
        if status in (400, 404, 422):
            return LlmFatalError(
                self.clean(f"LLM rejected the request ({status}): {message}"), status_code=status, **usage
            )
        return LlmFatalError(
            self.clean(f"LLM returned unexpected status {status}: {message}"), status_code=status, **usage
        )

    def endpoint(self) -> str:
        """The chat URL without credentials or query (safe for messages)."""
        url = self.http.base_url
        port = f":{url.port}" if url.port else ""
        return f"{url.scheme}://{url.host}{port}{url.path.rstrip('/')}/chat/completions"

    def clean(self, message: str) -> str:
        """One line, bounded, with the API key (if any) blanked out."""
        for header in ("authorization", "api-key", "x-api-key"):
            value = self.http.headers.get(header, "")
            secret = value.split(" ", 1)[1] if value.lower().startswith("bearer ") else value
            if len(secret) >= 4:
                message = message.replace(secret, "***")
        message = " ".join(message.split())
        return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"


def json_body(response: httpx.Response) -> Any:
    """The parsed JSON body, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int


def reported_usage(body: object) -> Usage:
    """``prompt_tokens``/``completion_tokens`` of an OpenAI ``usage`` object; 0 for any missing or bad value."""
    usage = body.get("usage") if isinstance(body, dict) else None
    usage = usage if isinstance(usage, dict) else {}

    def count(value: object) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    return Usage(
        prompt_tokens=count(usage.get("prompt_tokens")), completion_tokens=count(usage.get("completion_tokens"))
    )


def error_detail(response: httpx.Response, body: object) -> tuple[str, str | None]:
    """The (message, code) of an OpenAI-style error body, or a short excerpt of any other body."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        if error.get("type") == "insufficient_quota":
            code = "insufficient_quota"
        return str(error.get("message") or response.reason_phrase), code
    if isinstance(error, str):
        return error, None
    return (response.text[:200] or response.reason_phrase), None


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            if scale != 1.0:
                continue
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None
