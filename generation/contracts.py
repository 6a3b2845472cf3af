"""Dataclasses passed between workflows and activities: IDs, counters and the
world definition snapshot, never generated text; and the run statuses and stages that
workflows report and ``worlds.models.GenerationRun`` stores. Imports nothing from Django."""

from dataclasses import dataclass, field
from enum import StrEnum

from generation.documents import draft_key, run_key

BUDGET_EXCEEDED = "BudgetExceeded"  # ApplicationError type: the run's token ledger refused an LLM call
ITEM_ERRORS = ("LlmInvalidOutput",)  # ApplicationError types of one item's failure, not the provider's or the run's


class RunStatus(StrEnum):
    PENDING = "pending"
    START_UNCONFIRMED = "start_unconfirmed"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    BUDGET_EXCEEDED = "budget_exceeded"


class Stage(StrEnum):
    QUEUED = "queued"
    BIBLE = "bible"
    APPROVAL = "approval"
    CHARACTERS = "characters"
    POSTS = "posts"
    DONE = "done"


@dataclass
class WorldSnapshot:
    """The world definition as it was when the run started."""

    world_id: int
    name: str
    premise: str
    genre: str
    tone: str
    language: str
    visual_style: str
    character_count: int
    posts_per_character: int
    requires_approval: bool
    token_budget: int
    model: str | None = None


@dataclass
class RunRef:
    run_id: int  # the Django GenerationRun primary key
    world_id: int
    number: int
    workflow_id: str
    resume: int = 0  # 0 for the run's first execution, then 1, 2, … for each resume
    draft: int = 0  # a regeneration's ID: its new versions are written apart (see ``key``) until they are whole

    @property
    def key(self) -> str:
        """Prefix of every Mongo document key of this run; a regeneration's drafts have keys of their own."""
        return draft_key(self.world_id, self.number, self.draft) if self.draft else run_key(self.world_id, self.number)

    @property
    def ledger(self) -> str:
        """The run's token ledger: its drafts' calls are billed to the run too."""
        return run_key(self.world_id, self.number)


@dataclass
class RunConfig:
    workflows_queue: str
    llm_queue: str
    media_queue: str
    approval_timeout_s: float = 7 * 24 * 3600
    max_bible_revisions: int = 3
    character_concurrency: int = 5
    llm_retry_max_interval_s: float = 300.0  # LLM calls retry for as long as the provider is down, this far apart
    max_failed_share: float = 0.2  # a run with more failed items (of characters + posts) fails
    heartbeat_timeout_s: float = 60.0  # WorldRunWorkflow's LLM and image activities (they heartbeat every fifth)


@dataclass
class WorldRunInput:
    run: RunRef
    world: WorldSnapshot
    config: RunConfig
    # A resumed run goes on from its stored bible revision; one a reviewer approved skips the approval gate.
    bible_revision: int = 0
    bible_approved: bool = False
    bible_feedback: str = ""  # a reviewer's feedback the revision ``bible_revision`` is to be written with


@dataclass
class BibleInput:
    run: RunRef
    world: WorldSnapshot
    revision: int
    feedback: str | None = None


@dataclass
class ItemInput:
    """A character (``post_index`` None) or one of its posts. ``world`` None: the activity reads the run's
    snapshot from Mongo (stored by ``generate_bible``), so it does not travel in every activity's input."""

    run: RunRef
    world: WorldSnapshot | None
    character_index: int
    post_index: int | None = None
    version: int = 0  # a regeneration writes this version of the item (0: the run's own first version)
    feedback: str = ""  # what the editor asked of the new version


@dataclass
class RegenerateInput:
    """Make a new version of one character (profile, avatar, plan and posts) or of one post (caption and
    image). ``regeneration_id``: the ``worlds.models.Regeneration`` row the result is reported to."""

    regeneration_id: int
    run: RunRef
    world: WorldSnapshot
    config: RunConfig
    character_index: int
    post_index: int | None = None
    feedback: str = ""


@dataclass
class NewVersions:
    """The version each item of a regeneration will be written as (the stored one + 1): the character's
    (None when one post is regenerated), and each regenerated post's."""

    character: int | None
    post_indexes: list[int]
    post_versions: list[int]


@dataclass
class RegenerationUpdate:
    """How a regeneration ended, mirrored onto its row."""

    regeneration_id: int
    status: str  # completed, failed or cancelled
    tokens: int = 0
    error: str = ""
    run_key: str = ""


@dataclass
class CastInput:
    run: RunRef
    world: WorldSnapshot


@dataclass
class TokenUsage:
    tokens: int  # billed to this activity attempt, repairs included
    run_tokens: int = 0  # the run's token ledger after it: every billed token of the run so far
    snapshot_stored: bool = False  # generate_bible stored the run's world snapshot (older workers did not)


@dataclass
class CharacterInput:
    run: RunRef
    world: WorldSnapshot
    config: RunConfig
    index: int
    items_by_reference: bool = False  # its activities read the snapshot from Mongo (it is stored there)


@dataclass
class CharacterTask:
    """One character of a run, as one activity: its text (profile, plan, posts) on the LLM queue, or its
    images (avatar, then each post made: ``post_indexes``) on the media queue. ``world`` None: the
    activities read the run's snapshot from Mongo (stored by ``generate_bible``)."""

    run: RunRef
    world: WorldSnapshot | None
    character_index: int
    profile_made: bool = True
    post_indexes: list[int] | None = None

    def images(self) -> list[int | None]:
        """The images to render: the avatar (None) if the profile was made, then each post's index."""
        return [*([None] if self.profile_made else []), *(self.post_indexes or [])]


@dataclass
class CharacterText:
    """What ``write_character`` made: its tokens, the posts it stored, and the items that failed for good."""

    tokens: int = 0
    run_tokens: int = 0
    profile_made: bool = False
    post_indexes: list[int] = field(default_factory=list)
    failed: int = 0


@dataclass
class CharacterImages:
    """What ``render_character`` did: images kept for a re-render (degraded) and images refused for good."""

    degraded: int = 0
    rejected: int = 0


@dataclass
class CharacterProgress:
    """Sent by a character workflow to its parent after each step."""

    index: int
    tokens: int = 0
    posts_done: int = 0
    degraded: int = 0
    run_tokens: int = 0  # the largest run ledger total this character saw
    failed: int = 0  # items that failed for good: its profile (with its posts), its plan, its posts


@dataclass
class Decision:
    approved: bool
    by: str = ""
    feedback: str = ""


@dataclass
class Progress:
    status: str = RunStatus.RUNNING
    stage: str = Stage.BIBLE
    bible_revision: int = 0
    characters_done: int = 0
    characters_total: int = 0
    posts_done: int = 0
    posts_total: int = 0
    degraded_items: int = 0
    failed_items: int = 0
    tokens_used: int = 0
    last_error: str = ""
    awaiting_decision: bool = False
    bible_approved: bool = False  # a reviewer approved the current bible revision


@dataclass
class ImageRef:
    """An image to (re-)render: a character's avatar (``post_index`` None) or a post's image."""

    character_index: int
    post_index: int | None = None


@dataclass
class RerenderInput:
    """Render again a finished run's images marked ``needs_render``, a page at a time. ``after``: where the
    listing goes on when the workflow continues as new ("" from the start)."""

    run: RunRef
    world: WorldSnapshot
    config: RunConfig
    after: str = ""


@dataclass
class ImagePageInput:
    run: RunRef
    after: str  # "" from the start, else the ``after`` of the page before
    limit: int


@dataclass
class ImagePage:
    refs: list[ImageRef]
    after: str  # where the next page starts


@dataclass
class ImageBatch:
    run: RunRef
    world: WorldSnapshot | None
    refs: list[ImageRef]


@dataclass
class DegradedItemsUpdate:
    """After a re-render: how many of the run's images are still missing."""

    run_id: int
    degraded_items: int


@dataclass
class RunStatusUpdate:
    """A workflow's progress, mirrored onto its Django run row."""

    run_id: int
    progress: Progress
    finished: bool = False
    run_key: str = ""  # where the run's token ledger is (RunRef.key)


@dataclass
class WorldCleanupInput:
    """A deleted world: its ID and the IDs of every workflow it may still have running
    (its runs ``world-<id>-run-<n>`` and their re-renders ``world-<id>-run-<n>-rerender``)."""

    world_id: int
    workflow_ids: list[str]


@dataclass
class WorldCleanupResult:
    stopped_workflows: int = 0  # running when the cleanup asked (then cancelled and waited for)
    documents: int = 0  # Mongo documents deleted
    images: int = 0  # GridFS image files deleted


def cleanup_workflow_id(world_id: int) -> str:
    """The ID of a world's cleanup workflow: one per world."""
    return f"world-{world_id}-cleanup"
