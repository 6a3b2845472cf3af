"""Regenerating one item, in process on the time-skipping test server (the real workflow, stand-in
activities under the real names): a cancel at each of its await points stops it and reports *cancelled*
only once nothing of it is still working; an item that fails for good reports *failed* with the reason."""

import uuid

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from generation.contracts import ItemInput, NewVersions, RegenerateInput, RegenerationUpdate, TokenUsage
from generation.workflows import RegenerateItemWorkflow
from tests.test_cancel_points import (
    StandIns,
    assert_stopped_before_reporting,
    blocked,
    cancel_when,
    run_input,
    stand_in_workers,
)

pytestmark = [pytest.mark.fast, pytest.mark.timeout(60)]


class RegenerationStandIns(StandIns):
    def __init__(self, *, block_at=None, invalid_post: bool = False, last_report=("record_regeneration", "cancelled")):
        super().__init__(block_at=block_at, last_report=last_report)
        self.invalid_post = invalid_post
        self.items: list[tuple] = []  # (activity, character, post, version, feedback) as asked

    @activity.defn(name="archive_versions")
    async def archive_versions(self, inp: RegenerateInput) -> NewVersions:
        await self.step("archive_versions")
        if inp.post_index is None:
            return NewVersions(2, [0, 1], [2, 3])  # post 1 had been regenerated once already
        return NewVersions(None, [inp.post_index], [2])

    @activity.defn(name="record_regeneration")
    async def record_regeneration(self, update: RegenerationUpdate) -> None:
        await self.step("record_regeneration", update.status)

    @activity.defn(name="generate_post")
    async def generate_post(self, inp: ItemInput) -> TokenUsage:
        self.items.append(("post", inp.character_index, inp.post_index, inp.version, inp.feedback))
        if self.invalid_post:
            raise ApplicationError("still invalid after 2 repairs", type="LlmInvalidOutput", non_retryable=True)
        return await super().generate_post(inp)

    @activity.defn(name="generate_character")
    async def generate_character(self, inp: ItemInput) -> TokenUsage:
        self.items.append(("character", inp.character_index, inp.post_index, inp.version, inp.feedback))
        return await super().generate_character(inp)

    def activities(self) -> list:  # generate_post and generate_character are the overrides above
        return [*super().activities(), self.archive_versions, self.record_regeneration]


def regenerate_input(post_index: int | None = None) -> RegenerateInput:
    base = run_input(uuid.uuid4().hex[:8])
    return RegenerateInput(7, base.run, base.world, base.config, 1, post_index, "grumpier")


POINTS = [
    ("archive_versions", 1),
    ("generate_character", 1),
    ("render_image", 1),
    ("plan_posts", 1),
    ("generate_post", 1),
    ("render_image", 2),
    ("generate_post", 2),
]


@pytest.mark.parametrize("block_at", POINTS, ids=[f"{name}-{n}" for name, n in POINTS])
def test_a_cancel_at_each_await_stops_the_regeneration(env, block_at):
    loop, environment = env
    stand_ins = RegenerationStandIns(block_at=block_at)
    at_cancel = loop.run(
        cancel_when(environment, stand_ins, RegenerateItemWorkflow.run, regenerate_input(), blocked(stand_ins))
    )
    assert ("stopped", block_at[0]) in [(event, name) for event, _, name, _ in stand_ins.log]
    assert_stopped_before_reporting(stand_ins, at_cancel)


def test_a_character_is_regenerated_at_the_versions_archived_with_the_feedback(env):
    loop, environment = env
    stand_ins = RegenerationStandIns(last_report=("record_regeneration", "completed"))

    async def regenerate() -> int:
        inp = regenerate_input()
        workers = stand_in_workers(environment, stand_ins, inp.config)
        async with workers[0], workers[1], workers[2]:
            return await environment.client.execute_workflow(
                RegenerateItemWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
            )

    assert loop.run(regenerate()) == 40  # profile, plan and two posts at 10 tokens each
    assert stand_ins.items == [
        ("character", 1, None, 2, "grumpier"),
        ("post", 1, 0, 2, "grumpier"),
        ("post", 1, 1, 3, "grumpier"),
    ]
    order = [name for event, _, name, _ in stand_ins.log if event == "end"]
    assert order[0] == "archive_versions" and order[-1] == "record_regeneration"


def test_a_post_that_fails_for_good_fails_the_regeneration_with_the_reason(env):
    loop, environment = env
    stand_ins = RegenerationStandIns(invalid_post=True, last_report=("record_regeneration", "failed"))

    async def regenerate() -> None:
        inp = regenerate_input(post_index=0)
        workers = stand_in_workers(environment, stand_ins, inp.config)
        async with workers[0], workers[1], workers[2]:
            await environment.client.execute_workflow(
                RegenerateItemWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
            )

    with pytest.raises(WorkflowFailureError) as failure:
        loop.run(regenerate())
    assert "still invalid after 2 repairs" in str(failure.value.cause)
    assert ("end", "record_regeneration", "failed") in [(e, n, d) for e, _, n, d in stand_ins.log]
    assert stand_ins.calls["render_image"] == 0
