"""API serializers: input serializers validate requests, output serializers shape responses.

Output serializers are read-only; Mongo documents go through explicit fields, so no
ObjectId, datetime or internal key ever leaks into a response.
"""

import re

from django.core.validators import RegexValidator
from django.db import models
from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from generation.documents import ImageStatus
from generation.living.contracts import MAX_DAY_SECONDS, MAX_EVENT_CHARS, MIN_DAY_SECONDS
from worlds import selectors
from worlds.models import (
    MAX_CHARACTERS,
    MAX_POSTS_PER_CHARACTER,
    MIN_TOKEN_BUDGET,
    GenerationRun,
    LiveWorld,
    Regeneration,
    World,
    validate_allowed_model,
    validate_daily_token_budget,
    validate_feedback_length,
    validate_premise_length,
    validate_token_budget,
)

MAX_OFFSET = 1_000_000_000
IMAGE_STATUSES = ", ".join(ImageStatus)


# --- errors (for the schema) ---------------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField(read_only=True, help_text="What went wrong, for the user.")


# --- worlds and runs -----------------------------------------------------------------

# DRF refuses NUL characters, and text that is blank once trimmed unless the field allows blank. These
# validators say the same as a `pattern` in the schema, so clients and fuzzers know it. Linear-time regexes;
# whitespace is spelled out (what str.strip() removes) because \s differs between Python and ECMA regexes;
# NO_NUL needs one character because the schema offers blank as a separate `oneOf` alternative.
WHITESPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NO_NUL = RegexValidator(r"^[^\x00]+$", "Null characters are not allowed.")
NOT_BLANK = RegexValidator(rf"^[{WHITESPACE}]*[^{WHITESPACE}\x00][^\x00]*$", "Enter some text.")


# JSON-strict fields: a value of the wrong JSON type is refused, as the schema says, where DRF's
# fields would coerce it (the number 5 into "5", "5" into 5, 0 or "yes" into a boolean).


class StrictTextField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        if self.max_length is not None and len(data) > self.max_length:  # as sent, before trimming
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class WorldInputSerializer(serializers.ModelSerializer):
    """Mirrors the model's validators (ranges, choices, required name and premise)."""

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StrictTextField,
        models.TextField: StrictTextField,
        models.BooleanField: StrictBooleanField,
        models.PositiveSmallIntegerField: StrictIntegerField,
        models.PositiveIntegerField: StrictIntegerField,
    }

    class Meta:
        model = World
        fields = [
            "name",
            "premise",
            "genre",
            "tone",
            "language",
            "visual_style",
            "character_count",
            "posts_per_character",
            "requires_approval",
            "model_override",
            "token_budget",
        ]
        extra_kwargs = {  # "validators" replaces the model field's: its limits are listed again
            **{name: {"validators": [NOT_BLANK]} for name in ("name", "genre", "tone")},
            "premise": {"validators": [NOT_BLANK, validate_premise_length]},
            "model_override": {"validators": [NO_NUL, validate_allowed_model]},
            "token_budget": {"max_value": 2**31 - 1},  # the same on every database
        }


class RunSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = GenerationRun
        fields = ["id", "number", "status", "stage", "characters_done", "characters_total", "posts_done", "posts_total"]
        read_only_fields = fields


def _username_field():
    return serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True, help_text="Username.")


class WorldSerializer(serializers.ModelSerializer):
    created_by = _username_field()
    latest_run = serializers.SerializerMethodField()
    live_run = serializers.SerializerMethodField()

    class Meta:
        model = World
        fields = [
            "id",
            *WorldInputSerializer.Meta.fields,
            "created_by",
            "created_at",
            "updated_at",
            "latest_run",
            "live_run",
        ]
        read_only_fields = fields

    @extend_schema_field(RunSummarySerializer(allow_null=True))
    def get_latest_run(self, world: World) -> dict | None:
        run = selectors.world_latest_run(world=world)
        return run and RunSummarySerializer(run).data

    @extend_schema_field(RunSummarySerializer(allow_null=True, help_text="The published run viewers see."))
    def get_live_run(self, world: World) -> dict | None:
        return world.live_run and RunSummarySerializer(world.live_run).data


class RunSerializer(serializers.ModelSerializer):
    started_by = _username_field()
    approved_by = _username_field()
    rejected_by = _username_field()
    cancelled_by = _username_field()

    class Meta:
        model = GenerationRun
        fields = [
            "id",
            "world",
            "number",
            "workflow_id",
            "status",
            "stage",
            "characters_done",
            "characters_total",
            "posts_done",
            "posts_total",
            "degraded_items",
            "failed_items",
            "tokens_used",
            "bible_revision",
            "error",
            "is_active",
            "requires_approval",
            "bible_approved",
            "started_by",
            "approved_by",
            "rejected_by",
            "cancelled_by",
            "resumes",
            "started_at",
            "resumed_at",
            "updated_at",
            "finished_at",
        ]
        read_only_fields = fields


class LiveProgressSerializer(serializers.Serializer):
    """The workflow's own progress (``generation.contracts.Progress``), fresher than the mirrored row."""

    status = serializers.CharField(read_only=True)
    stage = serializers.CharField(read_only=True)
    bible_revision = serializers.IntegerField(read_only=True)
    characters_done = serializers.IntegerField(read_only=True)
    characters_total = serializers.IntegerField(read_only=True)
    posts_done = serializers.IntegerField(read_only=True)
    posts_total = serializers.IntegerField(read_only=True)
    degraded_items = serializers.IntegerField(read_only=True)
    tokens_used = serializers.IntegerField(read_only=True)
    last_error = serializers.CharField(read_only=True)
    awaiting_decision = serializers.BooleanField(read_only=True)


class WaitingCallSerializer(serializers.Serializer):
    """An LLM call that waits for its provider: it is retried, backing off, until the provider answers."""

    stage = serializers.CharField(read_only=True)
    index = serializers.CharField(read_only=True, help_text="Which item of the stage: `0`, or `character.post`.")
    since = serializers.DateTimeField(read_only=True, help_text="When its first failed attempt in a row ended.")
    attempts = serializers.IntegerField(read_only=True, help_text="Failed attempts in a row so far.")
    error = serializers.CharField(read_only=True, help_text="What the last attempt got.")


class FailedItemSerializer(serializers.Serializer):
    """An item that failed for good (its output still invalid after repairs); the run went on without it."""

    stage = serializers.CharField(read_only=True, help_text="`character`, `plan` or `post`.")
    index = serializers.CharField(read_only=True, help_text="Which item: `0`, or `character.post`.")
    error = serializers.CharField(read_only=True)


class RunDetailSerializer(RunSerializer):
    live = LiveProgressSerializer(required=False, help_text="Present while the run is active and Temporal answers.")
    waiting = WaitingCallSerializer(
        many=True, required=False, help_text="While the run is active: the LLM calls waiting for their provider."
    )
    failed = FailedItemSerializer(
        many=True, required=False, help_text="The items that failed for good (`failed_items` counts them)."
    )

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "live", "waiting", "failed"]


class RejectInputSerializer(serializers.Serializer):
    feedback = StrictTextField(
        validators=[NOT_BLANK, validate_feedback_length],
        help_text="What should change in the world bible (REVIEW_FEEDBACK_MAX_CHARS at most).",
    )


# --- generated content (Mongo documents) -----------------------------------------------


def _image_url(doc: dict) -> str | None:
    if doc.get("image_status") == ImageStatus.RENDERED and doc.get("image_id"):
        return reverse("image", args=[doc["image_id"]])
    return None


def _text(**kwargs):
    return serializers.CharField(read_only=True, default="", **kwargs)


def _strings():
    return serializers.ListField(child=serializers.CharField(), read_only=True, default=list)


class CharacterSerializer(serializers.Serializer):
    index = serializers.IntegerField(read_only=True)
    version = serializers.IntegerField(read_only=True, default=1, help_text="1, then one more per regeneration.")
    name = _text()
    handle = _text()
    bio = _text()
    personality = _text()
    appearance = _text()
    interests = _strings()
    image_status = _text(help_text=IMAGE_STATUSES)
    avatar_url = serializers.SerializerMethodField()
    post_count = serializers.SerializerMethodField()

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_avatar_url(self, doc: dict) -> str | None:
        return _image_url(doc)

    def get_post_count(self, doc: dict) -> int:
        return self.context["post_counts"].get(doc["index"], 0)


class PostSerializer(serializers.Serializer):
    character_index = serializers.IntegerField(read_only=True)
    index = serializers.IntegerField(read_only=True)
    version = serializers.IntegerField(read_only=True, default=1, help_text="1, then one more per regeneration.")
    handle = _text()
    caption = _text()
    hashtags = _strings()
    location = _text()
    image_status = _text(help_text=IMAGE_STATUSES)
    image_url = serializers.SerializerMethodField()

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_image_url(self, doc: dict) -> str | None:
        return _image_url(doc)


class QueryIntegerField(serializers.IntegerField):
    """Digits only (DRF's IntegerField would also take "1.0" or " 1 ")."""

    def to_internal_value(self, data):
        if not (isinstance(data, str) and re.fullmatch(r"-?[0-9]+", data)):
            self.fail("invalid")
        return super().to_internal_value(data)


class PageQuerySerializer(serializers.Serializer):
    limit = QueryIntegerField(min_value=1, max_value=100, default=20, help_text="Items per page (at most 100).")
    offset = QueryIntegerField(min_value=0, max_value=MAX_OFFSET, default=0, help_text="Items to skip.")


class PostQuerySerializer(PageQuerySerializer):
    character = QueryIntegerField(
        min_value=0,
        max_value=MAX_CHARACTERS - 1,
        required=False,
        help_text="Only the posts of the character with this index.",
    )
    order = serializers.ChoiceField(
        choices=["oldest", "newest"],
        default="oldest",
        help_text="`oldest` (the default): in posting order, oldest first; `newest`: newest first.",
    )


class PostPageSerializer(serializers.Serializer):
    next = serializers.CharField(read_only=True, allow_null=True, help_text="URL of the next page, if any.")
    previous = serializers.CharField(read_only=True, allow_null=True, help_text="URL of the previous page, if any.")
    results = PostSerializer(many=True, read_only=True)


# --- regenerating one item -------------------------------------------------------------


class RegenerateInputSerializer(serializers.Serializer):
    character = StrictIntegerField(min_value=0, max_value=MAX_CHARACTERS - 1, help_text="The character's index.")
    post = StrictIntegerField(
        min_value=0,
        max_value=MAX_POSTS_PER_CHARACTER - 1,
        required=False,
        allow_null=True,
        default=None,
        help_text="The post's index within the character; leave it out to regenerate the whole character.",
    )
    feedback = StrictTextField(
        required=False,
        allow_blank=True,
        default="",
        validators=[validate_feedback_length],
        help_text='What the new version should change, e.g. "make her grumpier" (optional).',
    )


class RegenerationSerializer(serializers.ModelSerializer):
    run = serializers.PrimaryKeyRelatedField(read_only=True)
    item = serializers.CharField(read_only=True, help_text='"character 0" or "post 0.1".')
    workflow_id = serializers.CharField(read_only=True)
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Regeneration
        fields = [
            "id",
            "run",
            "item",
            "character_index",
            "post_index",
            "feedback",
            "status",
            "error",
            "tokens_used",
            "workflow_id",
            "requested_by",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class ItemVersionSerializer(serializers.Serializer):
    version = serializers.IntegerField(read_only=True)
    feedback = serializers.CharField(read_only=True, help_text="The note this version was made with.")
    text = serializers.CharField(read_only=True, help_text="A post's caption, or a character's bio.")
    image_url = serializers.SerializerMethodField()
    archived_at = serializers.DateTimeField(read_only=True, allow_null=True, help_text="When a newer one replaced it.")

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_image_url(self, entry: dict) -> str | None:
        return _image_url(entry)


class ItemVersionsSerializer(serializers.Serializer):
    current = ItemVersionSerializer(read_only=True, help_text="What the feed shows.")
    earlier = ItemVersionSerializer(many=True, read_only=True, help_text="The versions it replaced, newest first.")
    regenerations = RegenerationSerializer(many=True, read_only=True)


class ItemQuerySerializer(serializers.Serializer):
    character = QueryIntegerField(min_value=0, max_value=MAX_CHARACTERS - 1, help_text="The character's index.")
    post = QueryIntegerField(
        min_value=0, max_value=MAX_POSTS_PER_CHARACTER - 1, required=False, help_text="A post of it (optional)."
    )


# --- live worlds -------------------------------------------------------------------------


class StrictNumberField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, (str, bool)):
            self.fail("invalid")
        return super().to_internal_value(data)


class GoLiveSerializer(serializers.Serializer):
    day_seconds = StrictNumberField(
        min_value=MIN_DAY_SECONDS, max_value=MAX_DAY_SECONDS, help_text="A world day every this many seconds."
    )
    posts_per_day = StrictIntegerField(min_value=1, max_value=50, default=3, help_text="Across the cast.")
    comments_per_day = StrictIntegerField(
        min_value=0, max_value=50, default=2, help_text="Each answered by the post's author."
    )
    daily_token_budget = StrictIntegerField(
        min_value=MIN_TOKEN_BUDGET,
        default=20_000,
        validators=[validate_daily_token_budget],
        help_text="A day makes no LLM call past it (at most LIVE_MAX_DAILY_TOKEN_BUDGET).",
    )
    token_budget = StrictIntegerField(
        min_value=MIN_TOKEN_BUDGET,
        required=False,
        validators=[validate_token_budget],
        help_text="A hard cap on what this time live spends in all, every attempt counted; past it the world "
        "pauses and says why (default: the world's token budget; at most GENERATION_MAX_TOKEN_BUDGET).",
    )
    ends_at = serializers.DateTimeField(required=False, allow_null=True, default=None, help_text="Optional end.")


class CadenceSerializer(serializers.Serializer):
    day_seconds = StrictNumberField(min_value=MIN_DAY_SECONDS, max_value=MAX_DAY_SECONDS)


class LiveTokenBudgetSerializer(serializers.Serializer):
    token_budget = StrictIntegerField(
        min_value=MIN_TOKEN_BUDGET, validators=[validate_token_budget], help_text="What it may spend in all."
    )


class InjectEventSerializer(serializers.Serializer):
    text = StrictTextField(
        max_length=MAX_EVENT_CHARS, validators=[NOT_BLANK], help_text="What happens; the next day is about it."
    )


class LiveWorldSerializer(serializers.ModelSerializer):
    workflow_id = serializers.CharField(read_only=True)
    days_lived = serializers.IntegerField(read_only=True, help_text="World days lived this time live.")
    run = serializers.PrimaryKeyRelatedField(read_only=True)
    started_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = LiveWorld
        fields = [
            "id",
            "number",
            "run",
            "status",
            "day_seconds",
            "posts_per_day",
            "comments_per_day",
            "daily_token_budget",
            "token_budget",
            "ends_at",
            "first_day",
            "days",
            "days_lived",
            "skipped_days",
            "tokens_used",
            "next_day_at",
            "error",
            "workflow_id",
            "started_by",
            "started_at",
            "updated_at",
        ]
        read_only_fields = fields


class LiveDaySerializer(serializers.Serializer):
    day = serializers.IntegerField(read_only=True)
    live_number = serializers.IntegerField(
        read_only=True, default=None, help_text="The time live that lived it (a day begun in one may end in the next)."
    )
    event = serializers.CharField(read_only=True, help_text="The day's event (its title).")
    posts = serializers.IntegerField(read_only=True)
    comments = serializers.IntegerField(read_only=True)
    likes = serializers.IntegerField(read_only=True)
    tokens = serializers.IntegerField(read_only=True)
    budget_reached = serializers.BooleanField(read_only=True)
    failed = serializers.CharField(
        read_only=True, default="", help_text="Why the day stopped short for good (the world paused), if it did."
    )
    lag_s = serializers.FloatField(read_only=True, help_text="How late the day started against the schedule.")


class LiveWorldDetailSerializer(LiveWorldSerializer):
    timeline = LiveDaySerializer(
        many=True, read_only=True, help_text="The latest days of every time live, newest first, with what each spent."
    )
    lives = LiveWorldSerializer(many=True, read_only=True, help_text="Every time the world was live, the latest first.")
    tokens_used_all_lives = serializers.IntegerField(read_only=True, help_text="Every token its lives were billed.")

    class Meta(LiveWorldSerializer.Meta):
        fields = [*LiveWorldSerializer.Meta.fields, "timeline", "lives", "tokens_used_all_lives"]
        read_only_fields = fields


class LiveCommandResultSerializer(serializers.Serializer):
    detail = serializers.CharField(read_only=True)
    live = LiveWorldSerializer(read_only=True)


# --- content quality (generation.quality) -----------------------------------------------


class RunQualitySerializer(serializers.Serializer):
    distinct_1 = serializers.FloatField(read_only=True, help_text="Unique words / words of the captions.")
    distinct_2 = serializers.FloatField(read_only=True, help_text="Unique word pairs / word pairs (target ≥ 0.6).")
    copy_share = serializers.FloatField(
        read_only=True, help_text="Share of the captions' 4-grams found in the premise or bible (target ≤ 0.05)."
    )
    hashtag_variety = serializers.FloatField(read_only=True, help_text="Distinct / all hashtags (target ≥ 0.5).")
    location_variety = serializers.FloatField(read_only=True, help_text="Distinct / all locations (target ≥ 0.5).")
    repairs_per_call = serializers.FloatField(read_only=True, help_text="Repair prompts per LLM call (target ≤ 0.1).")
    llm_calls = serializers.IntegerField(read_only=True)
    posts = serializers.IntegerField(read_only=True)
    tokens_per_post = serializers.FloatField(
        read_only=True, allow_null=True, help_text="The run's tokens / posts; null when unknown."
    )
    sentences_dropped = serializers.IntegerField(
        read_only=True,
        help_text="Sentences the caption guard dropped: repeats of the character's posts, echoes of the prompt.",
    )
    checks = serializers.DictField(
        child=serializers.BooleanField(),
        read_only=True,
        help_text="Whether each figure measured so far meets its target, by name.",
    )
    flags = _strings()


class CharacterQualitySerializer(serializers.Serializer):
    index = serializers.IntegerField(read_only=True)
    handle = _text()
    posts = serializers.IntegerField(read_only=True)
    overlap = serializers.FloatField(
        read_only=True, help_text="Share of its 3-grams other characters use too (target ≤ 0.1)."
    )
    repeated_sentences = serializers.IntegerField(
        read_only=True, help_text="Sentences found in more than one of its posts (target 0)."
    )
    flags = _strings()


class QualityReportSerializer(serializers.Serializer):
    run = RunQualitySerializer(read_only=True)
    characters = CharacterQualitySerializer(many=True, read_only=True)
    prompt_versions = _strings()
