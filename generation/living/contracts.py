"""What a live world's workflow and its activities pass each other: IDs, counters and settings, never
generated text. Imports nothing from Django."""

from dataclasses import dataclass, field
from enum import StrEnum

from generation.contracts import RunConfig, RunRef, WorldSnapshot

MIN_DAY_SECONDS = 60.0  # a world day every minute at the fastest, so a demo shows it
MAX_DAY_SECONDS = 7 * 24 * 3600.0
MAX_INJECTED_EVENTS = 5  # waiting for the next day
MAX_EVENT_CHARS = 300
# A time live's token budget when none was given (worlds that went live before it had none): the world's default.
DEFAULT_LIVE_TOKEN_BUDGET = 500_000


class LiveStatus(StrEnum):
    LIVE = "live"  # days come at the cadence
    PAUSED = "paused"  # no day starts until it is resumed
    STOPPED = "stopped"  # staff stopped it: the workflow has ended
    ENDED = "ended"  # it reached its end date
    FAILED = "failed"


@dataclass
class LiveSettings:
    day_seconds: float = 3600.0  # a world day every this many seconds
    posts_per_day: int = 3  # across the cast, in a fair rotation
    comments_per_day: int = 2  # each answered by the post's author
    daily_token_budget: int = 20_000  # a day stops making LLM calls past it; the next day starts afresh
    ends_at: float | None = None  # epoch seconds; no day starts after it
    token_budget: int = DEFAULT_LIVE_TOKEN_BUDGET  # over this time live, every attempt: past it the world pauses


@dataclass
class LiveState:
    """A live world's state: carried over when its workflow continues as new."""

    status: str = LiveStatus.LIVE
    days: int = 0  # the number of the last world day lived (going live again goes on from the world's last day)
    next_day_at: float = 0.0  # epoch seconds at which the next day starts (0: at once)
    last_day_at: float = 0.0  # when the last day was due
    skipped_days: int = 0  # days missed while no worker ran, not replayed (the catch-up policy)
    injected: list[str] = field(default_factory=list)  # events staff injected, waiting for the next day to start
    tokens: int = 0  # billed by the days this time live finished: every attempt of each (their ledgers)
    next_slot: int | None = None  # the next day's first post slot (None, in states before it: days × posts a day)
    started_day: int = 0  # a day begun and not finished (it failed, or the world stopped): it is lived again
    day_events: list[str] = field(default_factory=list)  # the injected events started_day is about
    error: str = ""  # why the world paused (kept when it continues as new)
    comments_written: list[int] = field(default_factory=list)  # by character: the rotation keeps them even
    comments_received: list[int] = field(default_factory=list)  # by the post's author


@dataclass
class LiveWorldInput:
    live_id: int  # the worlds.models.LiveWorld row
    run: RunRef  # the published run whose cast lives on
    world: WorldSnapshot
    config: RunConfig
    settings: LiveSettings
    state: LiveState = field(default_factory=LiveState)


@dataclass
class DayInput:
    run: RunRef
    world: WorldSnapshot
    day: int  # 1, 2, …
    daily_token_budget: int  # what this day may spend: the daily budget, or less when the time live's is nearly spent
    injected: list[str] = field(default_factory=list)
    ledger: str = ""  # the day's token ledger (one per time live and day); "" in days before it: the run's day key


@dataclass
class DayPostInput:
    day: DayInput
    slot: int  # the post's place in the day
    character_index: int
    post_index: int  # its index among the character's posts (a post key, after the run's own posts)


@dataclass
class CommentInput:
    day: DayInput
    slot: int  # the comment's place in the day
    character_index: int  # who writes it
    post_character: int  # the post commented on
    post_index: int
    reply_to: int | None = None  # the comment slot this answers (the post's author replies)


@dataclass
class MemoryInput:
    day: DayInput
    character_index: int


@dataclass
class DayPlan:
    """Who does what on a day: decided by the workflow from the day number, so a retried day is the same."""

    day: DayInput
    posts: list[DayPostInput]
    comments: list[CommentInput]


@dataclass
class DayMade:
    """What the ``live_day`` activity spent (its day's ledger: every attempt), and whether the day's budget cut
    it short."""

    tokens: int = 0
    budget_reached: bool = False


@dataclass
class DayReport:
    """What a day made and spent; stored in ``live_days`` and mirrored on the live world's row."""

    day: int
    scheduled_at: float
    started_at: float
    finished_at: float = 0.0
    posts: int = 0
    comments: int = 0
    tokens: int = 0
    budget_reached: bool = False
    live_id: int = 0  # the time live that lived it (0 in reports before it)
    ledger: str = ""  # its token ledger
    failed: str = ""  # why it stopped short for good (the world paused), if it did


@dataclass
class LiveReport:
    """A live world's state, mirrored onto its row after each day and each command."""

    live_id: int
    state: LiveState
    day: DayReport | None = None
    error: str = ""
