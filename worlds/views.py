"""World viewer pages and the image endpoint.

Who may view: everyone. The pages are public and read-only (GET only): they show generated,
fictional content and nothing about who made it. A world shows the content of its live
(published) run only; worlds with nothing published 404 like unknown worlds. Images of
unpublished or deleted content are 404 for anyone but staff.
"""

from django.core.paginator import InvalidPage, Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from worlds import selectors
from worlds.models import MAX_CHARACTERS

FEED_PAGE_SIZE = 12  # posts a page, newest first: the feed, the world page's first page, a profile


@require_GET
def image(request, image_id: str):
    public = selectors.image_is_public(image_id=image_id)
    if not (public or _staff_viewer(request.user)):
        raise Http404("no such image")
    png = selectors.image_png(image_id=image_id)
    if png is None:
        raise Http404("no such image")
    response = HttpResponse(png, content_type="image/png")
    # Short-lived in shared caches: unpublishing or deleting a world takes its images down.
    response["Cache-Control"] = "public, max-age=300" if public else "private, no-store"
    return response


def _staff_viewer(user) -> bool:
    """Staff who may see runs (previews in the admin and the API) see unpublished images too."""
    return user.is_authenticated and user.is_staff and user.has_perm("worlds.view_generationrun")


@require_GET
def world_list(request):
    page, cards = selectors.viewer_world_page(page=request.GET.get("page"))
    return render(request, "worlds/world_list.html", {"cards": cards, "page": page})


@require_GET
def world_detail(request, world_id: int):
    world, run = _world_and_run(world_id)
    counts = selectors.run_post_counts_by_character(run=run)
    characters = selectors.run_characters(run=run)
    for character in characters:
        character["post_count"] = counts.get(character["index"], 0)
    return render(
        request,
        "worlds/world_detail.html",
        {
            "world": world,
            "run": run,
            "bible": selectors.run_bible(run=run),
            "characters": characters,
            "timeline": selectors.world_timeline(run=run),
            "page": _with_authors(_feed_page(run, "1"), characters),
        },
    )


@require_GET
def character_detail(request, world_id: int, index: int):
    world, run = _world_and_run(world_id)
    character = selectors.run_character(run=run, index=index) if index < MAX_CHARACTERS else None
    if character is None:
        raise Http404("no such character")
    page = _with_authors(_feed_page(run, request.GET.get("page", "1"), character_index=index), [character])
    return render(
        request, "worlds/character_detail.html", {"world": world, "run": run, "character": character, "page": page}
    )


@require_GET
def world_feed(request, world_id: int):
    world, run = _world_and_run(world_id)
    page = _with_authors(_feed_page(run, request.GET.get("page", "1")), selectors.run_characters(run=run))
    return render(request, "worlds/feed.html", {"world": world, "run": run, "page": page})


def _world_and_run(world_id: int):
    world = selectors.viewer_world(world_id=world_id)
    if world is None:
        raise Http404("no such world")
    return world, world.live_run


class _RunPosts:
    """The run's posts (or one character's), newest first, as a lazy sequence, so the paginator counts them
    and loads one page only."""

    def __init__(self, run, character_index: int | None = None):
        self.run, self.character_index = run, character_index

    def count(self) -> int:
        if self.character_index is None:
            return selectors.run_post_count(run=self.run)
        return selectors.run_character_post_count(run=self.run, character_index=self.character_index)

    def __getitem__(self, window: slice) -> list[dict]:
        limit = window.stop - window.start
        if limit <= 0:  # an empty first page (Mongo's limit 0 would mean "no limit")
            return []
        return selectors.run_posts(
            run=self.run, character_index=self.character_index, offset=window.start, limit=limit, newest_first=True
        )


def _feed_page(run, page_number: str, *, character_index: int | None = None):
    """One page of the feed (or of one character's posts), newest first; 404 for a page it does not have."""
    try:
        return Paginator(_RunPosts(run, character_index), FEED_PAGE_SIZE).page(page_number)
    except InvalidPage:
        raise Http404("no such page") from None


def _with_authors(posts, characters: list[dict]):
    """Give each post its character (``post.author``), for the avatar and name next to it, its comments and
    its like count."""
    by_index = {character["index"]: character for character in characters}
    for post in posts:
        post["author"] = by_index.get(post["character_index"])
    selectors.with_comments(posts=list(posts))
    return posts
