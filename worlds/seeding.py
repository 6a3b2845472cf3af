"""Seed plainly FAKE worlds for load tests and benchmarks (``manage.py seed_worlds``).

Each seeded world gets one completed run, and in Mongo a bible, its characters and its
posts with the same keys and document shapes the generation pipeline writes
(``generation.documents``), so the admin, the API and the viewer read them like real content.
The text is placeholder text; no images are stored (``image_status`` stays "pending").

Not idempotent: seeding refuses while worlds named with the prefix exist (delete them, or
choose another prefix). Each batch's rows are committed before its Mongo documents are
inserted, so an interrupted seed leaves the batches it finished (delete the prefix's worlds to
start over). New world IDs are expected to have no Mongo documents yet.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from clients import mongo
from generation import documents
from generation.contracts import RunRef
from worlds.models import MAX_CHARACTERS, MAX_POSTS_PER_CHARACTER, GenerationRun, World


class SeedingError(Exception):
    """Options that cannot be seeded; nothing was written."""


@dataclass
class SeedResult:
    worlds: int = 0
    runs: int = 0
    bibles: int = 0
    characters: int = 0
    posts: int = 0
    seconds: float = 0.0


def seed_worlds(
    *,
    worlds: int,
    posts: int,
    characters_per_world: int = 2,
    prefix: str = "Seeded",
    batch_size: int = 500,
    progress: Callable[[SeedResult], None] | None = None,
) -> SeedResult:
    """Create ``worlds`` fake worlds holding ``posts`` posts in all (spread evenly over worlds and their
    characters), in batches of ``batch_size`` worlds; ``progress`` is called after every batch."""
    _check(worlds=worlds, posts=posts, characters_per_world=characters_per_world, prefix=prefix, batch_size=batch_size)
    started = time.monotonic()
    db = mongo.get_db()
    documents.ensure_indexes(db)  # what the worker does on start; reads rely on them
    result = SeedResult()
    for first in range(0, worlds, batch_size):
        numbers = range(first, min(first + batch_size, worlds))
        post_counts = [_posts_of_world(i, worlds, posts) for i in numbers]
        runs = _create_rows(numbers, post_counts, characters_per_world, prefix)
        bibles, characters, feed = [], [], []
        for run, number, post_count in zip(runs, numbers, post_counts, strict=True):
            ref = run.ref
            bibles.append(_bible(ref, number, prefix))
            characters += [_character(ref, number, index) for index in range(characters_per_world)]
            for j in range(post_count):  # round-robin over the cast, as the feed is ordered
                character_index = j % characters_per_world
                feed.append(_post(ref, character_index, j // characters_per_world, _handle(number, character_index)))
        for collection, docs in (("bibles", bibles), ("characters", characters), ("posts", feed)):
            if docs:
                db[collection].insert_many(docs, ordered=False)
        result.worlds += len(runs)
        result.runs += len(runs)
        result.bibles += len(bibles)
        result.characters += len(characters)
        result.posts += len(feed)
        result.seconds = time.monotonic() - started
        if progress:
            progress(result)
    return result


def _check(*, worlds: int, posts: int, characters_per_world: int, prefix: str, batch_size: int) -> None:
    if worlds < 0 or posts < 0:
        raise SeedingError("--worlds and --posts cannot be negative")
    if posts and not worlds:
        raise SeedingError("posts need worlds: give --worlds as well")
    if not 1 <= characters_per_world <= MAX_CHARACTERS:
        raise SeedingError(f"--characters-per-world must be between 1 and {MAX_CHARACTERS}")
    if worlds and -(-posts // worlds) > characters_per_world * MAX_POSTS_PER_CHARACTER:
        raise SeedingError(
            f"too many posts per world: at most {MAX_POSTS_PER_CHARACTER} per character "
            f"({characters_per_world * MAX_POSTS_PER_CHARACTER} per world)"
        )
    if not prefix.strip():
        raise SeedingError("--prefix cannot be blank")
    if batch_size < 1:
        raise SeedingError("the batch size must be at least 1")
    if World.objects.filter(name__startswith=f"{prefix} world ").exists():
        raise SeedingError(
            f'seeded worlds named "{prefix} world ..." exist already: delete them or use another --prefix'
        )


def _posts_of_world(number: int, worlds: int, posts: int) -> int:
    return posts // worlds + (number < posts % worlds)


def _create_rows(numbers: range, post_counts: list[int], characters_per_world: int, prefix: str) -> list[GenerationRun]:
    now = timezone.now()
    with transaction.atomic():
        created = World.objects.bulk_create(
            [
                World(
                    name=f"{prefix} world {number:05d}",
                    genre="seeded",
                    tone="placeholder",
                    premise=f"FAKE seeded world {number} for load tests; not generated content.",
                    character_count=characters_per_world,
                    posts_per_character=-(-post_count // characters_per_world),
                )
                for number, post_count in zip(numbers, post_counts, strict=True)
            ]
        )
        runs = GenerationRun.objects.bulk_create(
            [
                GenerationRun(
                    world=world,
                    number=1,
                    workflow_id=f"world-{world.pk}-run-1",
                    status=GenerationRun.Status.COMPLETED,
                    stage="done",
                    characters_done=characters_per_world,
                    characters_total=characters_per_world,
                    posts_done=post_count,
                    posts_total=post_count,
                    finished_at=now,
                )
                for world, post_count in zip(created, post_counts, strict=True)
            ]
        )
        for world, run in zip(created, runs, strict=True):  # completed runs are published
            world.live_run = run
        World.objects.bulk_update(created, ["live_run"])
        return runs


def _bible(ref: RunRef, number: int, prefix: str) -> dict:
    bible = {
        "title": f"{prefix} world {number:05d} (fake)",
        "setting": "Placeholder setting of a seeded world.",
        "history": "Placeholder history.",
        "tone": "placeholder",
        "visual_style": "none (seeded)",
        "themes": ["seeded", "fake"],
        "factions": ["Seeders"],
        "rules": ["Nothing here was generated."],
    }
    return {
        **documents.bible_document(ref, bible, revision=0),
        "history": [{"revision": 0, "feedback": None, "bible": bible}],
    }


def _character(ref: RunRef, number: int, index: int) -> dict:
    member = {
        "name": f"Seeded Person {number}-{index}",
        "handle": _handle(number, index),
        "concept": "A fake character for load tests.",
    }
    return {
        **documents.character_document(ref, index, member),
        "status": documents.CharacterStatus.PROFILED,
        "image_status": documents.ImageStatus.PENDING,
        "bio": "Fake seeded bio.",
        "personality": "Placeholder.",
        "appearance": "Placeholder.",
        "interests": ["seeding", "benchmarks"],
    }


def _handle(number: int, character_index: int) -> str:
    return f"seeded_{number}_{character_index}"


def _post(ref: RunRef, character_index: int, index: int, handle: str) -> dict:
    post = {
        "caption": f"Fake seeded post {index} of character {character_index}.",
        "image_prompt": "none (seeded)",
        "location": "Nowhere (seeded)",
        "hashtags": ["#seeded"],
    }
    return {
        **documents.post_document(ref, character_index, index, post, handle),
        "image_status": documents.ImageStatus.PENDING,
        "created_at": documents.now(),
    }
