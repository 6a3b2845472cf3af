"""Finding a world's runs in Temporal: search attributes on the real dev server (which the test
fixtures start with them registered, as make demo does), the admin's link to the filtered list,
and a namespace without them (the worker stops with the fix; the setting turns them off)."""

import asyncio
import time
import uuid

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest

from clients import temporal as temporal_client
from clients.temporal import connect_client, temporal_call
from generation.search_attributes import RUN_KIND, RUN_NUMBER, WORLD_ID, WORLD_NAME, query
from temporal_worker.search_attributes import SearchAttributesMissing, require_search_attributes
from tests.test_generation import FINISHED, make_world, wait_for
from worlds.services import ActionInvalid, generation_start, item_regenerate, world_delete
from worlds.staff_groups import grant_staff_groups

pytestmark = pytest.mark.django_db(transaction=True)


def listed(world_id: int, expected: int, timeout: float = 20) -> dict:
    """The workflows that ``WorldId = <id>`` finds, by ID, with their attributes (visibility lags a little)."""

    async def find(client):
        return {w.id: w.typed_search_attributes async for w in client.list_workflows(query(world_id))}

    deadline = time.monotonic() + timeout
    while True:
        found = temporal_call(find)
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_a_run_is_found_by_world_id(start_worker):
    start_worker()
    other = make_world(name="Elsewhere", character_count=1, posts_per_character=0)
    world = make_world(name="Lantern Fall", character_count=2, posts_per_character=1)
    other_run = generation_start(world=other)
    run = wait_for(generation_start(world=world), FINISHED)
    assert run.status == "completed", run.error
    wait_for(other_run, FINISHED)

    found = listed(world.pk, expected=1)
    assert set(found) == {run.workflow_id}  # its characters are activities of it
    for attributes in found.values():
        kind = "generation"
        assert (attributes[WORLD_ID], attributes[RUN_NUMBER], attributes[WORLD_NAME], attributes[RUN_KIND]) == (
            world.pk,
            1,
            "Lantern Fall",
            kind,
        )
    # A regeneration of the run, and the other world's cleanup, are found the same way.
    regeneration = item_regenerate(run=run, character_index=0, post_index=0)
    found = listed(world.pk, expected=2)
    assert set(found) == {run.workflow_id, regeneration.workflow_id}
    assert found[regeneration.workflow_id][RUN_KIND] == "regeneration"
    assert found[regeneration.workflow_id][RUN_NUMBER] == 1
    other_id, cleanup_id = other.pk, world_delete(world=other)
    found = listed(other_id, expected=2)
    assert set(found) == {other_run.workflow_id, cleanup_id}
    cleanup = found[cleanup_id]
    assert (cleanup[RUN_KIND], cleanup[WORLD_NAME], RUN_NUMBER in cleanup) == ("cleanup", "Elsewhere", False)
    for workflow_id in (regeneration.workflow_id, cleanup_id):  # nothing left for a later test's worker
        temporal_call(lambda client, i=workflow_id: client.get_workflow_handle(i).result(), timeout=90)


@pytest.fixture
def editor() -> Client:
    grant_staff_groups(Group, Permission)
    user = User.objects.create_user("editor", is_staff=True)
    user.groups.add(Group.objects.get(name="Editors"))
    client = Client()
    client.force_login(user)
    return client


def test_the_world_page_links_to_its_workflows_in_the_temporal_ui(editor, settings):
    world = make_world()
    settings.TEMPORAL_UI_URL, settings.TEMPORAL_NAMESPACE = "https://temporal.example.com", "worldgen-prod.a1b2c"
    page = editor.get(f"/admin/worlds/world/{world.pk}/change/").content.decode()
    url = f"https://temporal.example.com/namespaces/worldgen-prod.a1b2c/workflows?query=WorldId%20%3D%20{world.pk}"
    assert f'href="{url}"' in page and "Workflows in Temporal" in page
    settings.TEMPORAL_SEARCH_ATTRIBUTES = False  # the query would name an attribute Temporal does not have
    assert "Workflows in Temporal" not in editor.get(f"/admin/worlds/world/{world.pk}/change/").content.decode()
    settings.TEMPORAL_SEARCH_ATTRIBUTES, settings.TEMPORAL_UI_URL = True, ""
    assert "Workflows in Temporal" not in editor.get(f"/admin/worlds/world/{world.pk}/change/").content.decode()


# --- A namespace without the attributes (production before an operator created them) ----------------------


@pytest.fixture
def bare_namespace(temporal_env):
    """A new namespace on the dev server, without worldgen's search attributes; this process's client uses it."""
    name = f"bare-{uuid.uuid4().hex[:8]}"

    async def register(client):
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(namespace=name, workflow_execution_retention_period=Duration(seconds=86400))
        )

    temporal_call(register)
    previous, settings.TEMPORAL_NAMESPACE = settings.TEMPORAL_NAMESPACE, name
    temporal_client._thread = None
    yield name
    settings.TEMPORAL_NAMESPACE = previous
    temporal_client._thread = None


def test_a_worker_stops_at_start_up_naming_the_missing_attributes_and_the_fix(bare_namespace, start_worker):
    worker = start_worker(env={"TEMPORAL_NAMESPACE": bare_namespace}, wait=False)
    assert worker.process.popen.wait(60) != 0
    log = worker.log()
    assert f"Temporal namespace '{bare_namespace}' lacks worldgen's search attributes WorldId, RunNumber" in log
    assert f"temporal operator search-attribute create --namespace {bare_namespace} --name WorldName" in log
    assert "TEMPORAL_SEARCH_ATTRIBUTES=false" in log and "Traceback" not in log

    async def check():
        await require_search_attributes(await connect_client())

    with pytest.raises(SearchAttributesMissing):
        asyncio.run(check())
    settings.TEMPORAL_SEARCH_ATTRIBUTES = False
    try:
        asyncio.run(check())  # turned off: nothing to check
    finally:
        settings.TEMPORAL_SEARCH_ATTRIBUTES = True


def test_starts_say_what_to_do_there_and_work_with_the_attributes_turned_off(bare_namespace):
    world = make_world(character_count=1, posts_per_character=0)
    with pytest.raises(ActionInvalid, match=r"search attribute \w+ \(create worldgen's search attributes.*=false\)"):
        generation_start(world=world)
    settings.TEMPORAL_SEARCH_ATTRIBUTES = False
    try:
        run = generation_start(world=world)
    finally:
        settings.TEMPORAL_SEARCH_ATTRIBUTES = True
    assert run.status == "pending"

    async def described(client):
        handle = client.get_workflow_handle(run.workflow_id)
        description = await handle.describe()
        await handle.terminate(reason="test: no worker serves this namespace")
        return description

    assert WORLD_ID not in temporal_call(described).typed_search_attributes
