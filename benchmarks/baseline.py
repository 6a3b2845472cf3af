"""The benchmark's baseline: the pipeline's shape (same activities per world, same
task queues, same bounded fan-out of child workflows) with no-op activities.
Imports nothing from Django."""

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow


@dataclass
class BaselineInput:
    world_id: int
    characters: int
    posts_per_character: int
    character_concurrency: int
    workflows_queue: str
    llm_queue: str
    media_queue: str


@activity.defn
async def baseline_noop(step: str) -> int:
    return 0


async def _noop(queue: str, step: str) -> None:
    await workflow.execute_activity(baseline_noop, step, task_queue=queue, start_to_close_timeout=timedelta(minutes=5))


@workflow.defn
class BaselineCharacterWorkflow:
    @workflow.run
    async def run(self, inp: BaselineInput) -> int:
        await _noop(inp.llm_queue, "profile")
        await _noop(inp.media_queue, "avatar")
        for _ in range(inp.posts_per_character):
            await _noop(inp.llm_queue, "post")
            await _noop(inp.media_queue, "image")
        return 0


@workflow.defn
class BaselineWorldWorkflow:
    @workflow.run
    async def run(self, inp: BaselineInput) -> int:
        for step in ("mirror", "bible", "mirror", "cast"):
            await _noop(inp.workflows_queue if step == "mirror" else inp.llm_queue, step)
        running: set = set()
        for index in range(inp.characters):
            if len(running) >= inp.character_concurrency:
                running = await _reap(inp, running)
            running.add(
                await workflow.start_child_workflow(
                    BaselineCharacterWorkflow.run,
                    inp,
                    id=f"{workflow.info().workflow_id}-c{index}",
                    task_queue=inp.workflows_queue,
                )
            )
        while running:
            running = await _reap(inp, running)
        await _noop(inp.workflows_queue, "mirror")
        return 0


async def _reap(inp: BaselineInput, running: set) -> set:
    done, pending = await workflow.wait(running, return_when=asyncio.FIRST_COMPLETED)
    for _ in done:  # the pipeline mirrors progress when a character finishes
        await _noop(inp.workflows_queue, "mirror")
    return pending
