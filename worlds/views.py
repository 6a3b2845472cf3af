"""World viewer pages and the image endpoint.

Who may view: everyone. The pages are public and read-only (GET only): they show generated,
fictional content and nothing about who made it. Worlds that were never generated (no runs)
are not shown at all: they 404 like unknown worlds. A world shows the content of its latest
run that has a bible, even while that run is still going or after it stopped part-way;
progress comes from the mirrored GenerationRun row, never from Temporal.
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
    png = selectors.image_png(image_id=image_id)
    if png is None:
        raise Http404("no such image")
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "public, max-age=86400, immutable"  # rendered images never change
    return response


@require_GET
def world_list(request):
    page, cards = selectors.viewer_world_page(page=request.GET.get("page"))
    return render(request, "worlds/world_list.html", {"cards": cards, "page": page})


@require_GET
def world_detail(request, world_id: int):
    world, run = _world_and_run(world_id)
    context = {"world": world, "run": run, "latest_run": selectors.world_latest_run(world=world)}
    if run is not None:
        counts = selectors.run_post_counts_by_character(run=run)
        characters = selectors.run_characters(run=run)
        for character in characters:
            character["post_count"] = counts.get(character["index"], 0)
        context |= {"bible": selectors.run_bible(run=run), "characters": characters,
                    "page": _with_authors(_feed_page(run, "1"), characters)}
    return render(request, "worlds/world_detail.html", context)


@require_GET
def character_detail(request, world_id: int, index: int):
    world, run = _world_and_run(world_id)
    character = None
    if run is not None and index < MAX_CHARACTERS:
        character = selectors.run_character(run=run, index=index)
    if character is None:
        raise Http404("no such character")
    posts = selectors.run_posts(run=run, character_index=index, limit=MAX_POSTS_PER_CHARACTER)
    return render(request, "worlds/character_detail.html",
                  {"world": world, "run": run, "character": character, "posts": _with_authors(posts, [character])})


@require_GET
def world_feed(request, world_id: int):
    world, run = _world_and_run(world_id)
    page_number = request.GET.get("page", "1")
    if run is None:
        if page_number != "1":
            raise Http404("no such page")
        return render(request, "worlds/feed.html", {"world": world, "run": None})
    page = _with_authors(_feed_page(run, page_number), selectors.run_characters(run=run))
    return render(request, "worlds/feed.html", {"world": world, "run": run, "page": page})


def _world_and_run(world_id: int):
    world = selectors.viewer_world(world_id=world_id)
    if world is None:
        raise Http404("no such world")
    return world, selectors.world_content_run(world=world)


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
    """Give each post its character (``post.author``), for the avatar and name next to it."""
    by_index = {character["index"]: character for character in characters}
    for post in posts:
        post["author"] = by_index.get(post["character_index"])
    return posts
