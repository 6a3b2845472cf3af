"""The DRF API. Requests go through DRF's in-process APIClient (real authentication,
permissions, parsing and rendering); behind it Temporal, the worker process, Mongo,
the local LLM and the media server are the real ones from conftest."""

import json
import time
from datetime import datetime, timedelta

import pytest
import yaml
from django.contrib.auth.models import Group, Permission, User
from drf_spectacular.validation import validate_schema
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from clients import mongo
from clients import temporal as temporal_client
from clients.temporal import temporal_call
from generation import documents, store
from generation.contracts import WorldCleanupResult, cleanup_workflow_id
from localstack import servers
from worlds import services
from worlds.models import AuditEvent, GenerationRun, World
from worlds.staff_groups import grant_staff_groups

pytestmark = pytest.mark.django_db

FINISHED = {"completed", "failed", "cancelled", "expired", "budget_exceeded"}
PNG = b"\x89PNG\r\n\x1a\n"
PREMISE = "A floating archipelago of lantern-lit tea houses where sky-whales carry letters between islands."


# --- users and helpers ------------------------------------------------------------------


@pytest.fixture
def users() -> dict[str, User]:
    """One user per role (a transactional test's flush removes the groups the migration made)."""
    grant_staff_groups(Group, Permission)

    def user(username: str, *groups: str, staff: bool = True, superuser: bool = False) -> User:
        made = User.objects.create_user(username, is_staff=staff, is_superuser=superuser)  # sessions: no password
        made.groups.add(*Group.objects.filter(name__in=groups))
        return made

    return {
        "admin": user("admin", superuser=True),
        "editor": user("editor", "Editors"),
        "reviewer": user("reviewer", "Reviewers"),
        "lead": user("lead", "Editors", "Reviewers"),  # may start and review, but not review its own runs
        "staff": user("staff"),  # staff without a role
        "outsider": user("outsider", "Editors", "Reviewers", staff=False),  # roles but not staff
    }


def api(user: User | None = None) -> APIClient:
    """A client logged in with a real session (or anonymous)."""
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


def world_body(**overrides) -> dict:
    return {"name": "Lanternfall", "premise": PREMISE, "character_count": 1, "posts_per_character": 1, **overrides}


def make_world(**overrides) -> World:
    return World.objects.create(**world_body(**overrides))


def make_run(world: World, status: str, number: int = 1, started_by: User | None = None, **fields) -> GenerationRun:
    """A run row only (no workflow): for the checks made before Temporal is involved."""
    return GenerationRun.objects.create(
        world=world,
        number=number,
        workflow_id=f"api-test-{world.pk}-{number}",
        status=status,
        stage="done" if status in FINISHED else "approval",
        started_by=started_by,
        **fields,
    )


@pytest.fixture
def content(mongo_env):
    """Writes a run's content straight into Mongo with generation.store (no LLM): a bible, characters
    and posts whose texts name the run. The worlds' content is removed before and after (world IDs
    come back after a rolled-back test)."""
    db, worlds = mongo.get_db(), set()

    def write(run: GenerationRun, *, characters: int = 2, posts: int = 2) -> None:
        if run.world_id not in worlds:
            worlds.add(run.world_id)
            store.delete_world_content(db, run.world_id)
        ref = run.ref
        store.save_bible(db, ref, {"title": f"Bible of run {run.number}"}, 0, None)
        store.save_cast(
            db,
            ref,
            [
                {
                    "name": f"Run {run.number} character {index}",
                    "handle": f"r{run.number}_c{index}",
                    "concept": "a lamplighter",
                }
                for index in range(characters)
            ],
        )
        for character in range(characters):
            for index in range(posts):
                store.save_post(
                    db,
                    ref,
                    character,
                    index,
                    {"caption": f"run {run.number} post {character}.{index}"},
                    f"r{run.number}_c{character}",
                )

    yield write
    for world_id in worlds:
        store.delete_world_content(db, world_id)


# A run with a deliberately repetitive character: "echo" says the same two sentences in every post, one of
# them copied from the premise; "wren" borrows echo's "the lantern market"; "mira" is fine.
QUALITY_POSTS = {
    ("mira", "Bakery", "#bread"): [
        "Fresh bread from the oven smells of cinnamon.",
        "My kiln cracked again so I laughed about it.",
    ],
    ("echo", "Market", "#echo"): [
        "Another lovely evening at the lantern market. Sky-whales carry letters between islands."
    ]
    * 3,
    ("wren", "Bridge", "#lanterns"): ["Lanterns sway above the lantern market tonight."],
}
QUALITY_FLAGS = {
    "run": [
        "distinct-2 of captions: 0.54 (target ≥ 0.6)",  # 31 distinct word pairs of 57
        "4-grams copied from the premise or bible: 0.20 (target ≤ 0.05)",  # 9 of 45
        "repairs per LLM call: 0.18 (target ≤ 0.1)",  # 2 repairs in 11 calls
    ],
    "mira": [],
    "echo": ["sentences repeated across its posts: 2 (target 0)"],
    "wren": ["3-grams shared with other characters: 0.20 (target ≤ 0.1)"],  # 1 of its 5
}


def write_quality_content(run: GenerationRun) -> None:
    """Replaces the world's content with QUALITY_POSTS and the task records of the LLM calls that wrote them
    (bible, cast with two repairs, three profiles, six posts) and of the renders (not LLM calls)."""
    db, ref = mongo.get_db(), run.ref
    store.delete_world_content(db, run.world_id)
    store.save_bible(db, ref, {"title": "Lanternfall", "setting": "Tea houses drift on warm winds."}, 0, None)
    store.save_cast(
        db, ref, [{"name": handle.title(), "handle": handle, "concept": "x"} for handle, *_ in QUALITY_POSTS]
    )
    llm_tasks = [("bible", 0, 0), ("cast", 0, 2)]
    for character, ((handle, location, hashtag), captions) in enumerate(QUALITY_POSTS.items()):
        llm_tasks.append(("character", character, 0))
        for index, caption in enumerate(captions):
            post = {"caption": caption, "hashtags": [hashtag], "location": location, "image_prompt": "x"}
            store.save_post(db, ref, character, index, post, handle)
            llm_tasks.append(("post", f"{character}.{index}", 0))
            store.record_task(db, ref, "post", documents.post_key(ref, character, index), {"status": "succeeded"})
    for stage, index, repairs in llm_tasks:
        fields = {"schema_name": stage, "status": "succeeded", "repairs": repairs, "prompt_version": "v2"}
        store.record_task(db, ref, stage, index, fields)


def cleanup_status(world_pk: int) -> str:
    """Temporal's status of the world's cleanup workflow (RUNNING while no worker has run it)."""
    description = temporal_call(lambda client: client.get_workflow_handle(cleanup_workflow_id(world_pk)).describe())
    return description.status.name


def cleanup_result(world_pk: int) -> WorldCleanupResult:
    return temporal_call(
        lambda client: client.get_workflow_handle(
            cleanup_workflow_id(world_pk), result_type=WorldCleanupResult
        ).result(),
        timeout=120,
    )


def world_content(world_pk: int) -> dict[str, int]:
    """How many documents and images of the world Mongo holds."""
    db = mongo.get_db()
    found = {name: db[name].count_documents({"world_id": world_pk}) for name in documents.CONTENT_COLLECTIONS}
    found["images"] = db["images.files"].count_documents({"_id": {"$regex": f"^img-w{world_pk}-r"}})
    found["image chunks"] = db["images.chunks"].count_documents({"files_id": {"$regex": f"^img-w{world_pk}-r"}})
    return found


def wait_for(client: APIClient, run_id: int, statuses: set[str], until=lambda run: True, timeout: float = 180) -> dict:
    """Poll GET /api/runs/{id}/ until the run has one of ``statuses`` (and ``until(run)``)."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/api/runs/{run_id}/")
        assert response.status_code == 200, response.content
        run = response.json()
        if run["status"] in statuses and until(run):
            return run
        assert time.monotonic() < deadline, f"run stuck at {run['status']}/{run['stage']}: {run['error']}"
        time.sleep(0.3)


@pytest.fixture
def worker(start_worker):
    """A worker for the test. Runs still active at the end are cancelled and waited for,
    so nothing leaks into later tests."""
    start_worker()
    yield
    for run in GenerationRun.objects.filter(status__in=GenerationRun.ACTIVE):
        try:
            services.generation_cancel(run=run)
        except services.ActionError:
            pass  # it finished meanwhile
    deadline = time.monotonic() + 60
    while GenerationRun.objects.filter(status__in=GenerationRun.ACTIVE).exists():
        assert time.monotonic() < deadline, "a run did not stop after cancel"
        time.sleep(0.3)


# --- worlds: CRUD, validation, 404s ------------------------------------------------------


def test_world_create_read_update_delete(users, world_cleanups):
    editor = api(users["editor"])
    response = editor.post("/api/worlds/", {**world_body(), "visual_style": "ink", "language": "fr"}, format="json")
    assert response.status_code == 201, response.content
    world = response.json()
    assert world["name"] == "Lanternfall" and world["premise"] == PREMISE
    assert (world["visual_style"], world["language"], world["genre"], world["token_budget"]) == (
        "ink",
        "fr",
        "fantasy",
        500_000,
    )
    assert world["created_by"] == "editor" and world["latest_run"] is None

    for index in range(3):
        make_world(name=f"Other {index}")
    page = editor.get("/api/worlds/?limit=2").json()
    assert page["count"] == 4 and len(page["results"]) == 2
    assert [w["name"] for w in page["results"]] == ["Other 2", "Other 1"]  # newest first
    assert "offset=2" in page["next"] and page["previous"] is None
    last = editor.get(page["next"]).json()
    assert [w["name"] for w in last["results"]] == ["Other 0", "Lanternfall"] and last["next"] is None

    url = f"/api/worlds/{world['id']}/"
    assert editor.get(url).json() == world
    response = editor.patch(url, {"character_count": 7, "tone": "eerie"}, format="json")
    assert response.status_code == 200, response.content
    assert (response.json()["character_count"], response.json()["tone"]) == (7, "eerie")
    assert World.objects.get(pk=world["id"]).character_count == 7
    response = editor.patch(url, {"character_count": 51}, format="json")
    assert response.status_code == 400
    assert response.json() == {"character_count": ["Ensure this value is less than or equal to 50."]}

    response = editor.delete(url)
    assert response.status_code == 204 and response.content == b""
    assert editor.get(url).status_code == 404
    assert cleanup_status(world["id"]) == "RUNNING"  # started; it waits for a worker (there is none here)
    actions = list(AuditEvent.objects.filter(actor=users["editor"]).order_by("at").values_list("action", "detail"))
    assert actions == [
        ("world_created", ""),
        ("world_updated", "character_count, tone"),
        ("world_deleted", f"Lanternfall; 0 runs; content removed by world-{world['id']}-cleanup"),
    ]
    deleted = AuditEvent.objects.get(action="world_deleted")
    assert (deleted.world, deleted.world_pk, deleted.world_name) == (None, world["id"], "Lanternfall")


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"premise": PREMISE}, "name", "This field is required."),
        ({"name": "X"}, "premise", "This field is required."),
        (world_body(name=""), "name", "This field may not be blank."),
        (world_body(name="x" * 121), "name", "Ensure this field has no more than 120 characters."),
        (world_body(name=" " + "x" * 120), "name", "Ensure this field has no more than 120 characters."),
        (world_body(character_count=0), "character_count", "Ensure this value is greater than or equal to 1."),
        (world_body(character_count=51), "character_count", "Ensure this value is less than or equal to 50."),
        (world_body(posts_per_character=-1), "posts_per_character", "Ensure this value is greater than or equal to 0."),
        (world_body(posts_per_character=51), "posts_per_character", "Ensure this value is less than or equal to 50."),
        (world_body(language="xx"), "language", '"xx" is not a valid choice.'),
        (world_body(visual_style="crayon"), "visual_style", '"crayon" is not a valid choice.'),
        (world_body(token_budget=999), "token_budget", "Ensure this value is greater than or equal to 1000."),
        (world_body(token_budget=10**30), "token_budget", "Ensure this value is less than or equal to 2147483647."),
        (world_body(character_count="many"), "character_count", "A valid integer is required."),
        (world_body(character_count=[1]), "character_count", "A valid integer is required."),
        (world_body(character_count="5"), "character_count", "A valid integer is required."),
        (world_body(character_count=2.5), "character_count", "A valid integer is required."),
        (world_body(requires_approval=0), "requires_approval", "Must be a valid boolean."),
        (world_body(requires_approval="maybe"), "requires_approval", "Must be a valid boolean."),
        (world_body(name={"a": 1}), "name", "Not a valid string."),
        (world_body(model_override=0), "model_override", "Not a valid string."),
        (world_body(tone="  "), "tone", "This field may not be blank."),
        (world_body(tone="\x85\u3000\x1c"), "tone", "This field may not be blank."),
        (world_body(premise="nul\x00byte"), "premise", "Null characters are not allowed."),
        ([world_body()], "non_field_errors", "Invalid data. Expected a dictionary, but got list."),
        # the limits deployments set (defaults of WORLD_PREMISE_MAX_CHARS, GENERATION_MAX_TOKEN_BUDGET,
        # LLM_ALLOWED_MODELS)
        (world_body(premise="p" * 4001), "premise", "Keep the premise to at most 4000 characters (it has 4001)."),
        (
            world_body(token_budget=5_000_001),
            "token_budget",
            "The token budget may be at most 5000000 (GENERATION_MAX_TOKEN_BUDGET).",
        ),
        (
            world_body(model_override="gpt-9"),
            "model_override",
            "'gpt-9' is not an allowed model; choose one of: worldgen-procedural-1 (LLM_ALLOWED_MODELS), "
            "or leave it blank.",
        ),
    ],
)
def test_bad_world_input_is_a_400_with_field_messages(users, body, field, message):
    response = api(users["editor"]).post("/api/worlds/", body, format="json")
    assert response.status_code == 400
    assert message in response.json()[field]
    assert not World.objects.exists()


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    [
        ("application/json", b"{not json", 400, "JSON parse error"),
        ("application/json", b'{"name": NaN}', 400, "JSON parse error"),
        ("application/json", b"\xff\xfe", 400, "JSON parse error"),
        ("text/plain", b"hello", 415, 'Unsupported media type "text/plain" in request.'),
    ],
)
def test_unparseable_bodies_are_refused(users, content_type, body, status, message):
    response = api(users["editor"]).generic("POST", "/api/worlds/", body, content_type=content_type)
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_out_of_range_json_numbers_are_field_errors(users):
    body = b'{"name": "X", "premise": "Y", "character_count": 1e999999, "token_budget": 1' + b"0" * 4000 + b"}"
    response = api(users["editor"]).generic("POST", "/api/worlds/", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {
        "character_count": ["A valid integer is required."],
        "token_budget": [
            "The token budget may be at most 5000000 (GENERATION_MAX_TOKEN_BUDGET).",
            "Ensure this value is less than or equal to 2147483647.",
        ],
    }


def test_the_limits_are_field_errors_together_and_read_when_checked(users, settings):
    editor = api(users["editor"])
    over = world_body(premise="p" * 4001, token_budget=5_000_001, model_override="gpt-9", character_count=0)
    response = editor.post("/api/worlds/", over, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"premise", "token_budget", "model_override", "character_count"}  # all at once
    at_the_limits = world_body(premise="p" * 4000, token_budget=5_000_000, model_override=settings.LLM_MODEL)
    response = editor.post("/api/worlds/", at_the_limits, format="json")
    assert response.status_code == 201, response.content
    url = f"/api/worlds/{response.json()['id']}/"

    settings.WORLD_PREMISE_MAX_CHARS, settings.GENERATION_MAX_TOKEN_BUDGET = 100, 20_000
    settings.LLM_ALLOWED_MODELS = [settings.LLM_MODEL, "gpt-4o-mini"]
    response = editor.patch(
        url, {"premise": "q" * 101, "token_budget": 20_001, "model_override": "gpt-9"}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {
        "premise": ["Keep the premise to at most 100 characters (it has 101)."],
        "token_budget": ["The token budget may be at most 20000 (GENERATION_MAX_TOKEN_BUDGET)."],
        "model_override": [
            f"'gpt-9' is not an allowed model; choose one of: {settings.LLM_MODEL}, gpt-4o-mini "
            "(LLM_ALLOWED_MODELS), or leave it blank."
        ],
    }
    assert World.objects.get(name="Lanternfall").premise == "p" * 4000  # unchanged
    response = editor.patch(
        url, {"premise": "q" * 100, "token_budget": 20_000, "model_override": "gpt-4o-mini"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert (response.json()["token_budget"], response.json()["model_override"]) == (20_000, "gpt-4o-mini")
    response = editor.patch(url, {"model_override": ""}, format="json")  # blank: the default model
    assert response.status_code == 200 and response.json()["model_override"] == ""


@pytest.mark.parametrize(
    "query",
    [
        "limit=abc",
        "limit=",
        "limit=0",
        "limit=101",
        "offset=-1",
        "offset=",
        "offset=99999999999999999999",
        "offset=1&offset=2",
        "offset=0.0",
        "limit=%205",
    ],
)
def test_bad_pagination_is_a_400(users, query):
    response = api(users["editor"]).get(f"/api/worlds/?{query}")
    assert response.status_code == 400
    assert set(response.json()) <= {"limit", "offset"}


@pytest.mark.parametrize(
    "path",
    [
        "/api/worlds/{missing}/",
        "/api/worlds/abc/",
        "/api/worlds/-1/",
        "/api/worlds/1.5/",
        "/api/worlds/99999999999999999999999999/",
        "/api/worlds/{missing}/characters/",
        "/api/worlds/{missing}/posts/",
        "/api/runs/{missing}/",
        "/api/runs/abc/",
        "/api/runs/99999999999999999999999999/",
        "/api/nothing/here/",
    ],
)
def test_missing_objects_are_a_json_404(users, path):
    client = api(users["admin"])
    response = client.get(path.format(missing=make_world().pk + 1000))
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."} or "matches the given query" in response.json()["detail"]
    for command in ("/api/worlds/12345/generate/", "/api/runs/12345/approve/", "/api/runs/xyz/cancel/"):
        assert client.post(command).status_code == 404
    assert client.post("/api/runs/12345/reject/", {"feedback": "x"}, format="json").status_code == 404
    assert client.delete("/api/worlds/abc/").status_code == 404
    assert client.patch("/api/worlds/abc/", {}, format="json").status_code == 404


# --- permissions and authentication --------------------------------------------------------


def test_permissions_follow_the_staff_roles(users, world_cleanups):
    world = make_world(character_count=0)  # invalid: a permitted generate answers 400 without starting
    valid = make_world(name="Valid")
    done = make_run(valid, "completed", started_by=users["editor"])
    store.delete_world_content(mongo.get_db(), valid.pk)  # no bible: a permitted publish answers 409
    routes = {
        "list": ("get", "/api/worlds/", None),
        "read": ("get", f"/api/worlds/{world.pk}/", None),
        "characters": ("get", f"/api/worlds/{world.pk}/characters/", None),
        "posts": ("get", f"/api/worlds/{world.pk}/posts/", None),
        "run": ("get", f"/api/runs/{done.pk}/", None),
        "quality": ("get", f"/api/runs/{done.pk}/quality/", None),
        "create": ("post", "/api/worlds/", world_body()),
        "change": ("patch", f"/api/worlds/{valid.pk}/", {"tone": "grim"}),
        "generate": ("post", f"/api/worlds/{world.pk}/generate/", None),
        "approve": ("post", f"/api/runs/{done.pk}/approve/", None),
        "reject": ("post", f"/api/runs/{done.pk}/reject/", {"feedback": "More whales."}),
        "cancel": ("post", f"/api/runs/{done.pk}/cancel/", None),
        "rerender": ("post", f"/api/runs/{done.pk}/rerender/", None),
        "resume": ("post", f"/api/runs/{done.pk}/resume/", None),
        "publish": ("post", f"/api/runs/{done.pk}/publish/", None),
        "unpublish": ("post", f"/api/worlds/{valid.pk}/unpublish/", None),
    }
    # allowed: 2xx, or the 400/409 that comes after the permission checks (invalid world, finished run without
    # a bible, world not published)
    allowed = {
        "list": 200,
        "read": 200,
        "characters": 200,
        "posts": 200,
        "run": 200,
        "quality": 200,
        "create": 201,
        "change": 200,
        "generate": 400,
        "approve": 409,
        "reject": 409,
        "cancel": 409,
        "rerender": 409,
        "resume": 409,
        "publish": 409,
        "unpublish": 409,
    }
    can = {
        "admin": set(allowed),
        "editor": {
            "list",
            "read",
            "characters",
            "posts",
            "run",
            "quality",
            "create",
            "change",
            "generate",
            "cancel",
            "rerender",
            "resume",
            "publish",
            "unpublish",
        },
        "reviewer": {"list", "read", "characters", "posts", "run", "quality", "approve", "reject"},
        "lead": set(allowed),
        "staff": set(),
        "outsider": set(),
        None: set(),
    }
    for who, permitted in can.items():
        client = api(users[who] if who else None)
        for route, (method, path, body) in routes.items():
            response = getattr(client, method)(path, body, format="json")
            expected = allowed[route] if route in permitted else 403
            assert response.status_code == expected, (who, route, response.content)
            if expected == 403:
                detail = response.json()["detail"]
                assert detail == (
                    "Authentication credentials were not provided."
                    if who is None
                    else "You do not have permission to perform this action."
                )
    delete = f"/api/worlds/{world.pk}/"
    assert api(users["reviewer"]).delete(delete).status_code == 403
    assert World.objects.filter(pk=world.pk).exists() and not AuditEvent.objects.filter(action="world_deleted")
    assert api(users["editor"]).delete(delete).status_code == 204
    assert not World.objects.filter(pk=world.pk).exists()


def test_token_authentication(users):
    token = Token.objects.create(user=users["editor"])
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    response = client.post("/api/worlds/", world_body(), format="json")
    assert response.status_code == 201 and response.json()["created_by"] == "editor"
    assert client.get("/api/worlds/").json()["count"] == 1

    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = client.get("/api/worlds/")
    assert response.status_code == 403 and response.json() == {"detail": "Invalid token."}

    session = APIClient(enforce_csrf_checks=True)  # a session needs the CSRF token to write
    session.force_login(users["editor"])
    assert session.get("/api/worlds/").status_code == 200
    response = session.post("/api/worlds/", world_body(), format="json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]


# --- runs without Temporal: conflicts, 400s and the read side ---------------------------------


def test_commands_on_a_finished_run_conflict(users, temporal_env):
    world = make_world()
    run = make_run(world, "completed", started_by=users["editor"])
    reviewer, editor = api(users["reviewer"]), api(users["editor"])
    response = reviewer.post(f"/api/runs/{run.pk}/approve/")
    assert response.status_code == 409
    assert response.json() == {"detail": "nothing is awaiting approval: Lanternfall run 1 is completed"}
    response = reviewer.post(f"/api/runs/{run.pk}/reject/", {"feedback": "More whales."}, format="json")
    assert response.status_code == 409 and "nothing is awaiting approval" in response.json()["detail"]
    response = editor.post(f"/api/runs/{run.pk}/cancel/")
    assert response.status_code == 409
    assert response.json() == {"detail": "Lanternfall run 1 is not running (it is completed)"}
    response = editor.post(f"/api/runs/{run.pk}/resume/")
    assert response.status_code == 409
    assert response.json() == {
        "detail": "Lanternfall run 1 has nothing to resume: it is completed with every item made"
    }
    stopped = make_run(make_world(name="Spent", token_budget=5000), "budget_exceeded", tokens_used=5000)
    response = editor.post(f"/api/runs/{stopped.pk}/resume/")
    assert response.status_code == 409
    assert response.json() == {
        "detail": "Spent run 1 used 5000 tokens and Spent allows 5000: raise the world's token budget to resume it"
    }
    running = make_run(make_world(name="Busy"), "running", started_by=users["editor"])
    response = editor.post(f"/api/runs/{running.pk}/resume/")
    assert response.status_code == 409 and response.json()["detail"].endswith("nothing to resume: it is running")
    for body in ({}, {"feedback": "   "}, {"feedback": None}, [1], {"feedback": "x" * 2001}):
        response = reviewer.post(f"/api/runs/{run.pk}/reject/", body, format="json")
        assert response.status_code == 400, body
        assert set(response.json()) in ({"feedback"}, {"non_field_errors"})
    assert not AuditEvent.objects.filter(run=run).exists()


def test_feedback_over_the_limit_is_a_400_before_anything_is_sent(users, settings):
    run = make_run(make_world(requires_approval=True), "awaiting_approval", started_by=users["editor"])
    reviewer = api(users["reviewer"])
    response = reviewer.post(f"/api/runs/{run.pk}/reject/", {"feedback": "x" * 2001}, format="json")
    assert response.status_code == 400
    assert response.json() == {"feedback": ["Keep the feedback to at most 2000 characters (it has 2001)."]}
    settings.REVIEW_FEEDBACK_MAX_CHARS = 100
    response = reviewer.post(f"/api/runs/{run.pk}/reject/", {"feedback": "  " + "y" * 101 + "  "}, format="json")
    assert response.status_code == 400
    assert response.json() == {"feedback": ["Keep the feedback to at most 100 characters (it has 101)."]}
    run.refresh_from_db()
    assert run.rejected_by is None and not AuditEvent.objects.filter(run=run).exists()


def test_an_invalid_world_is_refused_with_the_reason(users):
    world = make_world(character_count=0, posts_per_character=51)
    response = api(users["editor"]).post(f"/api/worlds/{world.pk}/generate/")
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith("Lanternfall cannot be generated: ")
    assert "character_count: Ensure this value is greater than or equal to 1." in detail
    assert "posts_per_character" in detail
    assert not world.runs.exists()


def test_a_world_never_generated_has_no_content(users):
    world = make_world()
    client = api(users["reviewer"])
    assert client.get(f"/api/worlds/{world.pk}/characters/").json() == []
    assert client.get(f"/api/worlds/{world.pk}/posts/").json() == {"next": None, "previous": None, "results": []}
    for query, field in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("offset=x", "offset"),
        ("character=-1", "character"),
        ("character=50", "character"),
        ("character=", "character"),
        ("character=99999999999999999999999", "character"),
        ("order=sideways", "order"),
        ("order=", "order"),
        ("order=newest&order=oldest", "order"),
    ]:
        response = client.get(f"/api/worlds/{world.pk}/posts/?{query}")
        assert response.status_code == 400 and field in response.json(), query


def test_a_run_shows_the_llm_calls_waiting_for_their_provider(users, mongo_env):
    run = make_run(make_world(), "running")
    db, ref, reviewer = mongo.get_db(), run.ref, api(users["reviewer"])
    error = "LLM unavailable (503): upstream down"
    first = documents.now()
    for number in (1, 2, 3):
        attempt = {"attempt": number, "status": "retrying", "error": error, "at": first + timedelta(seconds=number - 1)}
        store.record_task(db, ref, "post", "0.1", {"status": "retrying"}, attempt=attempt)
    ok = {"attempt": 2, "status": "succeeded", "at": documents.now()}
    store.record_task(db, ref, "post", "0.0", {"status": "succeeded"}, attempt=ok)
    [waiting] = reviewer.get(f"/api/runs/{run.pk}/").json()["waiting"]
    since = datetime.fromisoformat(waiting.pop("since").replace("Z", "+00:00"))
    assert abs((since - first).total_seconds()) < 0.01
    assert waiting == {"stage": "post", "index": "0.1", "attempts": 3, "error": error}
    # its next attempt is running: it still waits, since the same time
    store.record_task(db, ref, "post", "0.1", {"status": "running"})
    assert reviewer.get(f"/api/runs/{run.pk}/").json()["waiting"][0]["attempts"] == 3
    store.record_task(db, ref, "post", "0.1", {"status": "succeeded"}, attempt={**ok, "attempt": 4})
    assert reviewer.get(f"/api/runs/{run.pk}/").json()["waiting"] == []


def test_temporal_trouble_never_makes_a_500(users, temporal_env, settings, monkeypatch):
    world = make_world(requires_approval=True)
    run = make_run(world, "awaiting_approval", started_by=users["editor"])  # no such workflow in Temporal
    reviewer = api(users["reviewer"])
    response = reviewer.get(f"/api/runs/{run.pk}/")
    assert response.status_code == 200
    body = response.json()
    assert "live" not in body and (body["status"], body["is_active"], body["started_by"]) == (
        "awaiting_approval",
        True,
        "editor",
    )

    address = f"127.0.0.1:{servers.free_port()}"  # nothing listens there
    settings.TEMPORAL_ADDRESS = address  # restored after the test, as is the client below
    monkeypatch.setattr(temporal_client, "_thread", None)
    assert "live" not in reviewer.get(f"/api/runs/{run.pk}/").json()
    response = reviewer.post(f"/api/runs/{run.pk}/approve/")
    assert response.status_code == 503
    assert response.json()["detail"].startswith(
        f"could not approve the bible of Lanternfall run 1: Temporal is not reachable at {address}"
    )
    response = api(users["editor"]).post(f"/api/runs/{run.pk}/cancel/")
    assert response.status_code == 503
    assert response.json()["detail"].startswith("could not cancel Lanternfall run 1: Temporal is not reachable")
    run.refresh_from_db()
    assert (run.status, run.approved_by, run.cancelled_by) == ("awaiting_approval", None, None)

    fresh = make_world(name="Fresh")
    response = api(users["editor"]).post(f"/api/worlds/{fresh.pk}/generate/")
    assert response.status_code == 503
    assert response.json()["detail"].startswith(
        f"Fresh could not be started: nothing was started: Temporal is not reachable at {address}"
    )
    kept = fresh.runs.get()  # the row is kept, failed, so its number is never reused
    assert (kept.number, kept.status, kept.workflow_id) == (1, "failed", f"world-{fresh.pk}-run-1")
    assert kept.error.startswith("nothing was started: Temporal is not reachable") and kept.finished_at
    body = api(users["editor"]).get(f"/api/runs/{kept.pk}/").json()
    assert (body["status"], body["is_active"], body["error"]) == ("failed", False, kept.error)
    assert not AuditEvent.objects.filter(run=kept).exists()  # nothing was started


def test_deleting_without_temporal_is_a_503_and_deletes_nothing(users, content, settings, monkeypatch):
    world = make_world()
    run = make_run(world, "completed")
    content(run)
    before = world_content(world.pk)
    address = f"127.0.0.1:{servers.free_port()}"  # nothing listens there
    settings.TEMPORAL_ADDRESS = address  # restored after the test, as is the client below
    monkeypatch.setattr(temporal_client, "_thread", None)
    response = api(users["editor"]).delete(f"/api/worlds/{world.pk}/")
    assert response.status_code == 503
    assert response.json()["detail"].startswith(
        f"could not start the cleanup of Lanternfall: Temporal is not reachable at {address}"
    )
    assert World.objects.filter(pk=world.pk).exists() and GenerationRun.objects.filter(pk=run.pk).exists()
    assert world_content(world.pk) == before and before["bibles"] == 1 and before["posts"] == 4
    assert not AuditEvent.objects.filter(action="world_deleted").exists()


# --- publishing: what the characters and posts routes serve ----------------------------------------


def summary(run: GenerationRun) -> dict:
    return {
        "id": run.pk,
        "number": run.number,
        "status": run.status,
        "stage": run.stage,
        "characters_done": run.characters_done,
        "characters_total": run.characters_total,
        "posts_done": run.posts_done,
        "posts_total": run.posts_total,
    }


def served(client: APIClient, world: World) -> tuple[list[str], list[str]]:
    """The handles of the characters and the captions of the feed the API serves for ``world``."""
    characters = client.get(f"/api/worlds/{world.pk}/characters/")
    posts = client.get(f"/api/worlds/{world.pk}/posts/?limit=100")
    assert characters.status_code == posts.status_code == 200
    return [c["handle"] for c in characters.json()], [p["caption"] for p in posts.json()["results"]]


RUN_1 = (["r1_c0", "r1_c1"], ["run 1 post 0.0", "run 1 post 1.0", "run 1 post 0.1", "run 1 post 1.1"])
RUN_2 = (["r2_c0", "r2_c1"], ["run 2 post 0.0", "run 2 post 1.0", "run 2 post 0.1", "run 2 post 1.1"])


def test_the_api_serves_the_live_run_and_editors_publish_and_unpublish(users, content):
    world = make_world()
    first = make_run(world, "completed", 1, characters_total=2, characters_done=2, posts_total=4, posts_done=4)
    second = make_run(world, "running", 2, characters_total=2, characters_done=1, posts_total=4, posts_done=1)
    content(first)
    content(second)  # the newer run's content is in Mongo already, while it runs
    editor, reviewer = api(users["editor"]), api(users["reviewer"])
    assert editor.get(f"/api/worlds/{world.pk}/").json()["live_run"] is None
    assert served(reviewer, world) == ([], [])  # nothing is published: nothing is served

    for who in ("reviewer", "staff"):
        response = api(users[who]).post(f"/api/runs/{first.pk}/publish/")
        assert response.status_code == 403, who
        assert response.json() == {"detail": "You do not have permission to perform this action."}
    response = editor.post(f"/api/runs/{first.pk}/publish/")
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["id"], body["status"], body["requires_approval"], body["bible_approved"]) == (
        first.pk,
        "completed",
        False,
        False,
    )
    shown = editor.get(f"/api/worlds/{world.pk}/").json()
    assert shown["live_run"] == summary(first) and shown["latest_run"] == summary(second)
    assert editor.get("/api/worlds/").json()["results"][0]["live_run"] == summary(first)
    assert served(reviewer, world) == RUN_1  # the live run, not the newer one still running
    response = reviewer.get(f"/api/worlds/{world.pk}/posts/?character=1")
    assert [p["caption"] for p in response.json()["results"]] == ["run 1 post 1.0", "run 1 post 1.1"]

    response = editor.post(f"/api/runs/{first.pk}/publish/")
    assert response.status_code == 409 and response.json() == {"detail": "Lanternfall run 1 is already live"}
    response = editor.post(f"/api/runs/{second.pk}/publish/")
    assert response.status_code == 409
    assert response.json() == {"detail": "Lanternfall run 2 is still running; publish it once it has finished"}

    GenerationRun.objects.filter(pk=second.pk).update(status="cancelled", stage="posts")  # stopped part-way
    assert editor.post(f"/api/runs/{second.pk}/publish/").status_code == 202  # staff may publish a stopped run
    assert editor.get(f"/api/worlds/{world.pk}/").json()["live_run"]["id"] == second.pk
    assert served(reviewer, world) == RUN_2
    assert editor.post(f"/api/runs/{first.pk}/publish/").status_code == 202  # roll back
    assert served(reviewer, world) == RUN_1

    response = reviewer.post(f"/api/worlds/{world.pk}/unpublish/")
    assert response.status_code == 403
    response = editor.post(f"/api/worlds/{world.pk}/unpublish/")
    assert response.status_code == 200
    assert response.json()["id"] == world.pk and response.json()["live_run"] is None
    assert served(reviewer, world) == ([], [])
    response = editor.post(f"/api/worlds/{world.pk}/unpublish/")
    assert response.status_code == 409 and response.json() == {"detail": "Lanternfall is not published"}
    audit = (
        AuditEvent.objects.filter(world=world)
        .order_by("at", "pk")
        .values_list("action", "actor__username", "run_number", "detail")
    )
    assert list(audit) == [
        ("run_published", "editor", 1, ""),
        ("run_published", "editor", 2, "replaces run 1"),
        ("run_published", "editor", 1, "replaces run 2"),
        ("run_unpublished", "editor", 1, ""),
    ]


def followed(client: APIClient, url: str) -> tuple[list[tuple[int, int]], list[str]]:
    """The (character_index, index) of every post of a feed, following its `next` links from ``url``; and the
    URLs of the pages."""
    posts, urls = [], []
    while url:
        urls.append(url)
        response = client.get(url)
        assert response.status_code == 200, response.content
        posts += [(p["character_index"], p["index"]) for p in response.json()["results"]]
        url = response.json()["next"]
    return posts, urls


def test_the_feed_pages_oldest_or_newest_first_and_refuses_another_order(users, content):
    world = make_world(character_count=2, posts_per_character=2)
    run = make_run(world, "completed")
    content(run)  # posts 0 and 1 of both characters
    db = mongo.get_db()
    for slot in range(6):  # three live days of two posts, round the cast, numbered on past the run's posts
        day, character = slot // 2 + 1, slot % 2
        live_post = {"caption": f"day {day} post", "day": day, "slot": slot % 2}
        store.save_post(db, run.ref, character, 2 + slot, live_post, f"r1_c{character}")
    services.run_publish(run=run)
    client, url = api(users["reviewer"]), f"/api/worlds/{world.pk}/posts/"
    posting_order = [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 3), (0, 4), (1, 5), (0, 6), (1, 7)]

    oldest, _ = followed(client, f"{url}?limit=3")  # the default, unchanged
    assert oldest == posting_order
    assert followed(client, f"{url}?order=oldest&limit=3")[0] == posting_order
    newest, pages = followed(client, f"{url}?order=newest&limit=3")
    assert newest == posting_order[::-1] and len(pages) == 4
    assert all("order=newest" in page for page in pages[1:])  # `next` keeps the order
    last = client.get(pages[-1]).json()
    assert last["next"] is None and "order=newest" in last["previous"] and "offset=6" in last["previous"]
    first = client.get(f"{url}?order=newest&limit=1").json()["results"][0]
    assert (first["character_index"], first["index"], first["caption"]) == (1, 7, "day 3 post")
    assert followed(client, f"{url}?character=1&order=newest&limit=2")[0] == [(1, 7), (1, 5), (1, 3), (1, 1), (1, 0)]
    assert followed(client, f"{url}?character=1&limit=2")[0] == [(1, 0), (1, 1), (1, 3), (1, 5), (1, 7)]

    response = client.get(f"{url}?order=sideways")
    assert response.status_code == 400 and response.json() == {"order": ['"sideways" is not a valid choice.']}
    paths = yaml.safe_load(api(users["staff"]).get("/api/schema/").content)["paths"]
    schema = paths["/api/worlds/{world_id}/posts/"]
    [order] = [p for p in schema["get"]["parameters"] if p["name"] == "order"]
    assert order["in"] == "query" and order["schema"]["enum"] == ["oldest", "newest"]
    assert order["schema"]["default"] == "oldest" and "`order=newest`" in schema["get"]["description"]


def test_a_run_is_published_only_with_a_cleared_bible(users, content):
    world = make_world(name="Glasswater", requires_approval=True)
    never_approved = make_run(world, "expired", 1, requires_approval=True)
    no_bible = make_run(world, "failed", 2, requires_approval=True, bible_approved=True)
    approved = make_run(world, "cancelled", 3, requires_approval=True, bible_approved=True)
    content(never_approved)
    content(approved)
    editor = api(users["editor"])
    response = editor.post(f"/api/runs/{never_approved.pk}/publish/")
    assert response.status_code == 409
    assert response.json() == {"detail": "Glasswater run 1 cannot be published: its world bible was never approved"}
    response = editor.post(f"/api/runs/{no_bible.pk}/publish/")
    assert response.status_code == 409
    assert response.json() == {
        "detail": "Glasswater run 2 has nothing to show: it stopped before its world bible was written"
    }
    response = editor.get(f"/api/runs/{never_approved.pk}/").json()
    assert (response["requires_approval"], response["bible_approved"]) == (True, False)
    assert editor.get(f"/api/worlds/{world.pk}/").json()["live_run"] is None
    response = editor.post(f"/api/runs/{approved.pk}/publish/")
    assert response.status_code == 202 and response.json()["bible_approved"] is True
    assert editor.get(f"/api/worlds/{world.pk}/").json()["live_run"] == summary(approved)
    assert served(editor, world)[0] == ["r3_c0", "r3_c1"]
    response = editor.post("/api/runs/987654/publish/")
    assert response.status_code == 404
    assert editor.post("/api/worlds/987654/unpublish/").status_code == 404


# --- content quality ------------------------------------------------------------------------------


def test_the_quality_report_flags_a_repetitive_character(users, quality_content):
    run = make_run(make_world(character_count=3, posts_per_character=3), "completed", tokens_used=6000)
    quality_content(run)
    response = api(users["reviewer"]).get(f"/api/runs/{run.pk}/quality/")
    assert response.status_code == 200, response.content
    report = response.json()
    figures = report["run"]
    assert figures["flags"] == QUALITY_FLAGS["run"]
    assert figures["checks"] == {
        "distinct_2": False,
        "copy_share": False,
        "hashtag_variety": True,  # 3 of 6
        "location_variety": True,  # 3 of 6
        "repairs_per_call": False,
    }
    assert (figures["distinct_2"], figures["copy_share"], figures["repairs_per_call"]) == (31 / 57, 9 / 45, 2 / 11)
    assert (figures["posts"], figures["llm_calls"], figures["tokens_per_post"]) == (6, 11, 1000.0)
    assert [(c["index"], c["handle"], c["posts"], c["repeated_sentences"]) for c in report["characters"]] == [
        (0, "mira", 2, 0),
        (1, "echo", 3, 2),
        (2, "wren", 1, 0),
    ]
    assert [c["overlap"] for c in report["characters"]] == [0.0, 1 / 11, 1 / 5]
    assert {c["handle"]: c["flags"] for c in report["characters"]} == {
        handle: QUALITY_FLAGS[handle] for handle in ("mira", "echo", "wren")
    }
    assert report["prompt_versions"] == ["v2"]


def test_the_quality_report_as_first_written_reads_the_captions_before_the_guard(quality_content):
    from worlds.selectors import run_quality

    run = make_run(make_world(character_count=3, posts_per_character=3), "completed", tokens_used=6000)
    quality_content(run)
    db = mongo.get_db()
    first = "The ferry is late again today."
    for index in (0, 1):  # mira's two posts, as first written: one sentence, twice; stored: what the guard left
        store.record_task(db, run.ref, "post", f"0.{index}", {"output": {"caption": first}})
    stored, written = run_quality(run=run), run_quality(run=run, as_first_written=True)
    assert (stored.characters[0].handle, stored.characters[0].repeated_sentences) == ("mira", 0)
    assert written.characters[0].repeated_sentences == 1
    assert [c.repeated_sentences for c in written.characters[1:]] == [
        c.repeated_sentences for c in stored.characters[1:]
    ]
    assert written.run.tokens_per_post == stored.run.tokens_per_post


def test_the_quality_report_of_a_run_without_posts_is_zeros(users, mongo_env):
    run = make_run(make_world(), "running")
    store.delete_world_content(mongo.get_db(), run.world_id)
    response = api(users["editor"]).get(f"/api/runs/{run.pk}/quality/")
    assert response.status_code == 200, response.content
    report = response.json()
    assert report["characters"] == [] and report["prompt_versions"] == []
    assert report["run"] == {
        "distinct_1": 0.0,
        "distinct_2": 0.0,
        "copy_share": 0.0,
        "hashtag_variety": 0.0,
        "location_variety": 0.0,
        "repairs_per_call": 0.0,
        "llm_calls": 0,
        "posts": 0,
        "tokens_per_post": None,
        "sentences_dropped": 0,
        "checks": {},
        "flags": [],
    }
    assert api(users["editor"]).get(f"/api/runs/{run.pk + 1000}/quality/").status_code == 404
    assert api(users["staff"]).get(f"/api/runs/{run.pk}/quality/").status_code == 403


# --- schema and docs --------------------------------------------------------------------------

ROUTES = {
    "/api/worlds/": {"get", "post"},
    "/api/worlds/{world_id}/": {"get", "patch", "delete"},
    "/api/worlds/{world_id}/generate/": {"post"},
    "/api/worlds/{world_id}/characters/": {"get"},
    "/api/worlds/{world_id}/posts/": {"get"},
    "/api/runs/{run_id}/": {"get"},
    "/api/runs/{run_id}/quality/": {"get"},
    "/api/runs/{run_id}/approve/": {"post"},
    "/api/runs/{run_id}/reject/": {"post"},
    "/api/runs/{run_id}/cancel/": {"post"},
    "/api/runs/{run_id}/rerender/": {"post"},
    "/api/runs/{run_id}/resume/": {"post"},
    "/api/runs/{run_id}/regenerate/": {"post"},
    "/api/runs/{run_id}/versions/": {"get"},
    "/api/regenerations/{regeneration_id}/": {"get"},
    "/api/worlds/{world_id}/live/": {"get", "post"},
    "/api/worlds/{world_id}/live/{command}/": {"post"},
    "/api/runs/{run_id}/publish/": {"post"},
    "/api/worlds/{world_id}/unpublish/": {"post"},
}


def test_the_schema_is_valid_openapi_3_and_describes_every_route(users):
    client = api(users["staff"])  # the schema and the docs need a staff login (tests/test_access_limits.py)
    response = client.get("/api/schema/")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/vnd.oai.openapi")
    schema = yaml.safe_load(response.content)
    as_json = client.get("/api/schema/?format=json")
    assert as_json.status_code == 200 and json.loads(as_json.content) == schema

    validate_schema(schema)  # the OpenAPI 3 JSON schema
    assert schema["openapi"].startswith("3.")
    assert {path: set(ops) for path, ops in schema["paths"].items()} == ROUTES
    paths = schema["paths"]
    assert set(paths["/api/worlds/{world_id}/generate/"]["post"]["responses"]) == {
        "202",
        "400",
        "403",
        "404",
        "409",
        "503",
    }
    assert set(paths["/api/runs/{run_id}/reject/"]["post"]["responses"]) == {"202", "400", "403", "404", "409", "503"}
    assert set(paths["/api/worlds/{world_id}/"]["delete"]["responses"]) == {"204", "403", "404", "503"}
    assert set(paths["/api/runs/{run_id}/publish/"]["post"]["responses"]) == {"202", "403", "404", "409"}
    assert set(paths["/api/worlds/{world_id}/unpublish/"]["post"]["responses"]) == {"200", "403", "404", "409"}
    assert set(paths["/api/worlds/"]["post"]["responses"]) == {"201", "400", "403"}
    for path, operations in paths.items():
        for operation in operations.values():
            assert "403" in operation["responses"], path
            assert ("{" in path) == ("404" in operation["responses"]), path
    world_input = schema["components"]["schemas"]["WorldInput"]
    assert world_input["required"] == ["name", "premise"]
    assert world_input["properties"]["character_count"].items() >= {"minimum": 1, "maximum": 50}.items()
    assert world_input["properties"]["token_budget"]["minimum"] == 1000
    assert "live" not in schema["components"]["schemas"]["RunDetail"]["required"]
    world = schema["components"]["schemas"]["World"]["properties"]
    assert world["live_run"]["nullable"] is True and world["live_run"]["readOnly"] is True
    run = schema["components"]["schemas"]["Run"]["properties"]
    assert run["requires_approval"]["type"] == run["bible_approved"]["type"] == "boolean"
    quality = paths["/api/runs/{run_id}/quality/"]["get"]["responses"]
    assert set(quality) == {"200", "403", "404"}
    assert quality["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/QualityReport"}
    components = schema["components"]["schemas"]
    assert set(components["QualityReport"]["properties"]) == {"run", "characters", "prompt_versions"}
    assert components["RunQuality"]["properties"]["tokens_per_post"]["nullable"] is True
    assert components["RunQuality"]["properties"]["checks"]["additionalProperties"] == {"type": "boolean"}
    assert set(components["CharacterQuality"]["properties"]) == {
        "index",
        "handle",
        "posts",
        "overlap",
        "repeated_sentences",
        "flags",
    }


def test_the_docs_page_is_served(users):
    response = api(users["staff"]).get("/api/docs/")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert "swagger-ui" in page and "/api/schema/" in page


# --- generation end to end (worker, Temporal, LLM, media, Mongo) ---------------------------------


@pytest.mark.django_db(transaction=True)
def test_generate_a_world_and_read_its_characters_and_feed(users, worker):
    editor = api(users["editor"])
    world = editor.post("/api/worlds/", world_body(character_count=2, posts_per_character=2), format="json").json()
    response = editor.post(f"/api/worlds/{world['id']}/generate/")
    assert response.status_code == 202, response.content
    run = response.json()
    assert (run["world"], run["number"], run["workflow_id"]) == (world["id"], 1, f"world-{world['id']}-run-1")
    assert (run["status"], run["started_by"], run["characters_total"], run["posts_total"]) == (
        "pending",
        "editor",
        2,
        4,
    )

    run = wait_for(editor, run["id"], FINISHED)
    assert run["status"] == "completed", run["error"]
    assert (run["characters_done"], run["posts_done"], run["degraded_items"], run["is_active"]) == (2, 4, 0, False)
    assert run["tokens_used"] > 0 and run["finished_at"] and "live" not in run
    shown = editor.get(f"/api/worlds/{world['id']}/").json()
    assert shown["latest_run"] == {
        key: run[key]
        for key in (
            "id",
            "number",
            "status",
            "stage",
            "characters_done",
            "characters_total",
            "posts_done",
            "posts_total",
        )
    }
    assert shown["live_run"] == shown["latest_run"]  # a completed run publishes itself
    assert editor.get("/api/worlds/").json()["results"][0]["latest_run"]["status"] == "completed"

    characters = editor.get(f"/api/worlds/{world['id']}/characters/").json()
    assert [c["index"] for c in characters] == [0, 1]
    ref = GenerationRun.objects.get(world_id=world["id"], number=1).ref
    for character in characters:
        assert set(character) == {
            "index",
            "version",
            "name",
            "handle",
            "bio",
            "personality",
            "appearance",
            "interests",
            "image_status",
            "avatar_url",
            "post_count",
        }
        assert character["name"] and character["handle"] and character["bio"] and character["personality"]
        assert len(character["interests"]) >= 2 and all(isinstance(i, str) for i in character["interests"])
        assert character["image_status"] == "rendered" and character["post_count"] == 2 and character["version"] == 1
        assert (
            character["avatar_url"]
            == f"/images/{documents.image_id(documents.character_key(ref, character['index']))}.png"
        )
        image = editor.get(character["avatar_url"])
        assert image.status_code == 200 and image["Content-Type"] == "image/png"
        assert image.content.startswith(PNG)

    posts_url = f"/api/worlds/{world['id']}/posts/"
    page = editor.get(f"{posts_url}?limit=3").json()
    assert [(p["index"], p["character_index"]) for p in page["results"]] == [(0, 0), (0, 1), (1, 0)]
    assert page["previous"] is None and page["next"].endswith(f"{posts_url}?limit=3&offset=3")
    rest = editor.get(page["next"]).json()
    assert [(p["index"], p["character_index"]) for p in rest["results"]] == [(1, 1)]
    assert rest["next"] is None and rest["previous"].endswith(f"{posts_url}?limit=3&offset=0")
    handles = {c["index"]: c["handle"] for c in characters}
    for post in page["results"] + rest["results"]:
        assert set(post) == {
            "character_index",
            "index",
            "version",
            "handle",
            "caption",
            "hashtags",
            "location",
            "image_status",
            "image_url",
        }
        assert post["handle"] == handles[post["character_index"]] and post["caption"] and post["location"]
        assert post["hashtags"] and post["image_status"] == "rendered"
        assert (
            post["image_url"]
            == f"/images/{documents.image_id(documents.post_key(ref, post['character_index'], post['index']))}.png"
        )
    assert editor.get(rest["results"][0]["image_url"]).content.startswith(PNG)
    only = editor.get(f"{posts_url}?character=1").json()["results"]
    assert [(p["character_index"], p["index"]) for p in only] == [(1, 0), (1, 1)]
    assert editor.get(f"{posts_url}?character=7").json()["results"] == []
    assert editor.get(f"{posts_url}?offset=50").json() == {
        "next": None,
        "previous": f"http://testserver{posts_url}?offset=30",
        "results": [],
    }


@pytest.mark.django_db(transaction=True)
def test_approval_with_four_eyes_rejection_feedback_and_conflicts(users, worker):
    lead, editor, reviewer = api(users["lead"]), api(users["editor"]), api(users["reviewer"])
    world = lead.post("/api/worlds/", world_body(requires_approval=True, posts_per_character=0), format="json").json()
    run = lead.post(f"/api/worlds/{world['id']}/generate/").json()
    run = wait_for(reviewer, run["id"], {"awaiting_approval"} | FINISHED)
    assert (run["status"], run["stage"], run["bible_revision"]) == ("awaiting_approval", "approval", 0)
    assert run["live"]["awaiting_decision"] is True and run["live"]["stage"] == "approval"
    assert (run["requires_approval"], run["bible_approved"]) == (True, False)
    response = lead.post(f"/api/runs/{run['id']}/publish/")  # an unapproved bible is never public
    assert response.status_code == 409 and "still awaiting approval" in response.json()["detail"]
    assert reviewer.get(f"/api/worlds/{world['id']}/").json()["live_run"] is None
    assert reviewer.get(f"/api/worlds/{world['id']}/characters/").json() == []

    response = lead.post(f"/api/worlds/{world['id']}/generate/")
    assert response.status_code == 409
    assert response.json() == {"detail": "Lanternfall is already being generated; cancel that run first"}
    assert editor.post(f"/api/runs/{run['id']}/approve/").status_code == 403  # no reviewer role
    response = lead.post(f"/api/runs/{run['id']}/approve/")
    assert response.status_code == 403
    assert response.json() == {"detail": "you may not approve runs you started (four-eyes rule)"}
    response = lead.post(f"/api/runs/{run['id']}/reject/", {"feedback": "Darker."}, format="json")
    assert response.status_code == 403 and "four-eyes" in response.json()["detail"]
    response = reviewer.post(f"/api/runs/{run['id']}/reject/", {"feedback": " "}, format="json")
    assert response.status_code == 400 and response.json() == {"feedback": ["This field may not be blank."]}

    response = reviewer.post(f"/api/runs/{run['id']}/reject/", {"feedback": "More sky-whales."}, format="json")
    assert response.status_code == 202 and response.json()["rejected_by"] == "reviewer"
    run = wait_for(reviewer, run["id"], {"awaiting_approval"} | FINISHED, until=lambda r: r["bible_revision"] == 1)
    assert run["status"] == "awaiting_approval"

    response = reviewer.post(f"/api/runs/{run['id']}/approve/")
    assert response.status_code == 202 and response.json()["approved_by"] == "reviewer"
    run = wait_for(reviewer, run["id"], FINISHED)
    assert run["status"] == "completed", run["error"]
    assert run["bible_approved"] is True
    assert reviewer.get(f"/api/worlds/{world['id']}/").json()["live_run"]["id"] == run["id"]
    assert len(reviewer.get(f"/api/worlds/{world['id']}/characters/").json()) == 1
    response = reviewer.post(f"/api/runs/{run['id']}/approve/")
    assert response.status_code == 409 and "nothing is awaiting approval" in response.json()["detail"]
    audit = (
        AuditEvent.objects.filter(run_id=run["id"])
        .order_by("at", "pk")
        .values_list("action", "actor__username", "detail")
    )
    assert list(audit) == [
        ("run_started", "lead", f"world-{world['id']}-run-1"),
        ("run_rejected", "reviewer", "More sky-whales."),
        ("run_approved", "reviewer", "revision 1"),
        ("run_published", None, "completed"),
    ]  # by the run itself, once completed


@pytest.mark.django_db(transaction=True)
def test_an_expired_run_resumes_at_its_bible_revision_and_waits_for_approval_again(users, worker, settings):
    lead, reviewer = api(users["lead"]), api(users["reviewer"])
    world = lead.post("/api/worlds/", world_body(requires_approval=True, posts_per_character=1), format="json").json()
    settings.GENERATION_APPROVAL_TIMEOUT_SECONDS = 4
    run = lead.post(f"/api/worlds/{world['id']}/generate/").json()
    wait_for(reviewer, run["id"], {"awaiting_approval"})
    assert reviewer.post(f"/api/runs/{run['id']}/reject/", {"feedback": "Gloomier."}, format="json").status_code == 202
    run = wait_for(reviewer, run["id"], FINISHED)
    assert (run["status"], run["bible_revision"]) == ("expired", 1)
    bible_task = documents.task_key(GenerationRun.objects.get(pk=run["id"]).ref, "bible", 1)
    bible_attempts = mongo.get_db().generation_tasks.find_one({"_id": bible_task})["attempts"]
    settings.GENERATION_APPROVAL_TIMEOUT_SECONDS = 3600

    assert api(users["reviewer"]).post(f"/api/runs/{run['id']}/resume/").status_code == 403  # needs start_run
    response = lead.post(f"/api/runs/{run['id']}/resume/")
    assert response.status_code == 202 and response.json()["resumes"] == 1
    assert response.json()["workflow_id"] == f"world-{world['id']}-run-1-resume-1"
    run = wait_for(reviewer, run["id"], {"awaiting_approval"})
    assert (run["bible_revision"], run["bible_approved"]) == (1, False)  # the stored revision, not a new one
    assert mongo.get_db().generation_tasks.find_one({"_id": bible_task})["attempts"] == bible_attempts
    response = lead.post(f"/api/runs/{run['id']}/resume/")
    assert response.status_code == 409 and "nothing to resume: it is awaiting approval" in response.json()["detail"]
    assert reviewer.post(f"/api/runs/{run['id']}/approve/").status_code == 202
    run = wait_for(reviewer, run["id"], FINISHED)
    assert (run["status"], run["posts_done"], run["failed_items"]) == ("completed", 1, 0), run["error"]
    assert mongo.get_db().bibles.count_documents({"world_id": world["id"]}) == 1


@pytest.mark.django_db(transaction=True)
def test_cancel_an_active_run_and_delete_a_world_while_it_generates(users, worker):
    editor, reviewer = api(users["editor"]), api(users["reviewer"])
    world = editor.post("/api/worlds/", world_body(requires_approval=True), format="json").json()
    run = editor.post(f"/api/worlds/{world['id']}/generate/").json()
    run = wait_for(editor, run["id"], {"awaiting_approval"} | FINISHED)
    assert run["status"] == "awaiting_approval"

    assert reviewer.post(f"/api/runs/{run['id']}/cancel/").status_code == 403  # reviewers cannot cancel
    response = editor.post(f"/api/runs/{run['id']}/cancel/")
    assert response.status_code == 202 and response.json()["cancelled_by"] == "editor"
    run = wait_for(editor, run["id"], FINISHED, timeout=60)
    assert run["status"] == "cancelled" and run["finished_at"] and "live" not in run
    response = editor.post(f"/api/runs/{run['id']}/cancel/")
    assert response.status_code == 409 and "is not running (it is cancelled)" in response.json()["detail"]

    second = editor.post(f"/api/worlds/{world['id']}/generate/").json()
    assert wait_for(editor, second["id"], {"awaiting_approval"} | FINISHED)["status"] == "awaiting_approval"
    assert reviewer.delete(f"/api/worlds/{world['id']}/").status_code == 403
    assert editor.delete(f"/api/worlds/{world['id']}/").status_code == 204  # while run 2 waits: it is stopped
    assert editor.get(f"/api/runs/{second['id']}/").status_code == 404
    assert editor.get(f"/api/worlds/{world['id']}/").status_code == 404
    result = cleanup_result(world["id"])
    assert result.stopped_workflows == 1
    status = temporal_call(lambda client: client.get_workflow_handle(second["workflow_id"]).describe()).status.name
    assert status == "CANCELED"
    assert world_content(world["id"]) == dict.fromkeys(world_content(world["id"]), 0)


@pytest.mark.django_db(transaction=True)
def test_deleting_a_generated_world_removes_all_its_content(users, worker, client):
    editor = api(users["editor"])
    world = editor.post("/api/worlds/", world_body(character_count=2, posts_per_character=1), format="json").json()
    run = editor.post(f"/api/worlds/{world['id']}/generate/").json()
    assert wait_for(editor, run["id"], FINISHED)["status"] == "completed"
    before = world_content(world["id"])
    assert before["bibles"] == 1 and before["characters"] == 2 and before["posts"] == 2 and before["images"] == 4
    assert before["generation_tasks"] and before["token_ledgers"] and before["image chunks"]
    avatar = editor.get(f"/api/worlds/{world['id']}/characters/").json()[0]["avatar_url"]
    assert client.get(avatar).status_code == 200  # public: the run is live

    response = editor.delete(f"/api/worlds/{world['id']}/")
    assert response.status_code == 204
    assert client.get(avatar).status_code == 404  # at once, before the cleanup has run
    assert editor.get(f"/api/worlds/{world['id']}/").status_code == 404
    assert editor.get(f"/api/runs/{run['id']}/").status_code == 404
    result = cleanup_result(world["id"])
    assert (result.stopped_workflows, result.images) == (0, 4)
    assert result.documents == sum(before[name] for name in documents.CONTENT_COLLECTIONS)
    assert world_content(world["id"]) == dict.fromkeys(before, 0)
    deleted = AuditEvent.objects.get(action="world_deleted")
    assert (deleted.actor.username, deleted.world, deleted.world_pk, deleted.world_name) == (
        "editor",
        None,
        world["id"],
        "Lanternfall",
    )
    assert deleted.detail == f"Lanternfall; 1 run; content removed by world-{world['id']}-cleanup"
    started = AuditEvent.objects.get(action="run_started")  # the history keeps which world and run
    assert (started.world, started.run, started.world_pk, started.world_name, started.run_number) == (
        None,
        None,
        world["id"],
        "Lanternfall",
        1,
    )
