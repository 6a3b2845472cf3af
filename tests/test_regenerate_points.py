"""Regenerating one item, in process on the time-skipping test server (the real workflow, stand-in
activities under the real names): a cancel at each of its await points stops it and reports *cancelled*
only once nothing of it is still working; an item that fails for good reports *failed* with the reason."""

import asyncio
import uuid

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from generation.contracts import ItemInput, NewVersions, RegenerateInput, RegenerationUpdate, TokenUsage
from generation.workflows import RegenerateItemWorkflow, RegenerateVersionWorkflow
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
    def __init__(
        self,
        *,
        block_at=None,
        invalid_post: bool = False,
        last_report=("record_regeneration", "cancelled"),
        media_down: bool = False,
    ):
        super().__init__(block_at=block_at, last_report=last_report, media_down=media_down)
        self.invalid_post = invalid_post
        self.items: list[tuple] = []  # (activity, character, post, version, feedback) as asked

    @activity.defn(name="archive_versions")
    async def archive_versions(self, inp: RegenerateInput) -> NewVersions:
        await self.step("archive_versions")
        return self._versions(inp)

    @activity.defn(name="prepare_versions")
    async def prepare_versions(self, inp: RegenerateInput) -> NewVersions:
        await self.step("prepare_versions")
        return self._versions(inp)

    @activity.defn(name="promote_versions")
    async def promote_versions(self, inp: RegenerateInput) -> int:
        await self.step("promote_versions")
        return 1

    @staticmethod
    def _versions(inp: RegenerateInput) -> NewVersions:
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
        return [
            *super().activities(),
            self.archive_versions,
            self.prepare_versions,
            self.promote_versions,
            self.record_regeneration,
        ]


def regenerate_input(post_index: int | None = None) -> RegenerateInput:
    base = run_input(uuid.uuid4().hex[:8])
    return RegenerateInput(7, base.run, base.world, base.config, 1, post_index, "grumpier")


POINTS = [
    ("prepare_versions", 1),
    ("generate_character", 1),
    ("render_image", 1),
    ("plan_posts", 1),
    ("generate_post", 1),
    ("render_image", 2),
    ("generate_post", 2),
]


@pytest.mark.parametrize("block_at", POINTS, ids=[f"{name}-{n}" for name, n in POINTS])
def test_a_cancel_at_each_await_stops_the_regeneration_before_anything_is_published(env, block_at):
    """Finding 8: the new version is a draft until whole; cancelled at any await before that, nothing of it
    replaces the published item (promote_versions never runs)."""
    loop, environment = env
    stand_ins = RegenerationStandIns(block_at=block_at)
    at_cancel = loop.run(
        cancel_when(environment, stand_ins, RegenerateVersionWorkflow.run, regenerate_input(), blocked(stand_ins))
    )
    assert ("stopped", block_at[0]) in [(event, name) for event, _, name, _ in stand_ins.log]
    assert_stopped_before_reporting(stand_ins, at_cancel)
    assert stand_ins.calls["promote_versions"] == 0


OLD_POINTS = [("archive_versions", 1), *POINTS[1:]]


@pytest.mark.parametrize("block_at", OLD_POINTS, ids=[f"{name}-{n}" for name, n in OLD_POINTS])
def test_a_cancel_at_each_await_stops_a_regeneration_started_before_drafts(env, block_at):
    loop, environment = env
    stand_ins = RegenerationStandIns(block_at=block_at)
    at_cancel = loop.run(
        cancel_when(environment, stand_ins, RegenerateItemWorkflow.run, regenerate_input(), blocked(stand_ins))
    )
    assert ("stopped", block_at[0]) in [(event, name) for event, _, name, _ in stand_ins.log]
    assert_stopped_before_reporting(stand_ins, at_cancel)


class SlowPromotion(RegenerationStandIns):
    """``promote_versions`` as the real one runs: a short write that does not heartbeat, so a cancel sent
    meanwhile does not reach it and it completes."""

    def __init__(self) -> None:
        super().__init__(last_report=("record_regeneration", "completed"))
        self.promoting = asyncio.Event()

    @activity.defn(name="promote_versions")
    async def promote_versions(self, inp: RegenerateInput) -> int:
        self.calls["promote_versions"] += 1
        self.promoting.set()
        await asyncio.sleep(1.0)
        return 1


def test_a_cancel_that_arrives_while_the_new_version_replaces_the_old_one_is_too_late(env):
    """Once whole, the new version is published; a cancel during that step does not leave half of it: the
    regeneration reports completed."""
    loop, environment = env
    stand_ins = SlowPromotion()

    async def regenerate() -> int:
        inp = regenerate_input(post_index=0)
        workers = stand_in_workers(environment, stand_ins, inp.config)
        async with workers[0], workers[1], workers[2]:
            handle = await environment.client.start_workflow(
                RegenerateVersionWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
            )
            await asyncio.wait_for(stand_ins.promoting.wait(), 10)
            await handle.cancel()
            return await handle.result()

    assert loop.run(regenerate()) == 10  # the post's tokens: it completed
    reports = [d for e, _, n, d in stand_ins.log if e == "end" and n == "record_regeneration"]
    assert reports == ["completed"] and stand_ins.calls["promote_versions"] == 1


class BrokenMedia(RegenerationStandIns):
    """The media service refuses (``rejected``) or cannot make (``down``) the new version's image."""

    def __init__(self, outcome: str) -> None:
        super().__init__(last_report=("record_regeneration", "failed"), media_down=outcome == "down")
        self.outcome = outcome
        self.errors: list[str] = []

    @activity.defn(name="render_image")
    async def render_image(self, inp: ItemInput) -> None:
        if self.outcome == "rejected":
            raise ApplicationError("content policy", type="MediaRejected", non_retryable=True)
        return await super().render_image(inp)

    @activity.defn(name="record_regeneration")
    async def record_regeneration(self, update: RegenerationUpdate) -> None:
        self.errors.append(update.error)
        await self.step("record_regeneration", update.status)


@pytest.mark.parametrize("outcome", ["rejected", "down"])
def test_a_new_version_without_its_image_fails_and_publishes_nothing(env, outcome):
    """Finding 9: a regeneration whose image was refused or could not be made reported *completed* (and its
    images were counted nowhere); it fails now with the reason, and the published item stays as it was."""
    loop, environment = env
    stand_ins = BrokenMedia(outcome)

    async def regenerate() -> None:
        inp = regenerate_input(post_index=0)
        workers = stand_in_workers(environment, stand_ins, inp.config)
        async with workers[0], workers[1], workers[2]:
            await environment.client.execute_workflow(
                RegenerateVersionWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
            )

    with pytest.raises(WorkflowFailureError):
        loop.run(regenerate())
    [error] = stand_ins.errors
    said = "refused the image of post 0" if outcome == "rejected" else "could not make the image of post 0"
    assert said in error and error.endswith("the published item is unchanged")
    assert stand_ins.calls["promote_versions"] == 0


def test_a_character_is_regenerated_at_the_versions_archived_with_the_feedback(env):
    loop, environment = env
    stand_ins = RegenerationStandIns(last_report=("record_regeneration", "completed"))

    async def regenerate() -> int:
        inp = regenerate_input()
        workers = stand_in_workers(environment, stand_ins, inp.config)
        async with workers[0], workers[1], workers[2]:
            return await environment.client.execute_workflow(
                RegenerateVersionWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
            )

    assert loop.run(regenerate()) == 40  # profile, plan and two posts at 10 tokens each
    assert stand_ins.items == [
        ("character", 1, None, 2, "grumpier"),
        ("post", 1, 0, 2, "grumpier"),
        ("post", 1, 1, 3, "grumpier"),
    ]
    order = [name for event, _, name, _ in stand_ins.log if event == "end"]
    assert order[0] == "prepare_versions" and order[-2:] == ["promote_versions", "record_regeneration"]


def test_a_post_that_fails_for_good_fails_the_regeneration_with_the_reason(env):
    loop, environment = env
    stand_ins = RegenerationStandIns(invalid_post=True, last_report=("record_regeneration", "failed"))

    async def regenerate() -> None:
        inp = regenerate_input(post_index=0)
        workers = stand_in_workers(environment, stand_ins, inp.config)
        async with workers[0], workers[1], workers[2]:
            await environment.client.execute_workflow(
                RegenerateVersionWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
            )

    with pytest.raises(WorkflowFailureError) as failure:
        loop.run(regenerate())
    assert "still invalid after 2 repairs" in str(failure.value.cause)
    assert ("end", "record_regeneration", "failed") in [(e, n, d) for e, _, n, d in stand_ins.log]
    assert stand_ins.calls["render_image"] == 0 and stand_ins.calls["promote_versions"] == 0
