"""A cancel stops a run at every await point, and the run says *cancelled* only once nothing
of it is still working. In process, on the time-skipping test server: the real workflows,
with stand-in activities registered under the real activity names (no Mongo, LLM or media)."""

import asyncio
import json
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from generation.contracts import (
    BibleInput,
    CastInput,
    CharacterImages,
    CharacterTask,
    CharacterText,
    DegradedItemsUpdate,
    ImageBatch,
    ImagePage,
    ImagePageInput,
    ImageRef,
    ItemInput,
    RerenderInput,
    RunConfig,
    RunRef,
    RunStatusUpdate,
    TokenUsage,
    WorldRunInput,
    WorldSnapshot,
)
from generation.workflows import (
    CharacterWorkflow,
    RegenerateItemWorkflow,
    RegenerateVersionWorkflow,
    RenderMissingImagesWorkflow,
    RerenderImagesWorkflow,
    WorldGenerationWorkflow,
    WorldRunWorkflow,
)

pytestmark = [pytest.mark.fast, pytest.mark.timeout(60)]


class StandIns:
    """The pipeline's activities, under their real names. Each call is logged. The call named by
    ``block_at`` (name, nth call) waits, heartbeating, until it is cancelled; from then on every
    other call but the run's last report waits the same way, so anything the run starts after
    the cancel point can only end by being cancelled."""

    def __init__(
        self,
        block_at: tuple[str, int] | None = None,
        media_down: bool = False,
        needs_render: int = 0,
        last_report: tuple[str, str] = ("record_run_status", "cancelled"),
    ) -> None:
        self.block_at, self.media_down, self.last_report = block_at, media_down, last_report
        self.calls: Counter = Counter()
        self.log: list[tuple[str, int, str, str]] = []  # (event, call number, activity, detail)
        self.blocked = asyncio.Event()
        self.needs_render = {(i, None) for i in range(needs_render)}
        self.renders: Counter = Counter()

    async def step(self, name: str, detail: str = "") -> None:
        self.calls[name] += 1
        call = len(self.log)
        self.log.append(("start", call, name, detail))
        exempt = (name, detail) == self.last_report or name == "list_images_to_rerender"
        try:
            if self.block_at == (name, self.calls[name]) or (self.blocked.is_set() and not exempt):
                self.blocked.set()
                while True:
                    activity.heartbeat()
                    await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.log.append(("stopped", call, name, detail))
            raise
        self.log.append(("end", call, name, detail))

    @activity.defn(name="record_run_status")
    async def record_run_status(self, update: RunStatusUpdate) -> None:
        await self.step("record_run_status", update.progress.status)

    @activity.defn(name="record_degraded_items")
    async def record_degraded_items(self, update: DegradedItemsUpdate) -> None:
        await self.step("record_degraded_items", str(update.degraded_items))

    @activity.defn(name="generate_bible")
    async def generate_bible(self, inp: BibleInput) -> TokenUsage:
        await self.step("generate_bible")
        return TokenUsage(10, 10 * self.calls["generate_bible"])

    @activity.defn(name="generate_cast")
    async def generate_cast(self, inp: CastInput) -> TokenUsage:
        await self.step("generate_cast")
        return TokenUsage(10)

    @activity.defn(name="generate_character")
    async def generate_character(self, inp: ItemInput) -> TokenUsage:
        await self.step("generate_character", str(inp.character_index))
        return TokenUsage(10)

    @activity.defn(name="plan_posts")
    async def plan_posts(self, inp: ItemInput) -> TokenUsage:
        await self.step("plan_posts", str(inp.character_index))
        return TokenUsage(10)

    @activity.defn(name="generate_post")
    async def generate_post(self, inp: ItemInput) -> TokenUsage:
        await self.step("generate_post", f"{inp.character_index}.{inp.post_index}")
        return TokenUsage(10)

    @activity.defn(name="render_image")
    async def render_image(self, inp: ItemInput) -> None:
        await self.step("render_image", f"{inp.character_index}.{inp.post_index}")
        if self.media_down:
            raise ApplicationError("media service unavailable", type="MediaUnavailable", non_retryable=True)
        self.needs_render.discard((inp.character_index, inp.post_index))

    @activity.defn(name="write_character")
    async def write_character(self, inp: CharacterTask) -> CharacterText:
        await self.step("write_character", str(inp.character_index))
        return CharacterText(30, profile_made=True, post_indexes=[0, 1])

    @activity.defn(name="render_character")
    async def render_character(self, inp: CharacterTask) -> CharacterImages:
        await self.step("render_character", f"{inp.character_index}:{inp.post_indexes}")
        if self.media_down:
            raise ApplicationError("the activity could not store its images", type="MongoDown", non_retryable=True)
        return CharacterImages()

    @activity.defn(name="mark_image_for_rerender")
    async def mark_image_for_rerender(self, inp: ItemInput) -> None:
        await self.step("mark_image_for_rerender", f"{inp.character_index}.{inp.post_index}")

    @activity.defn(name="mark_character_for_rerender")
    async def mark_character_for_rerender(self, inp: CharacterTask) -> CharacterImages:
        await self.step("mark_character_for_rerender", f"{inp.character_index}:{inp.post_indexes}")
        return CharacterImages(degraded=len(inp.images()))

    @activity.defn(name="list_images_to_rerender_page")
    async def list_images_to_rerender_page(self, page: ImagePageInput) -> ImagePage:
        await self.step("list_images_to_rerender")

        def key(ref) -> list:  # avatars, then posts, as the store lists them
            return [ref[1] is not None, ref[0], ref[1] or 0]

        after = json.loads(page.after) if page.after else None
        refs = [ref for ref in sorted(self.needs_render, key=key) if after is None or key(ref) > after][: page.limit]
        return ImagePage([ImageRef(*ref) for ref in refs], json.dumps(key(refs[-1])) if refs else page.after)

    @activity.defn(name="count_images_to_rerender")
    async def count_images_to_rerender(self, run: RunRef) -> int:
        await self.step("list_images_to_rerender")
        return len(self.needs_render)

    @activity.defn(name="render_images")
    async def render_images(self, batch: ImageBatch) -> CharacterImages:
        await self.step("render_images", str(len(batch.refs)))
        for ref in batch.refs:
            self.renders[(ref.character_index, ref.post_index)] += 1
            self.needs_render.discard((ref.character_index, ref.post_index))
        return CharacterImages()

    @activity.defn(name="list_images_to_rerender")
    async def list_images_to_rerender(self, run: RunRef) -> list[ImageRef]:
        await self.step("list_images_to_rerender")
        return [ImageRef(*ref) for ref in sorted(self.needs_render, key=lambda ref: ref[0])]

    def activities(self) -> list:
        return [
            self.record_run_status,
            self.record_degraded_items,
            self.generate_bible,
            self.generate_cast,
            self.generate_character,
            self.plan_posts,
            self.generate_post,
            self.render_image,
            self.write_character,
            self.render_character,
            self.mark_image_for_rerender,
            self.mark_character_for_rerender,
            self.list_images_to_rerender,
            self.list_images_to_rerender_page,
            self.count_images_to_rerender,
            self.render_images,
        ]


def run_input(queue: str, *, characters: int = 2, posts: int = 2, approval: bool = False) -> WorldRunInput:
    world = WorldSnapshot(
        world_id=1,
        name="Lanternfall",
        premise="Sky-whales carry letters.",
        genre="fantasy",
        tone="whimsical",
        language="en",
        visual_style="watercolor",
        character_count=characters,
        posts_per_character=posts,
        requires_approval=approval,
        token_budget=1_000_000,
    )
    config = RunConfig(
        workflows_queue=f"{queue}-workflows",
        llm_queue=f"{queue}-llm",
        media_queue=f"{queue}-media",
        character_concurrency=2,
    )
    return WorldRunInput(RunRef(1, 1, 1, f"{queue}-world"), world, config)


def stand_in_workers(env: WorkflowEnvironment, stand_ins: StandIns, config: RunConfig) -> list[Worker]:
    """One worker per task queue of ``config``: the real workflows, the stand-in activities."""
    return [
        Worker(
            env.client,
            task_queue=queue,
            activities=stand_ins.activities(),
            workflows=[
                WorldRunWorkflow,
                WorldGenerationWorkflow,
                CharacterWorkflow,
                RerenderImagesWorkflow,
                RenderMissingImagesWorkflow,
                RegenerateItemWorkflow,
                RegenerateVersionWorkflow,
            ]
            if queue == config.workflows_queue
            else [],
            max_heartbeat_throttle_interval=timedelta(milliseconds=100),
            default_heartbeat_throttle_interval=timedelta(milliseconds=100),
        )
        for queue in (config.workflows_queue, config.llm_queue, config.media_queue)
    ]


async def cancel_when(env: WorkflowEnvironment, stand_ins: StandIns, workflow, inp, ready) -> int:
    """Start ``workflow``, cancel it once ``ready()`` is true; returns the log position at the cancel."""
    config = inp.config
    workers = stand_in_workers(env, stand_ins, config)
    async with workers[0], workers[1], workers[2]:
        handle = await env.client.start_workflow(
            workflow, inp, id=inp.run.workflow_id, task_queue=config.workflows_queue
        )
        for _ in range(400):
            if await ready(handle):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the cancel point was never reached: {stand_ins.log}")
        stand_ins.blocked.set()  # from here on, every call but the last report waits to be cancelled
        at_cancel = len(stand_ins.log)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        assert isinstance(failure.value.cause, CancelledError), failure.value.cause
    return at_cancel


def assert_stopped_before_reporting(stand_ins: StandIns, at_cancel: int) -> None:
    """Whatever the run started after the cancel point was stopped without finishing, and the
    run's last report started only once every other call had ended or stopped."""
    log = stand_ins.log
    outcome = {call: event for event, call, _, _ in log if event != "start"}
    report = max(
        call for event, call, name, detail in log if event == "start" and (name, detail) == stand_ins.last_report
    )
    for event, call, name, detail in log:
        if event != "start" or call == report:
            continue
        assert call in outcome and log.index((outcome[call], call, name, detail)) < report, (
            f"{name}({detail}) was still running when the run made its last report: {log}"
        )
        if call >= at_cancel and name != "list_images_to_rerender":
            assert outcome[call] == "stopped", f"{name}({detail}) did work after the cancel: {log}"
    assert log[-1][0] == "end" and log[-1][1] == report, f"the last report was not the end: {log}"


def blocked(stand_ins: StandIns):
    async def ready(handle) -> bool:
        return stand_ins.blocked.is_set()

    return ready


# (activity, nth call) where the run is cancelled, for a world of 2 characters x 2 posts.
# record_run_status: 1 = the first report (running/bible), 2 = characters stage.
# render_image 1 is an avatar: the cancel that used to be swallowed and render everything.
BLOCK_POINTS = [
    ("record_run_status", 1),
    ("generate_bible", 1),
    ("record_run_status", 2),
    ("generate_cast", 1),
    ("generate_character", 1),
    ("render_image", 1),
    ("plan_posts", 1),
    ("generate_post", 1),
    ("render_image", 3),
]


@pytest.mark.parametrize("block_at", BLOCK_POINTS, ids=[f"{name}-{n}" for name, n in BLOCK_POINTS])
def test_a_cancel_at_each_await_stops_the_run(env, block_at):
    loop, environment = env
    stand_ins = StandIns(block_at=block_at)
    at_cancel = loop.run(
        cancel_when(
            environment, stand_ins, WorldGenerationWorkflow.run, run_input(uuid.uuid4().hex[:8]), blocked(stand_ins)
        )
    )
    assert ("stopped", block_at[0]) in [(event, name) for event, _, name, _ in stand_ins.log]
    assert_stopped_before_reporting(stand_ins, at_cancel)


# The same points in WorldRunWorkflow, whose characters are activities: with 3 characters at a concurrency
# of 2, write_character 3 starts while character 1 renders; render_character 2 runs beside a text.
RUN_BLOCK_POINTS = [
    ("record_run_status", 1),
    ("generate_bible", 1),
    ("record_run_status", 2),
    ("generate_cast", 1),
    ("write_character", 1),
    ("render_character", 1),
    ("write_character", 3),
    ("render_character", 2),
]


@pytest.mark.parametrize("block_at", RUN_BLOCK_POINTS, ids=[f"{name}-{n}" for name, n in RUN_BLOCK_POINTS])
def test_a_cancel_at_each_await_of_a_world_run_stops_it(env, block_at):
    loop, environment = env
    stand_ins = StandIns(block_at=block_at)
    inp = run_input(uuid.uuid4().hex[:8], characters=3)
    at_cancel = loop.run(cancel_when(environment, stand_ins, WorldRunWorkflow.run, inp, blocked(stand_ins)))
    assert ("stopped", block_at[0]) in [(event, name) for event, _, name, _ in stand_ins.log]
    assert_stopped_before_reporting(stand_ins, at_cancel)


@pytest.mark.parametrize("workflow", [WorldGenerationWorkflow, WorldRunWorkflow], ids=lambda w: w.__name__)
def test_a_cancel_while_the_media_service_is_down_is_not_taken_for_an_outage(env, workflow):
    """The degrade path (mark for re-render) must not run when the failure is the cancel."""
    loop, environment = env
    degrade = "mark_image_for_rerender" if workflow is WorldGenerationWorkflow else "mark_character_for_rerender"
    stand_ins = StandIns(block_at=(degrade, 1), media_down=True)
    at_cancel = loop.run(
        cancel_when(environment, stand_ins, workflow.run, run_input(uuid.uuid4().hex[:8]), blocked(stand_ins))
    )
    assert_stopped_before_reporting(stand_ins, at_cancel)


@pytest.mark.parametrize("workflow", [WorldGenerationWorkflow, WorldRunWorkflow], ids=lambda w: w.__name__)
def test_a_cancel_during_the_approval_wait(env, workflow):
    loop, environment = env
    stand_ins = StandIns()

    async def awaiting(handle) -> bool:
        return ("end", "record_run_status", "awaiting_approval") in [(e, n, d) for e, _, n, d in stand_ins.log]

    at_cancel = loop.run(
        cancel_when(
            environment,
            stand_ins,
            workflow.run,
            run_input(uuid.uuid4().hex[:8], approval=True),
            awaiting,
        )
    )
    assert_stopped_before_reporting(stand_ins, at_cancel)
    assert stand_ins.calls["generate_cast"] == 0


def test_a_cancel_while_characters_start(env):
    """Cancelled as soon as the first character workflow exists: every child is stopped and
    waited for, whether its start had been confirmed or not."""
    loop, environment = env
    stand_ins = StandIns()
    inp = run_input(uuid.uuid4().hex[:8], characters=2, posts=3)

    async def child_exists(handle) -> bool:
        try:
            await environment.client.get_workflow_handle(f"{inp.run.workflow_id}-character-0").describe()
            return True
        except Exception:
            return False

    at_cancel = loop.run(cancel_when(environment, stand_ins, WorldGenerationWorkflow.run, inp, child_exists))
    assert_stopped_before_reporting(stand_ins, at_cancel)
    assert stand_ins.calls["generate_post"] < 6

    async def child_statuses():
        return [
            (
                await environment.client.get_workflow_handle(f"{inp.run.workflow_id}-character-{i}").describe()
            ).status.name
            for i in range(2)
        ]

    for status in loop.run(child_statuses()):
        assert status in ("CANCELED", "COMPLETED"), status


def test_a_cancelled_rerender_stops_its_renders_and_records_what_is_missing(env):
    loop, environment = env
    stand_ins = StandIns(block_at=("render_image", 2), needs_render=4, last_report=("record_degraded_items", "3"))
    inp = run_input(uuid.uuid4().hex[:8])
    at_cancel = loop.run(cancel_when(environment, stand_ins, RerenderImagesWorkflow.run, inp, blocked(stand_ins)))
    assert len(stand_ins.needs_render) == 3  # the first render finished; the second was stopped
    assert_stopped_before_reporting(stand_ins, at_cancel)


def test_a_cancelled_re_render_of_pages_stops_its_renders_and_records_what_is_missing(env):
    """RenderMissingImagesWorkflow: cancelled while a page renders, it stops it and records what is missing."""
    loop, environment = env
    stand_ins = StandIns(block_at=("render_images", 2), needs_render=30, last_report=("record_degraded_items", "5"))
    base = run_input(uuid.uuid4().hex[:8])
    inp = RerenderInput(base.run, base.world, base.config)
    inp.config.character_concurrency = 1  # one page at a time: the first (25 images) ends, the second is stopped
    at_cancel = loop.run(cancel_when(environment, stand_ins, RenderMissingImagesWorkflow.run, inp, blocked(stand_ins)))
    assert len(stand_ins.needs_render) == 5
    assert_stopped_before_reporting(stand_ins, at_cancel)
