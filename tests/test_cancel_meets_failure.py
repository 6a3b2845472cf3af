"""A cancel request meets an activity failure under WAIT_CANCELLATION_COMPLETED (``run_activity``, exact runs):
the activity fails for good after its cancel was requested. The workflow gets the failure (not a cancel), the run
ends and says why, and nothing of it is still running when it reports. In process, on the time-skipping test server.

The one ordering these tests never produce is an activity that fails *while* the workflow task that cancels it is
in flight (the failure reaches the server after that task started, before it completed). The time-skipping test
server refuses that task's completion (``FAILED_PRECONDITION: ACTIVITY_UNKNOWN`` for the RequestCancelActivityTask
command; temporalio/sdk-java#2391) and never times the task out or sends another, so the workflow hangs with
``WorkflowTaskStarted`` as its last event. That was the rare stall of these in-process tests (issue 22, finding 23);
the real server completes that task (``tests/test_cancel_meets_failure_real_server.py``). The last test here pins
the test server's behaviour, so we hear when a new test server no longer has it."""

import asyncio
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Worker

from generation.contracts import CharacterTask, CharacterText
from generation.workflows import WorldRunWorkflow, cancel_requested, run_activity
from tests.test_cancel_points import StandIns, assert_stopped_before_reporting, cancel_when, run_input, stand_in_workers

pytestmark = [pytest.mark.fast, pytest.mark.timeout(60)]

INVALID = "the LLM reply still failed validation after 2 repairs: caption: Field required"


# --- The case itself, on the smallest workflow: one activity through run_activity -------------------------------


@dataclass
class Step:
    key: str  # this process's Hooks of the step (the workflows below run unsandboxed, in this process)
    fail_after: float | None = None  # seconds until it fails for good on its own; None: only once cancelled
    after_cancel: float = 0.0  # once its cancel arrived: seconds (heartbeating) until it fails for good


@dataclass
class Hooks:
    """What a test sees of its workflow and activities, and how it times them."""

    cancel_arrived: asyncio.Event
    cancel_sent: threading.Event  # the workflow task that cancels the activity is in the worker (see Overlap)
    failure_recorded: threading.Event
    fail_now: asyncio.Event


HOOKS: dict[str, Hooks] = {}


def hooks() -> Hooks:
    key = uuid.uuid4().hex
    HOOKS[key] = Hooks(asyncio.Event(), threading.Event(), threading.Event(), asyncio.Event())
    return key


@activity.defn
async def fails_for_good(step: Step) -> str:
    """Heartbeats until it fails for good: after ``fail_after``, or ``after_cancel`` once its cancel arrived, or
    when the test says so (``fail_now``); never acknowledges the cancel."""
    hook = HOOKS[step.key]
    loop = asyncio.get_running_loop()
    deadline = None if step.fail_after is None else loop.time() + step.fail_after
    try:
        while (deadline is None or loop.time() < deadline) and not hook.fail_now.is_set():
            activity.heartbeat()
            await asyncio.sleep(0.02)
    except asyncio.CancelledError:
        hook.cancel_arrived.set()
        await asyncio.sleep(step.after_cancel)  # the cancel is no longer delivered: this sleep runs out
    raise ApplicationError(INVALID, type="LlmInvalidOutput", non_retryable=True)


def run_step(step: Step, *, heartbeat: bool = True):
    return run_activity(
        fails_for_good,
        step,
        exact=True,  # WAIT_CANCELLATION_COMPLETED
        start_to_close_timeout=timedelta(seconds=30),
        heartbeat_timeout=timedelta(seconds=5) if heartbeat else None,
        retry_policy=RetryPolicy(maximum_attempts=1),
    )


@workflow.defn(sandboxed=False)
class OneStep:
    """Runs one step; says what the workflow got from it."""

    @workflow.run
    async def run(self, step: Step) -> str:
        try:
            await run_step(step)
        except ActivityError as err:
            # cancel_requested: how WorldRunWorkflow tells a cancelled run from a failed one
            message = getattr(err.cause, "message", err.cause)
            got = f"got {type(err.cause).__name__}: {message}; cancel requested: {cancel_requested(err)}"
            raise ApplicationError(got, non_retryable=True) from err
        return "completed"


def worker(environment, queue: str, workflows: list, **options) -> Worker:
    return Worker(
        environment.client,
        task_queue=queue,
        workflows=workflows,
        activities=[fails_for_good],
        max_heartbeat_throttle_interval=timedelta(milliseconds=50),
        default_heartbeat_throttle_interval=timedelta(milliseconds=50),
        **options,
    )


def test_an_activity_that_fails_after_its_cancel_gives_the_workflow_its_failure(env):
    """Under WAIT_CANCELLATION_COMPLETED the activity's end decides: a failure after the cancel request resolves
    the activity as failed (the ApplicationError, not a CancelledError), at once or a moment later."""
    loop, environment = env
    queue = f"meets-{uuid.uuid4().hex[:8]}"

    async def scenario(after_cancel: float) -> BaseException:
        key = hooks()
        async with worker(environment, queue, [OneStep]):
            handle = await environment.client.start_workflow(
                OneStep.run, Step(key, after_cancel=after_cancel), id=f"{queue}-{key}", task_queue=queue
            )
            await asyncio.sleep(0.1)  # the activity is heartbeating
            await handle.cancel()
            with pytest.raises(WorkflowFailureError) as failure:
                await asyncio.wait_for(handle.result(), 20)
            assert HOOKS.pop(key).cancel_arrived.is_set()
            return failure.value.cause

    for after_cancel in (0.0, 0.01, 0.05, 0.2):
        cause = loop.run(scenario(after_cancel))
        assert isinstance(cause, ApplicationError), cause
        assert cause.message == f"got ApplicationError: {INVALID}; cancel requested: True"


# --- The same in WorldRunWorkflow: its characters' activities fail for good once cancelled ---------------------


class FailWhenCancelled(StandIns):
    """``write_character`` of character ``fails_first`` fails for good once every other character's has started;
    every other waits (heartbeating) until it is cancelled, then fails for good too, as when every post of every
    character fails."""

    def __init__(self, characters: int, fails_first: int | None = None, last_report: str = "cancelled") -> None:
        super().__init__(last_report=("record_run_status", last_report))
        self.characters, self.fails_first = characters, fails_first

    @activity.defn(name="write_character")
    async def write_character(self, inp: CharacterTask) -> CharacterText:
        if inp.character_index == self.fails_first:
            self.calls["write_character"] += 1
            call = len(self.log)
            self.log.append(("start", call, "write_character", str(inp.character_index)))
            while self.calls["write_character"] < self.characters or not self.blocked.is_set():
                activity.heartbeat()
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)  # the others are heartbeating
            self.log.append(("end", call, "write_character", str(inp.character_index)))
            raise ApplicationError(INVALID, type="LlmInvalidOutput", non_retryable=True)
        self.blocked.set()  # from here on, every call but the run's last report waits to be cancelled
        try:
            return await super().write_character(inp)
        except asyncio.CancelledError:
            raise ApplicationError(INVALID, type="LlmInvalidOutput", non_retryable=True) from None


def test_a_cancelled_world_run_whose_characters_fail_once_cancelled_ends_cancelled(env):
    loop, environment = env
    inp = run_input(f"meets-cancel-{uuid.uuid4().hex[:8]}")  # 2 characters x 2 posts
    stand_ins = FailWhenCancelled(characters=2)

    async def both_writing(handle) -> bool:
        return stand_ins.calls["write_character"] == 2

    at_cancel = loop.run(cancel_when(environment, stand_ins, WorldRunWorkflow.run, inp, both_writing))
    assert_stopped_before_reporting(stand_ins, at_cancel)
    assert [name for _, _, name, _ in stand_ins.log].count("write_character") == 4  # 2 started, 2 stopped


async def run_world(environment, stand_ins: StandIns, inp):
    workers = stand_in_workers(environment, stand_ins, inp.config)
    async with workers[0], workers[1], workers[2]:
        handle = await environment.client.start_workflow(
            WorldRunWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
        )
        return await handle.result()


def test_a_character_that_fails_the_run_cancels_the_other_whose_activity_then_fails_too(env):
    """As WorldRunWorkflow stops on a failed character (or a budget stop): it cancels the other characters' tasks
    and waits for them; their activities fail for good when the cancel reaches them. The run fails with the first
    failure, and reports it only once the other character's activity has ended."""
    loop, environment = env
    for characters in (2, 3):
        inp = run_input(f"meets-fail-{uuid.uuid4().hex[:8]}", characters=characters)
        inp.config.character_concurrency = characters
        stand_ins = FailWhenCancelled(characters, fails_first=0, last_report="failed")
        with pytest.raises(WorkflowFailureError) as failure:
            loop.run(run_world(environment, stand_ins, inp))
        assert isinstance(failure.value.cause, ApplicationError) and INVALID in failure.value.cause.message
        log = stand_ins.log
        report = next(call for event, call, name, detail in log if (name, detail) == ("record_run_status", "failed"))
        ended = {call for event, call, name, _ in log if event in ("end", "stopped") and name == "write_character"}
        assert len(ended) == characters and max(ended) < report, log
        assert log[-1][:2] == ("end", report), log
        assert stand_ins.calls["render_character"] == 0


# --- The one ordering the test server cannot take --------------------------------------------------------------


@workflow.defn(sandboxed=False)
class Overlap:
    """Two steps; when the first fails, cancels the second and waits for it (WorldRunWorkflow's stop). The workflow
    task that sends that cancel is held in the worker until the test says the second step's failure has reached
    the server: the failure arrives while the task that cancels it is in flight."""

    @workflow.run
    async def run(self, steps: list[Step]) -> str:
        first = asyncio.create_task(run_step(steps[0]))
        second = asyncio.create_task(run_step(steps[1], heartbeat=False))
        try:
            await first
        except ActivityError:
            second.cancel()
            for _ in range(20):  # the second step's task runs its cancel: the RequestCancelActivityTask command
                await asyncio.sleep(0)
            hook = HOOKS.get(steps[1].key)
            if hook is not None and not workflow.unsafe.is_replaying():
                hook.cancel_sent.set()
                hook.failure_recorded.wait(1.5)  # under the worker's deadlock detection (2 s)
        outcome = await asyncio.gather(second, return_exceptions=True)
        got = outcome[0]
        return f"second: {type(got.cause).__name__ if isinstance(got, ActivityError) else type(got).__name__}"


async def start_overlap(client, queue: str):
    """Start ``Overlap`` with its second step failing while the cancel of it is in flight; returns the handle."""
    first, second = hooks(), hooks()
    handle = await client.start_workflow(
        Overlap.run, [Step(first, fail_after=0.2), Step(second)], id=f"{queue}-{second}", task_queue=queue
    )
    hook = HOOKS[second]
    assert await asyncio.to_thread(hook.cancel_sent.wait, 15), "the first step's failure never reached the workflow"
    hook.fail_now.set()
    for _ in range(300):  # until the server holds the second step's failure
        if not (await handle.describe()).raw_description.pending_activities:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the second step never failed")
    hook.failure_recorded.set()
    return handle


def test_the_time_skipping_server_hangs_when_an_activity_fails_while_its_cancel_is_in_flight(env):
    """temporalio/sdk-java#2391: the test server refuses the workflow task that cancels an activity whose failure
    arrived while that task was in flight, and never sends another: nothing moves. If this starts failing, the
    test server no longer has the bug (the real server never had it: see the _real_server module)."""
    loop, environment = env
    queue = f"overlap-{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[str]:
        async with worker(environment, queue, [Overlap]):
            handle = await start_overlap(environment.client, queue)
            done, _ = await asyncio.wait([asyncio.ensure_future(handle.result())], timeout=4)
            assert not done, "the workflow went on: the time-skipping server takes this ordering now"
            events = [EventType.Name(event.event_type) for event in (await handle.fetch_history()).events]
            await handle.terminate("test: the test server hangs here (sdk-java#2391)")
            return events

    events = loop.run(scenario())
    assert events[-1] == "EVENT_TYPE_WORKFLOW_TASK_STARTED", events  # never completed, failed or timed out
    assert "EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED" not in events
