"""Activities. Each class receives its clients in ``__init__``.

This module imports nothing from Django: workflows import it (for activity
references) inside the Temporal sandbox.
"""

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from pymongo.database import Database
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from generation import documents, metrics, prompts, quality, schemas, store
from generation.contracts import (
    BUDGET_EXCEEDED,
    ITEM_ERRORS,
    BibleInput,
    CastInput,
    CharacterImages,
    CharacterTask,
    CharacterText,
    ImageBatch,
    ImagePage,
    ImagePageInput,
    ImageRef,
    ItemInput,
    NewVersions,
    RegenerateInput,
    RunRef,
    TokenUsage,
    WorldCleanupResult,
    WorldSnapshot,
)
from generation.llm import LlmClient, LlmError, LlmInvalidOutput, LlmReply, LlmRetryableError
from generation.media import MediaClient, MediaRejected, MediaUnavailable

WORKER_IDENTITY = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class ProbeInput:
    check_id: str
    task_queue: str
    index: int
    hold_seconds: float = 0.0


@dataclass
class ProbeResult:
    task_queue: str
    index: int
    worker: str


class StackCheckActivities:
    """Proves that every task queue has a live worker that can write to Mongo."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @activity.defn
    def record_probe(self, probe: ProbeInput) -> ProbeResult:
        deadline = time.monotonic() + probe.hold_seconds
        while time.monotonic() < deadline:  # stands in for slow work
            activity.heartbeat()
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        key = f"{probe.check_id}:{probe.task_queue}:{probe.index}"
        self.db.stack_checks.update_one(
            {"_id": key},
            {
                "$set": {"worker": WORKER_IDENTITY, "attempt": activity.info().attempt},
                "$setOnInsert": {
                    "check_id": probe.check_id,
                    "task_queue": probe.task_queue,
                    "index": probe.index,
                    "created_at": datetime.now(UTC),
                },
            },
            upsert=True,
        )
        return ProbeResult(task_queue=probe.task_queue, index=probe.index, worker=WORKER_IDENTITY)


REPAIR_ATTEMPTS = 2  # extra LLM calls that show the model its own invalid reply
MEDIA_ATTEMPTS_BEFORE_DEGRADING = 3
MEDIA_BACKOFF_MAX_S = 10  # between a batch's attempts at one image, as MEDIA_RETRY between activity attempts
# max_tokens of each call: the most one reply may cost. A cast grows with its size.
MAX_TOKENS = {"bible": 1500, "character": 1000, "post": 500}


def cast_max_tokens(characters: int) -> int:
    return 200 + 80 * characters


def plan_max_tokens(posts: int) -> int:
    return 120 + 80 * posts


def prompt_token_bound(messages: list[dict]) -> int:
    """What a prompt may cost, on the safe side: half its UTF-8 bytes (tokenizers average 3 to 4
    characters a token in English, about one a character in CJK scripts) plus 8 a message."""
    return sum(len(message["content"].encode()) // 2 + 8 for message in messages)


def last_resort(guard, candidates: list[str], written: str) -> str:
    """When the guard leaves too little twice: the first candidate it passes whole (the moment as planned,
    then what was left of each reply), else the caption as written, for the quality report to flag."""
    return next((text for text in candidates if text.strip() and not guard(text)[1]), written)


def call_seed(run: RunRef, call: str, repair: int) -> int:
    """Each call samples with its own seed, from the run and the task: reproducible, and not the same random
    choices for every prompt (the same seed for every call made a small model write alike posts). A resumed
    run samples afresh: an item that failed for good is not written the same way again."""
    key = run.key if not run.resume else f"{run.key}/resume-{run.resume}"
    return int.from_bytes(hashlib.sha256(f"{key}/{call}/{repair}".encode()).digest()[:4], "big") >> 1


async def in_thread(fn, *args):
    """Run a blocking (Mongo) call in a thread. A cancel does not cut it off: it is waited for, so
    nothing is written after the activity reports itself cancelled."""
    call = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await call
        raise


@dataclass
class Bill:
    """What one activity attempt's LLM calls cost, and the run's ledger total after them."""

    tokens: int = 0
    run_tokens: int = 0


SNAPSHOT_CACHE_SIZE = 4096  # run executions whose world snapshot a worker keeps in memory


class Snapshots:
    """The world snapshot of an item's run: from the input, or from Mongo once per run execution (a stored
    snapshot never changes, so the worker keeps it)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, WorldSnapshot] = {}

    async def of(self, inp: ItemInput | CharacterTask) -> WorldSnapshot:
        if inp.world is not None:
            return inp.world
        key = documents.snapshot_key(inp.run)
        world = self._cache.get(key)
        if world is None:
            world = await in_thread(store.load_world_snapshot, self.db, inp.run)
            if len(self._cache) >= SNAPSHOT_CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))  # the oldest
            self._cache[key] = world
        return world


class CharacterReads:
    """What a character's LLM steps read, read at most once per activity: the world bible, the character's
    document and its posts. Each step updates them with what it stored, so the next step reads nothing."""

    def __init__(self, db: Database, run: RunRef, index: int) -> None:
        self.db, self.run, self.index = db, run, index
        self._bible: dict | None = None
        self._member: dict | None = None
        self._posts: dict[int, dict] | None = None

    async def bible(self) -> dict:
        if self._bible is None:
            self._bible = await in_thread(store.load_bible, self.db, self.run)
        return self._bible

    async def member(self) -> dict:
        if self._member is None:
            self._member = await in_thread(store.load_character, self.db, self.run, self.index)
        return self._member

    async def posts(self) -> dict[int, dict]:
        if self._posts is None:
            self._posts = await in_thread(store.character_posts, self.db, self.run, self.index)
        return self._posts


class LlmActivities:
    """LLM stages: build the prompt from the snapshot and Mongo, call the LLM,
    validate (repairing invalid output), store idempotently, record the task.
    Every call is reserved on the run's token ledger first and settled with what was billed."""

    def __init__(self, llm: LlmClient, db: Database, snapshots: Snapshots | None = None) -> None:
        self.llm = llm
        self.db = db
        self.snapshots = snapshots or Snapshots(db)

    @activity.defn
    async def generate_bible(self, inp: BibleInput) -> TokenUsage:
        """Also stores the run execution's world snapshot, which later item activities read by reference."""
        await in_thread(store.save_world_snapshot, self.db, inp.run, inp.world)
        if await in_thread(store.has_bible, self.db, inp.run, inp.revision):
            return dataclasses.replace(await self._stored(inp.run), snapshot_stored=True)
        previous = None
        if inp.feedback:
            previous = await in_thread(store.load_bible, self.db, inp.run)
        messages = prompts.bible(inp.world, previous=previous, feedback=inp.feedback)
        reply, bill = await self._complete(
            inp.run, inp.world, "bible", inp.revision, messages, schemas.BIBLE, "world_bible", MAX_TOKENS["bible"]
        )
        await in_thread(store.save_bible, self.db, inp.run, reply.content, inp.revision, inp.feedback)
        return TokenUsage(bill.tokens, bill.run_tokens, snapshot_stored=True)

    @activity.defn
    async def generate_cast(self, inp: CastInput) -> TokenUsage:
        if await in_thread(store.has_cast, self.db, inp.run, inp.world.character_count):
            return await self._stored(inp.run)
        bible = await in_thread(store.load_bible, self.db, inp.run)
        messages = prompts.cast(inp.world, bible)
        reply, bill = await self._complete(
            inp.run,
            inp.world,
            "cast",
            0,
            messages,
            schemas.cast(inp.world.character_count),
            "cast",
            cast_max_tokens(inp.world.character_count),
        )
        members = reply.content["characters"]
        for index, member in enumerate(members):  # handles must be unique within a world
            member["handle"] = _handle(member["handle"], index, [m["handle"] for m in members[:index]])
        await in_thread(store.save_cast, self.db, inp.run, members)
        return TokenUsage(bill.tokens, bill.run_tokens)

    @activity.defn
    async def generate_character(self, inp: ItemInput) -> TokenUsage:
        return await self._character(inp, CharacterReads(self.db, inp.run, inp.character_index))

    @activity.defn
    async def plan_posts(self, inp: ItemInput) -> TokenUsage:
        """One call plans the character's posts as distinct moments; each post then writes one."""
        return await self._plan(inp, CharacterReads(self.db, inp.run, inp.character_index))

    @activity.defn
    async def generate_post(self, inp: ItemInput) -> TokenUsage:
        """Writes one planned moment. The guard drops sentences that repeat the character's earlier posts or
        echo the prompt; if too little is left, the post is written once more, told which sentences not to
        write, and if that fails too, the caption is the moment as planned."""
        return await self._post(inp, CharacterReads(self.db, inp.run, inp.character_index))

    async def _character(self, inp: ItemInput, reads: CharacterReads) -> TokenUsage:
        member = await reads.member()
        if store.is_profiled(member, inp.version):
            return await self._stored(inp.run)
        world = await self.snapshots.of(inp)
        bible = await reads.bible()
        messages = prompts.character(world, bible, member)
        if inp.version:
            messages = prompts.revised(messages, feedback=inp.feedback, previous=member.get("bio"))
        reply, bill = await self._complete(
            inp.run,
            world,
            "character",
            documents.item_index(inp.character_index, version=inp.version),
            messages,
            schemas.CHARACTER,
            "character_profile",
            MAX_TOKENS["character"],
        )
        await in_thread(
            store.save_profile, self.db, inp.run, inp.character_index, reply.content, inp.version, inp.feedback
        )
        member.update(reply.content, status=documents.CharacterStatus.PROFILED)
        metrics.count(metrics.ITEMS_GENERATED, kind="character")
        return TokenUsage(bill.tokens, bill.run_tokens)

    async def _plan(self, inp: ItemInput, reads: CharacterReads) -> TokenUsage:
        profile = await reads.member()
        if store.is_planned(profile, inp.version):
            return await self._stored(inp.run)
        world = await self.snapshots.of(inp)
        bible = await reads.bible()
        posts = world.posts_per_character
        messages = prompts.plan(world, bible, profile, posts)
        if inp.version:
            messages = prompts.revised(messages, feedback=inp.feedback, previous=None)
        reply, bill = await self._complete(
            inp.run,
            world,
            "plan",
            documents.item_index(inp.character_index, version=inp.version),
            messages,
            schemas.plan(posts),
            "post_plan",
            plan_max_tokens(posts),
        )
        await in_thread(store.save_plan, self.db, inp.run, inp.character_index, reply.content["moments"], inp.version)
        profile["plan"] = reply.content["moments"]
        return TokenUsage(bill.tokens, bill.run_tokens)

    async def _post(self, inp: ItemInput, reads: CharacterReads) -> TokenUsage:
        assert inp.post_index is not None, "a post has an index"
        posts = await reads.posts()
        if store.is_stored(posts.get(inp.post_index), inp.version):
            return await self._stored(inp.run)
        world = await self.snapshots.of(inp)
        profile = await reads.member()
        earlier = [posts[index]["caption"] for index in sorted(posts) if index < inp.post_index]
        messages = prompts.post(world, profile, inp.post_index)
        if inp.version:  # a new version: told the editor's note, and kept from repeating the one it replaces
            stored = await in_thread(store.load_post, self.db, inp.run, inp.character_index, inp.post_index)
            previous = stored and stored.get("caption")
            messages = prompts.revised(messages, feedback=inp.feedback, previous=previous)
            earlier = earlier + ([previous] if previous else [])
        position = str(documents.item_index(inp.character_index, inp.post_index, inp.version))
        reply, bill = await self._complete(
            inp.run, world, "post", position, messages, schemas.POST, "post", MAX_TOKENS["post"]
        )
        guard = functools.partial(
            quality.guard_caption, earlier=earlier, echoes=prompts.post_echoes(profile), labels=prompts.SCENE_LABELS
        )
        post = reply.content
        caption, dropped = await self._guarded(inp, position, post["caption"], guard)
        if dropped and len(quality.words(caption)) < quality.MIN_CAPTION_WORDS:
            again, second = await self._complete(
                inp.run,
                world,
                "post",
                f"{position}.retry",
                prompts.avoiding(messages, dropped),
                schemas.POST,
                "post",
                MAX_TOKENS["post"],
            )
            bill = Bill(bill.tokens + second.tokens, second.run_tokens)
            post, first_caption = again.content, caption
            caption, dropped = await self._guarded(inp, f"{position}.retry", post["caption"], guard)
            if dropped and len(quality.words(caption)) < quality.MIN_CAPTION_WORDS:
                planned = prompts.moment(profile, inp.post_index).get("event", "")
                caption = last_resort(guard, [planned, first_caption, caption], post["caption"])
        await in_thread(
            store.save_post,
            self.db,
            inp.run,
            inp.character_index,
            inp.post_index,
            {**post, "caption": caption},
            profile["handle"],
            inp.version,
            inp.feedback,
        )
        posts[inp.post_index] = {"index": inp.post_index, "caption": caption, "version": inp.version}
        metrics.count(metrics.ITEMS_GENERATED, kind="post")
        return TokenUsage(bill.tokens, bill.run_tokens)

    @activity.defn
    async def write_character(self, inp: CharacterTask) -> CharacterText:
        """A character's text in one activity: its profile, its plan, then its posts in order (the steps of
        ``generate_character``, ``plan_posts`` and ``generate_post``). An item whose output stays invalid
        after repairs is counted as failed and skipped; any other error ends the attempt, and the retry
        skips what is stored."""
        world = await self.snapshots.of(inp)
        text = CharacterText()

        async def made(step, item: ItemInput, reads: CharacterReads, items: int = 1) -> bool:
            try:
                usage = await step(item, reads)
            except ApplicationError as err:
                if err.type not in ITEM_ERRORS:
                    raise
                text.failed += items
                return False
            text.tokens += usage.tokens
            text.run_tokens = max(text.run_tokens, usage.run_tokens)
            return True

        reads = CharacterReads(self.db, inp.run, inp.character_index)  # read once, for every step
        character = ItemInput(inp.run, inp.world, inp.character_index)
        posts = world.posts_per_character
        text.profile_made = await made(self._character, character, reads, items=1 + posts)
        if not text.profile_made:
            return text  # no profile: no posts
        if posts:
            await made(self._plan, character, reads)  # without a plan, each post writes a moment of its own
        for post_index in range(posts):
            if await made(self._post, ItemInput(inp.run, inp.world, inp.character_index, post_index), reads):
                text.post_indexes.append(post_index)
        return text

    async def _stored(self, run: RunRef) -> TokenUsage:
        """An item stored already (by an earlier attempt, or before the run was resumed): no LLM call."""
        return TokenUsage(0, await in_thread(store.tokens_used, self.db, run.ledger))

    async def _guarded(self, inp: ItemInput, position: str, caption: str, guard) -> tuple[str, list[str]]:
        """The caption after the guard, and what it dropped (recorded on the post's task)."""
        caption, dropped = guard(caption)
        if dropped:
            await in_thread(store.record_task, self.db, inp.run, "post", position, {"dropped_sentences": dropped})
        return caption, dropped

    @staticmethod
    def _attempt(number: int, started: float, bill: Bill, ended: dict) -> dict:
        """One activity attempt as kept in the task's ``attempts``: how it ended, its time and its tokens."""
        latency = round(time.monotonic() - started, 3)
        return {"attempt": number, **ended, "latency_s": latency, "billed_tokens": bill.tokens, "at": documents.now()}

    async def _complete(
        self,
        run: RunRef,
        world: WorldSnapshot,
        stage: str,
        index,
        messages: list[dict],
        schema: type[BaseModel],
        name: str,
        max_tokens: int,
        ledger: str | None = None,
    ) -> tuple[LlmReply, Bill]:
        """One LLM task: calls (with repairs), each reserved on the run's ledger under ``world.token_budget``
        (or on ``ledger``, another ledger of the run, under the same limit), recorded on its task document
        once it ends (one write: the prompt and parameters with the outcome)."""
        attempt = activity.info().attempt
        if attempt > 1:  # a retried activity of several items: one that failed for good is not asked again
            earlier = await in_thread(store.load_task, self.db, run, stage, index)
            if store.failed_for_good(earlier, run):
                raise ApplicationError(
                    f"the LLM reply still failed validation after {REPAIR_ATTEMPTS} repairs (in an earlier attempt "
                    f"of this activity): {earlier.get('error', '')}",
                    type="LlmInvalidOutput",
                    non_retryable=True,
                )
        task = {
            "execution": run.resume,  # which execution of the run (a resume asks again for what failed)
            "prompt": messages,
            "schema_name": name,
            "attempt": attempt,
            "prompt_version": prompts.PROMPT_VERSION,
            "sampling": prompts.SAMPLING.get(stage) if self.llm.send_sampling else None,
            "max_tokens": max_tokens,
            "started_at": documents.now(),
        }
        bill, started = Bill(), time.monotonic()
        try:
            for repair in range(REPAIR_ATTEMPTS + 1):
                try:
                    seed = call_seed(run, f"{stage}:{index}", repair) if self.llm.send_sampling else None
                    reply = await self._billed_call(
                        run, world, f"{stage}:{index}", messages, schema, name, max_tokens, bill, stage, seed, ledger
                    )
                except LlmInvalidOutput as invalid:
                    if repair == REPAIR_ATTEMPTS:
                        raise
                    messages = messages + [
                        {"role": "assistant", "content": invalid.raw or ""},
                        {
                            "role": "user",
                            "content": f"That reply was invalid ({invalid}). "
                            "Reply again with only JSON that matches the schema.",
                        },
                    ]
                    continue
                ended = {"status": documents.TaskStatus.SUCCEEDED, "repairs": repair}
                await in_thread(
                    functools.partial(store.record_task, attempt=self._attempt(attempt, started, bill, ended)),
                    self.db,
                    run,
                    stage,
                    index,
                    task
                    | {
                        "status": documents.TaskStatus.SUCCEEDED,
                        "raw_response": reply.raw,
                        "output": reply.content,
                        "model": reply.model,
                        "seed": seed,
                        "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens},
                        "billed_tokens": bill.tokens,
                        "latency_s": reply.latency_s,
                        "repairs": repair,
                        "finished_at": documents.now(),
                    },
                )
                return reply, bill
        except (LlmError, BudgetRefused) as err:
            retrying = isinstance(err, LlmRetryableError)
            status = documents.TaskStatus.RETRYING if retrying else documents.TaskStatus.FAILED
            if retrying:
                metrics.count(metrics.OUTAGE_WAITS, upstream="llm")
            elif isinstance(err, LlmInvalidOutput):
                metrics.count(metrics.ITEMS_FAILED, kind=stage)
            ended = {"status": status, "error": str(err)}
            await in_thread(
                functools.partial(store.record_task, attempt=self._attempt(attempt, started, bill, ended)),
                self.db,
                run,
                stage,
                index,
                task
                | {
                    "status": status,
                    "error_type": type(err).__name__,
                    "error": str(err),
                    "raw_response": getattr(err, "raw", None),
                    "billed_tokens": bill.tokens,
                    "finished_at": documents.now(),
                },
            )
            raise _as_application_error(err) from err
        raise AssertionError("unreachable")

    async def _billed_call(
        self,
        run: RunRef,
        world: WorldSnapshot,
        call: str,
        messages: list[dict],
        schema: type[BaseModel],
        name: str,
        max_tokens: int,
        bill: Bill,
        stage: str,
        seed: int | None,
        ledger: str | None = None,
    ) -> LlmReply:
        """One LLM call under the run's budget: reserved before, settled with what the provider reported."""
        need = prompt_token_bound(messages) + max_tokens
        granted, used, others = await in_thread(
            store.reserve_tokens, self.db, run, world.token_budget, call, need, ledger
        )
        if not granted:
            metrics.count(metrics.BUDGET_STOPS, ledger="day" if ledger else "run")
            raise BudgetRefused(
                f"token budget of {world.token_budget} reached: {used} used, {others} reserved by "
                f"calls in flight, and the next call may cost {need}"
            )
        billed, model, started = 0, world.model or self.llm.default_model, time.monotonic()
        try:
            reply = await self.llm.complete_json(
                messages=messages,
                schema=schema,
                schema_name=name,
                model=world.model,
                max_tokens=max_tokens,
                sampling=prompts.SAMPLING.get(stage),
                seed=seed,
            )
            billed = reply.prompt_tokens + reply.completion_tokens
            return reply
        except LlmError as err:
            billed = err.tokens
            raise
        finally:
            metrics.observe_duration(metrics.LLM_LATENCY, time.monotonic() - started, model=model)
            metrics.count(metrics.LLM_TOKENS, billed, model=model, stage=stage)
            bill.tokens += billed
            bill.run_tokens = await in_thread(store.settle_tokens, self.db, run, call, billed, ledger)


class BudgetRefused(Exception):
    """The run's token ledger has no room for the next call."""


def _as_application_error(err: Exception) -> ApplicationError:
    if isinstance(err, BudgetRefused):
        return ApplicationError(str(err), type=BUDGET_EXCEEDED, non_retryable=True)
    if isinstance(err, LlmRetryableError):
        delay = timedelta(seconds=err.retry_after) if err.retry_after else None
        return ApplicationError(str(err), type="LlmRetryable", next_retry_delay=delay)
    if isinstance(err, LlmInvalidOutput):
        return ApplicationError(
            f"the LLM reply still failed validation after {REPAIR_ATTEMPTS} repairs: {err}",
            type="LlmInvalidOutput",
            non_retryable=True,
        )
    return ApplicationError(str(err), type="LlmFatal", non_retryable=True)


def _handle(handle: str, index: int, taken: list[str]) -> str:
    clean = "".join(ch for ch in handle.lower() if ch.isalnum() or ch == "_")[:24] or f"citizen{index}"
    return clean if clean not in taken else f"{clean}_{index}"


class MediaActivities:
    """Avatars and post images through the gRPC media service, stored in GridFS."""

    def __init__(self, media: MediaClient, db: Database, snapshots: Snapshots | None = None) -> None:
        self.media = media
        self.db = db
        self.snapshots = snapshots or Snapshots(db)

    @activity.defn
    async def render_image(self, inp: ItemInput) -> None:
        try:
            await self._render(inp)
        except MediaRejected as err:  # for good: recorded as the item's failure, with the reason
            raise ApplicationError(str(err), type="MediaRejected", non_retryable=True) from err
        except MediaUnavailable as err:
            # The media service gets a few attempts, then the item is degraded; other failures
            # (e.g. Mongo briefly down while storing) keep retrying under the workflow's policy.
            give_up = activity.info().attempt >= MEDIA_ATTEMPTS_BEFORE_DEGRADING
            delay = timedelta(seconds=err.retry_after) if err.retry_after else None  # an image API's Retry-After
            raise ApplicationError(
                str(err), type="MediaUnavailable", non_retryable=give_up, next_retry_delay=delay
            ) from err

    @activity.defn
    async def render_character(self, inp: CharacterTask) -> CharacterImages:
        """A character's images in one activity: its avatar, then the image of each post made. The media
        service gets a few attempts per image (honouring its Retry-After); an image it still cannot make is
        marked for a re-render, one it refuses is recorded as failed, and the others go on."""
        return await self._render_each(
            [ItemInput(inp.run, inp.world, inp.character_index, post_index) for post_index in inp.images()]
        )

    @activity.defn
    async def render_images(self, batch: ImageBatch) -> CharacterImages:
        """A batch of a finished run's images marked for a re-render, as ``render_character`` renders."""
        return await self._render_each(
            [ItemInput(batch.run, batch.world, ref.character_index, ref.post_index) for ref in batch.refs]
        )

    async def _render_each(self, items: list[ItemInput]) -> CharacterImages:
        images = CharacterImages()
        for item in items:
            if activity.info().attempt > 1 and await in_thread(store.image_refused, self.db, item.run, item):
                images.rejected += 1  # refused in an earlier attempt of this activity: not asked again
                continue
            for attempt in range(1, MEDIA_ATTEMPTS_BEFORE_DEGRADING + 1):
                try:
                    await self._render(item)
                    break
                except MediaRejected:
                    images.rejected += 1
                    break
                except MediaUnavailable as err:
                    if attempt == MEDIA_ATTEMPTS_BEFORE_DEGRADING:
                        await in_thread(
                            store.mark_image_for_rerender, self.db, item.run, item.character_index, item.post_index
                        )
                        metrics.count(metrics.DEGRADED_IMAGES)
                        images.degraded += 1
                    else:
                        await asyncio.sleep(err.retry_after or min(2 ** (attempt - 1), MEDIA_BACKOFF_MAX_S))
        return images

    async def _render(self, inp: ItemInput) -> None:
        """Render and store one image (nothing if it is rendered already). Raises ``MediaRejected`` once the
        refusal is recorded on the item, and ``MediaUnavailable`` while the service cannot answer."""
        collection, key, doc = await in_thread(
            store.image_target, self.db, inp.run, inp.character_index, inp.post_index
        )
        if doc.get("image_status") == documents.ImageStatus.RENDERED:
            return
        kind = "avatar" if inp.post_index is None else "post"
        prompt = doc.get("appearance") if kind == "avatar" else doc.get("image_prompt")
        width, height = (256, 256) if kind == "avatar" else (640, 480)
        version = doc.get("version", 1)
        seeded = task_index = key if version <= 1 else f"{key}@v{version}"  # a new version, a new image
        seed = int.from_bytes(hashlib.sha256(seeded.encode()).digest()[:8], "big") >> 1  # fits a BSON int64
        world = await self.snapshots.of(inp)
        started = time.monotonic()
        try:
            image = await self.media.render_image(
                prompt=prompt or world.premise,
                style=world.visual_style,
                seed=seed,
                width=width,
                height=height,
                kind=kind,
            )
        except MediaRejected as err:
            metrics.count(metrics.ITEMS_FAILED, kind="image")
            task = {"status": documents.TaskStatus.FAILED, "prompt": prompt, "error": str(err)}
            await in_thread(store.record_task, self.db, inp.run, kind, task_index, task | self._ended(started))
            await in_thread(
                store.mark_image, self.db, collection, key, documents.ImageStatus.REJECTED, str(err), inp.run.resume
            )
            raise
        except MediaUnavailable:
            metrics.count(metrics.OUTAGE_WAITS, upstream="media")
            raise
        metadata = {"renderer": image.renderer, "seed": seed, "width": image.width, "height": image.height}
        image_id = await in_thread(store.store_image_file, self.db, key, image.png, metadata, version)
        # The task record is written before the image is marked rendered: a worker killed in between
        # re-runs this activity instead of skipping it, so the record is never lost.
        await in_thread(
            store.record_task,
            self.db,
            inp.run,
            kind,
            task_index,
            {"status": documents.TaskStatus.SUCCEEDED, "prompt": prompt, "output": metadata} | self._ended(started),
        )
        await in_thread(store.mark_image_rendered, self.db, collection, key, image_id)

    @staticmethod
    def _ended(started: float) -> dict:
        return {
            "attempt": activity.info().attempt,
            "latency_s": time.monotonic() - started,
            "finished_at": documents.now(),
        }


class StoreActivities:
    """Small Mongo writes the workflows need (run on the workflows task queue)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @activity.defn
    def list_images_to_rerender(self, run: RunRef) -> list[ImageRef]:
        return [ImageRef(character, post) for character, post in store.images_to_rerender(self.db, run)]

    @activity.defn
    def list_images_to_rerender_page(self, page: ImagePageInput) -> ImagePage:
        refs, after = store.images_to_rerender_page(self.db, page.run, page.after, page.limit)
        return ImagePage([ImageRef(character, post) for character, post in refs], after)

    @activity.defn
    def count_images_to_rerender(self, run: RunRef) -> int:
        return store.images_waiting(self.db, run)

    @activity.defn
    def archive_versions(self, inp: RegenerateInput) -> NewVersions:
        character, posts = store.archive_versions(
            self.db,
            inp.run,
            inp.character_index,
            inp.post_index,
            inp.world.posts_per_character,
            inp.regeneration_id,
        )
        return NewVersions(character, list(posts), list(posts.values()))

    @activity.defn
    def prepare_versions(self, inp: RegenerateInput) -> NewVersions:
        """A regeneration's drafts, apart from the published items (``store.prepare_draft``)."""
        character, posts = store.prepare_draft(
            self.db, inp.run, draft_of(inp), inp.character_index, inp.post_index, inp.world.posts_per_character
        )
        return NewVersions(character, list(posts), list(posts.values()))

    @activity.defn
    def promote_versions(self, inp: RegenerateInput) -> int:
        """The regeneration is whole: its new versions replace the published ones (``store.promote_draft``)."""
        return store.promote_draft(
            self.db, inp.run, draft_of(inp), inp.character_index, inp.post_index, inp.world.posts_per_character
        )

    @activity.defn
    def mark_image_for_rerender(self, inp: ItemInput) -> None:
        store.mark_image_for_rerender(self.db, inp.run, inp.character_index, inp.post_index)
        metrics.count(metrics.DEGRADED_IMAGES)

    @activity.defn
    def mark_character_for_rerender(self, task: CharacterTask) -> CharacterImages:
        """A character's render that could not finish: its images not made yet are kept for a re-render
        (degraded); those rendered stay, and those refused are counted as refused."""
        images = CharacterImages()
        for post_index in task.images():
            status = store.mark_image_for_rerender(self.db, task.run, task.character_index, post_index)
            images.degraded += status == documents.ImageStatus.NEEDS_RENDER
            images.rejected += status == documents.ImageStatus.REJECTED
        metrics.count(metrics.DEGRADED_IMAGES, images.degraded)
        return images


def draft_of(inp: RegenerateInput) -> RunRef:
    """The run as a regeneration's drafts are keyed (``RunRef.draft``)."""
    return dataclasses.replace(inp.run, draft=inp.regeneration_id)


STOP_POLL_S = 1.0  # how often stop_workflows asks Temporal whether the workflows have stopped


class CleanupActivities:
    """What a deleted world leaves behind: its running workflows, then its Mongo content."""

    def __init__(self, client: Client, db: Database) -> None:
        self.client = client
        self.db = db

    @activity.defn
    async def stop_workflows(self, workflow_ids: list[str]) -> int:
        """Cancel those of the workflows that are running and wait until Temporal reports none of them
        running; returns how many were running. Only Temporal's answers count: nothing is assumed."""
        running = await self._running(workflow_ids)
        count, cancelled = len(running), set()
        while running:
            for workflow_id, run_id in running.items():
                if run_id not in cancelled:
                    await self._cancel(workflow_id, run_id)
                    cancelled.add(run_id)
            await asyncio.sleep(STOP_POLL_S)
            activity.heartbeat()
            running = await self._running(list(running))
        return count

    @activity.defn
    async def delete_world_content(self, world_id: int) -> WorldCleanupResult:
        on_batch = _between_batches(asyncio.get_running_loop())
        documents, images = await in_thread(
            functools.partial(store.delete_world_content, self.db, world_id, on_batch=on_batch)
        )
        return WorldCleanupResult(documents=documents, images=images)

    async def _running(self, workflow_ids: list[str]) -> dict[str, str]:
        """{workflow ID: run ID} of those whose latest run is running."""
        runs = await asyncio.gather(*(self._running_run(workflow_id) for workflow_id in workflow_ids))
        return {workflow_id: run_id for workflow_id, run_id in zip(workflow_ids, runs, strict=True) if run_id}

    async def _running_run(self, workflow_id: str) -> str | None:
        try:
            described = await self.client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:  # Temporal does not know it: nothing runs
                return None
            raise
        return described.run_id if described.status == WorkflowExecutionStatus.RUNNING else None

    async def _cancel(self, workflow_id: str, run_id: str) -> None:
        try:
            await self.client.get_workflow_handle(workflow_id, run_id=run_id).cancel()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:  # NOT_FOUND: it closed since we asked
                raise


def _between_batches(loop: asyncio.AbstractEventLoop):
    """``on_batch`` for store calls run in a thread: heartbeats on the activity's event loop
    (the thread carries the activity's context), and stops the work once the activity is cancelled."""

    def on_batch() -> None:
        if activity.is_cancelled():
            raise asyncio.CancelledError()
        loop.call_soon_threadsafe(activity.heartbeat)

    return on_batch
