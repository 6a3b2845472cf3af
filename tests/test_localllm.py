"""The localllm server (procedural OpenAI-compatible stand-in), run as a real subprocess."""

import asyncio
import json
import random
import re
import signal
import socket
import time
from typing import Annotated, Literal

import httpx
import pytest
from pydantic import Field

from generation.schemas import Output, json_schema
from localllm import MODEL_ID
from localllm.content import Generator, salient_words
from tests.conftest import start_localllm

PREMISE = "A floating archipelago where clockwork jellyfish deliver gossip between lighthouse bakeries."
OTHER_PREMISE = "An underground desert city where cactus librarians guard singing sandstorms."


class Character(Output):
    name: Annotated[str, Field(min_length=2, max_length=60)]
    handle: Annotated[str, Field(min_length=3, max_length=24)]
    bio: Annotated[str, Field(max_length=150)]
    age: Annotated[int, Field(ge=18, le=99)]
    personality: str
    appearance: str
    verified: bool
    followers: Annotated[int, Field(ge=0)]
    mood: Literal["sunny", "stormy", "dreamy"]
    score: Annotated[float, Field(ge=0, le=1)] | None = None  # optional: not in `required`


class World(Output):
    title: Annotated[str, Field(max_length=80)]
    setting: Annotated[str, Field(min_length=80)]
    tone: str
    visual_style: str
    hashtags: Annotated[list[str], Field(min_length=3, max_length=6)]
    characters: Annotated[list[Character], Field(min_length=5, max_length=5)]


WORLD = json_schema(World)


def chat_body(premise: str = PREMISE, schema: dict | None = WORLD, **extra) -> dict:
    body = {
        "model": MODEL_ID,
        "messages": [
            {"role": "system", "content": "You design fantastical Instagram-like worlds. Answer in JSON."},
            {"role": "user", "content": f"World premise: {premise}\nCreate the world bible and five characters."},
        ],
        **extra,
    }
    if schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "world_bible", "schema": schema}}
    return body


def request(base: str, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def chat(base: str, body: dict, **kwargs) -> httpx.Response:
    return request(base, "POST", "/v1/chat/completions", json=body, **kwargs)


def content_of(response: httpx.Response):
    assert response.status_code == 200, response.text
    return json.loads(response.json()["choices"][0]["message"]["content"])


@pytest.fixture(scope="module")
def llm(logs_dir):
    process, base = start_localllm(logs_dir, "localllm-server-tests")
    yield base
    process.stop()


@pytest.fixture(autouse=True)
def reset_switches(llm):
    request(llm, "POST", "/_control", json={"reset": True}).raise_for_status()


def test_reply_has_the_openai_shape_and_schema_valid_content(llm):
    response = chat(llm, chat_body())
    reply = response.json()
    assert reply["object"] == "chat.completion"
    assert reply["id"].startswith("chatcmpl-") and isinstance(reply["created"], int)
    assert reply["model"] == MODEL_ID and "procedural" in reply["system_fingerprint"]
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    World.model_validate(content_of(response))


def test_same_request_same_content_other_premise_or_seed_differs(llm):
    first, again = content_of(chat(llm, chat_body())), content_of(chat(llm, chat_body()))
    assert first == again
    assert content_of(chat(llm, chat_body(OTHER_PREMISE))) != first
    assert content_of(chat(llm, chat_body(seed=7))) != first
    assert content_of(chat(llm, chat_body(seed=7))) == content_of(chat(llm, chat_body(seed=7)))


def test_content_is_on_theme(llm):
    world = content_of(chat(llm, chat_body()))
    text = json.dumps(world).lower()
    premise_words = ["floating", "archipelago", "clockwork", "jellyfish", "gossip", "lighthouse", "bakeries"]
    assert sum(word in text for word in premise_words) >= 3
    assert any(word in world["setting"].lower() for word in premise_words)
    handles = [c["handle"] for c in world["characters"]]
    assert all(re.fullmatch(r"[a-z0-9._]+", h) for h in handles), handles
    assert len(set(handles)) == len(handles)
    assert len({c["name"] for c in world["characters"]}) == len(handles)
    assert all(tag.startswith("#") and " " not in tag for tag in world["hashtags"])


def test_salient_words_skip_filler_and_instructions():
    messages = [
        {"role": "system", "content": "Return JSON only."},
        {"role": "user", "content": [{"type": "text", "text": "A world where the moth's opera never ends"}]},
    ]
    assert salient_words(messages) == ["moth", "opera", "never", "ends"]


class Nested(Output):
    user_handle: Annotated[str, Field(max_length=6)]
    tags: Annotated[set[Literal["x", "y", "z"]], Field(min_length=2)]  # uniqueItems


class Constraints(Output):
    short: Annotated[str, Field(max_length=5)]
    long: Annotated[str, Field(min_length=300, max_length=320)]
    exact: Annotated[str, Field(min_length=12, max_length=12)]
    choice: Literal["a", 2, True]
    only: Literal["fixed"]  # const
    count: Annotated[int, Field(ge=1000, lt=1003)]
    ratio: Annotated[float, Field(gt=0, le=0.01)]
    flags: Annotated[list[bool], Field(min_length=2, max_length=2)]
    nested: Annotated[list[Nested], Field(max_length=3)]  # a $ref, inlined
    maybe: Annotated[int, Field(le=-50)] | None  # anyOf
    either: Annotated[str, Field(min_length=1)] | None


@pytest.mark.parametrize("seed", range(40))
def test_generator_meets_every_constraint_pydantic_emits(seed):
    schema = json_schema(Constraints)
    assert {"const", "enum", "anyOf", "uniqueItems", "exclusiveMaximum", "exclusiveMinimum"} <= set(
        re.findall(r'"(\w+)":', json.dumps(schema))
    )
    value = Generator(random.Random(seed), ["ember"]).value(schema, key="root")
    Constraints.model_validate_json(json.dumps(value))


def test_without_a_schema_the_reply_is_a_text_object(llm):
    for body in (chat_body(schema=None), chat_body(schema=None, response_format={"type": "json_object"})):
        content = content_of(chat(llm, body))
        assert list(content) == ["text"] and content["text"]


def test_usage_estimates_tokens_from_text_length(llm):
    reply = chat(llm, chat_body()).json()
    usage, content = reply["usage"], reply["choices"][0]["message"]["content"]
    assert usage["completion_tokens"] == max(1, len(content) // 4)
    prompt_chars = sum(len(m["content"]) for m in chat_body()["messages"])
    assert usage["prompt_tokens"] == max(1, prompt_chars // 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    tiny = chat(llm, {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]}).json()["usage"]
    assert tiny["prompt_tokens"] == 1


def test_models_listing_and_error_replies(llm):
    models = request(llm, "GET", "/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL_ID]
    assert request(llm, "GET", f"/v1/models/{MODEL_ID}").json()["id"] == MODEL_ID

    def assert_error(response: httpx.Response, status: int) -> dict:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "code"} and error["message"]
        return error

    assert_error(request(llm, "GET", "/v2/nothing"), 404)
    assert_error(request(llm, "GET", "/v1/chat/completions"), 405)
    malformed = assert_error(
        request(
            llm, "POST", "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
        ),
        400,
    )
    assert malformed["type"] == "invalid_request_error"
    assert_error(chat(llm, {"model": MODEL_ID, "messages": []}), 400)
    assert_error(chat(llm, {"messages": [{"role": "user", "content": "x"}]}), 400)
    assert assert_error(chat(llm, chat_body(model="gpt-imaginary")), 404)["code"] == "model_not_found"
    assert_error(request(llm, "POST", "/_control", json={"queue": [1]}), 400)


def test_api_key_is_required_when_configured(logs_dir):
    process, base = start_localllm(logs_dir, "localllm-api-key", "--api-key", "sk-local-123", "--latency", "0.01")
    try:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
            response = chat(base, chat_body(), headers=headers)
            assert response.status_code == 401
            assert response.json()["error"] == {
                "message": "Incorrect API key provided",
                "param": None,
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        assert request(base, "GET", "/v1/models").status_code == 401
        assert chat(base, chat_body(), headers={"Authorization": "Bearer sk-local-123"}).status_code == 200
        assert request(base, "GET", "/_control").json()["latency_s"] == 0.01
        assert request(base, "GET", "/_stats").json()["by_status"] == {"401": 2, "200": 1}
    finally:
        process.stop()


def test_fault_queue_applies_in_order_then_service_resumes(llm):
    queue = [
        {"status": 429, "retry_after": 2},
        {"status": 500},
        {"status": 503, "retry_after": 1},
        {"status": 429, "code": "insufficient_quota"},
    ]
    assert request(llm, "POST", "/_control", json={"queue": queue}).json()["queue"] == queue
    responses = [chat(llm, chat_body()) for _ in range(5)]
    assert [r.status_code for r in responses] == [429, 500, 503, 429, 200]
    assert responses[0].headers["retry-after"] == "2" and responses[2].headers["retry-after"] == "1"
    assert "retry-after" not in responses[1].headers
    assert responses[0].json()["error"]["code"] == "rate_limit_exceeded"
    assert responses[3].json()["error"]["code"] == "insufficient_quota"
    assert responses[3].json()["error"]["type"] == "insufficient_quota"
    stats = request(llm, "GET", "/_stats").json()
    assert stats["chat_requests"] == 5
    assert stats["by_status"] == {"429": 2, "500": 1, "503": 1, "200": 1}


def test_invalid_json_and_fixed_content_switches(llm):
    request(llm, "POST", "/_control", json={"queue": [{"invalid_json": True}, {"content": '{"a": 1}'}]})
    broken = chat(llm, chat_body())
    assert broken.status_code == 200
    broken_content = broken.json()["choices"][0]["message"]["content"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken_content)
    assert broken.json()["usage"]["completion_tokens"] == len(broken_content) // 4
    fixed = chat(llm, chat_body())
    assert content_of(fixed) == {"a": 1} and fixed.json()["usage"]["completion_tokens"] == 2
    World.model_validate(content_of(chat(llm, chat_body())))


def test_hang_holds_the_request_until_the_client_gives_up(llm):
    request(llm, "POST", "/_control", json={"queue": [{"hang": True}]})
    with pytest.raises(httpx.ReadTimeout):
        chat(llm, chat_body(), timeout=0.5)
    deadline = time.monotonic() + 10
    while (stats := request(llm, "GET", "/_stats").json())["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats["in_flight"] == 0 and stats["by_status"] == {"hang": 1}
    assert chat(llm, chat_body()).status_code == 200


def test_keep_alive_serves_several_requests_on_one_connection(llm):
    host, port = llm.removeprefix("http://").split(":")
    body = json.dumps(chat_body()).encode()
    raw_request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        stream = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(raw_request)
            status_line = stream.readline()
            headers = {}
            while (line := stream.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            payload = json.loads(stream.read(int(headers["content-length"])))
            assert status_line.startswith(b"HTTP/1.1 200") and headers["connection"] == "keep-alive"
            assert payload["object"] == "chat.completion"


@pytest.mark.timeout(120)
def test_hundreds_of_requests_are_held_open_at_once(llm):
    request(llm, "POST", "/_control", json={"latency_s": 1.0})

    async def many(count: int) -> list[int]:
        limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
        async with httpx.AsyncClient(base_url=llm, timeout=60, limits=limits) as client:
            replies = await asyncio.gather(
                *(client.post("/v1/chat/completions", json=chat_body(f"{PREMISE} #{i}")) for i in range(count))
            )
        return [r.status_code for r in replies]

    assert asyncio.run(many(300)) == [200] * 300
    stats = request(llm, "GET", "/_stats").json()
    assert stats["chat_requests"] == 300 and stats["by_status"] == {"200": 300}
    assert stats["peak_in_flight"] >= 250 and stats["in_flight"] == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_the_server_cleanly_even_with_a_hanging_request(logs_dir, sig):
    process, base = start_localllm(logs_dir, f"localllm-{sig.name}", "--faults", '{"queue": [{"hang": true}]}')
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps(chat_body()).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        deadline = time.monotonic() + 10
        while request(base, "GET", "/_stats").json()["in_flight"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.signal(sig)
        try:
            assert process.popen.wait(10) == 0
        finally:
            process.stop()
        assert sock.recv(1024) == b""  # the held request was dropped, not answered
    log = process.log_path.read_text()
    assert "localllm: listening on" in log and "localllm: stopped" in log


def test_max_tokens_cuts_the_completion_off(llm):
    full = chat(llm, chat_body()).json()
    full_content = full["choices"][0]["message"]["content"]
    for limits, expected in (
        ({"max_tokens": 10}, 10),
        ({"max_tokens": 50, "max_completion_tokens": 8}, 8),
        ({"max_tokens": 7, "max_completion_tokens": None}, 7),
    ):
        reply = chat(llm, chat_body(**limits)).json()
        content = reply["choices"][0]["message"]["content"]
        assert reply["choices"][0]["finish_reason"] == "length"
        assert reply["usage"]["completion_tokens"] == expected and content == full_content[: expected * 4]
        with pytest.raises(json.JSONDecodeError):
            json.loads(content)
    roomy = chat(llm, chat_body(max_completion_tokens=full["usage"]["completion_tokens"])).json()
    assert roomy["choices"][0]["finish_reason"] == "stop" and roomy["choices"][0]["message"]["content"] == full_content


@pytest.mark.parametrize(
    "limits",
    [
        {"max_tokens": 0},
        {"max_tokens": -5},
        {"max_tokens": "10"},
        {"max_tokens": 2.5},
        {"max_tokens": True},
        {"max_completion_tokens": 0},
    ],
)
def test_bad_max_tokens_is_rejected_like_openai(llm, limits):
    request(llm, "POST", "/_control", json={"queue": [{"status": 503}]})
    response = chat(llm, chat_body(**limits))
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    assert list(limits)[0] in response.json()["error"]["message"]
    assert "usage" not in response.json()
    assert chat(llm, chat_body()).status_code == 503  # the fault was not spent on the rejected request


def test_usage_override_and_billed_tokens(llm):
    usage = {"prompt_tokens": 321, "completion_tokens": 12}
    queue = [
        {"usage": usage},
        {"invalid_json": True, "usage": usage},
        {"content": "{}", "usage": usage},
        {"status": 503, "usage": usage},
        {"status": 429},
        {},
    ]
    request(llm, "POST", "/_control", json={"queue": queue})
    responses = [chat(llm, chat_body()) for _ in queue]
    assert [r.status_code for r in responses] == [200, 200, 200, 503, 429, 200]
    reported = [r.json().get("usage") for r in responses]
    assert reported[:4] == [{**usage, "total_tokens": 333}] * 4
    assert reported[4] is None and responses[3].json()["error"]["message"]
    billed = request(llm, "GET", "/_stats").json()["billed_tokens"]
    assert billed == 4 * 333 + reported[5]["total_tokens"]
    request(llm, "POST", "/_control", json={"reset": True})
    assert request(llm, "GET", "/_stats").json()["billed_tokens"] == 0
    for bad in (
        {"prompt_tokens": 1},
        {"prompt_tokens": -1, "completion_tokens": 0},
        [1, 2],
        {"prompt_tokens": "1", "completion_tokens": 2},
    ):
        assert request(llm, "POST", "/_control", json={"queue": [{"usage": bad}]}).status_code == 400
