"""Property-based fuzzing of the API against its own OpenAPI schema (schemathesis).

Every operation of ``/api/schema/`` gets generated requests, valid and invalid ones, sent in-process
through the Django WSGI application as a staff superuser with token authentication. Each response
must not be a server error and must match what the schema declares for it: status code, content type,
body and headers. A failure prints the reproducing curl command.

Generation routes are real: starting a run starts a workflow on the test Temporal dev server (no
worker, so it just waits), as does deleting a world (its cleanup workflow); every workflow started
here is terminated afterwards, so nothing is picked up by a later test's worker.
"""

import json
import re
from collections import Counter

import pytest
import schemathesis
from django.contrib.auth.models import User
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from rest_framework.throttling import SimpleRateThrottle
from schemathesis.checks import (  # registered checks, looked up by name
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation.meta import TestPhase

from clients import temporal as temporal_client
from tests.conftest import terminate_world_cleanups
from worlds import selectors, services
from worlds.models import GenerationRun, World

MAX_EXAMPLES = 30

# The checks asked for. Not run, on purpose:
# - ignored_auth, missing_required_header and the other security checks: they re-send requests without or
#   with broken credentials to see them refused; the token here is fixed and authentication itself is
#   covered by test_api.py (test_token_authentication, test_permissions_follow_the_staff_roles).
# - negative_data_rejection / positive_data_acceptance: they judge whether the server agrees with
#   schemathesis about what is valid (e.g. a world id that does not exist is "valid" to the schema but
#   rightly a 404); the statuses are still held to the schema by status_code_conformance.
# - max_response_time, use_after_free, ensure_resource_availability: stateful or timing checks, not
#   about a single response conforming.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

# Ids of objects seeded for the current test, so that {world_id} and {run_id} sometimes hit real rows
# (random ids mostly give 404s, which must match the schema too). Read lazily while generating.
SEEDED: dict[str, list[int]] = {"world_id": [], "run_id": []}
# Workflow ids started during the current test (the seeded active run, the 202s of /generate/): terminated after it.
STARTED_WORKFLOWS: set[str] = set()
COVERAGE_CASES: Counter = Counter()
# Responses per status code of the current test (printed by the fixture: see them with -rP).
REQUESTS: Counter = Counter()


def load_schema():
    """The schema as the app serves it. Loaded at collection, so that each operation is its own test
    (schemathesis' lazy ``from_fixture`` integration does not run under this pytest: it sets
    ``Node._nodeid``, which pytest 9 no longer has)."""
    from django.contrib.auth.models import User
    from drf_spectacular.views import SpectacularAPIView
    from rest_framework.test import APIRequestFactory, force_authenticate

    from worldgen_site.wsgi import application

    # The schema needs a staff login; no database exists yet at collection, so an unsaved staff user reads it.
    request = APIRequestFactory().get("/api/schema/?format=json")
    force_authenticate(request, user=User(username="schema-reader", is_staff=True, is_active=True))
    response = SpectacularAPIView.as_view(throttle_classes=[])(request).render()  # throttles need the cache table
    assert response.status_code == 200, response.content
    loaded = schemathesis.openapi.from_dict(json.loads(response.content))
    loaded.app = application

    @loaded.hook
    def flatmap_path_parameters(context, path_parameters):
        """Half of the time, point an id parameter at a seeded object."""
        if not path_parameters:
            return st.just(path_parameters)
        seeded = [
            {**path_parameters, name: pk}
            for name in ("world_id", "run_id")
            if name in path_parameters
            for pk in SEEDED[name]
        ]
        return st.one_of(st.just(path_parameters), st.sampled_from(seeded)) if seeded else st.just(path_parameters)

    return loaded


schema = load_schema()


@pytest.fixture
def fuzz_env(stack_env, settings, monkeypatch):
    """A superuser with a token; three worlds: one never generated, one with a finished run, one with
    an active run (a real workflow that waits, there being no worker); no throttling in the way.
    Afterwards every workflow the test started is terminated."""
    # A 429 is not in the schema. DRF reads the rates into SimpleRateThrottle.THROTTLE_RATES when the
    # class is defined, so overriding the setting alone would not reach it: patch both.
    rates = {**settings.REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {}), "user": "1000000/minute"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", rates)
    # No worker answers the active run's progress query: its 503 comes after this wait, at every example.
    monkeypatch.setattr(selectors, "LIVE_PROGRESS_TIMEOUT_SECONDS", 0.5)

    admin = User.objects.create_user("fuzz-admin", is_staff=True, is_superuser=True)
    token = Token.objects.create(user=admin)
    worlds = [
        World.objects.create(
            name="Tideglass",
            premise="A city of glass towers that flood at every full moon.",
            character_count=1,
            posts_per_character=1,
            created_by=admin,
        ),
        World.objects.create(
            name="Emberfall",
            premise="Volcanic islands where the ash remembers who walked on it.",
            character_count=2,
            posts_per_character=1,
        ),
    ]
    finished = GenerationRun.objects.create(
        world=worlds[1],
        number=1,
        workflow_id=f"fuzz-{worlds[1].pk}-1",
        status="completed",
        stage="done",
        started_by=admin,
    )
    worlds.append(
        World.objects.create(
            name="Saltmarch",
            premise="Salt flats where mirages trade with the living.",
            character_count=1,
            posts_per_character=1,
        )
    )
    STARTED_WORKFLOWS.clear()
    active = services.generation_start(world=worlds[2], user=admin)
    STARTED_WORKFLOWS.add(active.workflow_id)
    SEEDED["world_id"][:] = [world.pk for world in worlds]
    SEEDED["run_id"][:] = [finished.pk, active.pk]
    yield {"Authorization": f"Token {token.key}"}
    print(f"{REQUESTS.total()} requests, by status: {dict(sorted(REQUESTS.items()))}")
    REQUESTS.clear()
    COVERAGE_CASES.clear()
    SEEDED["world_id"].clear()
    SEEDED["run_id"].clear()
    workflow_ids = STARTED_WORKFLOWS | set(
        GenerationRun.objects.exclude(workflow_id__startswith="fuzz-").values_list("workflow_id", flat=True)
    )
    for workflow_id in workflow_ids:
        terminate(workflow_id)
    terminate_world_cleanups()  # of the worlds a DELETE removed: no worker runs them here
    GenerationRun.objects.all().delete()  # the transactional test's flush would too


def aim_coverage_case_at_seeded_object(case) -> None:
    """The coverage phase's cases (boundary values of each parameter and body field) are not drawn through
    the hooks and share one id, so most would be 404s: send every other one to a seeded object instead."""
    if case.meta is None or case.meta.phase.name != TestPhase.COVERAGE or not case.path_parameters:
        return
    for name in ("world_id", "run_id"):
        value = case.path_parameters.get(name)
        if re.fullmatch(r"[0-9]+", str(value)) and SEEDED[name]:  # a valid id (as "0"), not a probe ("AAA")
            COVERAGE_CASES[name] += 1
            if COVERAGE_CASES[name] % 2:
                case.path_parameters[name] = str(SEEDED[name][COVERAGE_CASES[name] // 2 % len(SEEDED[name])])


def terminate(workflow_id: str) -> None:
    """Terminate the workflow (a cancel alone waits for a worker) and check that it is closed."""
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    async def stop(client):
        handle = client.get_workflow_handle(workflow_id)
        try:
            await handle.terminate(reason="test_api_fuzz cleanup")
        except RPCError:  # already closed
            pass
        return (await handle.describe()).status

    status = temporal_client.temporal_call(stop)
    assert status != WorkflowExecutionStatus.RUNNING, f"workflow {workflow_id} still running"


# One test per operation. The parametrization only gives each its own node id: under pytest 9, the items
# schemathesis makes all get the bare function name unless the test has a parametrization of its own.
@pytest.mark.parametrize("credentials", ["superuser-token"])
@pytest.mark.django_db(transaction=True)  # the WSGI handler closes connections between requests
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_api_conforms_to_its_schema(case, credentials, fuzz_env):
    aim_coverage_case_at_seeded_object(case)
    response = case.call_and_validate(headers=fuzz_env, checks=CHECKS)
    REQUESTS[response.status_code] += 1
    if response.status_code == 202 and case.path.endswith("/generate/"):
        STARTED_WORKFLOWS.add(response.json()["workflow_id"])
