"""The media server's OpenAI-compatible backend against the stand-in's ``/v1/images/generations``:
real localllm and mediaserver processes, the worker's gRPC client, and the render activity on Mongo."""

import asyncio
import hashlib
import os
import sys
from datetime import timedelta

import grpc
import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from generation import documents, store
from generation.activities import MediaActivities
from generation.contracts import ItemInput, RunRef
from generation.media import REJECTED_CODES, MediaClient, MediaRejected, MediaUnavailable, channel_options
from localllm.images import IMAGE_MODEL_ID
from localstack import servers
from mediaserver.__main__ import main as mediaserver_main
from mediaserver.openai_images import grpc_code
from mediaserver.render import render_png
from tests.test_media import LOGS, ROOT, decode, render
from tests.test_media_activity import WORLD

pytestmark = pytest.mark.timeout(60)

KEY = "sk-test-9f2c61d0a7e3b5"  # the stand-in's key: must never reach a media server's log
WRONG_KEY = "sk-wrong-44b1c9e07d"
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def stack():
    """The stand-in (needs KEY) and three media servers on it: ``good`` (env config), ``small`` (flags:
    a fixed 64x48 size and a 0.5 s upstream timeout) and ``wrong_key``."""
    llm_port = servers.free_port()
    base_url = f"http://127.0.0.1:{llm_port}/v1"
    started = {"stand_in": (start("localllm-images", "localllm", llm_port, ["--api-key", KEY]), llm_port)}
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_IMAGE_")}
    config = {"MEDIA_IMAGE_BACKEND": "openai", "MEDIA_IMAGE_BASE_URL": base_url, "MEDIA_IMAGE_MODEL": IMAGE_MODEL_ID}
    for name, env, args in (
        ("good", {**config, "MEDIA_IMAGE_API_KEY": KEY}, []),
        ("small", {"MEDIA_IMAGE_API_KEY": KEY}, ["--image-backend", "openai", "--image-base-url", base_url,
                                                 "--image-model", IMAGE_MODEL_ID, "--image-size", "64x48",
                                                 "--image-timeout", "0.5"]),
        ("wrong_key", {**config, "MEDIA_IMAGE_API_KEY": WRONG_KEY}, []),
    ):  # fmt: skip
        port = servers.free_port()
        started[name] = (start(f"mediaserver-openai-{name}", "mediaserver", port, args, {**clean_env, **env}), port)
    try:
        for process, port in started.values():
            servers.wait_for_port(process, port, timeout=30)
        yield {name: f"127.0.0.1:{port}" for name, (_, port) in started.items()} | {
            "control": f"http://127.0.0.1:{llm_port}/_control",
            "stats": f"http://127.0.0.1:{llm_port}/_stats",
            "logs": {name: process.log_path for name, (process, _) in started.items()},
        }
    finally:
        for process, _ in started.values():
            process.stop()


def start(name: str, module: str, port: int, args: list[str], env: dict | None = None) -> servers.ManagedProcess:
    command = [sys.executable, "-m", module, "--port", str(port), *args]
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    return servers.start(name, command, log_path=LOGS / f"{name}.log", env=env, cwd=ROOT)


@pytest.fixture
def stand_in(stack):
    """Switches of the stand-in for one test: ``stand_in(image_queue=[...])``; reset before each test."""
    httpx.post(stack["control"], json={"reset": True}).raise_for_status()

    def control(**switches) -> None:
        httpx.post(stack["control"], json=switches).raise_for_status()

    control.stats = lambda: httpx.get(stack["stats"]).json()  # type: ignore[attr-defined]
    return control


# (HTTP status or None for no answer, OpenAI error code) -> gRPC code, and whether the worker rejects for good.
MAPPING = [
    (None, None, Code.UNAVAILABLE, False),  # timeout, connection refused
    (200, None, Code.INTERNAL, False),  # answered, but no decodable image
    (429, "rate_limit_exceeded", Code.RESOURCE_EXHAUSTED, False),
    (500, None, Code.UNAVAILABLE, False),
    (502, None, Code.UNAVAILABLE, False),
    (503, None, Code.UNAVAILABLE, False),
    (504, None, Code.UNAVAILABLE, False),
    (408, None, Code.UNAVAILABLE, False),
    (409, None, Code.UNAVAILABLE, False),
    (400, "content_policy_violation", Code.INVALID_ARGUMENT, True),
    (400, "moderation_blocked", Code.INVALID_ARGUMENT, True),
    (429, "insufficient_quota", Code.FAILED_PRECONDITION, True),
    (400, "billing_hard_limit_reached", Code.FAILED_PRECONDITION, True),
    (400, "invalid_size", Code.INVALID_ARGUMENT, True),
    (401, "invalid_api_key", Code.UNAUTHENTICATED, True),
    (403, None, Code.PERMISSION_DENIED, True),
    (404, "model_not_found", Code.NOT_FOUND, True),
    (422, None, Code.INVALID_ARGUMENT, True),
    (501, None, Code.UNIMPLEMENTED, True),
    (302, None, Code.FAILED_PRECONDITION, True),  # a redirect: the base URL is wrong
]


@pytest.mark.parametrize("status, error_code, expected, rejected", MAPPING)
def test_error_mapping(status, error_code, expected, rejected):
    assert grpc_code(status, error_code) == expected
    assert (expected in REJECTED_CODES) == rejected  # how generation.media classifies it for the worker


def test_renders_the_image_the_api_sent(stack, stand_in):
    image = render(stack["good"], prompt="a lighthouse", style="ink", width=320, height=240)
    last = stand_in.stats()["last_image"]
    assert hashlib.sha256(image.png).hexdigest() == last["sha256"]  # the very bytes the API sent
    assert decode(image).format == "PNG" and decode(image).size == (320, 240)
    assert (image.width, image.height, image.mime_type) == (320, 240, "image/png")
    assert image.renderer == f"openai-compatible-images/{IMAGE_MODEL_ID}"
    expected_request = {"model": IMAGE_MODEL_ID, "prompt": "a lighthouse\nVisual style: ink", "size": "320x240"}
    assert last["request"] == expected_request | {"n": 1, "response_format": "b64_json"}
    procedural = render_png(prompt="a lighthouse", style="ink", seed=42, width=320, height=240, kind="post")
    assert image.png != procedural


def test_an_image_of_another_size_is_fitted_to_the_request(stack, stand_in):
    image = render(stack["small"], kind="avatar", width=32, height=32)
    assert stand_in.stats()["last_image"]["request"]["size"] == "64x48"  # --image-size
    assert stand_in.stats()["last_image"]["request"]["prompt"].startswith("A square profile portrait: ")
    assert decode(image).format == "PNG" and decode(image).size == (32, 32) == (image.width, image.height)


def test_rate_limit_is_retryable_and_carries_retry_after(stack, stand_in):
    stand_in(image_queue=[{"status": 429, "retry_after": 7}])
    with pytest.raises(MediaUnavailable, match=r"HTTP 429 \(rate_limit_exceeded\): Rate limit reached") as caught:
        render(stack["good"])
    assert (caught.value.code, caught.value.retry_after) == ("RESOURCE_EXHAUSTED", 7.0)
    assert decode(render(stack["good"])).size == (320, 240)  # the limit passed: the next call renders


def test_server_errors_and_timeouts_are_retried(stack, stand_in):
    stand_in(image_queue=[{"status": 503}])
    assert decode(render(stack["good"])).size == (320, 240)  # gRPC retried UNAVAILABLE at once
    assert stand_in.stats()["image_requests"] == 2
    stand_in(image_queue=[{"hang": True}])
    assert decode(render(stack["small"], width=64, height=48)).size == (64, 48)  # after a 0.5 s timeout
    assert "render failed (UNAVAILABLE): the image API did not answer within 0.5s" in stack["logs"]["small"].read_text()
    stand_in(image_queue=[{"status": 500}] * 4)  # as many as gRPC's attempts
    with pytest.raises(MediaUnavailable, match=r"HTTP 500 \(server_error\): The server had an error") as caught:
        render(stack["good"])
    assert caught.value.code == "UNAVAILABLE" and caught.value.retry_after is None


def test_a_reply_without_a_usable_image_is_retryable(stack, stand_in):
    stand_in(image_queue=[{"invalid_image": True}])
    with pytest.raises(MediaUnavailable, match=r"\(INTERNAL\): the image API's image cannot be decoded") as caught:
        render(stack["good"])
    assert caught.value.code == "INTERNAL"


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"model": "dall-e-9"}, 404, "model_not_found"),
        ({"size": "640x9999"}, 400, "invalid_size"),
        ({"response_format": "url"}, 400, "invalid_value"),
        ({"prompt": " "}, 400, "invalid_value"),
        ({"prompt": "a FORBIDDEN gate"}, 400, "content_policy_violation"),
    ],
)
def test_the_stand_in_answers_bad_image_requests_as_openai_does(stack, stand_in, body, status, code):
    stand_in(refuse_images_with="FORBIDDEN")
    url = stack["control"].replace("/_control", "/v1/images/generations")
    request = {"model": IMAGE_MODEL_ID, "prompt": "a gate", "size": "64x64", "n": 1} | body
    response = httpx.post(url, json=request, headers={"Authorization": f"Bearer {KEY}"})
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_content_policy_refusal_is_rejected(stack, stand_in):
    stand_in(refuse_images_with="FORBIDDEN")
    with pytest.raises(MediaRejected, match=r"\(INVALID_ARGUMENT\): .*HTTP 400 \(content_policy_violation\)"):
        render(stack["good"], prompt="a FORBIDDEN lighthouse")
    assert stand_in.stats()["image_requests"] == 1  # not retried


def test_bad_key_is_rejected_with_a_clear_message(stack, stand_in):
    with pytest.raises(MediaRejected) as caught:
        render(stack["wrong_key"])
    assert caught.value.code == "UNAUTHENTICATED"
    assert str(caught.value) == (
        "media render rejected (UNAUTHENTICATED): the image API answered HTTP 401 (invalid_api_key): "
        "Incorrect API key provided"
    )


def test_render_activity_waits_out_retry_after_then_stores_the_image(stack, stand_in, mongo_env):
    """Through the worker's activity: a 429 becomes a retryable failure with Retry-After as the next
    delay; the retry stores the stand-in's image; a refusal marks the image rejected."""
    import gridfs

    from clients import mongo

    db = mongo.get_db()
    run = RunRef(run_id=1, world_id=WORLD.world_id, number=1, workflow_id="world-9001-run-1")
    db.characters.delete_many({"run_key": run.key})
    cast = [{"name": "Ada", "handle": "ada", "concept": "c"}, {"name": "Bo", "handle": "bo", "concept": "c"}]
    store.save_cast(db, run, cast)
    store.save_profile(db, run, 0, {"appearance": "a calm cartographer of dunes"})
    store.save_profile(db, run, 1, {"appearance": "a FORBIDDEN smuggler"})
    stand_in(image_queue=[{"status": 429, "retry_after": 3}], refuse_images_with="FORBIDDEN")

    async def attempts() -> tuple[ApplicationError, ApplicationError]:
        async with grpc.aio.insecure_channel(stack["good"], options=channel_options()) as channel:
            activities = MediaActivities(MediaClient(channel), db)
            with pytest.raises(ApplicationError) as limited:
                await ActivityEnvironment().run(activities.render_image, ItemInput(run, WORLD, 0))
            await ActivityEnvironment().run(activities.render_image, ItemInput(run, WORLD, 0))  # the retry
            with pytest.raises(ApplicationError) as refused:
                await ActivityEnvironment().run(activities.render_image, ItemInput(run, WORLD, 1))
            return limited.value, refused.value

    limited, refused = asyncio.run(attempts())
    assert (limited.type, limited.non_retryable) == ("MediaUnavailable", False)
    assert limited.next_retry_delay == timedelta(seconds=3)
    ada = db.characters.find_one({"_id": documents.character_key(run, 0)})
    assert ada["image_status"] == documents.ImageStatus.RENDERED
    stored = gridfs.GridFS(db, collection="images").get(ada["image_id"]).read()
    assert hashlib.sha256(stored).hexdigest() == stand_in.stats()["last_image"]["sha256"]
    assert (refused.type, refused.non_retryable) == ("MediaRejected", True)
    bo = db.characters.find_one({"_id": documents.character_key(run, 1)})
    assert bo["image_status"] == documents.ImageStatus.REJECTED
    assert "content_policy_violation" in refused.message


def test_the_api_key_never_reaches_the_logs(stack, stand_in):
    stand_in(image_queue=[{"status": 400, "message": f"bad request from {KEY}"}])  # a server echoing the key
    with pytest.raises(MediaRejected, match=r"bad request from \*\*\*$"):
        render(stack["good"])
    render(stack["good"])
    with pytest.raises(MediaRejected):
        render(stack["wrong_key"])
    logs = {name: path.read_text() for name, path in stack["logs"].items() if name != "stand_in"}
    assert "bad request from ***" in logs["good"] and "with an API key" in logs["good"]
    assert all(KEY not in text and WRONG_KEY not in text for text in logs.values())


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--image-backend", "dalle"], {}, "--image-backend (MEDIA_IMAGE_BACKEND) must be one of procedural, openai"),
        ([], {"MEDIA_IMAGE_BACKEND": "openai"}, "MEDIA_IMAGE_BASE_URL must be an http(s) URL"),
        (["--image-backend", "openai", "--image-base-url", "http://h/v1"], {}, "MEDIA_IMAGE_MODEL is required"),
        ([], {"MEDIA_IMAGE_BASE_URL": "http://h/v1"}, "is set but the image backend is procedural"),
        (["--image-backend", "openai", "--image-base-url", "http://h/v1", "--image-model", "m",
          "--image-size", "big"], {}, "MEDIA_IMAGE_SIZE must be WIDTHxHEIGHT"),
        (["--image-backend", "openai", "--image-base-url", "http://h/v1", "--image-model", "m"],
         {"MEDIA_IMAGE_TIMEOUT_SECONDS": "soon"}, "MEDIA_IMAGE_TIMEOUT_SECONDS must be a number"),
    ],
)  # fmt: skip
def test_bad_configuration_is_one_clear_line(monkeypatch, argv, env, message):
    for name in [k for k in os.environ if k.startswith("MEDIA_IMAGE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        mediaserver_main(["--port", str(servers.free_port()), *argv])
    text = str(exited.value.code)
    assert text.startswith("mediaserver: ") and message in text and "\n" not in text
