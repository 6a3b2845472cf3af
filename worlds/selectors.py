"""World reads: generated content from Mongo, runs from SQL."""

import gridfs
from django.conf import settings
from django.core.paginator import Page, Paginator

from generation import mongo
from temporal_worker.client import temporal_call
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


# --- World viewer reads ---------------------------------------------------------------------------
# Viewers see the content of a world's latest run that has a bible; worlds with no runs stay hidden.


def viewer_world(*, world_id: int) -> World | None:
    """The world, if it has at least one run (worlds that were never generated are not shown)."""
    return World.objects.filter(pk=world_id, runs__isnull=False).distinct().first()


def world_content_run(*, world: World) -> GenerationRun | None:
    """The world's latest run that has a bible (it may still be running, or have stopped part-way)."""
    numbers = list(world.runs.values_list("number", flat=True))
    if not numbers:
        return None
    doc = mongo.get_db().bibles.find_one({"world_id": world.pk, "run_number": {"$in": numbers}},
                                         {"run_number": 1}, sort=[("run_number", -1)])
    return None if doc is None else world.runs.get(number=doc["run_number"])


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
    """One page of worlds that have runs, newest first, and the cards of those with content
    (a bible). ``page`` is the raw ``?page=`` value: anything invalid gives the first or last page."""
    worlds = World.objects.filter(runs__isnull=False).distinct().order_by("-created_at", "-pk")
    paginator = Paginator(worlds, VIEWER_WORLDS_PER_PAGE)
    page_obj = paginator.get_page(page)
    return page_obj, _world_cards(list(page_obj.object_list))


def _world_cards(worlds: list[World]) -> list[dict]:
    """Each world with content as {world, run (shown), latest_run, cover_image_id, character_count,
    post_count}. A handful of queries in all, whatever the number of worlds."""
    runs: dict[int, dict[int, GenerationRun]] = {}
    for run in GenerationRun.objects.filter(world__in=worlds):
        runs.setdefault(run.world_id, {})[run.number] = run
    db = mongo.get_db()
    shown: dict[int, GenerationRun] = {}
    for doc in db.bibles.find({"world_id": {"$in": list(runs)}}, {"world_id": 1, "run_number": 1}):
        run = runs.get(doc["world_id"], {}).get(doc["run_number"])
        if run and (doc["world_id"] not in shown or run.number > shown[doc["world_id"]].number):
            shown[doc["world_id"]] = run
    keys = [_run_key(run) for run in shown.values()]
    characters = _count_by_run_key(db.characters, keys)
    posts = _count_by_run_key(db.posts, keys)
    covers: dict[str, str] = {}
    for doc in db.characters.find({"run_key": {"$in": keys}, "image_status": "rendered"},
                                  {"run_key": 1, "image_id": 1}).sort("index", 1):
        covers.setdefault(doc["run_key"], doc["image_id"])
    return [
        {"world": world, "run": shown[world.pk], "latest_run": max(runs[world.pk].values(), key=lambda r: r.number),
         "cover_image_id": covers.get(_run_key(shown[world.pk])),
         "character_count": characters.get(_run_key(shown[world.pk]), 0),
         "post_count": posts.get(_run_key(shown[world.pk]), 0)}
        for world in worlds if world.pk in shown
    ]


def _count_by_run_key(collection, keys: list[str]) -> dict[str, int]:
    groups = collection.aggregate([{"$match": {"run_key": {"$in": keys}}},
                                   {"$group": {"_id": "$run_key", "count": {"$sum": 1}}}])
    return {group["_id"]: group["count"] for group in groups}
