"""``manage.py seed_worlds``: fake worlds in SQLite and their content in the real Mongo (SecantusDB),
read back through the admin, the API and the viewer."""

import io

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.core.management.color import no_style
from django.db import connection
from django.test import Client

from clients import mongo
from generation import documents
from worlds.models import GenerationRun, World

pytestmark = pytest.mark.django_db(transaction=True)

PREFIX = "Seedtest"
FIRST_ID = 860_000  # far above other tests' world IDs: their Mongo documents stay in the shared database
SEEDED = {"world_id": {"$gt": FIRST_ID, "$lt": FIRST_ID + 10_000}}
COLLECTIONS = ("bibles", "characters", "posts")


@pytest.fixture
def db(mongo_env):
    """The test Mongo database; new worlds get IDs from FIRST_ID + 1 and their documents are removed after."""
    bump = World.objects.create(id=FIRST_ID, name="ID bump", premise="-")  # SQLite never reuses an ID
    with connection.cursor() as cursor:  # PostgreSQL's sequence moves to it (no SQL on SQLite)
        for sql in connection.ops.sequence_reset_sql(no_style(), [World]):
            cursor.execute(sql)
    bump.delete()
    database = mongo.get_db()
    yield database
    for collection in COLLECTIONS:
        database[collection].delete_many(SEEDED)


def seed(**options) -> str:
    out = io.StringIO()
    call_command("seed_worlds", prefix=PREFIX, stdout=out, **options)
    return out.getvalue()


def mongo_counts(database) -> dict[str, int]:
    return {name: database[name].count_documents(SEEDED) for name in COLLECTIONS}


def test_seeding_creates_exact_counts_with_the_pipeline_keys(db):
    output = seed(worlds=30, posts=200, characters_per_world=3)

    worlds = World.objects.filter(name__startswith=f"{PREFIX} world ").order_by("pk")
    assert worlds.count() == 30 and worlds[0].pk == FIRST_ID + 1
    runs = GenerationRun.objects.filter(world__in=worlds)
    assert runs.count() == 30 and set(runs.values_list("status", "number", "stage")) == {("completed", 1, "done")}
    assert sum(runs.values_list("posts_total", flat=True)) == 200
    assert mongo_counts(db) == {"bibles": 30, "characters": 90, "posts": 200}

    first = worlds[0]  # 200 posts over 30 worlds: the first 20 worlds hold 7, the others 6
    assert db.posts.count_documents({"world_id": first.pk}) == 7
    assert db.posts.count_documents({"world_id": worlds[29].pk}) == 6
    ref = first.runs.get().ref  # the pipeline's own keys
    post = db.posts.find_one({"_id": documents.post_key(ref, 1, 0)})
    assert post["run_key"] == ref.key and post["image_status"] == "pending"
    assert db.bibles.find_one({"_id": documents.bible_key(ref)})["bible"]["title"].endswith("(fake)")
    assert db.characters.find_one({"_id": documents.character_key(ref, 2)})["status"] == "profiled"
    assert "FAKE" in output and "30 worlds, 30 runs, 30 bibles, 90 characters, 200 posts" in output


def test_seeded_worlds_show_in_the_admin_the_api_and_the_viewer(db):
    seed(worlds=30, posts=200)
    world = World.objects.get(name=f"{PREFIX} world 00000")
    client = Client()
    client.force_login(User.objects.create_superuser("seed-admin", password=None))

    page = client.get("/admin/worlds/world/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f"{PREFIX} world 00029" in html and "30 worlds" in html and "2/2 characters, 7/7 posts" in html
    assert client.get(f"/admin/worlds/world/{world.pk}/change/").status_code == 200  # preview: images pending

    feed = client.get(f"/api/worlds/{world.pk}/posts/")
    assert feed.status_code == 200
    results = feed.json()["results"]
    assert [(p["index"], p["character_index"]) for p in results] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
        (3, 0),
    ]
    assert results[0]["caption"].startswith("Fake seeded post") and results[0]["image_url"] is None
    assert client.get(f"/api/worlds/{world.pk}/characters/").status_code == 200
    assert client.get(f"/worlds/{world.pk}/").status_code == 200


def test_the_world_list_checkbox_is_djangos_markup():
    """WorldAdmin writes the row checkbox itself (for speed); it must stay what Django renders."""
    world = World.objects.create(name='Tea <b>&"Co"\'', premise="-")
    world_admin = admin.site._registry[World]
    assert world_admin.action_checkbox(world) == admin.ModelAdmin.action_checkbox(world_admin, world)


@pytest.mark.parametrize(
    "options",
    [
        {"worlds": -1, "posts": 0},
        {"worlds": 5, "posts": -1},
        {"worlds": 0, "posts": 10},
        {"worlds": 5, "posts": 10, "characters_per_world": 0},
        {"worlds": 1, "posts": 101, "characters_per_world": 2},  # more than 50 posts per character
    ],
)
def test_bad_options_are_refused_and_create_nothing(db, options):
    with pytest.raises(CommandError):
        seed(**options)
    assert World.objects.count() == 0 and mongo_counts(db) == {"bibles": 0, "characters": 0, "posts": 0}


def test_seeding_again_with_the_same_prefix_is_refused(db):
    seed(worlds=3, posts=6)
    with pytest.raises(CommandError, match="exist already"):
        seed(worlds=3, posts=6)
    assert World.objects.count() == 3 and mongo_counts(db)["posts"] == 6
    call_command("seed_worlds", worlds=2, posts=0, prefix="Other", stdout=io.StringIO())  # another prefix is fine
    assert World.objects.count() == 5
