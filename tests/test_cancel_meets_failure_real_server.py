"""``test_cancel_meets_failure`` on the real Temporal server (``temporal server start-dev``), in process: here an
activity may fail at any moment of its cancel, including while the workflow task that cancels it is in flight,
the ordering the time-skipping test server hangs on (temporalio/sdk-java#2391). The real server records the cancel
request, then the failure, and the workflow goes on: what a production world does."""

import asyncio
import random
import uuid
from dataclasses import replace
from types import SimpleNamespace

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from generation.contracts import CharacterTask, CharacterText
from generation.workflows import WorldRunWorkflow
from tests.conftest import LoopThread
from tests.test_cancel_meets_failure import HOOKS, INVALID, Overlap, Step, hooks, run_step, start_overlap, worker
from tests.test_cancel_points import StandIns, run_input, stand_in_workers

pytestmark = pytest.mark.timeout(120)

RACES = 12  # of each kind; each takes about half a second


@pytest.fixture(scope="module")
def real(temporal_server):
    """(loop, an environment-like object whose ``client`` is on the dev server)."""
    loop = LoopThread()
    client = loop.run(Client.connect(temporal_server))
    yield loop, SimpleNamespace(client=client)
    loop.loop.call_soon_threadsafe(loop.loop.stop)


def test_the_real_server_takes_an_activity_failure_while_its_cancel_is_in_flight(real):
    loop, environment = real
    queue = f"overlap-real-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[str, list[str]]:
        async with worker(environment, queue, [Overlap]):
            handle = await start_overlap(environment.client, queue)
            result = await asyncio.wait_for(handle.result(), 15)
            return result, [EventType.Name(event.event_type) for event in (await handle.fetch_history()).events]

    result, events = loop.run(scenario())
    # under WAIT_CANCELLATION_COMPLETED the failure is what the workflow gets
    assert result == "second: ApplicationError"
    short = [name.removeprefix("EVENT_TYPE_") for name in events]
    requested = short.index("ACTIVITY_TASK_CANCEL_REQUESTED")
    assert short[requested - 1] == "WORKFLOW_TASK_COMPLETED"  # the task that sent the cancel was taken
    assert short[requested + 1 : requested + 3] == ["ACTIVITY_TASK_STARTED", "ACTIVITY_TASK_FAILED"], short
    assert short[-1] == "WORKFLOW_EXECUTION_COMPLETED"


@workflow.defn(sandboxed=False)
class FirstFailureCancelsTheRest:
    """WorldRunWorkflow's stop in small: the first failure cancels the other tasks, waits for them, re-raises."""

    @workflow.run
    async def run(self, steps: list[Step]) -> str:
        running = {asyncio.create_task(run_step(step)) for step in steps}
        try:
            while running:
                done, pending = await workflow.wait(running, return_when=asyncio.FIRST_COMPLETED)
                running = set(pending)
                for task in done:
                    task.result()
        except BaseException:
            for task in running:
                task.cancel()
            if running:
                await workflow.wait(running)
            raise
        return "completed"


def test_steps_that_fail_about_when_they_are_cancelled_always_end_the_workflow(real):
    """Two steps fail for good about the same moment (within 30 ms); the first failure cancels the other; half the
    runs are also cancelled from outside about then. Every run ends, with a step's failure or as cancelled."""
    loop, environment = real
    queue = f"races-{uuid.uuid4().hex[:8]}"
    rng = random.Random(23)

    async def race(index: int) -> str:
        at = rng.uniform(0.05, 0.25)
        steps = [Step(hooks(), fail_after=at), Step(hooks(), fail_after=max(0.0, at + rng.uniform(-0.03, 0.03)))]
        handle = await environment.client.start_workflow(
            FirstFailureCancelsTheRest.run, steps, id=f"{queue}-{index}", task_queue=queue
        )
        if index % 2:
            await asyncio.sleep(at + rng.uniform(-0.03, 0.03))
            await handle.cancel()
        try:
            with pytest.raises(WorkflowFailureError) as failure:
                await asyncio.wait_for(handle.result(), 15)
        finally:
            for step in steps:
                HOOKS.pop(step.key, None)
        return ended_by(failure.value.cause)

    async def races() -> list[str]:
        async with worker(environment, queue, [FirstFailureCancelsTheRest]):
            return [await race(index) for index in range(RACES)]

    outcomes = loop.run(races(), timeout=100)
    assert set(outcomes) <= {"failed", "cancelled"} and "failed" in outcomes, outcomes


def ended_by(cause: BaseException) -> str:
    if isinstance(cause, CancelledError):
        return "cancelled"
    assert isinstance(cause, ActivityError) and isinstance(cause.cause, ApplicationError), cause
    assert cause.cause.message == INVALID
    return "failed"


class FailTogether(StandIns):
    """Every character's ``write_character`` fails for good after its own delay (or as soon as it is cancelled),
    as when every post of every character fails."""

    def __init__(self, delays: dict[int, float], last_report: str = "failed") -> None:
        super().__init__(last_report=("record_run_status", last_report))
        self.delays = delays

    @activity.defn(name="write_character")
    async def write_character(self, inp: CharacterTask) -> CharacterText:
        self.calls["write_character"] += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.delays[inp.character_index]
        try:
            while loop.time() < deadline:
                activity.heartbeat()
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            pass
        raise ApplicationError(INVALID, type="LlmInvalidOutput", non_retryable=True)


def test_a_world_run_whose_characters_fail_together_always_ends(real):
    """WorldRunWorkflow with both characters' activities failing for good within 30 ms of each other: the first
    failure cancels the other character while its activity fails. Every run fails with that error."""
    loop, environment = real
    rng = random.Random(22)

    async def race(index: int) -> BaseException:
        inp = run_input(f"world-races-{uuid.uuid4().hex[:8]}")
        inp = replace(inp, config=replace(inp.config, heartbeat_timeout_s=10))
        at = rng.uniform(0.05, 0.25)
        stand_ins = FailTogether({0: at, 1: max(0.0, at + rng.uniform(-0.03, 0.03))})
        workers = stand_in_workers(environment, stand_ins, inp.config)
        async with workers[0], workers[1], workers[2]:
            handle = await environment.client.start_workflow(
                WorldRunWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
            )
            with pytest.raises(WorkflowFailureError) as failure:
                await asyncio.wait_for(handle.result(), 15)
        assert stand_ins.log[-1][2:] == ("record_run_status", "failed"), stand_ins.log
        return failure.value.cause

    async def races() -> list[BaseException]:
        return [await race(index) for index in range(RACES // 2)]

    causes = loop.run(races(), timeout=100)
    for cause in causes:
        assert isinstance(cause, ApplicationError) and INVALID in cause.message, cause
