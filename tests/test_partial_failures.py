"""One item that fails for good (its output still invalid after repairs) does not fail the run: the run
goes on without it and counts it, up to the run's share of failed items. In process, on the time-skipping
test server, with the stand-in activities of ``test_cancel_points`` under the real names."""

import uuid

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from generation.contracts import ItemInput, TokenUsage
from generation.workflows import WorldGenerationWorkflow
from tests.test_cancel_points import StandIns, run_input, stand_in_workers

pytestmark = [pytest.mark.fast, pytest.mark.timeout(60)]

INVALID = "the LLM reply still failed validation after 2 repairs: caption: Field required"


class BadItems(StandIns):
    """The profiles of ``characters`` and the posts in ``posts`` fail for good."""

    def __init__(self, *, characters=(), posts=()) -> None:
        super().__init__(last_report=("record_run_status", "completed"))
        self.bad_characters, self.bad_posts = set(characters), set(posts)

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


async def generate(environment, stand_ins: StandIns):
    inp = run_input(f"partial-{uuid.uuid4().hex[:8]}")  # 2 characters x 2 posts: 6 items
    workers = stand_in_workers(environment, stand_ins, inp.config)
    async with workers[0], workers[1], workers[2]:
        handle = await environment.client.start_workflow(
            WorldGenerationWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
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
