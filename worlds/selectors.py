"""World reads: generated content from Mongo, runs from SQL."""

import re

import gridfs
from django.conf import settings
from django.core.paginator import Page, Paginator

from clients import mongo
from clients.temporal import temporal_call
from worlds.models import GenerationRun, World


def _run_key(run: GenerationRun) -> str:
    return f"w{run.world_id}-r{run.number}"


def world_latest_run(*, world: World) -> GenerationRun | None:
    return world.runs.order_by("-number").first()


def run_bible(*, run: GenerationRun) -> dict | None:
    doc = mongo.get_db().bibles.find_one({"run_key": _run_key(run)})
    return doc and doc["bible"]


def run_characters(*, run: GenerationRun) -> list[dict]:
    return list(mongo.get_db().characters.find({"run_key": _run_key(run)}).sort("index", 1))


def run_posts(*, run: GenerationRun, character_index: int | None = None, offset: int = 0, limit: int = 20) -> list[dict]:
    query = {"run_key": _run_key(run)}
    if character_index is not None:
        query["character_index"] = character_index
    cursor = mongo.get_db().posts.find(query).sort([("index", 1), ("character_index", 1)])
    return list(cursor.skip(offset).limit(limit))


def image_png(*, image_id: str) -> bytes | None:
    try:
        return gridfs.GridFS(mongo.get_db(), collection="images").get(image_id).read()
    except gridfs.errors.NoFile:
        return None


def run_live_progress(*, run: GenerationRun):
    """The workflow's own progress (a Temporal query); list pages use the mirrored row instead."""
    from generation.workflows import WorldGenerationWorkflow

    async def query(client):
        return await client.get_workflow_handle(run.workflow_id).query(WorldGenerationWorkflow.progress)

    return temporal_call(query, timeout=5)


# --- Published content ----------------------------------------------------------------------------
# Viewers, the feed API and anonymous image requests see a world's live (published) run only;
# worlds with nothing published stay hidden.

IMAGE_ID = re.compile(r"^img-w(?P<world>[0-9]+)-r(?P<run>[0-9]+)-c[0-9]+(-p[0-9]+)?$")


def viewer_world(*, world_id: int) -> World | None:
    """The world, if it is published."""
    return World.objects.filter(pk=world_id, live_run__isnull=False).select_related("live_run").first()


def image_is_public(*, image_id: str) -> bool:
    """The image belongs to a world's live run."""
    match = IMAGE_ID.match(image_id)
    return bool(match) and World.objects.filter(pk=int(match["world"]), live_run__number=int(match["run"])).exists()


def run_character(*, run: GenerationRun, index: int) -> dict | None:
    return mongo.get_db().characters.find_one({"run_key": _run_key(run), "index": index})


def run_post_count(*, run: GenerationRun) -> int:
    return mongo.get_db().posts.count_documents({"run_key": _run_key(run)})


def run_post_counts_by_character(*, run: GenerationRun) -> dict[int, int]:
    groups = mongo.get_db().posts.aggregate([
        {"$match": {"run_key": _run_key(run)}},
        {"$group": {"_id": "$character_index", "count": {"$sum": 1}}},
    ])
    return {group["_id"]: group["count"] for group in groups}


VIEWER_WORLDS_PER_PAGE = 24


def viewer_world_page(*, page) -> tuple[Page, list[dict]]:
    """One page of published worlds, newest first, and their cards. ``page`` is the raw ``?page=``
    value: anything invalid gives the first or last page."""
    worlds = World.objects.filter(live_run__isnull=False).select_related("live_run").order_by("-created_at", "-pk")
    paginator = Paginator(worlds, VIEWER_WORLDS_PER_PAGE)
    page_obj = paginator.get_page(page)
    return page_obj, _world_cards(list(page_obj.object_list))


def _world_cards(worlds: list[World]) -> list[dict]:
    """Each world as {world, run (live), cover_image_id, character_count, post_count}. A handful of
    queries in all, whatever the number of worlds."""
    db = mongo.get_db()
    keys = [_run_key(world.live_run) for world in worlds]
    characters = _count_by_run_key(db.characters, keys)
    posts = _count_by_run_key(db.posts, keys)
    covers: dict[str, str] = {}
    for doc in db.characters.find({"run_key": {"$in": keys}, "image_status": "rendered"},
                                  {"run_key": 1, "image_id": 1}).sort("index", 1):
        covers.setdefault(doc["run_key"], doc["image_id"])
    return [{"world": world, "run": world.live_run, "cover_image_id": covers.get(key),
             "character_count": characters.get(key, 0), "post_count": posts.get(key, 0)}
            for world, key in zip(worlds, keys)]


def _count_by_run_key(collection, keys: list[str]) -> dict[str, int]:
    groups = collection.aggregate([{"$match": {"run_key": {"$in": keys}}},
                                   {"$group": {"_id": "$run_key", "count": {"$sum": 1}}}])
    return {group["_id"]: group["count"] for group in groups}
