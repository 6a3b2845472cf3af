"""Workflows. Deterministic; they hold IDs and counters, never content.

Imports nothing from Django: the sandbox re-imports this module.
"""

import asyncio
import builtins
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    TimeoutError,
    TimeoutType,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from generation import search_attributes
    from generation.activities import (
        CleanupActivities,
        LlmActivities,
        MediaActivities,
        ProbeInput,
        ProbeResult,
        StackCheckActivities,
        StoreActivities,
    )
    from generation.contracts import (
        BUDGET_EXCEEDED,
        ITEM_ERRORS,
        BibleInput,
        CastInput,
        CharacterImages,
        CharacterInput,
        CharacterProgress,
        CharacterTask,
        Decision,
        DegradedItemsUpdate,
        ImageBatch,
        ImagePageInput,
        ItemInput,
        Progress,
        RegenerateInput,
        RegenerationUpdate,
        RerenderInput,
        RunConfig,
        RunStatus,
        RunStatusUpdate,
        Stage,
        TokenUsage,
        WorldCleanupInput,
        WorldCleanupResult,
        WorldRunInput,
    )

MAX_STACK_CHECK_PROBES = 1000


@dataclass
class StackCheckInput:
    check_id: str
    task_queues: list[str]
    probes_per_queue: int = 1
    hold_seconds: float = 0.0
    queue_wait_seconds: float = 30.0  # how long a probe may wait for a worker


@dataclass
class StackCheckResult:
    check_id: str
    probes: int
    workers: list[str]
    task_queues: list[str]


@workflow.defn
class StackCheckWorkflow:
    """Runs probe activities on each task queue; proves the stack end to end."""

    @workflow.run
    async def run(self, check: StackCheckInput) -> StackCheckResult:
        total = check.probes_per_queue * len(check.task_queues)
        if not 0 < total <= MAX_STACK_CHECK_PROBES:
            raise ApplicationError(
                f"a stack check runs 1 to {MAX_STACK_CHECK_PROBES} probes, not {total}", non_retryable=True
            )
        probes = [
            self._probe(check, queue, index) for queue in check.task_queues for index in range(check.probes_per_queue)
        ]
        results = await asyncio.gather(*probes)
        return StackCheckResult(
            check_id=check.check_id,
            probes=len(results),
            workers=sorted({r.worker for r in results}),
            task_queues=sorted({r.task_queue for r in results}),
        )

    async def _probe(self, check: StackCheckInput, queue: str, index: int) -> ProbeResult:
        try:
            return await workflow.execute_activity_method(
                StackCheckActivities.record_probe,
                ProbeInput(check.check_id, queue, index, check.hold_seconds),
                task_queue=queue,
                schedule_to_start_timeout=timedelta(seconds=check.queue_wait_seconds),
                start_to_close_timeout=timedelta(seconds=30 + check.hold_seconds),
                heartbeat_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=5),
            )
        except ActivityError as err:
            if isinstance(err.cause, TimeoutError) and err.cause.type == TimeoutType.SCHEDULE_TO_START:
                raise ApplicationError(
                    f"no worker picked up a probe on task queue {queue!r} within {check.queue_wait_seconds:g}s",
                    non_retryable=True,
                ) from err
            raise


# --- World generation ---------------------------------------------------------------


def llm_retry(config: RunConfig) -> RetryPolicy:
    """LLM calls ride out an outage of any length: unlimited attempts, backing off to the run's cap. Only
    non-retryable errors end them (credentials, quota, a rejected request, output invalid after repairs)."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=config.llm_retry_max_interval_s),
        maximum_attempts=0,
    )


# Unlimited attempts bounded by MEDIA_SCHEDULE_TO_CLOSE: the activity itself stops retrying
# an unavailable media service after a few attempts (the item is then degraded).
MEDIA_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10))
MEDIA_SCHEDULE_TO_CLOSE = timedelta(minutes=15)
# Long activities heartbeat, so a cancel reaches them within seconds. (TRY_CANCEL, the
# default: with WAIT_CANCELLATION_COMPLETED an activity that finishes before it sees
# the cancel would swallow the workflow's cancellation.)
LLM_TIMEOUTS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=5),
    "heartbeat_timeout": timedelta(seconds=10),
}
MIRROR_ACTIVITY = "record_run_status"  # registered by worlds.activities (Django side)
DEGRADED_MIRROR_ACTIVITY = "record_degraded_items"  # likewise
REGENERATION_MIRROR_ACTIVITY = "record_regeneration"  # likewise
MIRROR_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=30)),
}
PROGRESS_MIRROR_INTERVAL = timedelta(seconds=2)  # post counts reach the run row at most this often
# WorldRunWorkflow's: each mirror is an activity, and the progress query is always current
WORLD_RUN_MIRROR_INTERVAL = timedelta(seconds=10)
# Patches (workflow.patched): histories recorded before them replay the old way.
THROTTLED_PROGRESS_SIGNALS = "throttled-progress-signals"  # children signalled after every post
EVENT_DRIVEN_PROGRESS = "event-driven-progress"  # the parent woke every PROGRESS_MIRROR_INTERVAL
# Before it: a cancel did not wait for activities to stop (and could be swallowed), children were
# started one at a time, and the budget was checked on tokens summed from activity results only.
EXACT_RUNS = "exact-cancel-and-budget"
PLANNED_POSTS = "planned-posts"  # before it, characters wrote their posts with no plan
PARTIAL_FAILURES = "partial-failures"  # before it, one item that failed for good failed the whole run
MEDIA_REJECTIONS = "media-rejections"  # before it, an image the media service refused was marked for a re-render


class BudgetExceeded(Exception):
    pass


def cancel_requested(err: BaseException) -> bool:
    """The error is, or arrived because of, a cancellation of this workflow (an activity that timed
    out or failed while it was being cancelled counts too)."""
    return is_cancelled_exception(err) or workflow.cancellation_reason() is not None


async def run_activity(activity: Any, arg: Any, *, exact: bool, after_cancel: bool = False, **options: Any) -> Any:
    """Every activity of a run goes through here. ``exact`` (runs started after EXACT_RUNS): a cancel
    waits until the activity has really stopped, and a cancel that arrives while the activity completes
    is raised rather than swallowed (sdk-python#620). ``after_cancel``: the run's last words, sent once it
    was cancelled (no second raise)."""
    if not exact:
        return await workflow.execute_activity(activity, arg, **options)
    result = await workflow.execute_activity(
        activity, arg, cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED, **options
    )
    if not after_cancel and workflow.cancellation_reason() is not None:
        raise asyncio.CancelledError()
    return result


async def run_llm(activity: Any, arg: Any, config: RunConfig, world_id: int, exact: bool, **timeouts: Any) -> Any:
    """An LLM activity: on the LLM queue, retried while the provider is down, fair between worlds.
    ``timeouts`` replace ``LLM_TIMEOUTS`` (an activity of several calls needs longer)."""
    return await run_activity(
        activity,
        arg,
        exact=exact,
        task_queue=config.llm_queue,
        retry_policy=llm_retry(config),
        priority=_fairness(world_id),
        **(timeouts or LLM_TIMEOUTS),
    )


def budget_stop(err: BaseException | None) -> str | None:
    """The ledger's message if ``err`` (or one of its causes) is a refused LLM call."""
    while err is not None:
        if isinstance(err, ApplicationError) and err.type == BUDGET_EXCEEDED:
            return err.message
        err = getattr(err, "cause", None)
    return None


def _fairness(world_id: int) -> Priority:
    # One fairness key per world: a huge world cannot starve the others
    # (on servers with task-queue fairness enabled; ignored elsewhere).
    return Priority(fairness_key=f"world-{world_id}")


def item_failed(err: BaseException) -> bool:
    """The error is one item's own (output still invalid after repairs), not a cancel or the provider's."""
    return (
        isinstance(err, ActivityError)
        and isinstance(err.cause, ApplicationError)
        and err.cause.type in ITEM_ERRORS
        and not cancel_requested(err)
    )


def describe_failure(err: BaseException) -> str:
    """The innermost readable message of an activity or child failure."""
    while (cause := getattr(err, "cause", None)) is not None:
        err = cause
    return str(err) or type(err).__name__


@workflow.defn
class WorldGenerationWorkflow:
    """Bible → optional approval → characters (bounded fan-out of child workflows) → posts."""

    def __init__(self) -> None:
        self._progress = Progress()
        self._decision: Decision | None = None
        self._decided_on: tuple[int, Decision] | None = None  # the latest decision taken by ``review``
        self._tokens_by_character: dict[int, int] = {}
        self._posts_by_character: dict[int, int] = {}
        self._degraded_by_character: dict[int, int] = {}
        self._failed_by_character: dict[int, int] = {}
        self._base_tokens = 0
        self._ledger_tokens = 0  # the run's token ledger (every billed token), as last reported
        self._unmirrored_progress = False
        self._exact = False
        self._children: dict[int, asyncio.Future] = {}  # started character workflows (exact runs)
        self._stopping = False
        self._snapshot_stored = False  # the run's world snapshot is in Mongo: items pass the run only
        self._current = False  # WorldRunWorkflow: every patch below applies, none is recorded

    @workflow.query
    def progress(self) -> Progress:
        return self._progress

    @workflow.signal
    def decide(self, decision: Decision) -> None:
        """A decision as a signal (callers before ``review``): the last one in wins, and nobody is told."""
        if self._progress.awaiting_decision:
            self._decision = decision

    @workflow.update
    def review(self, decision: Decision) -> str:
        """Approve or reject the bible awaiting approval; the caller learns at once whether it was taken. A second
        decision on the same revision is refused (two reviewers deciding at once: one of them is told)."""
        if self._decision is not None:  # both passed the validator in one workflow task: the first one stands
            raise ApplicationError(self._decided(), non_retryable=True)
        self._decision = decision
        self._decided_on = (self._progress.bible_revision, decision)
        return "approved" if decision.approved else "rejected"

    @review.validator
    def _review_allowed(self, decision: Decision) -> None:
        if self._decision is not None or (not self._progress.awaiting_decision and self._decided_on):
            raise ValueError(self._decided())
        if not self._progress.awaiting_decision:
            raise ValueError("nothing is awaiting approval")

    def _decided(self) -> str:
        """Who decided the latest revision reviewed, and how."""
        assert self._decided_on is not None
        revision, decision = self._decided_on
        verb = "approved" if decision.approved else "rejected"
        return f"revision {revision} of the bible was {verb} already" + (f" by {decision.by}" if decision.by else "")

    @workflow.signal
    def character_progress(self, tick: CharacterProgress) -> None:
        self._tokens_by_character[tick.index] = tick.tokens
        self._posts_by_character[tick.index] = tick.posts_done
        self._degraded_by_character[tick.index] = tick.degraded
        self._failed_by_character[tick.index] = tick.failed
        self._ledger_tokens = max(self._ledger_tokens, tick.run_tokens)
        self._recount()
        self._unmirrored_progress = True

    @workflow.run
    async def run(self, inp: WorldRunInput) -> Progress:
        self._exact = workflow.patched(EXACT_RUNS)
        return await self._run(inp)

    async def _run(self, inp: WorldRunInput) -> Progress:
        self._inp = inp
        world = inp.world
        self._progress.characters_total = world.character_count
        self._progress.posts_total = world.character_count * world.posts_per_character
        try:
            await self._mirror(RunStatus.RUNNING, Stage.BIBLE)
            # A resume after a reviewer's rejection whose revision was not written yet writes it with that feedback.
            await self._generate_bible(revision=inp.bible_revision, feedback=inp.bible_feedback or None)
            self._progress.bible_approved = inp.bible_approved
            if world.requires_approval and not inp.bible_approved and not await self._approval_gate():
                await self._finish(RunStatus.EXPIRED, Stage.APPROVAL, "nobody approved the world bible in time")
                return self._progress
            await self._generate_characters()
            self._check_failed_items()
            await self._finish(RunStatus.COMPLETED, Stage.DONE)
        except BudgetExceeded:
            await self._finish(
                RunStatus.BUDGET_EXCEEDED,
                self._progress.stage,
                f"token budget of {world.token_budget} exceeded ({self._progress.tokens_used} used)",
            )
        except (asyncio.CancelledError, ActivityError, ChildWorkflowError, ApplicationError) as err:
            if is_cancelled_exception(err) or (self._exact and cancel_requested(err)):
                await self._finish(RunStatus.CANCELLED, self._progress.stage, "cancelled by staff")
                if self._exact:
                    raise asyncio.CancelledError() from err
                raise
            stop = budget_stop(err) if self._exact else None
            if stop:
                await self._finish(RunStatus.BUDGET_EXCEEDED, self._progress.stage, stop)
                return self._progress
            message = describe_failure(err)
            await self._finish(RunStatus.FAILED, self._progress.stage, message)
            raise ApplicationError(message, non_retryable=True) from err
        return self._progress

    async def _llm(self, activity, arg) -> TokenUsage:
        config = self._inp.config
        timeouts = {**LLM_TIMEOUTS, "heartbeat_timeout": timedelta(seconds=config.heartbeat_timeout_s)}
        usage = await run_llm(activity, arg, config, self._inp.world.world_id, self._exact, **timeouts)
        self._add_tokens(usage)
        return usage

    async def _generate_bible(self, revision: int, feedback: str | None) -> None:
        self._progress.bible_revision = revision
        bible = BibleInput(self._inp.run, self._inp.world, revision, feedback)
        # Stored by this activity (not by an older worker's): the characters' items pass the run, not the world.
        self._snapshot_stored = (await self._llm(LlmActivities.generate_bible, bible)).snapshot_stored

    async def _approval_gate(self) -> bool:
        """Wait for approve, or reject-with-feedback (regenerate); False when it times out."""
        config = self._inp.config
        while True:
            self._decision = None
            self._progress.awaiting_decision = True
            await self._mirror(RunStatus.AWAITING_APPROVAL, Stage.APPROVAL)
            try:
                await workflow.wait_condition(
                    lambda: self._decision is not None, timeout=timedelta(seconds=config.approval_timeout_s)
                )
            except builtins.TimeoutError:
                return False
            finally:
                self._progress.awaiting_decision = False
            decision = self._decision
            assert decision is not None  # the wait above ended on it
            if decision.approved:
                self._progress.bible_approved = True
                await self._mirror(RunStatus.RUNNING, Stage.CHARACTERS)
                return True
            revision = self._progress.bible_revision + 1
            if revision > config.max_bible_revisions:
                raise ApplicationError(
                    f"the world bible was rejected {revision} times; "
                    f"the limit is {config.max_bible_revisions} revisions",
                    non_retryable=True,
                )
            await self._mirror(RunStatus.RUNNING, Stage.BIBLE)
            await self._generate_bible(revision, decision.feedback)

    async def _generate_characters(self) -> None:
        inp = self._inp
        self._progress.stage = Stage.CHARACTERS
        await self._mirror(RunStatus.RUNNING, Stage.CHARACTERS)
        await self._llm(LlmActivities.generate_cast, CastInput(inp.run, inp.world))

        # Sliding window: at most `character_concurrency` character workflows at once.
        running: dict[asyncio.Future, int] = {}
        next_index = 0
        try:
            while next_index < inp.world.character_count or running:
                while next_index < inp.world.character_count and len(running) < inp.config.character_concurrency:
                    running[await self._start_character(next_index)] = next_index
                    next_index += 1
                if workflow.patched(EVENT_DRIVEN_PROGRESS):
                    await self._wait_for_progress(running)
                else:  # histories recorded before the patch woke every PROGRESS_MIRROR_INTERVAL
                    await workflow.wait(
                        list(running),
                        timeout=PROGRESS_MIRROR_INTERVAL.total_seconds(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                for finished in [handle for handle in running if handle.done()]:
                    running.pop(finished)
                    self.character_progress(finished.result())
                    self._progress.characters_done += 1
                self._check_budget()
                if self._unmirrored_progress and self._mirror_due():
                    stage = Stage.POSTS if inp.world.posts_per_character else Stage.CHARACTERS
                    await self._mirror(RunStatus.RUNNING, stage)
        except BaseException:
            self._stopping = True
            for future, index in running.items():
                if not self._exact:
                    future.cancel()
                elif index in self._children:  # one still starting is cancelled once started
                    self._children[index].cancel()
            if running:  # let them stop, so nothing is still writing when the run is reported finished
                await workflow.wait(list(running))
            raise

    async def _start_character(self, index: int) -> asyncio.Future:
        """A running character workflow, as a future of its result. Exact runs start it in a task of
        its own, which a cancel of this workflow does not interrupt mid-start."""
        inp = self._inp
        character_input = CharacterInput(inp.run, inp.world, inp.config, index, self._snapshot_stored)
        options: dict[str, Any] = {
            "id": f"{inp.run.workflow_id}-character-{index}",
            "task_queue": inp.config.workflows_queue,
            "parent_close_policy": ParentClosePolicy.REQUEST_CANCEL,
            # Findable by WorldId like its parent; none if the parent has none (older runs replay unchanged).
            "search_attributes": search_attributes.child_attributes(
                workflow.info().typed_search_attributes, search_attributes.CHARACTER
            ),
        }
        if not self._exact:
            return await workflow.start_child_workflow(CharacterWorkflow.run, character_input, **options)

        async def character() -> CharacterProgress:
            child = await workflow.start_child_workflow(CharacterWorkflow.run, character_input, **options)
            self._children[index] = child
            if self._stopping:
                child.cancel()
            return await child

        return asyncio.create_task(character())

    async def _wait_for_progress(self, running: dict) -> None:
        """Until a character finishes or, when progress waits to be mirrored, its turn comes.
        No timer while nothing changes: 1,000 idle worlds cost the server nothing."""
        pending = self._unmirrored_progress
        timeout = None
        if pending:
            timeout = max(0.001, (self._last_mirror + PROGRESS_MIRROR_INTERVAL - workflow.now()).total_seconds())
        try:
            await workflow.wait_condition(
                lambda: any(handle.done() for handle in running) or (self._unmirrored_progress and not pending),
                timeout=timeout,
            )
        except builtins.TimeoutError:
            pass

    def _mirror_due(self) -> bool:
        if self._current:
            return workflow.now() - self._last_mirror >= WORLD_RUN_MIRROR_INTERVAL
        if not workflow.patched(EVENT_DRIVEN_PROGRESS):
            return True
        return workflow.now() - self._last_mirror >= PROGRESS_MIRROR_INTERVAL

    def _add_tokens(self, usage: TokenUsage) -> None:
        self._base_tokens += usage.tokens
        self._ledger_tokens = max(self._ledger_tokens, usage.run_tokens)
        self._recount()
        self._check_budget()

    def _recount(self) -> None:
        summed = self._base_tokens + sum(self._tokens_by_character.values())
        self._progress.tokens_used = max(summed, self._ledger_tokens)
        self._progress.posts_done = sum(self._posts_by_character.values())
        self._progress.degraded_items = sum(self._degraded_by_character.values())
        self._progress.failed_items = sum(self._failed_by_character.values())

    def _check_failed_items(self) -> None:
        """A run completes with a few failed items; past the run's share (of characters + posts), it fails."""
        failed, share = self._progress.failed_items, self._inp.config.max_failed_share
        items = self._progress.characters_total + self._progress.posts_total
        if failed > share * items:
            raise ApplicationError(
                f"{failed} of {items} items failed for good, more than {share:.0%}; see the run's failed items",
                non_retryable=True,
            )

    def _check_budget(self) -> None:
        if self._progress.tokens_used > self._inp.world.token_budget:
            raise BudgetExceeded()

    async def _mirror(self, status: RunStatus, stage: str, error: str = "", finished: bool = False) -> None:
        self._progress.status, self._progress.stage = status, stage
        if error:
            self._progress.last_error = error
        self._unmirrored_progress = False
        self._last_mirror = workflow.now()
        await run_activity(
            MIRROR_ACTIVITY,
            RunStatusUpdate(self._inp.run.run_id, self._progress, finished, self._inp.run.key),
            exact=self._exact,
            after_cancel=finished,
            task_queue=self._inp.config.workflows_queue,
            **MIRROR_OPTIONS,
        )

    async def _finish(self, status: RunStatus, stage: str, error: str = "") -> None:
        await self._mirror(status, stage, error, finished=True)


@workflow.defn
class WorldRunWorkflow(WorldGenerationWorkflow):
    """A world's run as every new run is started: bible → optional approval → cast → each character as two
    activities (its text, then its images) in a bounded sliding window, in this workflow (no child
    workflow per character). Every patch of WorldGenerationWorkflow applies and none is recorded, so a
    world costs a few Temporal actions rather than several per item. WorldGenerationWorkflow stays for
    the runs started before it."""

    @workflow.run
    async def run(self, inp: WorldRunInput) -> Progress:
        self._exact = self._current = True
        return await self._run(inp)

    async def _generate_characters(self) -> None:
        inp = self._inp
        self._progress.stage = Stage.CHARACTERS
        await self._mirror(RunStatus.RUNNING, Stage.CHARACTERS)
        await self._llm(LlmActivities.generate_cast, CastInput(inp.run, inp.world))
        # Ordered by character (a dict, not a set): cancels are sent, and results read, in the same order on
        # every replay, not in memory-address order.
        running: dict[asyncio.Task, int] = {}
        next_index = 0
        try:
            while next_index < inp.world.character_count or running:
                while next_index < inp.world.character_count and len(running) < inp.config.character_concurrency:
                    running[asyncio.create_task(self._character(next_index))] = next_index
                    next_index += 1
                done, _ = await workflow.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    del running[task]
                for task in done:
                    self.character_progress(task.result())
                    self._progress.characters_done += 1
                self._check_budget()
                # Progress reaches the run row when a character finishes, at most every
                # WORLD_RUN_MIRROR_INTERVAL (no timer: the query is always current).
                if running and self._unmirrored_progress and self._mirror_due():
                    stage = Stage.POSTS if inp.world.posts_per_character else Stage.CHARACTERS
                    await self._mirror(RunStatus.RUNNING, stage)
        except BaseException:
            self._stopping = True  # a character whose text is made from now on starts no images
            for task in running:
                task.cancel()
            if running:  # let them stop, so nothing is still writing when the run is reported finished
                await workflow.wait(list(running))
            raise

    async def _character(self, index: int) -> CharacterProgress:
        inp, config = self._inp, self._inp.config
        world = None if self._snapshot_stored else inp.world
        posts = inp.world.posts_per_character
        task = CharacterTask(inp.run, world, index)
        text = await run_llm(
            LlmActivities.write_character,
            task,
            config,
            inp.world.world_id,
            exact=True,
            start_to_close_timeout=LLM_TIMEOUTS["start_to_close_timeout"] * (2 + posts),
            heartbeat_timeout=timedelta(seconds=config.heartbeat_timeout_s),
        )
        progress = CharacterProgress(index, text.tokens, len(text.post_indexes), 0, text.run_tokens, text.failed)
        if self._stopping:  # the run stopped (budget, a failure) while the text was being made: no images
            return progress
        if text.profile_made or text.post_indexes:
            task = CharacterTask(inp.run, world, index, text.profile_made, text.post_indexes)
            images = await render_character(task, config)
            progress.degraded, progress.failed = images.degraded, progress.failed + images.rejected
        return progress


async def render_character(task: CharacterTask, config: RunConfig) -> CharacterImages:
    """A character's images; if the activity itself cannot finish (not the media service: it degrades
    those images itself), the images are kept for a re-render, as ``render_or_degrade`` does."""
    images = len(task.images())
    try:
        return await run_activity(
            MediaActivities.render_character,
            task,
            exact=True,
            task_queue=config.media_queue,
            retry_policy=MEDIA_RETRY,
            start_to_close_timeout=timedelta(seconds=60) * images,
            schedule_to_close_timeout=MEDIA_SCHEDULE_TO_CLOSE + timedelta(seconds=60) * images,
            heartbeat_timeout=timedelta(seconds=config.heartbeat_timeout_s),
            priority=_fairness(task.run.world_id),
        )
    except ActivityError as err:
        if cancel_requested(err):
            raise
        # Only the images not made yet are kept for a re-render; those rendered or refused stay as they are.
        return await run_activity(
            StoreActivities.mark_character_for_rerender,
            task,
            exact=True,
            task_queue=config.workflows_queue,
            start_to_close_timeout=timedelta(seconds=30),
        )


@workflow.defn
class CharacterWorkflow:
    """One character: profile, avatar, a plan of its posts, then the posts in order (each writes one
    planned moment and sees the earlier captions)."""

    @workflow.run
    async def run(self, inp: CharacterInput) -> CharacterProgress:
        exact = workflow.patched(EXACT_RUNS)
        config, world = inp.config, inp.world
        parent = workflow.info().parent
        progress = CharacterProgress(index=inp.index)
        last_signal = workflow.now()

        async def llm(activity, item: ItemInput) -> None:
            usage = await run_llm(activity, item, config, world.world_id, exact)
            progress.tokens += usage.tokens
            progress.run_tokens = max(progress.run_tokens, usage.run_tokens)

        partial = workflow.patched(PARTIAL_FAILURES)

        async def made(activity, item: ItemInput, items: int = 1) -> bool:
            """An LLM step; an item that fails for good is counted (``items``) and skipped, not raised."""
            try:
                await llm(activity, item)
                return True
            except ActivityError as err:
                if not (partial and item_failed(err)):
                    raise
                progress.failed += items
                return False

        item_world = None if inp.items_by_reference else world  # by reference: the activities read it from Mongo
        item = ItemInput(inp.run, item_world, inp.index)
        if not await made(LlmActivities.generate_character, item, items=1 + world.posts_per_character):
            return progress  # no profile: no avatar and no posts

        async def render(item: ItemInput) -> None:
            """Render the item's image: one the media service refused is a failed item (its text is kept)."""
            outcome = await render_or_degrade(item, config.media_queue, config.workflows_queue, exact)
            progress.degraded += outcome == DEGRADED
            progress.failed += outcome == REJECTED

        await render(item)
        if world.posts_per_character and workflow.patched(PLANNED_POSTS):
            await made(LlmActivities.plan_posts, item)  # without a plan, each post writes a moment of its own
        for post_index in range(world.posts_per_character):
            post = ItemInput(inp.run, item_world, inp.index, post_index)
            if await made(LlmActivities.generate_post, post):
                await render(post)
                progress.posts_done += 1
            if parent is not None and self._progress_signal_due(post_index, world.posts_per_character, last_signal):
                last_signal = workflow.now()
                await workflow.get_external_workflow_handle(parent.workflow_id).signal(
                    WorldGenerationWorkflow.character_progress, progress
                )
        return progress

    @staticmethod
    def _progress_signal_due(post_index: int, posts: int, last_signal) -> bool:
        if not workflow.patched(THROTTLED_PROGRESS_SIGNALS):
            return True  # histories recorded before the patch signal after every post
        # The parent mirrors at most every PROGRESS_MIRROR_INTERVAL, and gets the last post's
        # progress as this workflow's result: signal no more often than that.
        return post_index < posts - 1 and workflow.now() - last_signal >= PROGRESS_MIRROR_INTERVAL


RENDERED, DEGRADED, REJECTED = "rendered", "degraded", "rejected"


async def render_or_degrade(item: ItemInput, media_queue: str, workflows_queue: str, exact: bool) -> str:
    """Render an image: RENDERED; if the media service stays down, the item is kept and marked for a
    re-render: DEGRADED; if the service refuses it for good, it is a failed item: REJECTED (the activity
    recorded why). A cancellation is never taken for an outage: it goes through."""
    try:
        await run_activity(
            MediaActivities.render_image,
            item,
            exact=exact,
            task_queue=media_queue,
            retry_policy=MEDIA_RETRY,
            start_to_close_timeout=timedelta(seconds=60),
            schedule_to_close_timeout=MEDIA_SCHEDULE_TO_CLOSE,
            heartbeat_timeout=timedelta(seconds=10),
            priority=_fairness(item.run.world_id),
        )
        return RENDERED
    except ActivityError as err:
        if exact and cancel_requested(err):
            raise
        rejected = isinstance(err.cause, ApplicationError) and err.cause.type == "MediaRejected"
        if rejected and workflow.patched(MEDIA_REJECTIONS):
            return REJECTED
        await run_activity(
            StoreActivities.mark_image_for_rerender,
            item,
            exact=exact,
            task_queue=workflows_queue,
            start_to_close_timeout=timedelta(seconds=30),
        )
        return DEGRADED


@workflow.defn
class RerenderImagesWorkflow:
    """Renders again the images of a finished run that the media service could not make
    (marked ``needs_render``), a few at a time; returns how many are still missing.
    Cancelled, it stops its renders and still records how many are missing."""

    @workflow.run
    async def run(self, inp: WorldRunInput) -> int:
        exact = workflow.patched(EXACT_RUNS)
        config = inp.config
        refs = await run_activity(
            StoreActivities.list_images_to_rerender,
            inp.run,
            exact=exact,
            task_queue=config.workflows_queue,
            start_to_close_timeout=timedelta(seconds=30),
        )
        waiting = [ItemInput(inp.run, inp.world, ref.character_index, ref.post_index) for ref in refs]
        running: set[asyncio.Task] = set()
        still_missing = 0
        try:
            while waiting or running:
                while waiting and len(running) < config.character_concurrency:
                    item = waiting.pop(0)
                    running.add(
                        asyncio.create_task(render_or_degrade(item, config.media_queue, config.workflows_queue, exact))
                    )
                done, pending = await workflow.wait(running, return_when=asyncio.FIRST_COMPLETED)
                running = set(pending)  # workflow.wait returns lists
                still_missing += sum(task.result() == DEGRADED for task in done)
        except BaseException:
            if not exact:
                raise
            for task in running:
                task.cancel()
            if running:
                await workflow.wait(running)
            left = await run_activity(
                StoreActivities.list_images_to_rerender,
                inp.run,
                exact=exact,
                after_cancel=True,
                task_queue=config.workflows_queue,
                start_to_close_timeout=timedelta(seconds=30),
            )
            await self._record(inp, len(left), exact, after_cancel=True)
            raise
        await self._record(inp, still_missing, exact)
        return still_missing

    @staticmethod
    async def _record(inp: WorldRunInput, still_missing: int, exact: bool, after_cancel: bool = False) -> None:
        await run_activity(
            DEGRADED_MIRROR_ACTIVITY,
            DegradedItemsUpdate(inp.run.run_id, still_missing),
            exact=exact,
            after_cancel=after_cancel,
            task_queue=inp.config.workflows_queue,
            **MIRROR_OPTIONS,
        )


RERENDER_BATCH = 25  # images a render activity makes, and a listing returns
RERENDER_PAGES_PER_EXECUTION = 40  # then it continues as new: 1,000 images an execution at most


@workflow.defn
class RenderMissingImagesWorkflow:
    """Renders again the images of a finished run that the media service could not make (marked
    ``needs_render``): a page of them at a time, each page one activity, a few at once. The listing goes on
    from a cursor and the workflow continues as new every ``RERENDER_PAGES_PER_EXECUTION`` pages, so a live
    world's thousands of missing images keep payloads and history small. Records, and returns, how many are
    still missing; cancelled, it stops its renders and still records that. (RerenderImagesWorkflow, which
    listed every image at once, stays for re-renders started before it.)"""

    @workflow.init
    def __init__(self, inp: RerenderInput) -> None:
        self._config = inp.config

    @workflow.run
    async def run(self, inp: RerenderInput) -> int:
        config, after = inp.config, inp.after
        running: dict[asyncio.Task, int] = {}  # in the order started: cancels go out in that order
        more = False
        try:
            for page_number in range(RERENDER_PAGES_PER_EXECUTION):
                page = await self._store(
                    StoreActivities.list_images_to_rerender_page, ImagePageInput(inp.run, after, RERENDER_BATCH)
                )
                if not page.refs:
                    break
                after = page.after
                while len(running) >= config.character_concurrency:
                    await self._one_done(running)
                running[asyncio.create_task(self._render(inp, page.refs))] = page_number
            else:
                more = True
            while running:
                await self._one_done(running)
        except BaseException:
            for task in running:
                task.cancel()
            if running:
                await workflow.wait(list(running))
            missing = await self._store(StoreActivities.count_images_to_rerender, inp.run, after_cancel=True)
            await self._record(inp, missing, after_cancel=True)
            raise
        if more:  # outside the try: continuing as new is not a failure
            workflow.continue_as_new(replace(inp, after=after))
        missing = await self._store(StoreActivities.count_images_to_rerender, inp.run)
        await self._record(inp, missing)
        return missing

    @staticmethod
    async def _one_done(running: dict) -> None:
        done, _ = await workflow.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            del running[task]
        for task in done:
            task.result()

    async def _store(self, activity: Any, arg: Any, after_cancel: bool = False) -> Any:
        return await run_activity(
            activity,
            arg,
            exact=True,
            after_cancel=after_cancel,
            task_queue=self._config.workflows_queue,
            start_to_close_timeout=timedelta(seconds=30),
        )

    @staticmethod
    async def _render(inp: RerenderInput, refs: list) -> None:
        """One page's images; if the activity cannot finish, they stay marked for a re-render."""
        try:
            await run_activity(
                MediaActivities.render_images,
                ImageBatch(inp.run, inp.world, refs),
                exact=True,
                task_queue=inp.config.media_queue,
                retry_policy=MEDIA_RETRY,
                start_to_close_timeout=timedelta(seconds=60) * len(refs),
                schedule_to_close_timeout=MEDIA_SCHEDULE_TO_CLOSE + timedelta(seconds=60) * len(refs),
                heartbeat_timeout=timedelta(seconds=inp.config.heartbeat_timeout_s),
                priority=_fairness(inp.run.world_id),
            )
        except ActivityError as err:
            if cancel_requested(err):
                raise

    @staticmethod
    async def _record(inp: RerenderInput, still_missing: int, after_cancel: bool = False) -> None:
        await run_activity(
            DEGRADED_MIRROR_ACTIVITY,
            DegradedItemsUpdate(inp.run.run_id, still_missing),
            exact=True,
            after_cancel=after_cancel,
            task_queue=inp.config.workflows_queue,
            **MIRROR_OPTIONS,
        )


# --- Regenerating one item ---------------------------------------------------------------


@workflow.defn
class RegenerateItemWorkflow:
    """A new version of one character (profile, avatar, plan, then each of its posts) or of one post (caption
    and image), written with the editor's feedback. The versions it replaces are archived first, and the
    feed shows each new one as soon as it is stored. Reports how it ended to its regeneration row."""

    @workflow.run
    async def run(self, inp: RegenerateInput) -> int:
        config, world = inp.config, inp.world
        self._tokens = 0

        async def llm(activity, item: ItemInput) -> None:
            self._tokens += (await run_llm(activity, item, config, world.world_id, exact=True)).tokens

        async def render(item: ItemInput) -> None:
            await render_or_degrade(item, config.media_queue, config.workflows_queue, exact=True)

        def version_of(post_index: int | None, version: int) -> ItemInput:
            return ItemInput(inp.run, world, inp.character_index, post_index, version, inp.feedback)

        try:
            versions = await run_activity(
                StoreActivities.archive_versions,
                inp,
                exact=True,
                task_queue=config.workflows_queue,
                start_to_close_timeout=timedelta(seconds=30),
            )
            if versions.character is not None:
                character = version_of(None, versions.character)
                await llm(LlmActivities.generate_character, character)
                await render(character)
                if versions.post_indexes:
                    await llm(LlmActivities.plan_posts, character)
            for index, version in zip(versions.post_indexes, versions.post_versions, strict=True):
                post = version_of(index, version)
                await llm(LlmActivities.generate_post, post)
                await render(post)
        except (asyncio.CancelledError, ActivityError, ApplicationError) as err:
            if cancel_requested(err):
                await self._report(inp, RunStatus.CANCELLED, "cancelled by staff")
                raise asyncio.CancelledError() from err
            message = budget_stop(err) or describe_failure(err)
            await self._report(inp, RunStatus.FAILED, message)
            raise ApplicationError(message, non_retryable=True) from err
        await self._report(inp, RunStatus.COMPLETED)
        return self._tokens

    async def _report(self, inp: RegenerateInput, status: RunStatus, error: str = "") -> None:
        await run_activity(
            REGENERATION_MIRROR_ACTIVITY,
            RegenerationUpdate(inp.regeneration_id, status, self._tokens, error, inp.run.key),
            exact=True,
            after_cancel=True,
            task_queue=inp.config.workflows_queue,
            **MIRROR_OPTIONS,
        )


@workflow.defn
class RegenerateVersionWorkflow:
    """A new version of one character (profile, avatar, plan, then each of its posts) or of one post (caption
    and image), written with the editor's feedback as a draft apart from the published items (keys of the
    regeneration's own, ``RunRef.draft``). Only once every part of it is whole, texts and images, does it
    replace what is published, the old versions archived: a cancel or a failure before that leaves the published
    item exactly as it was. An image the media service refuses or cannot make is a failure, with the reason.
    Reports how it ended to its regeneration row. (RegenerateItemWorkflow, which wrote in place, stays for the
    regenerations started before it.)"""

    @workflow.run
    async def run(self, inp: RegenerateInput) -> int:
        world = inp.world
        draft = replace(inp.run, draft=inp.regeneration_id)
        self._tokens = 0

        def version_of(post_index: int | None, version: int) -> ItemInput:
            return ItemInput(draft, world, inp.character_index, post_index, version, inp.feedback)

        try:
            versions = await self._store(StoreActivities.prepare_versions, inp)
            if versions.character is not None:
                character = version_of(None, versions.character)
                await self._llm(inp, LlmActivities.generate_character, character)
                await self._render(inp, character)
                if versions.post_indexes:
                    await self._llm(inp, LlmActivities.plan_posts, character)
            for index, version in zip(versions.post_indexes, versions.post_versions, strict=True):
                post = version_of(index, version)
                await self._llm(inp, LlmActivities.generate_post, post)
                await self._render(inp, post)
        except (asyncio.CancelledError, ActivityError, ApplicationError) as err:
            if cancel_requested(err):
                await self._report(inp, RunStatus.CANCELLED, "cancelled by staff; the published item is unchanged")
                raise asyncio.CancelledError() from err
            message = (budget_stop(err) or describe_failure(err)) + "; the published item is unchanged"
            await self._report(inp, RunStatus.FAILED, message)
            raise ApplicationError(message, non_retryable=True) from err
        # Whole: it replaces the published item. A cancel arriving now is too late; the new version stands.
        await self._store(StoreActivities.promote_versions, inp, after_cancel=True)
        await self._report(inp, RunStatus.COMPLETED)
        return self._tokens

    async def _llm(self, inp: RegenerateInput, activity: Any, item: ItemInput) -> None:
        self._tokens += (await run_llm(activity, item, inp.config, inp.world.world_id, exact=True)).tokens

    @staticmethod
    async def _render(inp: RegenerateInput, item: ItemInput) -> None:
        outcome = await render_or_degrade(item, inp.config.media_queue, inp.config.workflows_queue, exact=True)
        what = "the avatar" if item.post_index is None else f"the image of post {item.post_index}"
        if outcome == REJECTED:
            raise ApplicationError(f"the media service refused {what} of the new version", non_retryable=True)
        if outcome == DEGRADED:
            raise ApplicationError(
                f"the media service could not make {what} of the new version; regenerate it once the service is back",
                non_retryable=True,
            )

    @staticmethod
    async def _store(activity: Any, inp: RegenerateInput, after_cancel: bool = False) -> Any:
        return await run_activity(
            activity,
            inp,
            exact=True,
            after_cancel=after_cancel,
            task_queue=inp.config.workflows_queue,
            start_to_close_timeout=timedelta(seconds=30),
        )

    async def _report(self, inp: RegenerateInput, status: RunStatus, error: str = "") -> None:
        await run_activity(
            REGENERATION_MIRROR_ACTIVITY,
            RegenerationUpdate(inp.regeneration_id, status, self._tokens, error, inp.run.key),
            exact=True,
            after_cancel=True,
            task_queue=inp.config.workflows_queue,
            **MIRROR_OPTIONS,
        )


# --- Deleted worlds -------------------------------------------------------------------

# Both steps are idempotent and must finish: retried without limit, backing off to once a minute.
CLEANUP_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=10),
    "heartbeat_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1)),
}


@workflow.defn
class WorldCleanupWorkflow:
    """Deletes what a deleted world left behind: stops its workflows, then deletes its documents and images."""

    @workflow.run
    async def run(self, inp: WorldCleanupInput) -> WorldCleanupResult:
        queue = workflow.info().task_queue
        stopped = await workflow.execute_activity_method(
            CleanupActivities.stop_workflows, inp.workflow_ids, task_queue=queue, **CLEANUP_OPTIONS
        )
        result = await workflow.execute_activity_method(
            CleanupActivities.delete_world_content, inp.world_id, task_queue=queue, **CLEANUP_OPTIONS
        )
        result.stopped_workflows = stopped
        return result
