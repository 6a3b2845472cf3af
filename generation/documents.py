"""The Mongo document model of generated content, in one place: collection names, document keys,
the fields every document carries, image statuses, the documents' shapes, and the reads the web
side needs. ``store`` writes through it, ``worlds.selectors`` and ``worlds.seeding`` use it; nothing
else spells a key or a field. Imports nothing from Django (workflows import ``contracts``, which
takes ``run_key`` from here)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

import gridfs
from pymongo import ASCENDING
from pymongo.database import Database

if TYPE_CHECKING:
    from generation.contracts import RunRef

BIBLES, CHARACTERS, POSTS, TASKS, LEDGERS = "bibles", "characters", "posts", "generation_tasks", "token_ledgers"
VERSIONS = "item_versions"  # earlier versions of regenerated characters and posts
EVENTS, COMMENTS, LIVE_DAYS = "world_events", "comments", "live_days"  # of live worlds
SNAPSHOTS = "run_snapshots"  # the world as each run execution saw it (activities read it by reference)
CONTENT_COLLECTIONS = (BIBLES, CHARACTERS, POSTS, TASKS, LEDGERS, VERSIONS, EVENTS, COMMENTS, LIVE_DAYS, SNAPSHOTS)
IMAGES = "images"  # GridFS bucket: images.files and images.chunks
IMAGE_CHUNK_BYTES = 255 * 1024  # GridFS's default chunk size


class CharacterStatus(StrEnum):
    CAST = "cast"  # named by the cast
    PROFILED = "profiled"  # its profile is written


class TaskStatus(StrEnum):
    """Of a ``generation_tasks`` document: one per LLM call or render."""

    RUNNING = "running"
    RETRYING = "retrying"  # the provider is down or limiting: Temporal tries again later
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ImageStatus(StrEnum):
    PENDING = "pending"
    RENDERED = "rendered"
    NEEDS_RENDER = "needs_render"  # the media service was down: kept for a re-render
    REJECTED = "rejected"  # the media service refused it for good: a failed item (a resume tries again)


# --- keys ------------------------------------------------------------------------------------------


def run_key(world_id: int, number: int) -> str:
    """Prefix of every key of a run (``RunRef.key``)."""
    return f"w{world_id}-r{number}"


def draft_key(world_id: int, number: int, regeneration_id: int) -> str:
    """Prefix of the keys of a regeneration's drafts: its new versions, with copies of what they are written
    from (the bible, the character, its posts), apart from the published run until they are whole."""
    return f"{run_key(world_id, number)}~r{regeneration_id}"


ITEM_POSITION = re.compile(r"-c([0-9]+)(?:-p([0-9]+))?$")  # of a character or post document key
IMAGE_ID = re.compile(
    r"^img-w(?P<world>[0-9]+)-r(?P<run>[0-9]+)(~r[0-9]+)?-c(?P<character>[0-9]+)(-p(?P<post>[0-9]+))?(-v[0-9]+)?$"
)


def bible_key(run: RunRef) -> str:
    return f"{run.key}-bible"


def character_key(run: RunRef, index: int) -> str:
    return f"{run.key}-c{index}"


def post_key(run: RunRef, character_index: int, index: int) -> str:
    return f"{run.key}-c{character_index}-p{index}"


def event_key(run: RunRef, day: int) -> str:
    return f"{run.key}-d{day}-event"


def comment_key(run: RunRef, day: int, slot: int, reply: bool = False) -> str:
    return f"{run.key}-d{day}-k{slot}" + ("-reply" if reply else "")


def day_key(run: RunRef, day: int) -> str:
    """A live world's day report, and the key of that day's token ledger."""
    return f"{run.key}-d{day}"


def live_day_key(run: RunRef, live_id: int, day: int) -> str:
    """A day of one time live (``worlds.models.LiveWorld``): its report and its token ledger. A world that goes
    live again goes on from its last day, and a day begun in one time live and lived in the next has a report
    and a ledger in each, so nothing one of them spent is overwritten."""
    return f"{run.key}-l{live_id}-d{day}"


def snapshot_key(run: RunRef) -> str:
    """A run execution's snapshot: a resume may carry another token budget."""
    return f"{run.key}/resume-{run.resume}"


def task_key(run: RunRef, stage: str, index: str | int) -> str:
    return f"{run.key}:{stage}:{index}"


def image_id(document_key: str, version: int = 1) -> str:
    """The GridFS ID of the image of a character or post document (of one of its versions)."""
    return f"img-{document_key}" if version <= 1 else f"img-{document_key}-v{version}"


def item_index(character_index: int, post_index: int | None = None, version: int = 1) -> str | int:
    """The task index of a character (0) or a post ("0.1"), of a regenerated version ("0@v2", "0.1@v2")."""
    index: str | int = character_index if post_index is None else f"{character_index}.{post_index}"
    return index if version <= 1 else f"{index}@v{version}"


def version_key(document_key: str, version: int) -> str:
    return f"{document_key}:v{version}"


def image_run(image: str) -> tuple[int, int] | None:
    """(world ID, run number) an image ID belongs to; None if it is not one."""
    match = IMAGE_ID.match(image)
    return (int(match["world"]), int(match["run"])) if match else None


def is_current_image(db: Database, image: str) -> bool:
    """``image`` is the current image of its character or post: not an earlier version's, nor a draft's."""
    match = IMAGE_ID.match(image)
    if match is None:
        return False
    key = f"{run_key(int(match['world']), int(match['run']))}-c{match['character']}"
    collection = CHARACTERS if match["post"] is None else POSTS
    if match["post"] is not None:
        key += f"-p{match['post']}"
    return db[collection].find_one({"_id": key, "image_id": image}, {"_id": 1}) is not None


def world_image_ids(world_id: int) -> dict:
    """Matches the image IDs of a world; the ``-r`` keeps world 1 from matching world 12."""
    return {"$regex": f"^img-{run_key(world_id, 0)[:-1]}"}


def run_images(run: RunRef) -> dict:
    """Matches the image IDs of a run."""
    return {"$regex": f"^{image_id(run.key)}-"}


# --- shapes ------------------------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def run_fields(run: RunRef) -> dict:
    """What every document of a run carries: reads select by run_key, deletion by world_id. A regeneration's
    drafts carry its ID (``draft``), which the unique position indexes include."""
    return {
        "world_id": run.world_id,
        "run_number": run.number,
        "run_key": run.key,
        **({"draft": run.draft} if run.draft else {}),
    }


def bible_document(run: RunRef, bible: dict, revision: int) -> dict:
    return {"_id": bible_key(run), **run_fields(run), "bible": bible, "revision": revision, "updated_at": now()}


def character_document(run: RunRef, index: int, member: dict) -> dict:
    """A character as the cast names it (name, handle, concept); its profile fields come later."""
    return {
        "_id": character_key(run, index),
        **run_fields(run),
        "index": index,
        "name": member["name"],
        "handle": member["handle"],
        "concept": member["concept"],
        "updated_at": now(),
    }


def post_document(run: RunRef, character_index: int, index: int, post: dict, handle: str) -> dict:
    return {
        "_id": post_key(run, character_index, index),
        **run_fields(run),
        "character_index": character_index,
        "index": index,
        "handle": handle,
        **post,
        "updated_at": now(),
    }


def ensure_indexes(db: Database) -> None:
    # One document per position: per run and, for a regeneration's drafts, per regeneration (documents of the
    # run itself have no ``draft``). These replaced indexes without ``draft``, dropped here.
    _replace_index(
        db[CHARACTERS],
        "character_position",
        [("world_id", ASCENDING), ("run_number", ASCENDING), ("draft", ASCENDING), ("index", ASCENDING)],
    )
    _replace_index(
        db[POSTS],
        "post_position",
        [
            ("world_id", ASCENDING),
            ("run_number", ASCENDING),
            ("draft", ASCENDING),
            ("character_index", ASCENDING),
            ("index", ASCENDING),
        ],
    )
    db[TASKS].create_index([("run_key", ASCENDING), ("stage", ASCENDING)], name="task_run_stage")
    # GridFS's own indexes (store.store_image_file writes without gridfs, which would make them).
    db[f"{IMAGES}.files"].create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])
    db[f"{IMAGES}.chunks"].create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)
    _replace_index(db[BIBLES], "bible_run", [("world_id", ASCENDING), ("run_number", ASCENDING), ("draft", ASCENDING)])
    # A run's images waiting for a re-render are counted and listed by status.
    for name in (CHARACTERS, POSTS):
        db[name].create_index([("run_key", ASCENDING), ("image_status", ASCENDING)], name=f"{name}_image_status")
    # Reads find a run's content by run_key; the feed sorts by (index, character_index).
    db[POSTS].create_index(
        [("run_key", ASCENDING), ("index", ASCENDING), ("character_index", ASCENDING)], name="post_feed_order"
    )
    db[POSTS].create_index(
        [("run_key", ASCENDING), ("character_index", ASCENDING), ("index", ASCENDING)], name="post_character_order"
    )
    db[CHARACTERS].create_index([("run_key", ASCENDING), ("index", ASCENDING)], name="character_run_order")
    db[BIBLES].create_index([("run_key", ASCENDING)], name="bible_run_key")
    # A deleted world's content is deleted by world_id (the other collections' indexes start with it).
    db[TASKS].create_index([("world_id", ASCENDING)], name="task_world")
    db[VERSIONS].create_index([("run_key", ASCENDING), ("item", ASCENDING)], name="version_item")
    db[VERSIONS].create_index([("world_id", ASCENDING)], name="version_world")
    db[EVENTS].create_index([("run_key", ASCENDING), ("day", ASCENDING)], name="event_timeline")
    db[COMMENTS].create_index([("post_key", ASCENDING), ("day", ASCENDING)], name="comment_post")
    # A live world's day reads its own posts and comments (they grow by the day: never a scan of them all).
    db[POSTS].create_index([("run_key", ASCENDING), ("day", ASCENDING)], name="post_day")
    db[COMMENTS].create_index([("run_key", ASCENDING), ("day", ASCENDING)], name="comment_day")
    for name in (EVENTS, COMMENTS, LIVE_DAYS):
        db[name].create_index([("world_id", ASCENDING)], name=f"{name}_world")


def _replace_index(collection, old_name: str, keys: list) -> None:
    """Create the unique index ``<old_name>_v2`` on ``keys`` and drop ``old_name`` (its earlier shape)."""
    collection.create_index(keys, unique=True, name=f"{old_name}_v2")
    if old_name in collection.index_information():
        collection.drop_index(old_name)


# --- reads of the web side (worlds.selectors) ------------------------------------------------------------


def run_bible(db: Database, run: RunRef) -> dict | None:
    doc = db[BIBLES].find_one({"_id": bible_key(run)}, {"bible": 1})
    return doc and doc["bible"]


def run_characters(db: Database, run: RunRef) -> list[dict]:
    return list(db[CHARACTERS].find({"run_key": run.key}).sort("index", ASCENDING))


def run_character(db: Database, run: RunRef, index: int) -> dict | None:
    return db[CHARACTERS].find_one({"_id": character_key(run, index)})


def run_posts(
    db: Database,
    run: RunRef,
    *,
    character_index: int | None = None,
    offset: int = 0,
    limit: int = 20,
    newest_first: bool = False,
) -> list[dict]:
    """Posts in feed order: every character's first post, then every second post, ..., then a live world's
    posts in the order they were posted (their indexes go on past the run's, by day and slot). With
    ``newest_first``, the reverse. One character's posts are in the same order, by their index alone."""
    from pymongo import DESCENDING

    direction = DESCENDING if newest_first else ASCENDING
    query: dict = {"run_key": run.key}
    if character_index is None:  # the post_feed_order index, walked either way
        order = [("index", direction), ("character_index", direction)]
    else:  # the post_character_order index: a profile page reads its own posts, never the run's
        query["character_index"] = character_index
        order = [("index", direction)]
    return list(db[POSTS].find(query).sort(order).skip(offset).limit(limit))


def failed_tasks(db: Database, run: RunRef) -> list[dict]:
    """The run's LLM tasks and renders that failed for good: stage ("avatar image", "post image" for a
    render), index ("0", "0.1"), error. Regenerations report their own failures: they are left out."""
    tasks = db[TASKS].find(
        {"run_key": run.key, "status": TaskStatus.FAILED}, {"_id": 0, "stage": 1, "index": 1, "error": 1, "prompt": 1}
    )
    found = []
    for task in tasks:
        stage, index = task["stage"], str(task["index"])
        if "@" in index:
            continue
        if (position := ITEM_POSITION.search(index)) is not None:  # a render, keyed by its document
            stage, index = f"{stage} image", ".".join(filter(None, position.groups()))
        found.append({"stage": stage, "index": index, "error": task.get("error", "")})
    return sorted(found, key=lambda task: (task["stage"], task["index"]))


def provenance(db: Database, run: RunRef, stage: str, indexes: list) -> dict[str, str]:
    """What made each item of ``stage`` (by task index as stored: 0 for a character, "0.1" for a post): its
    prompt version and model, as text, by the index as a string."""
    # A regenerated version was made under the regeneration's draft key (RunRef.draft).
    own_or_drafts = {"$regex": f"^{re.escape(run.key)}(~r[0-9]+)?$"}
    tasks = db[TASKS].find(
        {"run_key": own_or_drafts, "stage": stage, "index": {"$in": indexes}, "schema_name": {"$exists": True}},
        {"_id": 0, "index": 1, "prompt_version": 1, "model": 1},
    )
    return {
        str(task["index"]): f"prompts v{task.get('prompt_version') or '?'} · {task.get('model') or 'model unknown'}"
        for task in tasks
    }


def item_versions(db: Database, run: RunRef, character_index: int, post_index: int | None) -> dict:
    """A character's or post's current version and the earlier ones it replaced (newest first), each as
    version, feedback, text (bio or caption), image status and ID, and when it was replaced."""
    if post_index is None:
        key, current = (
            character_key(run, character_index),
            db[CHARACTERS].find_one({"_id": character_key(run, character_index)}),
        )
    else:
        key = post_key(run, character_index, post_index)
        current = db[POSTS].find_one({"_id": key})
    earlier = db[VERSIONS].find({"run_key": run.key, "item": key}).sort("version", -1)
    return {
        "current": current and _version_entry(current, current.get("version", 1), None),
        "earlier": [_version_entry(doc["content"], doc["version"], doc.get("archived_at")) for doc in earlier],
    }


def _version_entry(content: dict, version: int, archived_at) -> dict:
    return {
        "version": version,
        "feedback": content.get("feedback", ""),
        "text": content.get("caption", content.get("bio", "")),
        "image_status": content.get("image_status", ""),
        "image_id": content.get("image_id"),
        "archived_at": archived_at,
    }


def day_counts(db: Database, run: RunRef, day: int) -> dict:
    """What a live world's day made: posts, comments (replies included) and likes on its posts."""
    posts = list(db[POSTS].find({"run_key": run.key, "day": day}, {"liked_by": 1}))
    return {
        "posts": len(posts),
        "comments": db[COMMENTS].count_documents({"run_key": run.key, "day": day}),
        "likes": sum(len(post.get("liked_by", [])) for post in posts),
    }


def post_comments(db: Database, post_keys: list[str]) -> dict[str, list[dict]]:
    """The comments of each post (replies after the comment they answer), by post key."""
    found: dict[str, list[dict]] = {}
    cursor = db[COMMENTS].find({"post_key": {"$in": post_keys}}).sort([("day", 1), ("slot", 1), ("reply", 1)])
    for comment in cursor:
        found.setdefault(comment["post_key"], []).append(comment)
    return found


def world_events(db: Database, run: RunRef, limit: int) -> list[dict]:
    """A live world's latest events, newest first."""
    return list(db[EVENTS].find({"run_key": run.key}, {"_id": 0}).sort("day", -1).limit(limit))


def live_days(db: Database, run: RunRef, limit: int = 10) -> list[dict]:
    """A live world's latest day reports, newest first, each with its event's title."""
    days = list(db[LIVE_DAYS].find({"run_key": run.key}, {"_id": 0}).sort("day", -1).limit(limit))
    titles = {
        e["day"]: e["title"]
        for e in db[EVENTS].find({"run_key": run.key, "day": {"$in": [d["day"] for d in days]}}, {"day": 1, "title": 1})
    }
    return [{**day, "event": titles.get(day["day"], "")} for day in days]


def billed_tokens(db: Database, key: str) -> int:
    """Every token billed to the LLM tasks under ``key`` (a run's or a draft's), by every attempt of each."""
    groups = db[TASKS].aggregate(
        [
            {"$match": {"run_key": key}},
            {"$unwind": "$attempts"},
            {"$group": {"_id": None, "billed": {"$sum": "$attempts.billed_tokens"}}},
        ]
    )
    return next((group["billed"] for group in groups), 0)


def run_post_count(db: Database, run: RunRef) -> int:
    return db[POSTS].count_documents({"run_key": run.key})


def post_counts_by_character(db: Database, run: RunRef) -> dict[int, int]:
    groups = db[POSTS].aggregate(
        [{"$match": {"run_key": run.key}}, {"$group": {"_id": "$character_index", "count": {"$sum": 1}}}]
    )
    return {group["_id"]: group["count"] for group in groups}


def run_quality_inputs(db: Database, run: RunRef) -> tuple[list[dict], list[dict], dict | None, list[dict]]:
    """What ``generation.quality`` reads of a run: (posts, characters, bible, LLM task documents), each
    with only the fields it needs. LLM tasks are those with a ``schema_name`` (renders have none)."""
    posts = (
        db[POSTS]
        .find(
            {"run_key": run.key},
            {"_id": 0, "character_index": 1, "index": 1, "handle": 1, "caption": 1, "hashtags": 1, "location": 1},
        )
        .sort([("character_index", ASCENDING), ("index", ASCENDING)])
    )
    characters = db[CHARACTERS].find({"run_key": run.key}, {"_id": 0, "index": 1, "handle": 1}).sort("index", ASCENDING)
    tasks = db[TASKS].find(
        {"run_key": run.key, "schema_name": {"$exists": True}},
        {
            "_id": 0,
            "stage": 1,
            "schema_name": 1,
            "status": 1,
            "repairs": 1,
            "prompt_version": 1,
            "dropped_sentences": 1,
        },
    )
    return list(posts), list(characters), run_bible(db, run), list(tasks)


def first_captions(db: Database, run: RunRef) -> dict[str, str]:
    """Each post's caption as the model first wrote it (its task's output, before the caption guard), by
    task index ("0.1")."""
    tasks = db[TASKS].find(
        {"run_key": run.key, "stage": "post", "status": TaskStatus.SUCCEEDED, "output.caption": {"$exists": True}},
        {"_id": 0, "index": 1, "output.caption": 1},
    )
    return {str(task["index"]): task["output"]["caption"] for task in tasks}


def waiting_calls(db: Database, run: RunRef) -> list[dict]:
    """The run's LLM calls whose provider is down or limiting them: their last attempt ended retryable. For
    each: stage, index, since (the first of those attempts in a row), attempts, the last error."""
    waiting = []
    tasks = db[TASKS].find(
        {"run_key": run.key, "status": {"$in": [TaskStatus.RUNNING, TaskStatus.RETRYING]}},
        {"_id": 0, "stage": 1, "index": 1, "attempts": 1},
    )
    for task in tasks:
        streak = []
        for attempt in reversed(task.get("attempts") or []):
            if attempt.get("status") != TaskStatus.RETRYING:
                break
            streak.append(attempt)
        if streak:
            since, last = streak[-1]["at"], streak[0]
            waiting.append(
                {
                    "stage": task["stage"],
                    "index": str(task["index"]),
                    "since": since,
                    "attempts": len(streak),
                    "error": last.get("error", ""),
                }
            )
    return sorted(waiting, key=lambda call: call["since"])


def counts_by_run(db: Database, collection: str, runs: list[RunRef]) -> dict[str, int]:
    """Documents per run key in ``collection``, for many runs in one query."""
    groups = db[collection].aggregate(
        [
            {"$match": {"run_key": {"$in": [run.key for run in runs]}}},
            {"$group": {"_id": "$run_key", "count": {"$sum": 1}}},
        ]
    )
    return {group["_id"]: group["count"] for group in groups}


def first_avatars(db: Database, runs: list[RunRef]) -> dict[str, str]:
    """Each run's first rendered avatar (its image ID), by run key: a world's cover."""
    covers: dict[str, str] = {}
    for doc in (
        db[CHARACTERS]
        .find(
            {"run_key": {"$in": [run.key for run in runs]}, "image_status": ImageStatus.RENDERED},
            {"run_key": 1, "image_id": 1},
        )
        .sort("index", ASCENDING)
    ):
        covers.setdefault(doc["run_key"], doc["image_id"])
    return covers


def image_png(db: Database, image: str) -> bytes | None:
    try:
        return gridfs.GridFS(db, collection=IMAGES).get(image).read()
    except gridfs.errors.NoFile:
        return None
