"""Writes of generated content. Keys are deterministic (world, run, stage, index) and every
write is an upsert, so a retried activity never duplicates anything. Keys, fields and shapes come
from ``generation.documents``. Imports nothing from Django."""

import dataclasses
from collections.abc import Callable

from bson import Binary
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from generation.contracts import RunRef, WorldSnapshot
from generation.documents import (
    BIBLES,
    CHARACTERS,
    COMMENTS,
    CONTENT_COLLECTIONS,
    EVENTS,
    IMAGE_CHUNK_BYTES,
    IMAGES,
    LEDGERS,
    LIVE_DAYS,
    POSTS,
    SNAPSHOTS,
    TASKS,
    VERSIONS,
    CharacterStatus,
    ImageStatus,
    TaskStatus,
    bible_document,
    bible_key,
    character_document,
    character_key,
    comment_key,
    day_key,
    event_key,
    image_id,
    now,
    post_document,
    post_key,
    run_fields,
    snapshot_key,
    task_key,
    version_key,
    world_image_ids,
)


class MissingContent(LookupError):
    """What a step reads was never stored (a character the run has not, its bible): no retry can mend it."""


def _exists(collection, query: dict) -> bool:
    return collection.find_one(query, {"_id": 1}) is not None


def save_bible(db: Database, run: RunRef, bible: dict, revision: int, feedback: str | None) -> None:
    document = bible_document(run, bible, revision)
    db[BIBLES].update_one(
        {"_id": document.pop("_id")},
        {"$set": document, "$addToSet": {"history": {"revision": revision, "feedback": feedback, "bible": bible}}},
        upsert=True,
    )


def save_world_snapshot(db: Database, run: RunRef, world: WorldSnapshot) -> None:
    """The world as this run execution sees it, for activities whose input carries only the run."""
    db[SNAPSHOTS].replace_one(
        {"_id": snapshot_key(run)}, {**run_fields(run), "world": dataclasses.asdict(world)}, upsert=True
    )


def load_world_snapshot(db: Database, run: RunRef) -> WorldSnapshot:
    doc = db[SNAPSHOTS].find_one({"_id": snapshot_key(run)}, {"world": 1})
    if doc is None:  # generate_bible stores it before any activity that reads it runs
        raise MissingContent(f"no world snapshot stored for {snapshot_key(run)}")
    return WorldSnapshot(**doc["world"])


def bible_revision(db: Database, run: RunRef) -> int | None:
    """The revision of the run's stored bible (None: none stored)."""
    doc = db[BIBLES].find_one({"_id": bible_key(run)}, {"revision": 1})
    return None if doc is None else doc.get("revision", 0)


def has_bible(db: Database, run: RunRef, revision: int | None = None) -> bool:
    query: dict = {"_id": bible_key(run)} if revision is None else {"_id": bible_key(run), "revision": revision}
    return _exists(db[BIBLES], query)


# What a run has stored already: a resumed run (or a retried activity) skips these items and pays nothing.


def has_cast(db: Database, run: RunRef, size: int) -> bool:
    return db[CHARACTERS].count_documents({"run_key": run.key}) >= size


# ``version`` (a regeneration's): stored only once that version is. A document without a version is version 1.


def _stored(version: int, field: str = "version") -> dict:
    return {field: {"$gte": version}} if version > 1 else {}


def is_stored(doc: dict | None, version: int, field: str = "version") -> bool:
    """``_stored`` on a document already read: it exists, and holds ``version`` or a later one."""
    return doc is not None and (version <= 1 or (doc.get(field) or 0) >= version)


def is_profiled(member: dict, version: int = 0) -> bool:
    return member.get("status") == CharacterStatus.PROFILED and is_stored(member, version)


def is_planned(member: dict, version: int = 0) -> bool:
    return "plan" in member and is_stored(member, version, "plan_version")


def character_posts(db: Database, run: RunRef, character_index: int) -> dict[int, dict]:
    """A character's stored posts by index (their captions and versions)."""
    query = {"run_key": run.key, "character_index": character_index}
    return {doc["index"]: doc for doc in db[POSTS].find(query, {"index": 1, "caption": 1, "version": 1})}


def profiled_characters(db: Database, run: RunRef) -> int:
    """How many of the run's characters have a profile (a live world needs its whole cast profiled)."""
    return db[CHARACTERS].count_documents({"run_key": run.key, "status": CharacterStatus.PROFILED})


def has_profile(db: Database, run: RunRef, index: int, version: int = 0) -> bool:
    query = {"_id": character_key(run, index), "status": CharacterStatus.PROFILED, **_stored(version)}
    return _exists(db[CHARACTERS], query)


def has_post(db: Database, run: RunRef, character_index: int, index: int, version: int = 0) -> bool:
    query = {"_id": post_key(run, character_index, index), **_stored(version)}
    return _exists(db[POSTS], query)


def archive_versions(
    db: Database, run: RunRef, character_index: int, post_index: int | None, posts: int, regeneration_id: int
) -> tuple[int | None, dict[int, int]]:
    """Keep the stored version of what a regeneration replaces (the character and its ``posts`` posts, or one
    post) in ``item_versions``, and return the versions to write: (the character's or None, {post: version}).
    Idempotent: a retry archives the same versions again, onto the same keys."""
    character = None
    if post_index is None:
        character = _archive(db, run, CHARACTERS, character_key(run, character_index), regeneration_id)
    indexes = range(posts) if post_index is None else [post_index]
    versions = {p: _archive(db, run, POSTS, post_key(run, character_index, p), regeneration_id) for p in indexes}
    return character, versions


def _archive(db: Database, run: RunRef, collection: str, key: str, regeneration_id: int) -> int:
    """Archive the stored version of ``key`` (if any); returns the version that replaces it."""
    doc = db[collection].find_one({"_id": key})
    if doc is None:  # a post that failed for good: its first version is written now
        return 1
    version = doc.pop("version", 1)
    del doc["_id"]
    db[VERSIONS].update_one(
        {"_id": version_key(key, version)},
        {
            "$setOnInsert": {
                **run_fields(run),
                "item": key,
                "kind": collection,
                "version": version,
                "content": doc,
                "replaced_by_regeneration": regeneration_id,
                "archived_at": now(),
            }
        },
        upsert=True,
    )
    return version + 1


# --- A regeneration's drafts: its new versions are written under the run's draft key (``RunRef.draft``), from
# copies of what they are written from, and replace the published items only once every one is whole. ---------

SOCIAL_FIELDS = ("liked_by", "followers", "following", "memory", "memory_day")  # the live world's, not a version's
DRAFT_ONLY_FIELDS = ("_id", "world_id", "run_number", "run_key", "draft", "created_at", *SOCIAL_FIELDS)


def prepare_draft(
    db: Database, run: RunRef, draft: RunRef, character_index: int, post_index: int | None, posts: int
) -> tuple[int | None, dict[int, int]]:
    """Copy what a regeneration writes from into its draft namespace (the bible, the character, its posts) and
    return the versions it writes: (the character's, or None when one post is regenerated; {post: version}).
    A version number is never given twice (``drafted_version`` on the item), so a discarded draft's image ID is
    never reused. Idempotent: a retry finds the same drafts and versions."""
    bible = db[BIBLES].find_one({"_id": bible_key(run)})
    if bible is not None:
        copy = {k: v for k, v in bible.items() if k not in DRAFT_ONLY_FIELDS} | run_fields(draft)
        db[BIBLES].update_one({"_id": bible_key(draft)}, {"$setOnInsert": copy}, upsert=True)
    character = _draft_copy(
        db,
        CHARACTERS,
        character_key(run, character_index),
        character_key(draft, character_index),
        draft,
        post_index is None,
    )
    regenerated = range(posts) if post_index is None else [post_index]
    context = range(posts) if post_index is None else range(post_index + 1)  # a post sees the posts before it
    versions = {}
    for index in context:
        version = _draft_copy(
            db,
            POSTS,
            post_key(run, character_index, index),
            post_key(draft, character_index, index),
            draft,
            index in regenerated,
        )
        if index in regenerated:
            versions[index] = version
    return (character if post_index is None else None), versions


def _draft_copy(db: Database, collection: str, key: str, draft_key: str, draft: RunRef, regenerated: bool) -> int:
    """Copy the published item ``key`` into the draft (once); returns the version the draft writes of it."""
    existing = db[collection].find_one({"_id": draft_key}, {"target_version": 1})
    if existing is not None and existing.get("target_version"):
        return existing["target_version"]
    published = db[collection].find_one({"_id": key}) or {}
    version = max(published.get("version", 1), published.get("drafted_version", 0)) + 1 if published else 1
    if published and regenerated:
        db[collection].update_one({"_id": key}, {"$max": {"drafted_version": version}})
    if published:
        copy = {k: v for k, v in published.items() if k not in DRAFT_ONLY_FIELDS} | run_fields(draft)
        copy["item"] = key
        if regenerated:
            copy["target_version"] = version
        db[collection].update_one({"_id": draft_key}, {"$setOnInsert": copy}, upsert=True)
    return version


def promote_draft(
    db: Database, run: RunRef, draft: RunRef, character_index: int, post_index: int | None, posts: int
) -> int:
    """A regeneration is whole: its new versions replace the published ones, each archived first in
    ``item_versions``; the posts first, then the character. Idempotent (an item already at its new version is
    left). Returns the items replaced."""
    items = [
        (POSTS, post_key(run, character_index, index), post_key(draft, character_index, index))
        for index in (range(posts) if post_index is None else [post_index])
    ]
    if post_index is None:
        items.append((CHARACTERS, character_key(run, character_index), character_key(draft, character_index)))
    replaced = 0
    for collection, key, draft_doc_key in items:
        version = db[collection].find_one({"_id": draft_doc_key})
        if version is None or not version.get("version"):
            continue
        published = db[collection].find_one({"_id": key})
        if published is not None and published.get("version", 1) >= version["version"]:
            continue  # replaced already
        if published is not None:
            _archive(db, run, collection, key, draft.draft)
        fields = {k: v for k, v in version.items() if k not in (*DRAFT_ONLY_FIELDS, "item", "target_version")}
        db[collection].update_one(
            {"_id": key},
            {"$set": {**fields, **run_fields(run), "updated_at": now()}, "$unset": {"image_error": ""}},
            upsert=True,
        )
        replaced += 1
    return replaced


def load_bible(db: Database, run: RunRef) -> dict:
    doc = db[BIBLES].find_one({"_id": bible_key(run)})
    if doc is None:
        raise MissingContent(f"no world bible stored for {run.key}")
    return doc["bible"]


def save_cast(db: Database, run: RunRef, members: list[dict]) -> None:
    for index, member in enumerate(members):
        document = character_document(run, index, member)
        db[CHARACTERS].update_one(
            {"_id": document.pop("_id")},
            {"$set": document, "$setOnInsert": {"status": CharacterStatus.CAST, "image_status": ImageStatus.PENDING}},
            upsert=True,
        )


def load_character(db: Database, run: RunRef, index: int) -> dict:
    doc = db[CHARACTERS].find_one({"_id": character_key(run, index)})
    if doc is None:
        raise MissingContent(f"no character {index} stored for {run.key}")
    return doc


def _new_version(version: int, feedback: str) -> dict:
    """The fields a regenerated version sets: its number and feedback, and a new image to render."""
    if version <= 0:
        return {}
    return {"version": version, "feedback": feedback, "image_status": ImageStatus.PENDING, "image_id": None}


def save_profile(db: Database, run: RunRef, index: int, profile: dict, version: int = 0, feedback: str = "") -> None:
    db[CHARACTERS].update_one(
        {"_id": character_key(run, index)},
        {
            "$set": {
                **profile,
                "status": CharacterStatus.PROFILED,
                **_new_version(version, feedback),
                "updated_at": now(),
            }
        },
    )


def save_plan(db: Database, run: RunRef, index: int, moments: list[dict], version: int = 0) -> None:
    fields = {"plan": moments, "updated_at": now(), **({"plan_version": version} if version > 0 else {})}
    db[CHARACTERS].update_one({"_id": character_key(run, index)}, {"$set": fields})


def save_post(
    db: Database,
    run: RunRef,
    character_index: int,
    index: int,
    post: dict,
    handle: str,
    version: int = 0,
    feedback: str = "",
) -> None:
    document = post_document(run, character_index, index, post, handle) | _new_version(version, feedback)
    on_insert = {"created_at": now()} | ({} if version > 0 else {"image_status": ImageStatus.PENDING})
    db[POSTS].update_one({"_id": document.pop("_id")}, {"$set": document, "$setOnInsert": on_insert}, upsert=True)


def image_target(db: Database, run: RunRef, character_index: int, post_index: int | None) -> tuple[str, str, dict]:
    """(collection, document key, document) that an image belongs to."""
    if post_index is None:
        key = character_key(run, character_index)
        return CHARACTERS, key, db[CHARACTERS].find_one({"_id": key}) or {}
    key = post_key(run, character_index, post_index)
    return POSTS, key, db[POSTS].find_one({"_id": key}) or {}


def save_image(db: Database, collection: str, key: str, png: bytes, metadata: dict) -> None:
    mark_image_rendered(db, collection, key, store_image_file(db, key, png, metadata))


def store_image_file(db: Database, key: str, png: bytes, metadata: dict, version: int = 1) -> str:
    """Store an image in the GridFS layout (``documents.IMAGES``; read back with ``gridfs``): its chunks, then
    its file document. Written directly rather than through ``gridfs.GridFS.put``, which probes each
    collection with an unfiltered ``find_one`` on every write (a full scan on some Mongo-wire servers); the
    indexes it would check are made once by ``documents.ensure_indexes``."""
    image = image_id(key, version)
    files, chunks = db[f"{IMAGES}.files"], db[f"{IMAGES}.chunks"]
    if _exists(files, {"_id": image}):  # rendering is deterministic: a retry stores nothing new
        return image
    parts = [
        {"files_id": image, "n": n, "data": Binary(png[at : at + IMAGE_CHUNK_BYTES])}
        for n, at in enumerate(range(0, len(png), IMAGE_CHUNK_BYTES))
    ]
    try:
        chunks.insert_many(parts)
    except BulkWriteError:  # chunks left by an attempt interrupted mid-write (the file document comes last)
        chunks.delete_many({"files_id": image})
        chunks.insert_many(parts)
    file = {"length": len(png), "chunkSize": IMAGE_CHUNK_BYTES, "uploadDate": now(), "filename": f"{key}.png"}
    try:
        files.insert_one({"_id": image, **file, "contentType": "image/png", "metadata": metadata})
    except DuplicateKeyError:  # another attempt of the same render stored it first
        pass
    return image


def mark_image_rendered(db: Database, collection: str, key: str, image: str) -> None:
    """The commit point of a render: once set, a retried activity does nothing."""
    db[collection].update_one(
        {"_id": key}, {"$set": {"image_id": image, "image_status": ImageStatus.RENDERED, "updated_at": now()}}
    )


def mark_image_for_rerender(db: Database, run: RunRef, character_index: int, post_index: int | None) -> str | None:
    """The media service was down: the item is kept, its image marked for a re-render, unless it was rendered
    or refused for good meanwhile (those stay). Returns the image's status after it (None: no such item)."""
    collection, key, _ = image_target(db, run, character_index, post_index)
    doc = db[collection].find_one_and_update(
        {"_id": key, "image_status": {"$nin": [ImageStatus.RENDERED, ImageStatus.REJECTED]}},
        {
            "$set": {
                "image_status": ImageStatus.NEEDS_RENDER,
                "image_error": "media service unavailable",
                "updated_at": now(),
            }
        },
        projection={"image_status": 1},
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        doc = db[collection].find_one({"_id": key}, {"image_status": 1}) or {}
    return doc.get("image_status")


def mark_image(
    db: Database, collection: str, key: str, status: ImageStatus, reason: str, execution: int | None = None
) -> None:
    """``execution``: the run execution (``RunRef.resume``) that refused it, so its retries do not ask again."""
    fields = {"image_status": status, "image_error": reason, "updated_at": now()}
    if execution is not None:
        fields["image_refused_in"] = execution
    db[collection].update_one({"_id": key}, {"$set": fields})


def image_refused(db: Database, run: RunRef, item) -> bool:
    """The item's image was refused for good by this execution of the run (a resume asks again)."""
    _, _, doc = image_target(db, run, item.character_index, item.post_index)
    return doc.get("image_status") == ImageStatus.REJECTED and doc.get("image_refused_in") == run.resume


def images_to_rerender(db: Database, run: RunRef) -> list[tuple[int, int | None]]:
    """(character index, post index or None) of every image of the run marked ``needs_render``."""
    query = {"run_key": run.key, "image_status": ImageStatus.NEEDS_RENDER}
    fields = {"index": 1, "character_index": 1}
    avatars = [(doc["index"], None) for doc in db[CHARACTERS].find(query, fields)]
    posts = [(doc["character_index"], doc["index"]) for doc in db[POSTS].find(query, fields)]
    return sorted(avatars, key=lambda ref: ref[0]) + sorted(posts)


def images_to_rerender_page(db: Database, run: RunRef, after: str, limit: int) -> tuple[list[tuple], str]:
    """Up to ``limit`` images of the run marked ``needs_render``, avatars then posts, each in key order, after
    the cursor ``after`` ("" from the start; "c:<key>" or "p:<key>" of the last one listed). Returns them and
    the cursor of the last one. Images that stay missing are not listed again in the same walk."""
    phase, _, key = after.partition(":")
    found: list[tuple] = []
    for collection, code in ((CHARACTERS, "c"), (POSTS, "p")):
        if (phase, code) == ("p", "c") or len(found) >= limit:
            continue
        query: dict = {"run_key": run.key, "image_status": ImageStatus.NEEDS_RENDER}
        if phase == code:
            query["_id"] = {"$gt": key}
        for doc in db[collection].find(query, {"index": 1, "character_index": 1}).sort("_id").limit(limit - len(found)):
            found.append((doc["index"], None) if code == "c" else (doc["character_index"], doc["index"]))
            after = f"{code}:{doc['_id']}"
    return found, after


# --- The token ledger: one document per run, counting every token the provider reports ---------------
# A call first reserves what it could cost at most (its prompt's size plus max_tokens). It is refused
# when used + every other reservation + its own would pass the run's budget. Once the provider answers,
# the reservation becomes what was really billed. A retried attempt overwrites its own reservation, so
# a crashed worker leaks nothing. Writes are conditional on a version (optimistic concurrency).

LEDGER_RETRIES = 100


def _ledger(db: Database, run: RunRef, limit: int, key: str) -> dict:
    """The ledger, made if it does not exist yet. Two calls making it at once (a live day's posts) both get it:
    an upsert that lost the race may answer with no document (SecantusDB does), so it is read then."""
    doc = db[LEDGERS].find_one_and_update(
        {"_id": key},
        {"$setOnInsert": {**run_fields(run), "used": 0, "reserved": {}, "version": 0, "limit": limit}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    return doc or db[LEDGERS].find_one({"_id": key}) or _ledger(db, run, limit, key)


def reserve_tokens(
    db: Database, run: RunRef, limit: int, call: str, tokens: int, ledger: str | None = None
) -> tuple[bool, int, int]:
    """Reserve ``tokens`` for ``call`` under ``limit``: (granted, tokens used, tokens reserved by others).
    ``ledger``: another ledger of the run than its own (a live world's day has one)."""
    call, key = call.replace(".", "_"), ledger or run.ledger
    for _ in range(LEDGER_RETRIES):
        doc = _ledger(db, run, limit, key)
        others = sum(amount for key, amount in doc["reserved"].items() if key != call)
        if doc["used"] + others + tokens > limit:
            return False, doc["used"], others
        if (
            db[LEDGERS]
            .update_one(
                {"_id": key, "version": doc["version"]},
                {"$set": {f"reserved.{call}": tokens}, "$inc": {"version": 1}},
            )
            .modified_count
        ):
            return True, doc["used"], others
    raise RuntimeError(f"the token ledger of {key} stayed contended")


def settle_tokens(db: Database, run: RunRef, call: str, billed: int, ledger: str | None = None) -> int:
    """Replace ``call``'s reservation by what the provider billed; returns the ledger's tokens used."""
    doc = db[LEDGERS].find_one_and_update(
        {"_id": ledger or run.ledger},
        {"$inc": {"used": billed, "version": 1}, "$unset": {f"reserved.{call.replace('.', '_')}": ""}},
        projection={"used": 1},
        return_document=ReturnDocument.AFTER,
    )
    return doc["used"] if doc else billed


def tokens_used(db: Database, run_key: str) -> int:
    doc = db[LEDGERS].find_one({"_id": run_key}, {"used": 1})
    return doc["used"] if doc else 0


def load_task(db: Database, run: RunRef, stage: str, index: str | int) -> dict | None:
    return db[TASKS].find_one(
        {"_id": task_key(run, stage, index)}, {"status": 1, "error": 1, "error_type": 1, "execution": 1}
    )


def failed_for_good(task: dict | None, run: RunRef) -> bool:
    """The task's output stayed invalid after its repairs, in this execution of the run."""
    return (
        task is not None
        and task.get("status") == TaskStatus.FAILED
        and task.get("error_type") == "LlmInvalidOutput"
        and task.get("execution") == run.resume
    )


def record_task(
    db: Database, run: RunRef, stage: str, index: str | int, fields: dict, *, attempt: dict | None = None
) -> None:
    """One document per generation task: inputs, prompt, raw reply, parsed output, usage, latency, attempt.
    ``attempt`` (how one activity attempt ended) is appended to the task's ``attempts``: retries keep them all."""
    update: dict = {
        "$set": {**run_fields(run), "stage": stage, "index": index, **fields, "updated_at": now()},
        "$setOnInsert": {"created_at": now()},
    }
    if attempt is not None:
        update["$push"] = {"attempts": attempt}
    db[TASKS].update_one({"_id": task_key(run, stage, index)}, update, upsert=True)


# --- A deleted world's content ----------------------------------------------------------------------


def delete_world_content(
    db: Database, world_id: int, *, batch: int = 500, on_batch: Callable[[], None] | None = None
) -> tuple[int, int]:
    """Delete every document and image of a world: (documents deleted, images deleted).
    Idempotent, and safe to interrupt anywhere: running it again finishes the job.
    ``on_batch`` is called between batches (heartbeats)."""
    on_batch = on_batch or (lambda: None)
    documents = 0
    for name in CONTENT_COLLECTIONS:
        documents += db[name].delete_many({"world_id": world_id}).deleted_count
        on_batch()
    return documents, _delete_world_images(db, world_id, batch, on_batch)


def _delete_world_images(db: Database, world_id: int, batch: int, on_batch: Callable[[], None]) -> int:
    # The file document goes first, as GridFS itself deletes: a reader then finds no file rather than
    # a file without its chunks. Chunks left behind (an interrupted run, or an interrupted
    # store_image_file, which writes chunks before the file) are swept by their files_id after.
    files, chunks, ids = db[f"{IMAGES}.files"], db[f"{IMAGES}.chunks"], world_image_ids(world_id)
    deleted = 0
    while found := [doc["_id"] for doc in files.find({"_id": ids}, {"_id": 1}).limit(batch)]:
        deleted += files.delete_many({"_id": {"$in": found}}).deleted_count
        chunks.delete_many({"files_id": {"$in": found}})
        on_batch()
    while orphans := [doc["_id"] for doc in chunks.find({"files_id": ids}, {"_id": 1}).limit(batch)]:
        chunks.delete_many({"_id": {"$in": orphans}})
        on_batch()
    return deleted


# --- Live worlds: events, comments, likes and follows, memories, day reports ---------------------------


def has_event(db: Database, run: RunRef, day: int) -> bool:
    return _exists(db[EVENTS], {"_id": event_key(run, day)})


def recent_events(db: Database, run: RunRef, before_day: int, limit: int) -> list[dict]:
    """The ``limit`` latest events before ``before_day``, oldest first."""
    query = {"run_key": run.key, "day": {"$lt": before_day}}
    return list(db[EVENTS].find(query, {"_id": 0}).sort("day", DESCENDING).limit(limit))[::-1]


def load_event(db: Database, run: RunRef, day: int) -> dict | None:
    return db[EVENTS].find_one({"_id": event_key(run, day)})


def save_event(db: Database, run: RunRef, day: int, event: dict, source: str) -> None:
    db[EVENTS].update_one(
        {"_id": event_key(run, day)},
        {"$set": {**run_fields(run), "day": day, **event, "source": source, "created_at": now()}},
        upsert=True,
    )


def load_post(db: Database, run: RunRef, character_index: int, index: int) -> dict | None:
    return db[POSTS].find_one({"_id": post_key(run, character_index, index)})


def has_comment(db: Database, run: RunRef, day: int, slot: int, reply: bool) -> bool:
    return _exists(db[COMMENTS], {"_id": comment_key(run, day, slot, reply)})


def load_comment(db: Database, run: RunRef, day: int, slot: int, reply: bool = False) -> dict | None:
    return db[COMMENTS].find_one({"_id": comment_key(run, day, slot, reply)})


def save_comment(db: Database, run: RunRef, day: int, slot: int, reply: bool, comment: dict) -> None:
    db[COMMENTS].update_one(
        {"_id": comment_key(run, day, slot, reply)},
        {"$set": {**run_fields(run), "day": day, "slot": slot, "reply": reply, **comment, "created_at": now()}},
        upsert=True,
    )


def day_posts(db: Database, run: RunRef, day: int) -> list[dict]:
    fields = {"character_index": 1, "index": 1}
    return list(db[POSTS].find({"run_key": run.key, "day": day}, fields).sort("slot", ASCENDING))


def add_likes(db: Database, run: RunRef, character_index: int, index: int, likers: list[int]) -> None:
    """Idempotent: a character likes a post once."""
    db[POSTS].update_one({"_id": post_key(run, character_index, index)}, {"$addToSet": {"liked_by": {"$each": likers}}})


def add_follow(db: Database, run: RunRef, follower: int, followed: int) -> None:
    """Idempotent: ``follower`` follows ``followed`` once."""
    db[CHARACTERS].update_one({"_id": character_key(run, follower)}, {"$addToSet": {"following": followed}})
    db[CHARACTERS].update_one({"_id": character_key(run, followed)}, {"$addToSet": {"followers": follower}})


def day_acts(db: Database, run: RunRef, day: int, character_index: int) -> list[str]:
    """What a character wrote on ``day``: its post's caption and its comments."""
    posts = db[POSTS].find({"run_key": run.key, "day": day, "character_index": character_index}, {"caption": 1})
    comments = db[COMMENTS].find({"run_key": run.key, "day": day, "character_index": character_index})
    return [p["caption"] for p in posts] + [c["comment"] for c in comments]


def save_memory(db: Database, run: RunRef, character_index: int, summary: str, day: int) -> None:
    db[CHARACTERS].update_one(
        {"_id": character_key(run, character_index)}, {"$set": {"memory": summary, "memory_day": day}}
    )


def has_memory(db: Database, run: RunRef, character_index: int, day: int) -> bool:
    query = {"_id": character_key(run, character_index), "memory_day": {"$gte": day}}
    return _exists(db[CHARACTERS], query)


def save_day_report(db: Database, run: RunRef, report: dict) -> None:
    """Keyed by the day's ledger (one per time live and day; the run's day key for reports before those)."""
    key = report.get("ledger") or day_key(run, report["day"])
    db[LIVE_DAYS].update_one({"_id": key}, {"$set": {**run_fields(run), **report}}, upsert=True)


def images_waiting(db: Database, run: RunRef) -> int:
    """How many of the run's images are marked for a re-render (its degraded items)."""
    query = {"run_key": run.key, "image_status": ImageStatus.NEEDS_RENDER}
    return db[CHARACTERS].count_documents(query) + db[POSTS].count_documents(query)
