"""The localllm HTTP server: a procedural stand-in for an OpenAI-compatible API.

asyncio streams, HTTP/1.1 with keep-alive and Content-Length bodies; one task
per connection (no thread per request), so ~1000 requests can be held open at
once. Endpoints:

- ``POST /v1/chat/completions``: OpenAI request and reply shapes; the content
  is made by ``localllm.content`` (deterministic, valid against the request's
  ``response_format`` JSON schema). Unknown ``model`` → 404 ``model_not_found``.
  Tokens are estimated at ~4 characters each. ``max_tokens`` (and
  ``max_completion_tokens``; the smaller wins) is honoured: a longer completion
  is cut to fit, with ``finish_reason`` "length" and ``completion_tokens`` equal
  to the limit (so JSON output is left invalid, as with a real model); a value
  that is not an integer >= 1 → 400 ``invalid_request_error``. Every 200
  reply reports ``usage``.
- ``GET /v1/models`` (and ``/v1/models/{id}``): the one model.
- ``POST /v1/images/generations``: one real PNG as ``data[0].b64_json``, drawn procedurally
  for the prompt and ``size`` (model ``worldgen-procedural-image-1``; see ``localllm.images``).
- ``POST /_control``: fault-injection switches, e.g.
  ``{"latency_s": 0.5, "queue": [{"status": 429, "retry_after": 2}, {"hang": true}]}``.
  ``latency_s`` delays every chat and image reply; ``queue`` items are *appended* and
  each applies to one of the next chat requests, in order:
  ``{"status": N, "retry_after": S, "code": C, "message": M}`` (an OpenAI-style
  error; ``code: "insufficient_quota"`` mimics an exhausted quota),
  ``{"hang": true}`` (never answer; held until the client disconnects or the
  server stops), ``{"invalid_json": true}`` (a 200 whose content is truncated
  JSON), ``{"content": "..."}`` (a 200 with exactly this content).
  Any item but a hang may add ``"usage": {"prompt_tokens": P, "completion_tokens": C}``
  to report that usage instead of the estimate; on an error status the error
  body then carries this ``usage`` too (some providers bill failed requests).
  ``{"content_style": "repetitive"}`` makes every caption the same sentence (plus
  the premise's first words when the prompt has them), so content-quality flags
  can be tested end to end; ``"echoing"`` starts every caption with that sentence
  and varies the rest (the repeat guard drops it from all but the first post);
  ``"varied"`` (the default) gives distinct captions.
  ``image_queue`` is the same for image requests (hang and error items, and ``{"invalid_image": true}``:
  a 200 whose ``b64_json`` is not an image); ``"refuse_images_with": TEXT``
  refuses every image prompt containing TEXT (400 ``content_policy_violation``); ``code:
  "content_policy_violation"`` in a queue item gives that refusal once.
  ``{"reset": true}`` empties the queues, lifts the refusal, restores the start-up latency and the
  varied style, and zeroes the counters. ``GET /_control`` shows the switches.
- ``GET /_stats``: ``{"chat_requests", "by_status", "in_flight", "peak_in_flight",
  "billed_tokens", "without_max_tokens", "image_requests", "last_image"}`` (``last_image``: the
  last image request's body and the sha256 of the PNG sent, or null); ``billed_tokens`` sums
  prompt + completion tokens of every ``usage`` in a reply made (the provider's bill; a reply whose client has gone
  away still counts, as a provider would still bill it).

With an API key, ``/v1/*`` needs ``Authorization: Bearer <key>``; the ``/_``
endpoints never do (this is a local test server: bind it to 127.0.0.1).
"""

import asyncio
import json
import logging
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field

from localllm import MODEL_ID, SYSTEM_FINGERPRINT, images
from localllm.content import CONTENT_STYLES, completion_content, message_text

log = logging.getLogger("localllm")

MAX_BODY_BYTES = 16 * 1024 * 1024
CHARS_PER_TOKEN = 4  # the usage estimate
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
FAULT_MESSAGES = {
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}
QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    reader: asyncio.StreamReader = field(repr=False)


@dataclass
class Response:
    status: int
    body: dict | None = None  # None: hang (never answer; close when the client goes away)
    headers: dict[str, str] = field(default_factory=dict)


def error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    headers: dict | None = None,
) -> Response:
    return Response(status, {"error": {"message": message, "type": type_, "param": None, "code": code}}, headers or {})


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


class BadRequest(Exception):
    """The request cannot be parsed; answered with 400 and the connection is closed."""


class LocalLlmServer:
    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 8090, latency_s: float = 0.0, api_key: str | None = None
    ) -> None:
        self.host, self.port, self.api_key = host, port, api_key
        self.start_latency_s = self.latency_s = latency_s
        self.queue: deque[dict] = deque()
        self.by_status: Counter[str] = Counter()
        self.chat_requests = self.in_flight = self.peak_in_flight = self.billed_tokens = 0
        self.without_max_tokens = 0  # chat requests that set no max_tokens
        self.content_style = "varied"  # or "repetitive" / "echoing" (localllm.content.CONTENT_STYLES)
        self.image_queue: deque[dict] = deque()
        self.refuse_images_with = ""  # a content policy: image prompts containing this are refused
        self.image_requests = 0
        self.last_image: dict | None = None
        self.connections: set[asyncio.Task] = set()
        self.server: asyncio.AbstractServer | None = None

    # --- lifecycle --------------------------------------------------------------

    async def start(self) -> int:
        """Listen; returns the port (useful with port 0)."""
        self.server = await asyncio.start_server(self.handle_connection, self.host, self.port, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop every open connection (hanging requests included)."""
        if self.server is not None:
            self.server.close()
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)

    # --- switches ---------------------------------------------------------------

    def apply_control(self, control: dict) -> None:
        if control.get("reset"):
            self.queue.clear()
            self.latency_s = self.start_latency_s
            self.by_status.clear()
            self.chat_requests, self.peak_in_flight, self.billed_tokens = 0, self.in_flight, 0
            self.without_max_tokens = 0
            self.content_style = "varied"
            self.image_queue.clear()
            self.refuse_images_with, self.image_requests, self.last_image = "", 0, None
        if "content_style" in control:
            if control["content_style"] not in CONTENT_STYLES:
                raise ValueError(f'"content_style" must be one of {", ".join(CONTENT_STYLES)}')
            self.content_style = control["content_style"]
        if "latency_s" in control:
            self.latency_s = float(control["latency_s"])
        if "refuse_images_with" in control:
            self.refuse_images_with = str(control["refuse_images_with"])
        for name, queue in (("queue", self.queue), ("image_queue", self.image_queue)):
            for item in control.get(name, []):
                if not isinstance(item, dict):
                    raise ValueError(f"{name} items must be objects")
                if "usage" in item and not is_usage(item["usage"]):
                    raise ValueError('"usage" must be {"prompt_tokens": P, "completion_tokens": C} (integers >= 0)')
                queue.append(item)

    def control_state(self) -> dict:
        return {
            "latency_s": self.latency_s,
            "queue": list(self.queue),
            "content_style": self.content_style,
            "image_queue": list(self.image_queue),
            "refuse_images_with": self.refuse_images_with,
        }

    def stats(self) -> dict:
        return {
            "chat_requests": self.chat_requests,
            "by_status": dict(self.by_status),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "billed_tokens": self.billed_tokens,
            "without_max_tokens": self.without_max_tokens,
            "image_requests": self.image_requests,
            "last_image": self.last_image,
        }

    def bill(self, prompt_tokens: int, completion_tokens: int) -> dict:
        """An OpenAI ``usage`` object, added to ``billed_tokens``."""
        self.billed_tokens += prompt_tokens + completion_tokens
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    # --- HTTP -------------------------------------------------------------------

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.connections.add(task)
        try:
            while True:
                try:
                    request = await read_request(reader)
                except BadRequest as exc:
                    await write_response(writer, error(400, str(exc)), keep_alive=False)
                    return
                if request is None:
                    return
                started = time.monotonic()
                response = await self.dispatch(request)
                if response.body is None:
                    return
                await write_response(writer, response, keep_alive=request.keep_alive)
                log.info(
                    "%s %s %d %.0fms",
                    request.method,
                    request.path,
                    response.status,
                    (time.monotonic() - started) * 1000,
                )
                if not request.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # server stopping
        except Exception:
            log.exception("connection failed")
        finally:
            self.connections.discard(task)
            writer.close()

    async def dispatch(self, request: Request) -> Response:
        path = request.path.split("?", 1)[0].rstrip("/")
        routes = {
            "/v1/chat/completions": (("POST",), self.chat),
            "/v1/images/generations": (("POST",), self.image),
            "/v1/models": (("GET",), self.models),
            "/_control": (("GET", "POST"), self.control),
            "/_stats": (("GET",), lambda r: Response(200, self.stats())),
        }
        if path.startswith("/v1/models/"):
            routes[path] = (("GET",), self.model)
        if path not in routes:
            return error(404, f"Unknown path: {request.method} {path}", code="unknown_url")
        methods, handler = routes[path]
        if request.method not in methods:
            return error(405, f"Method {request.method} is not allowed on {path}", code="method_not_allowed")
        authorized = not self.api_key or request.headers.get("authorization") == f"Bearer {self.api_key}"
        if path.startswith("/v1/") and not authorized:
            response = error(401, "Incorrect API key provided", code="invalid_api_key")
            if path == "/v1/chat/completions":
                self.chat_requests += 1
                self.by_status[str(response.status)] += 1
            self.image_requests += path == "/v1/images/generations"
            return response
        try:
            return await handler(request) if asyncio.iscoroutinefunction(handler) else handler(request)
        except BadRequest as exc:
            return error(400, str(exc))

    # --- endpoints --------------------------------------------------------------

    def models(self, request: Request) -> Response:
        return Response(200, {"object": "list", "data": [model_card()]})

    def model(self, request: Request) -> Response:
        model_id = request.path.split("?", 1)[0].rstrip("/").removeprefix("/v1/models/")
        if model_id != MODEL_ID:
            return error(404, f"The model `{model_id}` does not exist", code="model_not_found")
        return Response(200, model_card())

    def control(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.apply_control(parse_json_object(request.body))
            except (TypeError, ValueError) as exc:
                raise BadRequest(f"Bad control request: {exc}") from exc
            log.info("control: %s", json.dumps(self.control_state()))
        return Response(200, self.control_state())

    async def chat(self, request: Request) -> Response:
        self.chat_requests += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            response = await self.chat_response(request)
            self.by_status[str(response.status) if response.body is not None else "hang"] += 1
            if response.body is None:  # hang: hold the request until the client disconnects
                while await request.reader.read(65536):
                    pass
                log.info("%s %s hung until the client disconnected", request.method, request.path)
        finally:
            self.in_flight -= 1
        return response

    async def chat_response(self, request: Request) -> Response:
        try:
            body = parse_json_object(request.body)
        except ValueError as exc:
            return error(400, f"We could not parse the JSON body of your request: {exc}")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return error(400, "'messages' must be a non-empty array of objects", code="invalid_messages")
        model = body.get("model")
        if not model:
            return error(400, "You must provide a model parameter.", code="missing_model")
        if model != MODEL_ID:
            return error(
                404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found"
            )
        schema, schema_name = None, ""
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema, schema_name = spec.get("schema"), spec.get("name", "")
            if not isinstance(schema, dict):
                return error(400, "response_format.json_schema.schema must be an object", code="invalid_schema")
        limits = []
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                return error(
                    400, f"Invalid '{name}': expected an integer >= 1, got {json.dumps(value)}.", code="invalid_value"
                )
            limits.append(value)
        self.without_max_tokens += not limits

        fault = self.queue.popleft() if self.queue else {}
        if fault.get("hang"):
            return Response(0, None)
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if "status" in fault and fault["status"] != 200:
            response = fault_response(fault)
            if "usage" in fault:
                response.body["usage"] = self.bill(fault["usage"]["prompt_tokens"], fault["usage"]["completion_tokens"])
            return response

        if "content" in fault:
            content = str(fault["content"])
        else:
            content = completion_content(
                messages, schema, schema_name=schema_name, seed=body.get("seed"), style=self.content_style
            )
        if fault.get("invalid_json"):
            content = content[: max(1, len(content) // 2)]
        finish_reason = "stop"
        if limits and estimate_tokens(content) > min(limits):
            content, finish_reason = content[: min(limits) * CHARS_PER_TOKEN], "length"
        usage = fault.get("usage") or {
            "prompt_tokens": estimate_tokens("".join(message_text(m) for m in messages)),
            "completion_tokens": estimate_tokens(content),
        }
        return Response(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": MODEL_ID,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": self.bill(usage["prompt_tokens"], usage["completion_tokens"]),
            },
        )

    async def image(self, request: Request) -> Response:
        self.image_requests += 1
        try:
            body = parse_json_object(request.body)
        except ValueError as exc:
            return error(400, f"We could not parse the JSON body of your request: {exc}")
        fault = self.image_queue.popleft() if self.image_queue else {}
        if fault.get("hang"):  # held until the client disconnects
            while await request.reader.read(65536):
                pass
            return Response(0, None)
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if "status" in fault and fault["status"] != 200:
            return fault_response(fault)
        try:
            prompt, width, height = images.check(body, self.refuse_images_with)
        except images.ImageRequestError as exc:
            return error(exc.status, exc.message, code=exc.code)
        if fault.get("invalid_image"):
            return Response(200, {"created": int(time.time()), "data": [{"b64_json": images.NOT_AN_IMAGE}]})
        b64_png, digest = await asyncio.to_thread(images.draw, prompt, width, height)
        self.last_image = {"request": body, "sha256": digest}
        return Response(200, {"created": int(time.time()), "data": [{"b64_json": b64_png}]})


def model_card() -> dict:
    return {
        "id": MODEL_ID,
        "object": "model",
        "created": 1_700_000_000,
        "owned_by": "worldgen localllm (procedural stand-in, not a language model)",
    }


def fault_response(fault: dict) -> Response:
    status = int(fault["status"])
    headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
    if fault.get("code") == "insufficient_quota":
        message, type_, code = QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota"
    elif fault.get("code") == "content_policy_violation":
        message, type_, code = images.REFUSAL, "invalid_request_error", "content_policy_violation"
    else:
        message, type_, code = FAULT_MESSAGES.get(status, (f"Injected error {status}", "server_error", None))
    return error(status, fault.get("message", message), fault.get("type", type_), fault.get("code", code), headers)


def is_usage(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(value.get(key), int) and not isinstance(value.get(key), bool) and value[key] >= 0
        for key in ("prompt_tokens", "completion_tokens")
    )


def parse_json_object(body: bytes) -> dict:
    try:
        value = json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(value, dict):
        raise ValueError("the body must be a JSON object")
    return value


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request from the connection; None when the client closed it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest("Incomplete request head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise BadRequest("Request head too large") from exc
    request_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    try:
        method, target, version = request_line.split(" ")
    except ValueError as exc:
        raise BadRequest(f"Malformed request line: {request_line[:100]!r}") from exc
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"Malformed header line: {line[:100]!r}")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequest("Chunked request bodies are not supported; send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as exc:
        raise BadRequest("Malformed Content-Length") from exc
    if not 0 <= length <= MAX_BODY_BYTES:
        raise BadRequest(f"Content-Length must be between 0 and {MAX_BODY_BYTES}")
    body = await reader.readexactly(length) if length else b""
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return Request(method.upper(), target, headers, body, keep_alive, reader)


async def write_response(writer: asyncio.StreamWriter, response: Response, *, keep_alive: bool) -> None:
    payload = json.dumps(response.body, ensure_ascii=False).encode()
    head = [
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        "Server: localllm",
    ]
    head += [f"{name}: {value}" for name, value in response.headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
    await writer.drain()
