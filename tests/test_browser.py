"""Browser tests in headless Chromium (Debian's `chromium`, driven by Playwright):
staff create a world, start it, approve it, wait for it and see it in the viewer.
Screenshots go to test-artifacts/screenshots/."""

import os
import time

import pytest
from django.contrib.auth.models import Group, Permission, User
from playwright.sync_api import expect, sync_playwright

from tests.conftest import ARTIFACTS
from worlds.models import GenerationRun, World
from worlds.staff_groups import grant_staff_groups

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = ARTIFACTS / "screenshots"
PASSWORD = "browser-test-password-1"


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    # Playwright's sync API keeps an event loop running in this thread; the ORM
    # calls the test itself makes are still synchronous, so Django may allow them.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()
    del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


def staff_page(browser, base_url: str, username: str, role: str):
    grant_staff_groups(Group, Permission)
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{base_url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#site-name")).to_be_visible()
    return page


def wait_for_status(world: World, statuses: set[str], timeout: float = 120) -> GenerationRun:
    deadline = time.monotonic() + timeout
    while True:
        run = world.runs.order_by("-number").first()
        if run is not None and run.status in statuses:
            return run
        assert time.monotonic() < deadline, run and (run.status, run.error)
        time.sleep(0.3)


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_staff_create_generate_approve_and_view_a_world(live_server, browser, start_worker):
    start_worker()
    base = live_server.url
    editor = staff_page(browser, base, "elena-editor", "Editors")

    editor.goto(f"{base}/admin/worlds/world/add/")
    editor.fill("#id_name", "Cinderloom")
    editor.fill("#id_premise", "A weaving city on a dormant volcano, where tapestries predict the weather.")
    editor.fill("#id_character_count", "2")
    editor.fill("#id_posts_per_character", "2")
    editor.check("#id_requires_approval")
    shot(editor, "01-admin-new-world")
    editor.click("input[name=_continue]")
    expect(editor.locator(".messagelist")).to_contain_text("was added successfully")
    world = World.objects.get(name="Cinderloom")

    editor.click("button[data-action=generate]")
    expect(editor.locator(".messagelist")).to_contain_text("Cinderloom: run 1 started")
    wait_for_status(world, {"awaiting_approval"})
    editor.reload()
    expect(editor.locator(".field-generation")).to_contain_text("Awaiting approval")
    shot(editor, "02-admin-awaiting-approval")

    reviewer = staff_page(browser, base, "rafael-reviewer", "Reviewers")
    reviewer.goto(f"{base}/admin/worlds/world/{world.pk}/change/")
    reviewer.click("button[data-action=approve]")
    expect(reviewer.locator(".messagelist")).to_contain_text("approved; characters are being generated")
    run = wait_for_status(world, {"completed", "failed", "cancelled"})
    assert run.status == "completed", run.error
    reviewer.reload()
    expect(reviewer.locator(".wg-preview img")).to_have_count(2 + 4)
    shot(reviewer, "03-admin-completed-preview")

    reviewer.goto(f"{base}/admin/worlds/generationrun/{run.pk}/change/")
    expect(reviewer.locator(".wg-timeline")).to_be_visible()
    expect(reviewer.locator("body")).to_contain_text("Bible approved")
    shot(reviewer, "04-admin-run-page")

    viewer = browser.new_context(viewport={"width": 390, "height": 844}).new_page()  # a phone, not logged in
    viewer.goto(f"{base}/worlds/{world.pk}/")
    expect(viewer.locator("h1")).to_contain_text("Cinderloom")
    avatars = viewer.locator("img[src^='/images/img-']")
    expect(avatars.first).to_be_visible()
    assert avatars.first.evaluate("img => img.complete && img.naturalWidth > 0")  # really decoded
    sources = viewer.evaluate("() => [...document.images].map(i => i.src).filter(s => s.includes('/images/'))")
    assert len(sources) >= 2 + 4  # two avatars and the first feed page (more are lazy-loaded)
    for source in sources:
        response = viewer.request.get(source)
        assert response.ok and response.headers["content-type"] == "image/png", source
    shot(viewer, "05-viewer-world-phone")

    viewer.locator("a[href*='/characters/0/']").first.click()
    expect(viewer.locator("body")).to_contain_text("@")
    shot(viewer, "06-viewer-character-phone")
    viewer.goto(f"{base}/worlds/{world.pk}/feed/")
    expect(viewer.locator("img[src^='/images/img-']")).to_have_count(4 + 4, timeout=10_000)  # avatars + post images
    shot(viewer, "07-viewer-feed-phone")


def test_an_editor_takes_a_world_live_and_a_phone_shows_its_timeline_comments_and_likes(
    live_server, browser, start_worker
):
    from generation.contracts import RunStatus
    from tests.test_generation import make_world
    from worlds.models import LiveWorld
    from worlds.services import generation_start

    start_worker()
    base = live_server.url
    world = make_world(name="Saltmarsh", character_count=3, posts_per_character=1)
    generation_start(world=world)
    assert wait_for_status(world, {"completed", "failed"}).status == RunStatus.COMPLETED
    editor = staff_page(browser, base, "lena-live-editor", "Editors")
    editor.goto(f"{base}/admin/worlds/world/{world.pk}/change/")
    editor.click("a[data-action=live]")
    editor.fill("#id_day_seconds", "3600")
    editor.fill("#id_posts_per_day", "2")
    editor.fill("#id_comments_per_day", "1")
    editor.click("input[value='Go live']")
    expect(editor.locator(".messagelist")).to_contain_text("its first day starts now")
    live = LiveWorld.objects.get(world=world)
    deadline = time.monotonic() + 60
    while live.days < 1:
        assert time.monotonic() < deadline, "the first day never came"
        time.sleep(0.3)
        live.refresh_from_db()
    editor.reload()
    expect(editor.locator("body")).to_contain_text("Timeline")
    shot(editor, "08-admin-living-world")

    phone = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    phone.goto(f"{base}/worlds/{world.pk}/")
    expect(phone.locator(".timeline li")).to_have_count(1)
    expect(phone.locator(".comments .comment")).to_have_count(2)  # a comment and its reply
    expect(phone.locator(".comments .reply")).to_have_count(1)
    expect(phone.locator(".likes").first).to_contain_text("like")
    assert phone.evaluate("() => document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    shot(phone, "09-viewer-living-world-phone")
    phone.locator("a[href*='/characters/']").first.click()
    expect(phone.locator(".followers")).to_contain_text("follower")

    editor.click("button[data-action=stop]")
    expect(editor.locator(".messagelist")).to_contain_text("stopped")
