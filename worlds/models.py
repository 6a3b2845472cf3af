"""World definitions and their generation runs (SQL). Generated content lives in Mongo."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from generation.contracts import RunRef, RunStatus, Stage
from generation.living.contracts import MAX_DAY_SECONDS, MIN_DAY_SECONDS, LiveStatus

MAX_CHARACTERS = 50
MAX_POSTS_PER_CHARACTER = 50
MIN_TOKEN_BUDGET = 1000


# Limits that deployments set (settings, read when a value is checked): the forms, the API and the
# services all go through these validators.


def validate_premise_length(value: str) -> None:
    limit = settings.WORLD_PREMISE_MAX_CHARS
    if len(value) > limit:
        raise ValidationError(
            f"Keep the premise to at most {limit} characters (it has {len(value)}).", code="max_length"
        )


def validate_feedback_length(value: str) -> None:
    limit = settings.REVIEW_FEEDBACK_MAX_CHARS
    if len(value) > limit:
        raise ValidationError(
            f"Keep the feedback to at most {limit} characters (it has {len(value)}).", code="max_length"
        )


def validate_token_budget(value: int) -> None:
    limit = settings.GENERATION_MAX_TOKEN_BUDGET
    if value > limit:
        raise ValidationError(
            f"The token budget may be at most {limit} (GENERATION_MAX_TOKEN_BUDGET).", code="max_value"
        )


def validate_daily_token_budget(value: int) -> None:
    limit = settings.LIVE_MAX_DAILY_TOKEN_BUDGET
    if value > limit:
        raise ValidationError(
            f"A live world's daily token budget may be at most {limit} (LIVE_MAX_DAILY_TOKEN_BUDGET).",
            code="max_value",
        )


def validate_allowed_model(value: str) -> None:
    if value and value not in settings.LLM_ALLOWED_MODELS:
        # Not code="invalid_choice": a model field puts its own message for that code in place of this one
        # (and leaves it unformatted: "Value %(value)r is not a valid choice.").
        raise ValidationError(
            f"{value!r} is not an allowed model; choose one of: "
            f"{', '.join(settings.LLM_ALLOWED_MODELS)} (LLM_ALLOWED_MODELS), or leave it blank.",
            code="model_not_allowed",
        )


class World(models.Model):
    class Language(models.TextChoices):
        ENGLISH = "en", "English"
        FRENCH = "fr", "French"
        GERMAN = "de", "German"
        SPANISH = "es", "Spanish"
        ITALIAN = "it", "Italian"
        PORTUGUESE = "pt", "Portuguese"
        JAPANESE = "ja", "Japanese"

    class VisualStyle(models.TextChoices):
        WATERCOLOR = "watercolor", "Watercolor"
        PHOTOREAL = "photoreal", "Photoreal"
        PIXEL_ART = "pixel-art", "Pixel art"
        INK = "ink", "Ink and wash"
        NEON = "neon", "Neon noir"
        PASTEL = "pastel", "Pastel dream"
        OIL = "oil", "Oil painting"

    name = models.CharField(max_length=120)
    premise = models.TextField(
        help_text="What the world is about, in a few sentences.", validators=[validate_premise_length]
    )
    genre = models.CharField(max_length=60, default="fantasy")
    tone = models.CharField(max_length=60, default="whimsical")
    language = models.CharField(max_length=8, choices=Language.choices, default=Language.ENGLISH)
    visual_style = models.CharField(max_length=20, choices=VisualStyle.choices, default=VisualStyle.WATERCOLOR)
    character_count = models.PositiveSmallIntegerField(
        default=5, validators=[MinValueValidator(1), MaxValueValidator(MAX_CHARACTERS)]
    )
    posts_per_character = models.PositiveSmallIntegerField(
        default=3, validators=[MinValueValidator(0), MaxValueValidator(MAX_POSTS_PER_CHARACTER)]
    )
    requires_approval = models.BooleanField(default=False, help_text="Wait for staff to approve the world bible.")
    model_override = models.CharField(
        max_length=100,
        blank=True,
        validators=[validate_allowed_model],
        help_text="LLM model for this world (blank: default).",
    )
    token_budget = models.PositiveIntegerField(
        default=500_000,
        validators=[MinValueValidator(MIN_TOKEN_BUDGET), validate_token_budget],
        help_text="A hard cap: the run stops before any LLM call that could take it past this many tokens.",
    )
    live_run = models.ForeignKey(
        "GenerationRun",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The published run: what viewers see.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    publishing_decided_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="Staff last published, rolled back or unpublished it: runs started before do not publish.",
    )
    deleting_since = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="Deletion was asked, its cleanup not yet confirmed by Temporal: hidden, takes no commands.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


STATUS_LABELS = {
    RunStatus.PENDING: "Pending",
    RunStatus.START_UNCONFIRMED: "Start unconfirmed (being checked)",
    RunStatus.RUNNING: "Running",
    RunStatus.AWAITING_APPROVAL: "Awaiting approval",
    RunStatus.COMPLETED: "Completed",
    RunStatus.FAILED: "Failed",
    RunStatus.CANCELLED: "Cancelled",
    RunStatus.EXPIRED: "Expired (approval timed out)",
    RunStatus.BUDGET_EXCEEDED: "Stopped: token budget exceeded",
}


class GenerationRun(models.Model):
    # The statuses workflows report (generation.contracts.RunStatus), with labels for staff.
    Status = models.TextChoices(
        "Status", [(status.name, (status.value, STATUS_LABELS[status])) for status in RunStatus]
    )

    ACTIVE = (Status.PENDING, Status.START_UNCONFIRMED, Status.RUNNING, Status.AWAITING_APPROVAL)
    STARTING = (Status.PENDING, Status.START_UNCONFIRMED)  # not yet known to Temporal, as far as the row says

    world = models.ForeignKey(World, on_delete=models.CASCADE, related_name="runs")
    number = models.PositiveIntegerField()
    workflow_id = models.CharField(max_length=200, unique=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    stage = models.CharField(max_length=20, default=Stage.QUEUED)
    characters_done = models.PositiveIntegerField(default=0)
    characters_total = models.PositiveIntegerField(default=0)
    posts_done = models.PositiveIntegerField(default=0)
    posts_total = models.PositiveIntegerField(default=0)
    degraded_items = models.PositiveIntegerField(default=0)
    failed_items = models.PositiveIntegerField(
        default=0, help_text="Characters (with their posts), plans and posts that failed for good; the run went on."
    )
    tokens_used = models.PositiveIntegerField(default=0)
    bible_revision = models.PositiveIntegerField(default=0)
    requires_approval = models.BooleanField(default=False, help_text="The world required approval when it started.")
    bible_approved = models.BooleanField(default=False, help_text="A reviewer approved its bible.")
    error = models.TextField(blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    rejected_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Who rejected the latest revision",
    )
    review_feedback = models.TextField(blank=True, help_text="The latest rejection's feedback.")
    rejected_revision = models.PositiveIntegerField(null=True, blank=True, help_text="The revision it rejected.")
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    world_snapshot = models.JSONField(
        null=True, blank=True, editable=False, help_text="The world definition the run started with."
    )
    resumes = models.PositiveIntegerField(default=0, help_text="How many times staff resumed the run.")
    started_at = models.DateTimeField(auto_now_add=True)
    resumed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [models.UniqueConstraint(fields=["world", "number"], name="unique_run_number_per_world")]
        permissions = [
            ("start_run", "Can start generation runs"),
            ("cancel_run", "Can cancel generation runs"),
            ("review_run", "Can approve or reject world bibles"),
            ("publish_run", "Can publish, unpublish and roll back runs"),
        ]

    def __str__(self) -> str:
        return f"{self.world} run {self.number}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def ref(self) -> RunRef:
        """What workflows and the Mongo document model know the run by."""
        return RunRef(self.pk, self.world_id, self.number, self.workflow_id, self.resumes)

    @property
    def base_workflow_id(self) -> str:
        """The workflow ID of the run's first execution; a resume runs as ``<it>-resume-<n>``."""
        return f"world-{self.world_id}-run-{self.number}"

    @property
    def resumable(self) -> bool:
        """Finished without all its items: failed, cancelled, expired, stopped, or completed with failed items."""
        finished_short = (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.EXPIRED, RunStatus.BUDGET_EXCEEDED)
        return self.status in finished_short or (self.status == RunStatus.COMPLETED and self.failed_items > 0)

    @property
    def last_start(self):
        return self.resumed_at or self.started_at

    @property
    def bible_cleared(self) -> bool:
        """Its bible may be shown: the world did not require approval, or a reviewer gave it."""
        return not self.requires_approval or self.bible_approved


class Regeneration(models.Model):
    """A new version of one character (profile, avatar, plan, posts) or one post (caption, image) of a finished
    run, asked for by staff. The versions it replaces are kept in Mongo (``item_versions``)."""

    Status = models.TextChoices(
        "Status",
        [
            ("RUNNING", ("running", "Running")),
            ("COMPLETED", ("completed", "Completed")),
            ("FAILED", ("failed", "Failed")),
            ("CANCELLED", ("cancelled", "Cancelled")),
        ],
    )

    run = models.ForeignKey(GenerationRun, on_delete=models.CASCADE, related_name="regenerations")
    character_index = models.PositiveSmallIntegerField()
    post_index = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Empty: the whole character.")
    feedback = models.TextField(blank=True, validators=[validate_feedback_length])
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    error = models.TextField(blank=True)
    tokens_used = models.PositiveIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.item} of {self.run}"

    @property
    def item(self) -> str:
        if self.post_index is None:
            return f"character {self.character_index}"
        return f"post {self.character_index}.{self.post_index}"

    @property
    def workflow_id(self) -> str:
        return f"{self.run.base_workflow_id}-regenerate-{self.pk}"

    def overlaps(self, character_index: int, post_index: int | None) -> bool:
        """Both would write the same item: the same post, or a character and any of its posts."""
        if self.character_index != character_index:
            return False
        return self.post_index is None or post_index is None or self.post_index == post_index


class LiveWorld(models.Model):
    """A published world that goes on living, one world day at a time (``LiveWorldWorkflow``). A world has
    at most one running at a time; a stopped or ended one stays as a record."""

    Status = models.TextChoices(
        "Status",
        [("STARTING", ("starting", "Starting"))] + [(s.name, (s.value, s.value.capitalize())) for s in LiveStatus],
    )
    RUNNING = (Status.STARTING, Status.LIVE, Status.PAUSED)

    world = models.ForeignKey(World, on_delete=models.CASCADE, related_name="lives")
    run = models.ForeignKey(GenerationRun, on_delete=models.CASCADE, related_name="+", help_text="Whose cast lives on.")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.STARTING)
    day_seconds = models.FloatField(
        validators=[MinValueValidator(MIN_DAY_SECONDS), MaxValueValidator(MAX_DAY_SECONDS)],
        help_text=f"A world day every this many seconds (at least {MIN_DAY_SECONDS:g}).",
    )
    posts_per_day = models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(50)])
    comments_per_day = models.PositiveSmallIntegerField(validators=[MaxValueValidator(50)])
    daily_token_budget = models.PositiveIntegerField(
        validators=[MinValueValidator(MIN_TOKEN_BUDGET), validate_daily_token_budget],
        help_text="A day makes no LLM call past this many tokens; the next day starts afresh.",
    )
    token_budget = models.PositiveIntegerField(
        default=500_000,
        validators=[MinValueValidator(MIN_TOKEN_BUDGET), validate_token_budget],
        help_text="A hard cap on what this time live spends in all, every attempt counted: past it, it pauses.",
    )
    ends_at = models.DateTimeField(null=True, blank=True, help_text="No day starts after this (empty: no end).")
    first_day = models.PositiveIntegerField(default=0, help_text="The world's days lived before this time live.")
    days = models.PositiveIntegerField(default=0, help_text="The world's last day lived (days go on between lives).")
    next_slot = models.PositiveIntegerField(
        null=True, blank=True, help_text="The next day's first post slot: the rotation goes on from it."
    )
    skipped_days = models.PositiveIntegerField(default=0, help_text="Days missed while no worker ran (not replayed).")
    tokens_used = models.PositiveIntegerField(default=0, help_text="Every token billed this time live.")
    next_day_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [models.UniqueConstraint(fields=["world", "number"], name="unique_live_number_per_world")]
        permissions = [("control_live_world", "Can take worlds live, pause, resume, stop them and inject events")]

    def __str__(self) -> str:
        return f"{self.world} live {self.number}"

    @property
    def workflow_id(self) -> str:
        return f"world-{self.world_id}-live-{self.number}"

    @property
    def is_running(self) -> bool:
        return self.status in self.RUNNING

    @property
    def days_lived(self) -> int:
        """World days lived this time live."""
        return self.days - self.first_day


class AuditEvent(models.Model):
    """Who did what to which world or run. Written by worlds.services only."""

    class Action(models.TextChoices):
        WORLD_CREATED = "world_created", "World created"
        WORLD_UPDATED = "world_updated", "World updated"
        WORLD_DELETED = "world_deleted", "World deleted"
        RUN_STARTED = "run_started", "Run started"
        RUN_APPROVED = "run_approved", "Bible approved"
        RUN_REJECTED = "run_rejected", "Bible rejected"
        RUN_CANCELLED = "run_cancelled", "Run cancelled"
        IMAGES_RERENDERED = "images_rerendered", "Images re-rendered"
        RUN_PUBLISHED = "run_published", "Run published"
        RUN_UNPUBLISHED = "run_unpublished", "World unpublished"
        RUN_RECONCILED = "run_reconciled", "Run corrected from Temporal"
        RUN_RESUMED = "run_resumed", "Run resumed"
        ITEM_REGENERATED = "item_regenerated", "Item regenerated"
        WORLD_LIVE = "world_live", "World went live"
        LIVE_COMMAND = "live_command", "Live world command"

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=20, choices=Action.choices)
    world = models.ForeignKey(World, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events")
    run = models.ForeignKey(
        GenerationRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    # Kept when the world is deleted (the foreign keys above become empty).
    world_pk = models.PositiveBigIntegerField(null=True, blank=True, db_index=True, verbose_name="world ID")
    world_name = models.CharField(max_length=120, blank=True)
    run_number = models.PositiveIntegerField(null=True, blank=True)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor or 'system'}: {self.get_action_display()}"
