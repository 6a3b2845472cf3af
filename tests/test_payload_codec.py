"""Encrypted Temporal payloads (clients/codec.py), TEMPORAL_PAYLOAD_KEYS, the codec endpoint
(worlds/temporal_codec.py), and a real run whose history Temporal holds encrypted."""

import asyncio
import base64
import json
import os
import subprocess

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from google.protobuf import json_format
from google.protobuf.message import Message
from rest_framework.authtoken.models import Token
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client as TemporalClient
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer

from clients import temporal as temporal_client
from clients.codec import ENCODING, KEY_ID, EncryptionCodec, PayloadDecryptionError, data_converter
from generation.workflows import WorldRunWorkflow
from localstack import servers
from tests.test_generation import FINISHED, make_world, wait_for
from worldgen_site import logs
from worldgen_site.env import SettingsError, env_key_ring
from worlds.services import generation_start
from worlds.staff_groups import grant_staff_groups

OLD, NEW = os.urandom(32), os.urandom(32)
SECRET = "a premise nobody outside may read: the moon is a lantern"
UI = "http://127.0.0.1:8233"


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


def run(coro):
    return asyncio.run(coro)


# --- The codec -----------------------------------------------------------------------------------------------


def test_round_trip_encrypts_with_the_key_id_in_the_metadata():
    codec = EncryptionCodec({"k1": OLD})
    (sealed,) = run(codec.encode([plain(SECRET)]))
    assert sealed.metadata["encoding"] == ENCODING and sealed.metadata[KEY_ID] == b"k1"
    assert SECRET.encode() not in sealed.SerializeToString()
    assert run(codec.decode([sealed])) == [plain(SECRET)]
    assert run(codec.encode([plain(SECRET)]))[0].data != sealed.data  # a fresh nonce each time


def test_rotation_the_first_key_encrypts_and_every_key_decrypts():
    (old_payload,) = run(EncryptionCodec({"old": OLD}).encode([plain(SECRET)]))
    rotated = EncryptionCodec({"new": NEW, "old": OLD})
    assert run(rotated.decode([old_payload])) == [plain(SECRET)]
    (new_payload,) = run(rotated.encode([plain(SECRET)]))
    assert new_payload.metadata[KEY_ID] == b"new"
    with pytest.raises(PayloadDecryptionError, match=r"key ID 'new', which TEMPORAL_PAYLOAD_KEYS does not hold"):
        run(EncryptionCodec({"old": OLD}).decode([new_payload]))


def test_altered_ciphertext_or_key_id_does_not_decrypt():
    codec = EncryptionCodec({"a": OLD, "b": NEW})
    (sealed,) = run(codec.encode([plain(SECRET)]))
    flipped = Payload(metadata=sealed.metadata, data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1]))
    with pytest.raises(PayloadDecryptionError, match="key ID 'a' does not authenticate: it was altered"):
        run(codec.decode([flipped]))
    moved = Payload(metadata={**sealed.metadata, KEY_ID: b"b"}, data=sealed.data)
    with pytest.raises(PayloadDecryptionError, match="key ID 'b' does not authenticate"):
        run(codec.decode([moved]))


def test_payloads_written_before_encryption_was_on_are_read_as_they_are():
    assert run(EncryptionCodec({"k1": OLD}).decode([plain(SECRET)])) == [plain(SECRET)]


def test_the_converter_encrypts_failure_messages_too():
    converter = data_converter({"k1": OLD})
    failure = Failure()
    converter.failure_converter.to_failure(ApplicationError(SECRET), converter.payload_converter, failure)
    run(converter.payload_codec.encode_failure(failure))
    assert SECRET.encode() not in failure.SerializeToString()
    assert data_converter({}) is DataConverter.default  # no keys: Temporal's default, nothing encrypted


# --- TEMPORAL_PAYLOAD_KEYS -----------------------------------------------------------------------------------


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_the_key_ring_is_read_in_order(monkeypatch):
    monkeypatch.setenv("TEMPORAL_PAYLOAD_KEYS", f"2026-05:{b64(NEW)}, 2025-11:{b64(OLD)}")
    assert list(env_key_ring("TEMPORAL_PAYLOAD_KEYS").items()) == [("2026-05", NEW), ("2025-11", OLD)]
    monkeypatch.delenv("TEMPORAL_PAYLOAD_KEYS")
    assert env_key_ring("TEMPORAL_PAYLOAD_KEYS") == {}


@pytest.mark.parametrize(
    "value, reason",
    [
        (f"{b64(NEW)}", "entry 1 has no key ID"),
        (f"k1:{b64(NEW)},bad id:{b64(OLD)}", "entry 2 has no key ID"),
        (f"k1:{b64(NEW)},k1:{b64(OLD)}", "key ID 'k1' appears twice"),
        (f"k1:{b64(NEW)[:-3]}!!", "the key of 'k1' is not valid base64"),
        (f"k1:{b64(NEW[:16])}", "the key of 'k1' is 16 bytes"),
    ],
)
def test_a_malformed_key_ring_fails_with_one_line_that_never_shows_a_key(monkeypatch, value, reason):
    monkeypatch.setenv("TEMPORAL_PAYLOAD_KEYS", value)
    with pytest.raises(SettingsError) as raised:
        env_key_ring("TEMPORAL_PAYLOAD_KEYS")
    message = str(raised.value)
    assert message.startswith("TEMPORAL_PAYLOAD_KEYS must be keyid:base64key") and reason in message
    assert "\n" not in message and b64(NEW)[:12] not in message and b64(OLD)[:12] not in message


def test_keys_are_masked_in_logs_and_hidden_on_debug_pages(settings):
    settings.TEMPORAL_PAYLOAD_KEYS = {"k1": NEW}
    assert logs.mask(f"env: TEMPORAL_PAYLOAD_KEYS=k1:{b64(NEW)}") == "env: TEMPORAL_PAYLOAD_KEYS=k1:***"
    assert logs.SecretSettingsFilter().get_safe_settings()["TEMPORAL_PAYLOAD_KEYS"] == "********************"


# --- The codec endpoint ----------------------------------------------------------------------------------------


@pytest.fixture
def codec_settings(settings):
    settings.TEMPORAL_PAYLOAD_KEYS = {"k1": OLD}
    settings.TEMPORAL_UI_URL = f"{UI}/some/path"
    return settings


@pytest.fixture
def people(db) -> dict[str, User]:
    grant_staff_groups(Group, Permission)

    def user(username: str, *groups: str, staff: bool = True) -> User:
        made = User.objects.create_user(username, is_staff=staff)
        made.groups.add(*Group.objects.filter(name__in=groups))
        return made

    return {
        "editor": user("editor", "Editors"),
        "reviewer": user("reviewer", "Reviewers"),
        "staff": user("staff"),  # staff without a role
        "outsider": user("outsider", "Editors", "Reviewers", staff=False),
    }


def sealed_body(*texts: str) -> str:
    payloads = run(EncryptionCodec({"k1": OLD}).encode([plain(text) for text in texts]))
    return json_format.MessageToJson(Payloads(payloads=payloads))


def session(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def post(client: Client, operation: str, body: str, **headers):
    return client.post(f"/temporal-codec/{operation}", body, content_type="application/json", headers=headers)


def decoded_texts(response) -> list[str]:
    payloads = json_format.ParseDict(response.json(), Payloads()).payloads
    return [json.loads(payload.data) for payload in payloads]


def test_staff_in_the_temporal_ui_decode_with_their_session(codec_settings, people):
    response = post(session(people["reviewer"]), "decode", sealed_body(SECRET, "feedback"), Origin=UI)
    assert response.status_code == 200, response.content
    assert decoded_texts(response) == [SECRET, "feedback"]
    assert response["Access-Control-Allow-Origin"] == UI and response["Access-Control-Allow-Credentials"] == "true"
    empty = post(session(people["reviewer"]), "decode", '{"payloads": []}', Origin=UI)
    assert empty.json() == {"payloads": []}


def test_the_cli_decodes_with_a_token(codec_settings, people):
    token = Token.objects.create(user=people["editor"])
    response = post(Client(), "decode", sealed_body(SECRET), Authorization=f"Token {token.key}")
    assert response.status_code == 200 and decoded_texts(response) == [SECRET]
    assert "Access-Control-Allow-Origin" not in response
    assert post(Client(), "decode", sealed_body(SECRET), Authorization="Bearer nope").status_code == 401


@pytest.mark.parametrize(
    "who, headers, status",
    [
        (None, {"Origin": UI}, 401),  # anonymous
        ("outsider", {"Origin": UI}, 403),  # roles, but not staff
        ("staff", {"Origin": UI}, 403),  # staff without a role
        ("reviewer", {"Origin": "https://evil.example"}, 403),  # a signed-in browser on another site
        ("reviewer", {}, 403),  # a session without an Origin
    ],
)
def test_who_may_not_decode_gets_no_plaintext(codec_settings, people, who, headers, status):
    response = post(session(people.get(who)), "decode", sealed_body(SECRET), **headers)
    assert response.status_code == status and SECRET.encode() not in response.content
    assert "error" in response.json()


def test_encoding_takes_an_editor(codec_settings, people):
    body = json_format.MessageToJson(Payloads(payloads=[plain(SECRET)]))
    assert post(session(people["reviewer"]), "encode", body, Origin=UI).status_code == 403
    response = post(session(people["editor"]), "encode", body, Origin=UI)
    assert response.status_code == 200
    (sealed,) = json_format.ParseDict(response.json(), Payloads()).payloads
    assert sealed.metadata[KEY_ID] == b"k1" and run(EncryptionCodec({"k1": OLD}).decode([sealed])) == [plain(SECRET)]


def test_bad_bodies_are_400_with_the_reason(codec_settings, people):
    reviewer = session(people["reviewer"])
    response = post(reviewer, "decode", "{not json", Origin=UI)
    assert response.status_code == 400
    assert response.json()["error"].startswith("the body must be Temporal Payloads as protobuf JSON")
    other_key = json_format.MessageToJson(Payloads(payloads=run(EncryptionCodec({"k9": NEW}).encode([plain("x")]))))
    response = post(reviewer, "decode", other_key, Origin=UI)
    assert response.status_code == 400 and "key ID 'k9'" in response.json()["error"]


def test_cors_preflight_answers_the_temporal_ui_only(codec_settings):
    ok = Client().options("/temporal-codec/decode", headers={"Origin": UI})
    assert ok.status_code == 204 and ok["Access-Control-Allow-Origin"] == UI
    assert "Authorization" in ok["Access-Control-Allow-Headers"]
    other = Client().options("/temporal-codec/decode", headers={"Origin": "https://evil.example"})
    assert other.status_code == 403 and "Access-Control-Allow-Origin" not in other


def test_without_keys_the_endpoint_says_encryption_is_off(settings, people):
    settings.TEMPORAL_PAYLOAD_KEYS = {}
    settings.TEMPORAL_UI_URL = UI
    response = post(session(people["reviewer"]), "decode", '{"payloads": []}', Origin=UI)
    assert response.status_code == 404 and "TEMPORAL_PAYLOAD_KEYS is not set" in response.json()["error"]


# --- A real run on the dev server --------------------------------------------------------------------------------


def payloads_in(message: Message) -> list[Payload]:
    """Every Payload anywhere in a protobuf message (a history event) but search attributes, which Temporal
    reads and indexes, and the patch markers the SDK's core writes (patch IDs): no codec sees those."""
    if isinstance(message, Payload):
        return [message]
    if isinstance(message, HistoryEvent) and message.marker_recorded_event_attributes.marker_name == "core_patch":
        return []
    found = []
    for field, value in message.ListFields():
        if field.message_type is None or field.name == "search_attributes":
            continue
        if field.message_type.GetOptions().map_entry:
            values = [v for v in value.values() if isinstance(v, Message)]
        else:
            values = list(value) if field.is_repeated else [value]
        for item in values:
            found += payloads_in(item)
    return found


@pytest.fixture
def encrypted_web_client(stack_env):
    """This process's web client connects with the codec (as a web pod with TEMPORAL_PAYLOAD_KEYS would)."""
    previous, settings.TEMPORAL_PAYLOAD_KEYS = settings.TEMPORAL_PAYLOAD_KEYS, {"2026-k": NEW, "2025-k": OLD}
    temporal_client._thread = None
    yield f"2026-k:{b64(NEW)},2025-k:{b64(OLD)}"
    settings.TEMPORAL_PAYLOAD_KEYS = previous
    temporal_client._thread = None


@pytest.mark.django_db(transaction=True)
def test_a_run_on_the_dev_server_keeps_its_premise_encrypted_in_history_and_replays(
    encrypted_web_client, start_worker, live_server
):
    start_worker(env={"TEMPORAL_PAYLOAD_KEYS": encrypted_web_client})
    world = make_world(premise=SECRET, character_count=1, posts_per_character=1)
    run_row = wait_for(generation_start(world=world), FINISHED)
    assert run_row.status == "completed", run_row.error

    async def histories():
        plain_client = await TemporalClient.connect(settings.TEMPORAL_ADDRESS, namespace=settings.TEMPORAL_NAMESPACE)
        return [await plain_client.get_workflow_handle(run_row.workflow_id).fetch_history()]

    converter = data_converter(settings.TEMPORAL_PAYLOAD_KEYS)
    [world_history] = run(histories())
    for history in (world_history,):
        payloads = [p for event in history.events for p in payloads_in(event)]
        assert len(payloads) > 5
        assert all(p.metadata["encoding"] == ENCODING and p.metadata[KEY_ID] == b"2026-k" for p in payloads)
        assert all(SECRET.encode() not in event.SerializeToString() for event in history.events)
        replayer = Replayer(workflows=[WorldRunWorkflow], data_converter=converter)
        run(replayer.replay_workflow(history))
    # The premise is there, encrypted: the run's input decrypts to it.
    start_input = world_history.events[0].workflow_execution_started_event_attributes.input.payloads
    assert SECRET in run(converter.payload_codec.decode(start_input))[0].data.decode()

    # Temporal's own CLI reads the history in clear through the codec endpoint, with a staff token.
    grant_staff_groups(Group, Permission)
    reviewer = User.objects.create_user("cli-reviewer", is_staff=True)
    reviewer.groups.add(Group.objects.get(name="Reviewers"))
    show = [str(servers.VENV_BIN / "temporal"), "workflow", "show", "-w", run_row.workflow_id, "--output", "json"]
    show += ["--address", settings.TEMPORAL_ADDRESS, "--codec-endpoint", f"{live_server.url}/temporal-codec"]
    token = Token.objects.create(user=reviewer).key
    decoded = subprocess.run([*show, "--codec-auth", f"Token {token}"], capture_output=True, text=True, timeout=60)
    assert decoded.returncode == 0, decoded.stderr
    assert base64.b64encode(ENCODING).decode() not in decoded.stdout  # every payload came back decoded
    started = json.loads(decoded.stdout)["events"][0]["workflowExecutionStartedEventAttributes"]
    assert SECRET in base64.b64decode(started["input"]["payloads"][0]["data"]).decode()
