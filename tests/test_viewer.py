"""The public world viewer: server-rendered pages over the real Mongo (SecantusDB).

Content is written with generation.store (no LLM); worlds use IDs from 880000 up so their
Mongo documents never meet other tests' in the shared database. Viewers see a world's live
(published) run only; runs are published through worlds.services.run_publish."""

import io
import itertools
import re

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from PIL import Image

from clients import mongo
from generation import documents, store
from generation.contracts import RunRef
from generation.living.contracts import DayInput, LiveSettings, LiveWorldInput
from generation.living.workflows import day_plan
from worlds import selectors, services
from worlds.models import GenerationRun, World

pytestmark = pytest.mark.django_db

_world_ids = itertools.count(880_000)

BIBLE = {
    "title": "The Lantern Compact",
    "setting": "Tea houses float between islands; sky-whales carry the mail.",
    "history": "The Compact was signed when the last storm-bell rang.",
    "tone": "warm, wry and curious",
    "visual_style": "soft watercolor washes with lantern glow",
    "themes": ["letters that arrive late", "borrowed light"],
    "factions": ["The Wick Guild", "Whale Post Union"],
    "rules": ["No lantern may be lit twice.", "Every letter is delivered, eventually."],
}


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def db(mongo_env):
    """The test Mongo database; removes the documents of the worlds the test made."""
    made: list[int] = []
    yield mongo.get_db(), made
    database = mongo.get_db()
    for collection in ("bibles", "characters", "posts"):
        database[collection].delete_many({"world_id": {"$in": made}})
    for world_id in made:
        database["images.files"].delete_many({"_id": {"$regex": f"^img-w{world_id}-"}})
        database["images.chunks"].delete_many({"files_id": {"$regex": f"^img-w{world_id}-"}})


@pytest.fixture
def make_world(db):
    _, made = db

    def make(name="Lanternfall", premise="A floating archipelago of lantern-lit tea houses.") -> World:
        world = World.objects.create(id=next(_world_ids), name=name, premise=premise)
        made.append(world.pk)
        return world

    return make


def make_run(world: World, number: int = 1, **fields) -> RunRef:
    run = GenerationRun.objects.create(
        world=world,
        number=number,
        workflow_id=f"world-{world.pk}-run-{number}",
        **{"status": "completed", "stage": "done", **fields},
    )
    return RunRef(run_id=run.pk, world_id=world.pk, number=number, workflow_id=run.workflow_id)


def publish(ref: RunRef) -> None:
    """Make the run its world's live run, as staff do (its bible must be written)."""
    services.run_publish(run=GenerationRun.objects.get(pk=ref.run_id))


def write_cast(database, ref: RunRef, cast: list[tuple[str, str]], *, pending_avatars: tuple[int, ...] = ()) -> None:
    """The cast, (name, handle) each, with profiles and avatars (but those listed as pending)."""
    store.save_cast(
        database, ref, [{"name": name, "handle": handle, "concept": f"concept of {name}"} for name, handle in cast]
    )
    for index, (name, handle) in enumerate(cast):
        store.save_profile(
            database,
            ref,
            index,
            {
                "bio": f"Bio of {name}: keeps the lamps of the eastern pier.",
                "personality": f"{name} is patient and quietly funny.",
                "appearance": "ink-stained sleeves",
                "interests": [f"{handle} kites", "tide tables"],
            },
        )
        if index not in pending_avatars:
            store.save_image(database, "characters", documents.character_key(ref, index), png(), {})


def write_post(
    database, ref: RunRef, character_index: int, index: int, *, handle: str, caption: str, rendered: bool = True
) -> None:
    store.save_post(
        database,
        ref,
        character_index,
        index,
        {
            "caption": caption,
            "image_prompt": f"a lantern over the sea, {handle}",
            "location": "Wick Harbour",
            "hashtags": ["#Lanterns", "SkyWhales"],
        },
        handle,
    )
    if rendered:
        store.save_image(database, "posts", documents.post_key(ref, character_index, index), png(), {})


@pytest.fixture
def lanternfall(db, make_world):
    """A completed world: two characters (the second without an avatar yet), three posts each;
    post 2 of character 0 is marked for re-render and post 2 of character 1 is still pending."""
    database, _ = db
    world = make_world()
    ref = make_run(world)
    store.save_bible(database, ref, BIBLE, revision=0, feedback=None)
    write_cast(database, ref, [("Odile Wick", "odile_wick"), ("Bram Tidewell", "bram_tides")], pending_avatars=(1,))
    for character_index, handle in enumerate(["odile_wick", "bram_tides"]):
        for index in range(3):
            write_post(
                database,
                ref,
                character_index,
                index,
                handle=handle,
                caption=f"caption-c{character_index}-p{index} from the pier",
                rendered=index < 2,
            )
    store.mark_image_for_rerender(database, ref, 0, 2)
    publish(ref)
    return world, ref


def page(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response
    return response.content.decode()


def test_the_world_list_is_paginated_newest_first(client, db, make_world, monkeypatch):
    database, _ = db
    monkeypatch.setattr(selectors, "VIEWER_WORLDS_PER_PAGE", 2)
    for name in ("Alpha Reach", "Beta Reach", "Gamma Reach"):
        ref = make_run(make_world(name=name))
        store.save_bible(database, ref, BIBLE, revision=0, feedback=None)
        publish(ref)
    first, second = page(client, "/worlds/"), page(client, "/worlds/?page=2")
    assert "Gamma Reach" in first and "Beta Reach" in first and "Alpha Reach" not in first
    assert "Page 1 of 2" in first and 'href="?page=2"' in first
    assert "Alpha Reach" in second and "Gamma Reach" not in second and 'href="?page=1"' in second
    for bad in ("0", "-3", "abc", "99999"):  # a bad page number is not an error
        assert "Reach" in page(client, f"/worlds/?page={bad}")


def test_the_world_list_shows_published_worlds_only(client, db, lanternfall, make_world):
    database, _ = db
    world, ref = lanternfall
    never_generated = make_world(name="Neverwhere")
    still_writing = make_world(name="Inkwell Reach")
    store.save_bible(
        database, make_run(still_writing, status="running", stage="cast"), BIBLE, revision=0, feedback=None
    )
    unpublished = make_world(name="Hushed Quay")
    store.save_bible(database, make_run(unpublished), BIBLE, revision=0, feedback=None)  # completed, not live
    html = page(client, "/worlds/")
    assert 'name="viewport" content="width=device-width, initial-scale=1"' in html
    assert "Lanternfall" in html and "A floating archipelago of lantern-lit tea houses." in html
    assert f'href="/worlds/{world.pk}/"' in html
    assert f'src="/images/img-{ref.key}-c0.png"' in html  # cover: the first rendered avatar
    assert "2 characters · 6 posts" in html
    for hidden in (never_generated, still_writing, unpublished):
        assert hidden.name not in html and f'href="/worlds/{hidden.pk}/"' not in html


def test_with_nothing_published_the_list_says_so(client, make_world):
    make_run(make_world(name="Hushed Quay"))
    html = page(client, "/worlds/")
    assert "No worlds are published yet." in html and "Hushed Quay" not in html


def test_the_world_page_shows_bible_characters_and_the_first_feed_page(client, lanternfall):
    world, ref = lanternfall
    html = page(client, f"/worlds/{world.pk}/")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    for text in [
        "Lanternfall",
        "The Lantern Compact",
        BIBLE["setting"],
        BIBLE["history"],
        BIBLE["tone"],
        "letters that arrive late",
        "The Wick Guild",
        "No lantern may be lit twice.",
    ]:
        assert text in html, text
    assert "Odile Wick" in html and "@odile_wick" in html and "Bram Tidewell" in html and "@bram_tides" in html
    assert f'href="/worlds/{world.pk}/characters/0/"' in html and f'href="/worlds/{world.pk}/characters/1/"' in html
    assert f'<img class="avatar avatar-m" src="/images/img-{ref.key}-c0.png"' in html
    assert 'aria-label="Avatar of Bram Tidewell (image pending)"' in html  # no avatar yet: a placeholder
    assert html.count("3 posts") == 2
    assert "caption-c0-p0 from the pier" in html and "caption-c1-p2 from the pier" in html
    assert f'src="/images/img-{ref.key}-c0-p0.png"' in html
    assert "generating…" not in html  # the run is complete: no progress badge


def test_a_character_profile_shows_the_profile_and_only_their_posts(client, lanternfall):
    world, ref = lanternfall
    html = page(client, f"/worlds/{world.pk}/characters/0/")
    for text in [
        "@odile_wick",
        "Odile Wick",
        "Bio of Odile Wick: keeps the lamps of the eastern pier.",
        "Odile Wick is patient and quietly funny.",
        "odile_wick kites",
        "tide tables",
        "3 posts",
        "Wick Harbour",
        "#Lanterns",
        "#SkyWhales",
    ]:
        assert text in html, text
    assert f'<img class="avatar avatar-l" src="/images/img-{ref.key}-c0.png"' in html
    assert client.get(f"/images/img-{ref.key}-c0.png")["Content-Type"] == "image/png"  # the src resolves
    assert re.findall(r"caption-c\d-p\d", html) == ["caption-c0-p2", "caption-c0-p1", "caption-c0-p0"]  # newest first
    assert "Page 1 of" not in html  # three posts: one page, no pager
    assert f'src="/images/img-{ref.key}-c0-p1.png"' in html
    # post 2 needs a re-render: a placeholder, never a broken <img>
    assert documents.image_id(documents.post_key(ref, 0, 2)) not in html and html.count(">image pending<") == 1


def test_pending_post_images_show_a_placeholder(client, lanternfall):
    world, ref = lanternfall
    html = page(client, f"/worlds/{world.pk}/characters/1/")
    assert 'aria-label="Avatar of Bram Tidewell (image pending)"' in html
    assert documents.image_id(documents.post_key(ref, 1, 2)) not in html and html.count(">image pending<") == 1


def test_the_feed_is_paginated_twelve_posts_a_page(client, db, make_world):
    database, _ = db
    world = make_world(name="Busy Harbour")
    ref = make_run(world)
    store.save_bible(database, ref, BIBLE, revision=0, feedback=None)
    publish(ref)
    write_cast(database, ref, [("First Mate", "first_mate"), ("Second Mate", "second_mate")])
    for character_index, handle in enumerate(["first_mate", "second_mate"]):
        for index in range(8):
            write_post(
                database,
                ref,
                character_index,
                index,
                handle=handle,
                caption=f"[c{character_index}-p{index:02}]",
                rendered=False,
            )
    # newest first: the reverse of the posting order (post 0 of each character, then post 1 of each, ...)
    first_page = page(client, f"/worlds/{world.pk}/feed/")
    assert re.findall(r"\[c\d-p\d\d\]", first_page)[:2] == ["[c1-p07]", "[c0-p07]"]
    assert len(re.findall(r"\[c\d-p\d\d\]", first_page)) == 12
    assert f'href="/worlds/{world.pk}/feed/?page=2"' in first_page and "Page 1 of 2" in first_page
    assert 'rel="next">Older →</a>' in first_page
    second_page = page(client, f"/worlds/{world.pk}/feed/?page=2")
    assert re.findall(r"\[c\d-p\d\d\]", second_page) == ["[c1-p01]", "[c0-p01]", "[c1-p00]", "[c0-p00]"]
    assert "[c1-p07]" not in second_page and f'href="/worlds/{world.pk}/feed/?page=1"' in second_page
    assert 'rel="prev">← Newer</a>' in second_page
    assert second_page.count(">image pending<") == 4 and "<img" in second_page  # the avatars
    assert page(client, f"/worlds/{world.pk}/feed/?page=1") == first_page
    for bad in ["999", "3", "0", "-1", "two", "1.5", ""]:
        assert client.get(f"/worlds/{world.pk}/feed/", {"page": bad}).status_code == 404, bad
    # the world page shows the first page and links to the next
    world_page = page(client, f"/worlds/{world.pk}/")
    assert "[c0-p02]" in world_page and "[c1-p01]" not in world_page
    assert f'href="/worlds/{world.pk}/feed/?page=2"' in world_page


def live_world(database, make_world, *, name: str, cast: int, posts_per_character: int, days: int) -> tuple:
    """A published run of ``cast`` characters with ``posts_per_character`` posts each (captioned "[cC-pNN]"),
    then the posts of ``days`` live days, two a day, placed as the living-world workflow places them
    (``day_plan``: a fair rotation, indexes going on past the run's) and stored with their day and slot."""
    world = make_world(name=name)
    world.character_count, world.posts_per_character = cast, posts_per_character
    world.save()
    ref = make_run(world)
    store.save_bible(database, ref, BIBLE, revision=0, feedback=None)
    handles = [f"mate_{index}" for index in range(cast)]
    write_cast(database, ref, [(f"Mate {index}", handle) for index, handle in enumerate(handles)])
    for character_index, handle in enumerate(handles):
        for index in range(posts_per_character):
            write_post(
                database,
                ref,
                character_index,
                index,
                handle=handle,
                caption=f"[c{character_index}-p{index:02}]",
                rendered=False,
            )
    plan = LiveWorldInput(1, ref, services.world_snapshot(world), services.run_config(), LiveSettings(posts_per_day=2))
    for day in range(1, days + 1):
        for post in day_plan(plan, DayInput(ref, plan.world, day, 20_000)).posts:
            caption = f"[c{post.character_index}-p{post.post_index:02}] on day {day}"
            fields = {"caption": caption, "location": "Wick Harbour", "day": day, "slot": post.slot}
            store.save_post(database, ref, post.character_index, post.post_index, fields, handles[post.character_index])
    publish(ref)
    return world, ref


POST_KEY = re.compile(r"\[c\d-p\d\d\]")


def test_a_live_worlds_feed_starts_with_its_newest_post_and_pages_back_without_gaps(client, db, make_world):
    database, _ = db
    world, ref = live_world(database, make_world, name="Living Harbour", cast=3, posts_per_character=2, days=5)
    first_page = page(client, f"/worlds/{world.pk}/feed/")
    second_page = page(client, f"/worlds/{world.pk}/feed/?page=2")
    # day 5's second post first, back through the live days (two a day, round the cast), then the run's posts
    assert POST_KEY.findall(first_page) == [
        "[c0-p11]",  # day 5, slot 1
        "[c2-p10]",  # day 5, slot 0
        "[c1-p09]",
        "[c0-p08]",
        "[c2-p07]",
        "[c1-p06]",
        "[c0-p05]",
        "[c2-p04]",
        "[c1-p03]",
        "[c0-p02]",  # day 1, slot 0: the first live post
        "[c2-p01]",  # the run's own posts, newest first
        "[c1-p01]",
    ]
    assert POST_KEY.findall(second_page) == ["[c0-p01]", "[c2-p00]", "[c1-p00]", "[c0-p00]"]
    assert "Page 1 of 2" in first_page and "Page 2 of 2" in second_page
    assert "[c0-p11] on day 5" in first_page and '<span class="world-day">day 5</span>' in first_page
    # the two pages are the whole feed, exactly the reverse of the posting order
    oldest_first = [
        f"[c{p['character_index']}-p{p['index']:02}]" for p in documents.run_posts(database, ref, limit=100)
    ]
    assert POST_KEY.findall(first_page) + POST_KEY.findall(second_page) == oldest_first[::-1]
    assert len(oldest_first) == 16
    # the world page's feed is the same first page
    world_page = page(client, f"/worlds/{world.pk}/")
    assert POST_KEY.findall(world_page) == POST_KEY.findall(first_page)
    assert f'href="/worlds/{world.pk}/feed/?page=2"' in world_page
    assert client.get(f"/worlds/{world.pk}/feed/?page=3").status_code == 404


def test_a_profile_shows_the_characters_newest_posts_first_a_page_at_a_time(client, db, make_world):
    database, _ = db
    world, _ = live_world(database, make_world, name="Long Harbour", cast=2, posts_per_character=50, days=3)
    url = f"/worlds/{world.pk}/characters/0/"
    pages = [page(client, url)] + [page(client, f"{url}?page={number}") for number in range(2, 6)]
    shown = [POST_KEY.findall(html) for html in pages]
    # character 0's live posts (days 1-3, past the run's 50) first, then its run posts, 12 a page
    assert shown[0] == ["[c0-p54]", "[c0-p52]", "[c0-p50]"] + [f"[c0-p{index}]" for index in range(49, 40, -1)]
    assert [len(keys) for keys in shown] == [12, 12, 12, 12, 5]
    assert sum(shown, []) == ["[c0-p54]", "[c0-p52]", "[c0-p50]"] + [f"[c0-p{index:02}]" for index in range(49, -1, -1)]
    assert "[c1-" not in "".join(pages)  # only their own posts
    assert "[c0-p54] on day 3" in pages[0] and "53 posts" in pages[0] and "53 posts" in pages[4]
    assert "Page 1 of 5" in pages[0] and f'href="{url}?page=2" rel="next">Older →' in pages[0]
    assert "Page 5 of 5" in pages[4] and f'href="{url}?page=4" rel="prev">← Newer' in pages[4]
    assert 'rel="next"' not in pages[4]
    assert page(client, f"{url}?page=1") == pages[0]
    for bad in ["6", "0", "-1", "two", "1.5", ""]:
        assert client.get(url, {"page": bad}).status_code == 404, bad
    # the other character: its own posts, newest first
    assert POST_KEY.findall(page(client, f"/worlds/{world.pk}/characters/1/"))[:3] == [
        "[c1-p55]",
        "[c1-p53]",
        "[c1-p51]",
    ]


def test_generated_text_is_escaped(client, db, make_world):
    database, _ = db
    world = make_world(name="<b>Bold</b> World")
    ref = make_run(world)
    store.save_bible(database, ref, {**BIBLE, "title": "<i>Title</i>"}, revision=0, feedback=None)
    write_cast(database, ref, [("Eve <img src=x onerror=alert(1)>", "eve")])
    write_post(database, ref, 0, 0, handle="eve", caption='Hello <script>alert("pwned")</script> & bye')
    publish(ref)
    for url in [f"/worlds/{world.pk}/", f"/worlds/{world.pk}/feed/", f"/worlds/{world.pk}/characters/0/", "/worlds/"]:
        html = page(client, url)
        assert "<script>" not in html and "<img src=x" not in html and "<b>Bold" not in html, url
    html = page(client, f"/worlds/{world.pk}/feed/")
    assert "Hello &lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; bye" in html
    assert "&lt;b&gt;Bold&lt;/b&gt; World" in html


def test_the_live_run_is_shown_even_when_a_newer_run_exists(client, db, make_world):
    database, _ = db
    world = make_world(name="Twice Told")
    first = make_run(world, 1)
    store.save_bible(database, first, {**BIBLE, "title": "First Telling"}, revision=0, feedback=None)
    write_cast(database, first, [("Odile Wick", "odile_wick")])
    write_post(database, first, 0, 0, handle="odile_wick", caption="first telling, first post")
    publish(first)
    second = make_run(world, 2, status="running", stage="posts", posts_done=1, posts_total=4)
    store.save_bible(database, second, {**BIBLE, "title": "Second Telling"}, revision=0, feedback=None)
    write_cast(database, second, [("Marguerite Salt", "marguerite")])
    write_post(database, second, 0, 0, handle="marguerite", caption="second telling, first post")
    third = make_run(world, 3, status="completed")  # finished, but nobody published it
    store.save_bible(database, third, {**BIBLE, "title": "Third Telling"}, revision=0, feedback=None)
    for url in (f"/worlds/{world.pk}/", f"/worlds/{world.pk}/feed/", f"/worlds/{world.pk}/characters/0/"):
        html = page(client, url)
        assert "Second Telling" not in html and "Third Telling" not in html, url
        assert "marguerite" not in html and "second telling" not in html, url
        assert "Odile Wick" in html and "generating…" not in html, url
    html = page(client, f"/worlds/{world.pk}/")
    assert "First Telling" in html and "first telling, first post" in html
    assert (
        f"{documents.image_id(documents.character_key(first, 0))}.png" in html
        and documents.image_id(second.key) not in html
    )
    assert "Twice Told" in page(client, "/worlds/")

    publish(third)
    assert "Third Telling" in page(client, f"/worlds/{world.pk}/")
    publish(first)  # rolled back
    assert "First Telling" in page(client, f"/worlds/{world.pk}/")


def test_a_published_stopped_run_shows_its_partial_content(client, db, make_world):
    database, _ = db
    world = make_world(name="Quiet Shoals")
    ref = make_run(world, status="cancelled", stage="cast")
    store.save_bible(database, ref, BIBLE, revision=0, feedback=None)
    publish(ref)  # staff published what it made
    html = page(client, f"/worlds/{world.pk}/")
    assert "cancelled · partial" in html and "The Lantern Compact" in html
    assert "No characters yet." in html and "No posts yet" in html
    assert "No posts yet" in page(client, f"/worlds/{world.pk}/feed/")
    assert client.get(f"/worlds/{world.pk}/feed/?page=2").status_code == 404
    assert client.get(f"/worlds/{world.pk}/characters/0/").status_code == 404


def test_unpublished_worlds_are_404_and_a_bible_awaiting_approval_is_never_shown(client, db, make_world):
    database, _ = db
    waiting = make_world(name="Glasswater")
    ref = make_run(waiting, status="awaiting_approval", stage="approval", requires_approval=True)
    store.save_bible(database, ref, {**BIBLE, "title": "Unapproved Telling"}, revision=0, feedback=None)
    write_cast(database, ref, [("Odile Wick", "odile_wick")])
    withdrawn = make_world(name="Withdrawn Isle")
    withdrawn_ref = make_run(withdrawn)
    store.save_bible(database, withdrawn_ref, BIBLE, revision=0, feedback=None)
    publish(withdrawn_ref)
    assert client.get(f"/worlds/{withdrawn.pk}/").status_code == 200
    services.world_unpublish(world=withdrawn)
    for world in (waiting, withdrawn):
        for url in (f"/worlds/{world.pk}/", f"/worlds/{world.pk}/feed/", f"/worlds/{world.pk}/characters/0/"):
            response = client.get(url)
            assert response.status_code == 404, url
            assert b"Unapproved Telling" not in response.content and b"Lantern Compact" not in response.content
    listing = page(client, "/worlds/")
    assert "Glasswater" not in listing and "Withdrawn Isle" not in listing


def test_unknown_and_never_generated_worlds_and_characters_are_404(client, lanternfall, make_world):
    world, _ = lanternfall
    never_generated = make_world(name="Neverwhere")
    not_published = make_world(name="Hushed Quay")
    make_run(not_published)
    for url in [
        f"/worlds/{never_generated.pk}/",
        f"/worlds/{never_generated.pk}/feed/",
        f"/worlds/{never_generated.pk}/characters/0/",
        f"/worlds/{not_published.pk}/",
        f"/worlds/{not_published.pk}/feed/",
        "/worlds/987654321/",
        "/worlds/987654321/feed/",
        f"/worlds/{world.pk}/characters/2/",
        f"/worlds/{world.pk}/characters/99999999999999999999999/",
        "/worlds/99999999999999999999999/",
        f"/worlds/{world.pk}/characters/x/",
        "/worlds/abc/",
    ]:
        assert client.get(url).status_code == 404, url


def test_viewer_pages_are_public_and_read_only(client, lanternfall):
    world, _ = lanternfall
    assert client.get(f"/worlds/{world.pk}/").status_code == 200  # anonymous
    assert client.post(f"/worlds/{world.pk}/").status_code == 405


def test_images_are_public_only_for_the_live_run_and_staff_preview_the_others(
    client, db, make_world, django_user_model
):
    database, _ = db
    world = make_world(name="Lensmoor")
    first, second = make_run(world, 1), make_run(world, 2)
    for ref, handle in ((first, "odile_wick"), (second, "bram_tides")):
        store.save_bible(database, ref, BIBLE, revision=0, feedback=None)
        write_cast(database, ref, [(handle.replace("_", " ").title(), handle)])
        write_post(database, ref, 0, 0, handle=handle, caption=f"a post by {handle}")
    avatar_1, post_1, avatar_2 = (
        f"/images/img-{first.key}-c0.png",
        f"/images/img-{first.key}-c0-p0.png",
        f"/images/img-{second.key}-c0.png",
    )
    for url in (avatar_1, post_1, avatar_2):
        assert client.get(url).status_code == 404, url  # nothing is published

    publish(first)
    for url in (avatar_1, post_1):
        response = client.get(url)
        assert response.status_code == 200, url
        assert response["Content-Type"] == "image/png" and response.content == png()
        assert response["Cache-Control"] == "public, max-age=300"
    assert client.get(avatar_2).status_code == 404  # run 2 is not the live run
    assert client.get(f"/images/img-{first.key}-c7.png").status_code == 404  # no such image in the live run

    def logged_in(username: str, *, is_staff: bool = True, may_view_runs: bool = True):
        user = django_user_model.objects.create_user(username, is_staff=is_staff)
        if may_view_runs:
            user.user_permissions.add(Permission.objects.get(codename="view_generationrun"))
        other = Client()
        other.force_login(user)
        return other

    staff = logged_in("staff-viewer")
    response = staff.get(avatar_2)  # the admin's previews of runs that are not live
    assert response.status_code == 200 and response.content == png()
    assert response["Cache-Control"] == "private, no-store"
    assert staff.get(avatar_1)["Cache-Control"] == "public, max-age=300"
    assert staff.get(f"/images/img-{second.key}-c7.png").status_code == 404
    assert logged_in("staff-without-runs", may_view_runs=False).get(avatar_2).status_code == 404
    assert logged_in("not-staff", is_staff=False).get(avatar_2).status_code == 404

    services.world_unpublish(world=World.objects.get(pk=world.pk))
    assert client.get(avatar_1).status_code == 404
    assert staff.get(avatar_1)["Cache-Control"] == "private, no-store"
    for bad in ("/images/not-an-image.png", "/images/img-w1-r1.png", f"/images/img-{first.key}-c0-extra.png"):
        assert client.get(bad).status_code == 404, bad
