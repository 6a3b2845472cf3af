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
from worlds.models import MAX_CHARACTERS, MAX_POSTS_PER_CHARACTER

FEED_PAGE_SIZE = 12


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
    posts = selectors.run_posts(run=run, character_index=index, limit=MAX_POSTS_PER_CHARACTER)
    return render(
        request,
        "worlds/character_detail.html",
        {"world": world, "run": run, "character": character, "posts": _with_authors(posts, [character])},
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
    """The run's posts as a lazy sequence, so the paginator counts them and loads one page only."""

    def __init__(self, run):
        self.run = run

    def count(self) -> int:
        return selectors.run_post_count(run=self.run)

    def __getitem__(self, window: slice) -> list[dict]:
        limit = window.stop - window.start
        if limit <= 0:  # an empty first page (Mongo's limit 0 would mean "no limit")
            return []
        return selectors.run_posts(run=self.run, offset=window.start, limit=limit)


def _feed_page(run, page_number: str):
    try:
        return Paginator(_RunPosts(run), FEED_PAGE_SIZE).page(page_number)
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
