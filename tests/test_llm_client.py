"""generation.llm.LlmClient against the real localllm server: replies and the classification of failures."""

import asyncio
import inspect
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Annotated

import httpx
import pytest
from pydantic import Field

from generation.llm import (
    LlmClient,
    LlmError,
    LlmFatalError,
    LlmInvalidOutput,
    LlmReply,
    LlmRetryableError,
    parse_retry_after,
    reported_usage,
)
from generation.schemas import Output, json_schema
from localllm import MODEL_ID
from localstack import servers
from tests.conftest import start_localllm

MESSAGES = [
    {"role": "system", "content": "You create characters for fantastical Instagram-like worlds. Answer in JSON."},
    {"role": "user", "content": "World premise: a moonlit canal city where gondoliers are retired dragons."},
]


class Member(Output):
    name: str
    handle: Annotated[str, Field(max_length=30)]
    bio: Annotated[str, Field(max_length=160)]


class Characters(Output):
    characters: Annotated[list[Member], Field(min_length=3, max_length=3)]


class AtHandleMember(Member):
    handle: Annotated[str, Field(max_length=30, pattern="^@")]


class AtHandleCharacters(Output):
    characters: Annotated[list[AtHandleMember], Field(min_length=3, max_length=3)]


GOOD_CHARACTER = {"name": "Wren Mosslight", "handle": "wren.mosslight", "bio": "Canal poet."}
MAX_TOKENS = 4096


@pytest.fixture(scope="module")
def llm(logs_dir):
    process, base = start_localllm(logs_dir, "localllm-client")
    yield base
    process.stop()


@pytest.fixture(scope="module")
def keyed_llm(logs_dir):
    process, base = start_localllm(logs_dir, "localllm-client-key", "--api-key", "sk-local-right-key")
    yield base
    process.stop()


@pytest.fixture(autouse=True)
def reset_switches(llm):
    control(llm, {"reset": True})


def control(base: str, switches: dict) -> None:
    httpx.post(f"{base}/_control", json=switches, timeout=10).raise_for_status()


def stats(base: str) -> dict:
    return httpx.get(f"{base}/_stats", timeout=10).json()


def complete(base: str, *, api_key: str | None = None, sent: list | None = None, **kwargs) -> LlmReply:
    """One ``complete_json`` call through a client built like the worker's shared one
    (the request bodies are appended to ``sent`` if given)."""
    kwargs = {
        "messages": MESSAGES,
        "schema": Characters,
        "schema_name": "characters",
        "max_tokens": MAX_TOKENS,
        **kwargs,
    }

    async def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    async def go() -> LlmReply:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        async with httpx.AsyncClient(
            base_url=f"{base}/v1",
            headers=headers,
            timeout=httpx.Timeout(30, connect=5),
            event_hooks={"request": [record] if sent is not None else []},
        ) as http:
            return await LlmClient(http, default_model=MODEL_ID).complete_json(**kwargs)

    return asyncio.run(go())


def failure(error_type: type[LlmError], base: str, **kwargs) -> LlmError:
    with pytest.raises(error_type) as info:
        complete(base, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return info.value


def test_reply_is_parsed_validated_and_measured(llm):
    reply = complete(llm)
    assert Characters.model_validate(reply.content).model_dump() == reply.content
    assert isinstance(reply.content, dict) and json.loads(reply.raw) == reply.content
    assert reply.model == MODEL_ID
    assert reply.prompt_tokens >= 1 and reply.completion_tokens == max(1, len(reply.raw) // 4)
    assert reply.latency_s > 0


def test_the_model_is_sent_as_a_self_contained_strict_schema(llm):
    sent: list[dict] = []
    complete(llm, sent=sent)
    response_format = sent[0]["response_format"]
    assert response_format == {
        "type": "json_schema",
        "json_schema": {"name": "characters", "schema": json_schema(Characters), "strict": True},
    }
    assert "$ref" not in json.dumps(response_format) and "$defs" not in json.dumps(response_format)
    assert response_format["json_schema"]["schema"]["properties"]["characters"]["items"]["required"] == [
        "name",
        "handle",
        "bio",
    ]


def test_seed_is_sent_and_makes_replies_reproducible(llm):
    assert complete(llm, seed=1).content == complete(llm, seed=1).content
    assert complete(llm, seed=1).content != complete(llm, seed=2).content


def test_rate_limit_is_retryable_with_retry_after(llm):
    control(llm, {"queue": [{"status": 429, "retry_after": 2}]})
    error = failure(LlmRetryableError, llm)
    assert error.retry_after == 2.0 and error.status_code == 429 and error.retryable
    assert (error.prompt_tokens, error.completion_tokens, error.tokens) == (0, 0, 0)  # no usage reported
    assert str(error).startswith("LLM rate limited (429): ")


def test_retry_after_as_an_http_date(llm):
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    control(llm, {"queue": [{"status": 503, "retry_after": when}]})
    assert 25 <= failure(LlmRetryableError, llm).retry_after <= 31


@pytest.mark.parametrize("status,retry_after", [(503, 1), (500, None), (502, None), (408, None)])
def test_server_errors_are_retryable(llm, status, retry_after):
    fault = {"status": status, **({"retry_after": retry_after} if retry_after else {})}
    control(llm, {"queue": [fault]})
    error = failure(LlmRetryableError, llm)
    assert error.status_code == status and error.retry_after == (float(retry_after) if retry_after else None)
    assert f"({status})" in str(error)


def test_exhausted_quota_is_fatal(llm):
    control(llm, {"queue": [{"status": 429, "code": "insufficient_quota"}]})
    error = failure(LlmFatalError, llm)
    assert str(error).startswith("LLM quota exhausted (429): You exceeded your current quota")
    assert not error.retryable


def test_bad_api_key_is_fatal_and_never_echoed(keyed_llm):
    error = failure(LlmFatalError, keyed_llm, api_key="sk-local-wrong-key")
    assert str(error) == "LLM rejected the credentials (401): Incorrect API key provided"
    assert complete(keyed_llm, api_key="sk-local-right-key").content


def test_api_key_is_blanked_out_of_messages(llm):
    control(llm, {"queue": [{"status": 403, "message": "Key sk-secret-777 is\nnot allowed here"}]})
    error = failure(LlmFatalError, llm, api_key="sk-secret-777")
    assert str(error) == "LLM rejected the credentials (403): Key *** is not allowed here"


@pytest.mark.parametrize("fault", [{"status": 400}, {"status": 422}, {"status": 404}])
def test_rejected_requests_are_fatal(llm, fault):
    control(llm, {"queue": [fault]})
    assert str(failure(LlmFatalError, llm)).startswith(f"LLM rejected the request ({fault['status']}): ")


def test_unknown_model_is_fatal(llm):
    error = failure(LlmFatalError, llm, model="gpt-imaginary")
    assert "(404)" in str(error) and "gpt-imaginary" in str(error)


def test_hanging_server_times_out_as_retryable(llm):
    control(llm, {"queue": [{"hang": True}]})
    error = failure(LlmRetryableError, llm, timeout=0.5)
    assert "timed out" in str(error) and "ReadTimeout" in str(error)


def test_connection_refused_is_retryable():
    base = f"http://127.0.0.1:{servers.free_port()}"
    assert "connection" in str(failure(LlmRetryableError, base)).lower()


def test_invalid_json_keeps_the_raw_output(llm):
    control(llm, {"queue": [{"invalid_json": True}]})
    error = failure(LlmInvalidOutput, llm)
    assert str(error).startswith("LLM output for 'characters' is not valid JSON: ")
    assert error.raw and error.raw.startswith("{") and not error.retryable
    assert error.prompt_tokens >= 1 and error.completion_tokens == max(1, len(error.raw) // 4)
    assert json.loads(complete(llm).raw)  # the same request succeeds once the fault is spent
    assert complete(llm).raw.startswith(error.raw)


def test_output_violating_the_schema_names_the_path(llm):
    bad = {"characters": [GOOD_CHARACTER, GOOD_CHARACTER, {**GOOD_CHARACTER, "handle": 5}]}
    control(llm, {"queue": [{"content": json.dumps(bad)}]})
    error = failure(LlmInvalidOutput, llm)
    problem = "$.characters[2].handle: Input should be a valid string"
    assert str(error) == f"LLM output does not match schema 'characters': {problem}"
    assert json.loads(error.raw) == bad and error.errors == [problem]
    assert error.completion_tokens == len(error.raw) // 4


def test_max_tokens_is_sent_and_a_cut_off_reply_is_invalid_output_with_its_usage(llm):
    error = failure(LlmInvalidOutput, llm, max_tokens=5)
    assert "cut off by max_tokens" in str(error) and str(error).startswith("LLM output for 'characters' is not valid")
    assert error.completion_tokens == 5 and error.prompt_tokens >= 1 and len(error.raw) == 20
    assert complete(llm).raw.startswith(error.raw)


def test_a_cut_off_reply_is_invalid_even_when_it_parses(llm):
    control(llm, {"queue": [{"content": "12345678"}]})
    error = failure(LlmInvalidOutput, llm, max_tokens=1)
    assert str(error) == "LLM output for 'characters' was cut off by max_tokens (finish_reason=length)"
    assert error.raw == "1234" and error.completion_tokens == 1


@pytest.mark.parametrize("max_tokens", [0, -3, 2.5, None, True])
def test_max_tokens_is_required_and_positive(llm, max_tokens):
    with pytest.raises(ValueError, match="max_tokens must be a positive integer"):
        complete(llm, max_tokens=max_tokens)
    assert stats(llm)["chat_requests"] == 0
    required = inspect.signature(LlmClient.complete_json).parameters["max_tokens"]
    assert required.default is inspect.Parameter.empty and required.kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize(
    "fault,error_type",
    [
        ({"status": 503}, LlmRetryableError),
        ({"status": 400}, LlmFatalError),
        ({"status": 429, "code": "insufficient_quota"}, LlmFatalError),
        ({"content": "[]"}, LlmInvalidOutput),
    ],
)
def test_usage_reported_with_a_failure_is_on_the_error(llm, fault, error_type):
    control(llm, {"queue": [{**fault, "usage": {"prompt_tokens": 120, "completion_tokens": 7}}]})
    error = failure(error_type, llm)
    assert (error.prompt_tokens, error.completion_tokens, error.tokens) == (120, 7, 127)


def test_billed_tokens_equal_the_usage_of_every_reply_and_failure(llm):
    control(
        llm,
        {
            "queue": [
                {"invalid_json": True},
                {"status": 429},
                {"content": "{}"},
                {"status": 500, "usage": {"prompt_tokens": 9, "completion_tokens": 0}},
            ]
        },
    )
    counted = 0
    for max_tokens in (MAX_TOKENS, MAX_TOKENS, MAX_TOKENS, MAX_TOKENS, 3, MAX_TOKENS):  # ...cut off, valid
        try:
            reply = complete(llm, max_tokens=max_tokens)
            counted += reply.prompt_tokens + reply.completion_tokens
        except LlmError as error:
            counted += error.tokens
    assert counted > 9 and stats(llm)["billed_tokens"] == counted
    control(llm, {"reset": True})
    assert stats(llm)["billed_tokens"] == 0


def test_reported_usage_tolerates_missing_and_bad_values():
    assert reported_usage({"usage": {"prompt_tokens": 3, "completion_tokens": 4.0, "total_tokens": 7}}) == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
    }
    for body in (
        None,
        [],
        "x",
        {},
        {"usage": None},
        {"usage": [1, 2]},
        {"usage": {"prompt_tokens": "3", "completion_tokens": True}},
        {"usage": {"prompt_tokens": -1, "completion_tokens": 2.5}},
    ):
        assert reported_usage(body) == {"prompt_tokens": 0, "completion_tokens": 0}


def test_output_checked_against_a_stricter_schema_than_the_server_honours(llm):
    # localllm ignores `pattern`, so a pattern the generated handles never match fails on the client side.
    error = failure(LlmInvalidOutput, llm, schema=AtHandleCharacters)
    assert str(error) == (
        "LLM output does not match schema 'characters': "
        "$.characters[0].handle: String should match pattern '^@' (and 2 more)"
    )
    assert error.errors == [f"$.characters[{i}].handle: String should match pattern '^@'" for i in range(3)]


def test_many_concurrent_calls_share_one_client(llm):
    control(llm, {"latency_s": 0.3})

    async def go() -> list[LlmReply]:
        async with httpx.AsyncClient(
            base_url=f"{llm}/v1", timeout=30, limits=httpx.Limits(max_connections=100)
        ) as http:
            client = LlmClient(http, default_model=MODEL_ID)
            return await asyncio.gather(
                *(
                    client.complete_json(
                        messages=MESSAGES, schema=Characters, schema_name="characters", max_tokens=MAX_TOKENS, seed=i
                    )
                    for i in range(80)
                )
            )

    replies = asyncio.run(go())
    assert len({r.raw for r in replies}) == 80
    assert stats(llm)["peak_in_flight"] >= 60


def test_parse_retry_after_forms():
    assert parse_retry_after(httpx.Headers({"Retry-After": "2"})) == 2.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "1.5"})) == 1.5
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250", "Retry-After": "9"})) == 0.25
    assert parse_retry_after(httpx.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # past
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None
