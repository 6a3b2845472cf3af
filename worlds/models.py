"""World definitions and their generation runs (SQL). Generated content lives in Mongo."""

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

MAX_CHARACTERS = 50
MAX_POSTS_PER_CHARACTER = 50


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
    premise = models.TextField(help_text="What the world is about, in a few sentences.")
    genre = models.CharField(max_length=60, default="fantasy")
    tone = models.CharField(max_length=60, default="whimsical")
    language = models.CharField(max_length=8, choices=Language.choices, default=Language.ENGLISH)
    visual_style = models.CharField(max_length=20, choices=VisualStyle.choices, default=VisualStyle.WATERCOLOR)
    character_count = models.PositiveSmallIntegerField(
        default=5, validators=[MinValueValidator(1), MaxValueValidator(MAX_CHARACTERS)])
    posts_per_character = models.PositiveSmallIntegerField(
        default=3, validators=[MinValueValidator(0), MaxValueValidator(MAX_POSTS_PER_CHARACTER)])
    requires_approval = models.BooleanField(default=False, help_text="Wait for staff to approve the world bible.")
    model_override = models.CharField(max_length=100, blank=True, help_text="LLM model for this world (blank: default).")
    token_budget = models.PositiveIntegerField(default=500_000, validators=[MinValueValidator(1000)],
                                               help_text="The run stops cleanly when it has used this many tokens.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class GenerationRun(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        AWAITING_APPROVAL = "awaiting_approval", "Awaiting approval"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        EXPIRED = "expired", "Expired (approval timed out)"
        BUDGET_EXCEEDED = "budget_exceeded", "Stopped: token budget exceeded"

    ACTIVE = (Status.PENDING, Status.RUNNING, Status.AWAITING_APPROVAL)

    world = models.ForeignKey(World, on_delete=models.CASCADE, related_name="runs")
    number = models.PositiveIntegerField()
    workflow_id = models.CharField(max_length=200, unique=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    stage = models.CharField(max_length=20, default="queued")
    characters_done = models.PositiveIntegerField(default=0)
    characters_total = models.PositiveIntegerField(default=0)
    posts_done = models.PositiveIntegerField(default=0)
    posts_total = models.PositiveIntegerField(default=0)
    degraded_items = models.PositiveIntegerField(default=0)
    tokens_used = models.PositiveIntegerField(default=0)
    bible_revision = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    rejected_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+", help_text="Who rejected the latest revision")
    cancelled_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    started_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [models.UniqueConstraint(fields=["world", "number"], name="unique_run_number_per_world")]
        permissions = [
            ("start_run", "Can start generation runs"),
            ("cancel_run", "Can cancel generation runs"),
            ("review_run", "Can approve or reject world bibles"),
        ]

    def __str__(self) -> str:
        return f"{self.world} run {self.number}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE


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

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    action = models.CharField(max_length=20, choices=Action.choices)
    world = models.ForeignKey(World, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events")
    run = models.ForeignKey(GenerationRun, null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="audit_events")
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor or 'system'}: {self.get_action_display()}"
