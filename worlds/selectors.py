"""World reads: generated content from Mongo, runs from SQL."""

from datetime import timedelta

from django.core.paginator import Page, Paginator
from django.db.models import Q
from django.utils import timezone

from clients import mongo
from clients.temporal import temporal_call
from generation import documents, quality
from worlds.models import GenerationRun, LiveWorld, Regeneration, World


def runs_to_reconcile(*, run_ids: list[int] | None = None, quiet_for: timedelta = timedelta(0)) -> list[GenerationRun]:
    """Active run rows not mirrored within ``quiet_for`` (all of them, or those of ``run_ids``)."""
    runs = GenerationRun.objects.filter(status__in=GenerationRun.ACTIVE, updated_at__lte=timezone.now() - quiet_for)
    if run_ids is not None:
        runs = runs.filter(pk__in=run_ids)
    return list(runs.select_related("world"))


def lives_to_settle(*, quiet_for: timedelta, overdue: timedelta) -> list[LiveWorld]:
    """Live world rows shown running that their workflow should have updated by now: starting or paused
    and not updated within ``quiet_for``, or live with a day more than ``overdue`` late."""
    now = timezone.now()
    quiet = Q(status__in=(LiveWorld.Status.STARTING, LiveWorld.Status.PAUSED), updated_at__lte=now - quiet_for)
    late = Q(status=LiveWorld.Status.LIVE, next_day_at__lte=now - overdue)
    return list(LiveWorld.objects.filter(quiet | late).select_related("world"))


def regenerations_to_settle(*, quiet_for: timedelta) -> list[Regeneration]:
    """Regenerations shown running that started more than ``quiet_for`` ago."""
    started = timezone.now() - quiet_for
    running = Regeneration.objects.filter(status=Regeneration.Status.RUNNING, started_at__lte=started)
    return list(running.select_related("run__world"))


def world_latest_run(*, world: World) -> GenerationRun | None:
    return world.runs.order_by("-number").first()


def run_bible(*, run: GenerationRun) -> dict | None:
    return documents.run_bible(mongo.get_db(), run.ref)


def run_characters(*, run: GenerationRun) -> list[dict]:
    return documents.run_characters(mongo.get_db(), run.ref)


def run_posts(
    *,
    run: GenerationRun,
    character_index: int | None = None,
    offset: int = 0,
    limit: int = 20,
    newest_first: bool = False,
) -> list[dict]:
    """A window of the run's feed (or of one character's posts), oldest first or ``newest_first``."""
    return documents.run_posts(
        mongo.get_db(),
        run.ref,
        character_index=character_index,
        offset=offset,
        limit=limit,
        newest_first=newest_first,
    )


def item_provenance(*, run: GenerationRun, characters: list[dict], posts: list[dict]) -> dict[tuple, str]:
    """The prompt version and model that made each character ((index,)) and post ((character, index))."""
    db = mongo.get_db()
    character_tasks = {c["index"]: documents.item_index(c["index"], None, c.get("version", 1)) for c in characters}
    post_tasks = {
        (p["character_index"], p["index"]): documents.item_index(p["character_index"], p["index"], p.get("version", 1))
        for p in posts
    }
    made_characters = documents.provenance(db, run.ref, "character", list(character_tasks.values()))
    made_posts = documents.provenance(db, run.ref, "post", list(post_tasks.values()))
    return {
        **{(index,): made_characters.get(str(task), "") for index, task in character_tasks.items()},
        **{position: made_posts.get(str(task), "") for position, task in post_tasks.items()},
    }


def item_versions(*, run: GenerationRun, character_index: int, post_index: int | None = None) -> dict:
    """A character's or post's current version, the earlier ones, and the run's regenerations of it."""
    versions = documents.item_versions(mongo.get_db(), run.ref, character_index, post_index)
    regenerations = run.regenerations.filter(character_index=character_index).select_related("requested_by", "run")
    if post_index is not None:
        regenerations = regenerations.filter(Q(post_index=post_index) | Q(post_index__isnull=True))
    return {**versions, "regenerations": list(regenerations)}


def with_comments(*, posts: list[dict]) -> list[dict]:
    """Give each post its comments (``post.comments``) and its like count (``post.likes``)."""
    comments = documents.post_comments(mongo.get_db(), [post["_id"] for post in posts])
    for post in posts:
        post["comments"] = comments.get(post["_id"], [])
        post["likes"] = len(post.get("liked_by", []))
    return posts


def world_timeline(*, run: GenerationRun, limit: int = 20) -> list[dict]:
    """A live world's latest events, newest first (none for a world that never lived)."""
    return documents.world_events(mongo.get_db(), run.ref, limit)


def live_timeline(*, live, limit: int = 10) -> list[dict]:
    """The latest days of the world's lives of ``live``'s run, newest first: event, posts, comments, likes,
    tokens, lag, the time live that lived it, and why it failed if it did."""
    return documents.live_days(mongo.get_db(), live.run.ref, limit)


def live_story_so_far(*, run: GenerationRun) -> tuple[int, int]:
    """(the last world day lived, the next post slot) of ``run``'s cast over every time it was live: going live
    again goes on from there. Times live from before slots were kept took ``days × posts a day`` slots (each
    began again at day 1)."""
    lives = list(LiveWorld.objects.filter(run=run).only("days", "posts_per_day", "next_slot"))
    days = max((live.days for live in lives), default=0)
    slots = max(
        (live.days * live.posts_per_day if live.next_slot is None else live.next_slot for live in lives), default=0
    )
    return days, slots


def live_history(*, world: World) -> list[LiveWorld]:
    """Every time the world was live, the latest first."""
    return list(world.lives.select_related("run", "started_by").order_by("-number"))


def run_quality(*, run: GenerationRun, as_first_written: bool = False) -> quality.QualityReport:
    """The content quality report of a run (whatever it has made so far). ``as_first_written``: of the
    captions as the model first wrote them, before the caption guard (what the prompts do alone; tokens and
    calls are the run's, guard retries included)."""
    db = mongo.get_db()
    posts, characters, bible, tasks = documents.run_quality_inputs(db, run.ref)
    if as_first_written:
        first = documents.first_captions(db, run.ref)
        posts = [{**p, "caption": first.get(f"{p['character_index']}.{p['index']}", p["caption"])} for p in posts]
    return quality.build_report(
        posts=posts,
        characters=characters,
        premise=run.world.premise,
        bible=bible,
        tasks=tasks,
        tokens_used=run.tokens_used or None,
    )


def image_png(*, image_id: str) -> bytes | None:
    return documents.image_png(mongo.get_db(), image_id)


def run_failed_items(*, run: GenerationRun) -> list[dict]:
    """The items of the run that failed for good (the run went on without them), with their errors."""
    return documents.failed_tasks(mongo.get_db(), run.ref)


def run_waiting(*, run: GenerationRun) -> list[dict]:
    """The run's LLM calls waiting for their provider to come back, the longest-waiting first."""
    return documents.waiting_calls(mongo.get_db(), run.ref)


LIVE_PROGRESS_TIMEOUT_SECONDS = 5.0  # a query waits for a worker to answer it


def run_live_progress(*, run: GenerationRun):
    """The workflow's own progress (a Temporal query); list pages use the mirrored row instead."""
    from generation.workflows import WorldGenerationWorkflow

    async def query(client):
        return await client.get_workflow_handle(run.workflow_id).query(WorldGenerationWorkflow.progress)

    return temporal_call(query, timeout=LIVE_PROGRESS_TIMEOUT_SECONDS)


# --- Published content ----------------------------------------------------------------------------
# Viewers, the feed API and anonymous image requests see a world's live (published) run only;
# worlds with nothing published stay hidden.


PUBLIC = {"live_run__isnull": False, "deleting_since__isnull": True}  # published, and not being deleted


def worlds_being_deleted() -> list[World]:
    """Worlds whose deletion was asked and whose cleanup Temporal has not confirmed yet."""
    return list(World.objects.filter(deleting_since__isnull=False))


def viewer_world(*, world_id: int) -> World | None:
    """The world, if it is published."""
    return World.objects.filter(pk=world_id, **PUBLIC).select_related("live_run").first()


def image_is_public(*, image_id: str) -> bool:
    """The image is the current image of an item of a world's live run (not an earlier version's)."""
    owner = documents.image_run(image_id)
    if owner is None or not World.objects.filter(pk=owner[0], live_run__number=owner[1], **PUBLIC).exists():
        return False
    return documents.is_current_image(mongo.get_db(), image_id)


def run_character(*, run: GenerationRun, index: int) -> dict | None:
    return documents.run_character(mongo.get_db(), run.ref, index)


def run_post_count(*, run: GenerationRun) -> int:
    return documents.run_post_count(mongo.get_db(), run.ref)


def run_post_counts_by_character(*, run: GenerationRun) -> dict[int, int]:
    return documents.post_counts_by_character(mongo.get_db(), run.ref)


def run_character_post_count(*, run: GenerationRun, character_index: int) -> int:
    """How many posts one character has (counted on the post_character_order index, not across the run)."""
    query = {"run_key": run.ref.key, "character_index": character_index}
    return mongo.get_db()[documents.POSTS].count_documents(query)


VIEWER_WORLDS_PER_PAGE = 24


def viewer_world_page(*, page) -> tuple[Page, list[dict]]:
    """One page of published worlds, newest first, and their cards. ``page`` is the raw ``?page=``
    value: anything invalid gives the first or last page."""
    worlds = World.objects.filter(**PUBLIC).select_related("live_run").order_by("-created_at", "-pk")
    paginator = Paginator(worlds, VIEWER_WORLDS_PER_PAGE)
    page_obj = paginator.get_page(page)
    return page_obj, _world_cards(list(page_obj.object_list))


def _world_cards(worlds: list[World]) -> list[dict]:
    """Each world as {world, run (live), cover_image_id, character_count, post_count}. A handful of
    queries in all, whatever the number of worlds."""
    db, runs = mongo.get_db(), [world.live_run.ref for world in worlds]
    characters = documents.counts_by_run(db, documents.CHARACTERS, runs)
    posts = documents.counts_by_run(db, documents.POSTS, runs)
    covers = documents.first_avatars(db, runs)
    return [
        {
            "world": world,
            "run": world.live_run,
            "cover_image_id": covers.get(run.key),
            "character_count": characters.get(run.key, 0),
            "post_count": posts.get(run.key, 0),
        }
        for world, run in zip(worlds, runs, strict=True)
    ]
