"""World reads: generated content from Mongo, runs from SQL."""

import gridfs
from django.conf import settings

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

    return temporal_call(query)
