"""A live world's day: the event, the posts with their images, the comments and replies, likes and follows,
and each character's memory. ``live_day`` makes a whole day in one activity; its steps are also activities
of their own, for the worlds that went live before it. Every item has a deterministic key and is skipped
once stored, so a retried day never makes it twice. LLM calls are reserved on the day's own token ledger,
under the world's daily budget. Imports nothing from Django."""

import asyncio
import dataclasses
import hashlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo.database import Database
from temporalio import activity
from temporalio.exceptions import ApplicationError

from generation import documents, metrics, schemas, store
from generation.activities import LlmActivities, MediaActivities, in_thread
from generation.contracts import BUDGET_EXCEEDED, ITEM_ERRORS, ItemInput, TokenUsage
from generation.living import prompts
from generation.living.contracts import CommentInput, DayInput, DayMade, DayPlan, DayPostInput, MemoryInput
from generation.llm import LlmClient

MAX_TOKENS = {"event": 400, "day_post": 500, "comment": 200, "memory": 300}
LIKES_PER_POST = 3  # at most; likes and follows cost no LLM call


def day_random(day: DayInput, salt: str) -> random.Random:
    """Choices of a day that need no LLM (likes, follows): the same for every retry of it."""
    return random.Random(hashlib.sha256(f"{day.run.key}/{day.day}/{salt}".encode()).digest())


def day_ledger(day: DayInput) -> str:
    """The day's token ledger: its own (one per time live and day), or, for days before those, the run's day key."""
    return day.ledger or documents.day_key(day.run, day.day)


class LivingActivities(LlmActivities):
    """The steps of a live world's day (``LlmActivities`` gives them the budgeted, recorded LLM call)."""

    def __init__(self, llm: LlmClient, db: Database, media: MediaActivities) -> None:
        super().__init__(llm, db)
        self.media = media

    @activity.defn
    async def live_day(self, plan: DayPlan) -> DayMade:
        """A whole world day, in the order and with the concurrency the workflow once gave it: the event, the
        posts (each with its image), the comments, then their replies, likes and follows, then the memory of
        each character who acted. One activity instead of one per item keeps a day cheap for Temporal (two
        workflow tasks instead of about seven). A failed item is left out (as before); past the
        day's budget the rest of the day is; an outage fails the attempt, and the retry skips what is stored.
        What the run lacks for the day (a character, its bible) fails the day for good, with the reason: the
        world pauses and says why. Returns the day's ledger total: every billed token of every attempt."""
        try:
            made = await self._live_day(plan)
        except store.MissingContent as err:  # nothing a retry can mend
            raise ApplicationError(
                f"the day cannot be lived: {err}", type="LiveDayImpossible", non_retryable=True
            ) from err
        made.tokens = await self._spent(plan.day)
        return made

    async def _spent(self, day: DayInput) -> int:
        """What the day's ledger holds: every token billed to it, by every attempt."""
        return await in_thread(store.tokens_used, self.db, day_ledger(day))

    async def _live_day(self, plan: DayPlan) -> DayMade:
        day, made = plan.day, DayMade()

        async def step(make: Callable[[Any], Awaitable[TokenUsage]], inp: Any) -> bool:
            if made.budget_reached:
                return False
            try:
                usage = await make(inp)  # (not ``made.tokens += await``: steps run at once)
                made.tokens += usage.tokens
            except ApplicationError as err:
                if err.type == BUDGET_EXCEEDED:
                    made.budget_reached = True
                    return False
                if err.type in ITEM_ERRORS:
                    return False
                raise
            return True

        async def post(inp: DayPostInput) -> None:
            if await step(self.write_day_post, inp):
                await self._render(ItemInput(day.run, day.world, inp.character_index, inp.post_index))

        if not await step(self.write_event, day):
            return made
        await _together(post(inp) for inp in plan.posts)
        for replies in (False, True):
            wave = [c for c in plan.comments if (c.reply_to is not None) == replies]
            await _together(step(self.write_comment, c) for c in wave)
        await in_thread(self.react, day)
        actors = sorted({p.character_index for p in plan.posts} | {c.character_index for c in plan.comments})
        await _together(step(self.update_memory, MemoryInput(day, c)) for c in actors)
        return made

    async def _render(self, item: ItemInput) -> None:
        """A post's image. A day does not wait for the media service: if it is down, the post is kept and
        marked for a re-render; an image it refuses for good is marked rejected by ``render_image``."""
        try:
            await self.media.render_image(item)
        except ApplicationError as err:
            if err.type == "MediaUnavailable":
                await in_thread(store.mark_image_for_rerender, self.db, item.run, item.character_index, item.post_index)
                metrics.count(metrics.DEGRADED_IMAGES)
            elif err.type != "MediaRejected":
                raise

    async def _write(self, day: DayInput, stage: str, index: str, messages: list[dict], schema) -> tuple[dict, int]:
        budgeted = dataclasses.replace(day.world, token_budget=day.daily_token_budget)
        reply, bill = await self._complete(
            day.run,
            budgeted,
            stage,
            index,
            messages,
            schema,
            schema.__name__.lower(),
            MAX_TOKENS[stage],
            ledger=day_ledger(day),
        )
        return reply.content, bill.tokens

    @activity.defn
    async def write_event(self, day: DayInput) -> TokenUsage:
        """The day's event: the one staff injected, else one the LLM writes after the latest ones."""
        if await in_thread(store.has_event, self.db, day.run, day.day):
            return TokenUsage(0)
        if day.injected:
            title = prompts.cut(day.injected[0], 120)
            event = {"title": title, "description": " ".join(day.injected)}
            await in_thread(store.save_event, self.db, day.run, day.day, event, "staff")
            return TokenUsage(0)
        bible = await in_thread(store.load_bible, self.db, day.run)
        recent = await in_thread(store.recent_events, self.db, day.run, day.day, prompts.RECENT_EVENTS)
        messages = prompts.event(day.world, bible, recent, day.day)
        event, tokens = await self._write(day, "event", str(day.day), messages, schemas.WorldEvent)
        await in_thread(store.save_event, self.db, day.run, day.day, event, "llm")
        return TokenUsage(tokens)

    @activity.defn
    async def write_day_post(self, inp: DayPostInput) -> TokenUsage:
        day = inp.day
        if await in_thread(store.has_post, self.db, day.run, inp.character_index, inp.post_index):
            return TokenUsage(0)
        profile = await in_thread(store.load_character, self.db, day.run, inp.character_index)
        event = await in_thread(store.load_event, self.db, day.run, day.day) or {"title": "", "description": ""}
        messages = prompts.day_post(day.world, profile, event)
        index = f"{inp.character_index}.{inp.post_index}"
        post, tokens = await self._write(day, "day_post", index, messages, schemas.POST)
        post |= {"day": day.day, "slot": inp.slot}
        await in_thread(store.save_post, self.db, day.run, inp.character_index, inp.post_index, post, profile["handle"])
        metrics.count(metrics.ITEMS_GENERATED, kind="post")
        return TokenUsage(tokens)

    @activity.defn
    async def write_comment(self, inp: CommentInput) -> TokenUsage:
        """A comment on a post of the day, or (``reply_to``) its author's reply to one."""
        day, reply = inp.day, inp.reply_to is not None
        if await in_thread(store.has_comment, self.db, day.run, day.day, inp.slot, reply):
            return TokenUsage(0)
        post = await in_thread(store.load_post, self.db, day.run, inp.post_character, inp.post_index)
        if post is None:  # the post was not made (the day's budget, or it failed): nothing to comment on
            return TokenUsage(0)
        answering = None
        if reply:
            answering = await in_thread(store.load_comment, self.db, day.run, day.day, inp.slot)
            if answering is None:
                return TokenUsage(0)
        profile = await in_thread(store.load_character, self.db, day.run, inp.character_index)
        messages = prompts.comment(day.world, profile, post, answering)
        index = f"{day.day}.{inp.slot}" + (".reply" if reply else "")
        written, tokens = await self._write(day, "comment", index, messages, schemas.Comment)
        comment = {
            "comment": written["comment"],
            "character_index": inp.character_index,
            "handle": profile["handle"],
            "post_key": post["_id"],
        }
        await in_thread(store.save_comment, self.db, day.run, day.day, inp.slot, reply, comment)
        return TokenUsage(tokens)

    @activity.defn
    def react(self, day: DayInput) -> int:
        """Likes on the day's posts and one new follow, chosen without an LLM; returns the likes given."""
        characters = day.world.character_count
        likes = 0
        for post in store.day_posts(self.db, day.run, day.day):
            others = [c for c in range(characters) if c != post["character_index"]]
            likers = day_random(day, f"likes-{post['index']}").sample(others, min(LIKES_PER_POST, len(others)))
            store.add_likes(self.db, day.run, post["character_index"], post["index"], likers)
            likes += len(likers)
        if characters > 1:
            follower, followed = day_random(day, "follow").sample(range(characters), 2)
            store.add_follow(self.db, day.run, follower, followed)
        return likes

    @activity.defn
    async def update_memory(self, inp: MemoryInput) -> TokenUsage:
        """The character's memory, rewritten with what it did today: one short paragraph, never longer."""
        day = inp.day
        if await in_thread(store.has_memory, self.db, day.run, inp.character_index, day.day):
            return TokenUsage(0)
        profile = await in_thread(store.load_character, self.db, day.run, inp.character_index)
        event = await in_thread(store.load_event, self.db, day.run, day.day)
        acts = await in_thread(store.day_acts, self.db, day.run, day.day, inp.character_index)
        messages = prompts.memory(profile, day.day, event, acts)
        index = f"{inp.character_index}.{day.day}"
        memory, tokens = await self._write(day, "memory", index, messages, schemas.Memory)
        await in_thread(store.save_memory, self.db, day.run, inp.character_index, memory["summary"], day.day)
        return TokenUsage(tokens)


async def _together(steps) -> None:
    """Run ``steps`` at once; if one fails, the others are cancelled before the failure goes up."""
    tasks = [asyncio.ensure_future(s) for s in steps]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
