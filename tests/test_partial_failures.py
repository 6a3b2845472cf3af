"""One item that fails for good (its output still invalid after repairs) does not fail the run: the run
goes on without it and counts it, up to the run's share of failed items. In process, on the time-skipping
test server, with the stand-in activities of ``test_cancel_points`` under the real names."""

import uuid

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from generation.contracts import CharacterImages, CharacterTask, CharacterText, ItemInput, TokenUsage
from generation.workflows import WorldGenerationWorkflow, WorldRunWorkflow
from tests.test_cancel_points import StandIns, run_input, stand_in_workers

pytestmark = [pytest.mark.fast, pytest.mark.timeout(60)]

INVALID = "the LLM reply still failed validation after 2 repairs: caption: Field required"


class BadItems(StandIns):
    """The profiles of ``characters``, the posts in ``posts`` and the images in ``images`` fail for good."""

    def __init__(self, *, characters=(), posts=(), images=()) -> None:
        super().__init__(last_report=("record_run_status", "completed"))
        self.bad_characters, self.bad_posts, self.bad_images = set(characters), set(posts), set(images)

    @activity.defn(name="generate_character")
    async def generate_character(self, inp: ItemInput) -> TokenUsage:
        if inp.character_index in self.bad_characters:
            raise ApplicationError(INVALID, type="LlmInvalidOutput", non_retryable=True)
        return await super().generate_character(inp)

    @activity.defn(name="generate_post")
    async def generate_post(self, inp: ItemInput) -> TokenUsage:
        if (inp.character_index, inp.post_index) in self.bad_posts:
            raise ApplicationError(INVALID, type="LlmInvalidOutput", non_retryable=True)
        return await super().generate_post(inp)

    @activity.defn(name="render_image")
    async def render_image(self, inp: ItemInput) -> None:
        if (inp.character_index, inp.post_index) in self.bad_images:
            raise ApplicationError("media render rejected (INVALID_ARGUMENT)", type="MediaRejected", non_retryable=True)
        return await super().render_image(inp)


async def generate(environment, stand_ins: StandIns, max_failed_share: float = 0.2, workflow=WorldGenerationWorkflow):
    inp = run_input(f"partial-{uuid.uuid4().hex[:8]}")  # 2 characters x 2 posts: 6 items
    inp.config.max_failed_share = max_failed_share
    workers = stand_in_workers(environment, stand_ins, inp.config)
    async with workers[0], workers[1], workers[2]:
        handle = await environment.client.start_workflow(
            workflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
        )
        return await handle.result()


def reports(stand_ins: StandIns) -> list[str]:
    return [detail for event, _, name, detail in stand_ins.log if event == "end" and name == "record_run_status"]


def test_a_post_that_fails_for_good_is_skipped_and_counted(env):
    loop, environment = env
    stand_ins = BadItems(posts={(0, 1)})
    progress = loop.run(generate(environment, stand_ins))
    assert (progress.status, progress.failed_items, progress.posts_done, progress.characters_done) == (
        "completed",
        1,
        3,
        2,
    )
    renders = [detail for event, _, name, detail in stand_ins.log if event == "start" and name == "render_image"]
    assert sorted(renders) == ["0.0", "0.None", "1.0", "1.1", "1.None"]  # no image for the failed post
    assert reports(stand_ins)[-1] == "completed"


def test_past_the_share_of_failed_items_the_run_fails(env):
    loop, environment = env
    stand_ins = BadItems(characters={1})  # its profile, so its 2 posts too: 3 of 6 items, more than 20%
    with pytest.raises(WorkflowFailureError) as failure:
        loop.run(generate(environment, stand_ins))
    assert "3 of 6 items failed for good, more than 20%" in str(failure.value.cause)
    assert stand_ins.calls["generate_post"] == 2  # the other character went on
    assert "1.0" not in [detail for _, _, name, detail in stand_ins.log if name == "generate_post"]
    assert reports(stand_ins)[-1] == "failed"


def test_an_image_the_media_service_refuses_is_a_failed_item_not_a_re_render(env):
    loop, environment = env
    stand_ins = BadItems(images={(0, None), (1, 1)})  # an avatar and a post's image: 2 of 6 items
    progress = loop.run(generate(environment, stand_ins, max_failed_share=0.5))
    assert (progress.status, progress.failed_items, progress.degraded_items, progress.posts_done) == (
        "completed",
        2,
        0,
        4,  # the posts keep their captions
    )
    assert stand_ins.calls["mark_image_for_rerender"] == 0  # refused for good: a re-render would not help
    assert stand_ins.calls["generate_post"] == 4 and reports(stand_ins)[-1] == "completed"


class BadCharacters(StandIns):
    """WorldRunWorkflow's stand-ins: ``write_character`` reports what failed, as the real one counts it."""

    def __init__(self, texts: dict[int, CharacterText], images: dict[int, CharacterImages] | None = None) -> None:
        super().__init__(last_report=("record_run_status", "completed"))
        self.texts, self.images = texts, images or {}

    @activity.defn(name="write_character")
    async def write_character(self, inp: CharacterTask) -> CharacterText:
        await super().write_character(inp)
        return self.texts.get(inp.character_index, CharacterText(30, profile_made=True, post_indexes=[0, 1]))

    @activity.defn(name="render_character")
    async def render_character(self, inp: CharacterTask) -> CharacterImages:
        await super().render_character(inp)
        return self.images.get(inp.character_index, CharacterImages())


def test_a_world_run_counts_a_character_s_failed_post_and_renders_only_what_was_made(env):
    loop, environment = env
    stand_ins = BadCharacters({0: CharacterText(20, profile_made=True, post_indexes=[0], failed=1)})
    progress = loop.run(generate(environment, stand_ins, workflow=WorldRunWorkflow))
    assert (progress.status, progress.failed_items, progress.posts_done, progress.characters_done) == (
        "completed",
        1,
        3,
        2,
    )
    renders = sorted(
        detail for event, _, name, detail in stand_ins.log if event == "start" and name == "render_character"
    )
    assert renders == ["0:[0]", "1:[0, 1]"]  # no image for the failed post


def test_a_world_run_fails_past_the_share_and_counts_refused_images(env):
    loop, environment = env
    stand_ins = BadCharacters({1: CharacterText(10, profile_made=False, failed=3)})  # 3 of 6 items
    with pytest.raises(WorkflowFailureError) as failure:
        loop.run(generate(environment, stand_ins, workflow=WorldRunWorkflow))
    assert "3 of 6 items failed for good, more than 20%" in str(failure.value.cause)
    assert "1:" not in [d[:2] for _, _, name, d in stand_ins.log if name == "render_character"]  # nothing to draw

    refused = BadCharacters({}, images={0: CharacterImages(rejected=1), 1: CharacterImages(degraded=2)})
    progress = loop.run(generate(environment, refused, 0.5, WorldRunWorkflow))
    assert (progress.status, progress.failed_items, progress.degraded_items, progress.posts_done) == (
        "completed",
        1,
        2,
        4,
    )
