"""World services: every write about worlds and runs. Admin, API, commands and
activities call these; none of them talk to Temporal or the ORM directly."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from generation.contracts import (
    Decision,
    DegradedItemsUpdate,
    RunConfig,
    RunRef,
    RunStatusUpdate,
    WorldRunInput,
    WorldSnapshot,
)
from generation import mongo, store
from generation.workflows import RerenderImagesWorkflow, WorldGenerationWorkflow
from temporal_worker.client import TemporalUnavailable, temporal_call
from worlds.models import AuditEvent, GenerationRun, World


class GenerationError(Exception):
    """A generation command that cannot be carried out; the message is for the user."""


class GenerationPermissionDenied(GenerationError):
    """The user lacks the role for this action."""


class GenerationInvalid(GenerationError):
    """The world definition cannot be generated as it is."""


class GenerationUnavailable(GenerationError):
    """Temporal could not be reached; nothing was changed."""


def _require(user, permission: str, action: str) -> None:
    """``user`` None is the system (management commands, run by operators)."""
    if user is not None and not user.has_perm(f"worlds.{permission}"):
        raise GenerationPermissionDenied(f"you do not have permission to {action}")


def _audit(action: str, *, user=None, world: World | None = None, run: GenerationRun | None = None,
           detail: str = "") -> None:
    AuditEvent.objects.create(action=action, actor=user, world=world or (run and run.world), run=run, detail=detail)


def world_create(*, user=None, **fields) -> World:
    _require(user, "add_world", "create worlds")
    world = World(created_by=user, **fields)
    world.full_clean()
    world.save()
    _audit(AuditEvent.Action.WORLD_CREATED, user=user, world=world)
    return world


def world_update(*, world: World, user=None, **fields) -> World:
    _require(user, "change_world", "change worlds")
    for name, value in fields.items():
        setattr(world, name, value)
    world.full_clean()
    world.save()
    _audit(AuditEvent.Action.WORLD_UPDATED, user=user, world=world, detail=", ".join(sorted(fields)))
    return world


def world_delete(*, world: World, user=None) -> None:
    _require(user, "delete_world", "delete worlds")
    if world.runs.filter(status__in=GenerationRun.ACTIVE).exists():
        raise GenerationError(f"{world} is being generated; cancel the run before deleting the world")
    _audit(AuditEvent.Action.WORLD_DELETED, user=user, world=world, detail=world.name)
    world.delete()


def world_snapshot(world: World) -> WorldSnapshot:
    return WorldSnapshot(
        world_id=world.pk, name=world.name, premise=world.premise, genre=world.genre, tone=world.tone,
        language=world.language, visual_style=world.visual_style, character_count=world.character_count,
        posts_per_character=world.posts_per_character, requires_approval=world.requires_approval,
        token_budget=world.token_budget, model=world.model_override or None,
    )


def run_config() -> RunConfig:
    return RunConfig(
        workflows_queue=settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
        llm_queue=settings.TEMPORAL_TASK_QUEUE_LLM,
        media_queue=settings.TEMPORAL_TASK_QUEUE_MEDIA,
        approval_timeout_s=settings.GENERATION_APPROVAL_TIMEOUT_SECONDS,
        max_bible_revisions=settings.GENERATION_MAX_BIBLE_REVISIONS,
        character_concurrency=settings.GENERATION_CHARACTER_CONCURRENCY,
    )


def generation_start(*, world: World, user=None) -> GenerationRun:
    """Start a run of ``world``. Refused while another run of it is active."""
    _require(user, "start_run", "start generation runs")
    try:
        world.full_clean()
    except ValidationError as exc:
        problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
        raise GenerationInvalid(f"{world} cannot be generated: {problems}") from None
    with transaction.atomic():
        World.objects.select_for_update().filter(pk=world.pk).first()  # serialise starts of one world
        if world.runs.filter(status__in=GenerationRun.ACTIVE).exists():
            raise GenerationError(f"{world} is already being generated; cancel that run first")
        number = (world.runs.order_by("-number").values_list("number", flat=True).first() or 0) + 1
        workflow_id = f"world-{world.pk}-run-{number}"
        try:
            run = GenerationRun.objects.create(world=world, number=number, workflow_id=workflow_id, started_by=user,
                                               status=GenerationRun.Status.PENDING, stage="queued",
                                               characters_total=world.character_count,
                                               posts_total=world.character_count * world.posts_per_character)
        except IntegrityError:
            raise GenerationError(f"{world} is already being generated") from None
    run_input = WorldRunInput(RunRef(run.pk, world.pk, number, workflow_id), world_snapshot(world), run_config())
    try:  # after the commit, so the workflow's first status update finds the row
        temporal_call(lambda client: client.start_workflow(
            WorldGenerationWorkflow.run, run_input, id=workflow_id, task_queue=settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE, id_conflict_policy=WorkflowIDConflictPolicy.FAIL))
    except WorkflowAlreadyStartedError:
        run.delete()
        raise GenerationError(f"{world} is already being generated (workflow {workflow_id} exists)") from None
    except TemporalUnavailable as exc:
        run.delete()
        raise GenerationUnavailable(f"could not start the run: {exc}") from None
    _audit(AuditEvent.Action.RUN_STARTED, user=user, run=run, detail=workflow_id)
    return run


def _signal(run: GenerationRun, decision: Decision) -> None:
    async def send(client):
        await client.get_workflow_handle(run.workflow_id).signal(WorldGenerationWorkflow.decide, decision)

    try:
        temporal_call(send)
    except TemporalUnavailable as exc:
        raise GenerationUnavailable(str(exc)) from None


def _check_review(run: GenerationRun, user, verb: str) -> None:
    _require(user, "review_run", f"{verb} world bibles")
    run.refresh_from_db()
    if run.status != GenerationRun.Status.AWAITING_APPROVAL:
        raise GenerationError(f"nothing is awaiting approval: {run} is {run.get_status_display().lower()}")
    if user is not None and run.started_by_id == user.pk:
        raise GenerationPermissionDenied(f"you may not {verb} runs you started (four-eyes rule)")


def generation_approve(*, run: GenerationRun, user=None) -> None:
    _check_review(run, user, "approve")
    _signal(run, Decision(approved=True, by=getattr(user, "username", "")))
    GenerationRun.objects.filter(pk=run.pk).update(approved_by=user)
    _audit(AuditEvent.Action.RUN_APPROVED, user=user, run=run, detail=f"revision {run.bible_revision}")


def generation_reject(*, run: GenerationRun, feedback: str, user=None) -> None:
    feedback = (feedback or "").strip()
    if not feedback:
        raise GenerationError("say what should change: feedback is required to reject")
    _check_review(run, user, "reject")
    _signal(run, Decision(approved=False, feedback=feedback, by=getattr(user, "username", "")))
    GenerationRun.objects.filter(pk=run.pk).update(rejected_by=user)
    _audit(AuditEvent.Action.RUN_REJECTED, user=user, run=run, detail=feedback)


def generation_cancel(*, run: GenerationRun, user=None) -> None:
    _require(user, "cancel_run", "cancel generation runs")
    run.refresh_from_db()
    if not run.is_active:
        raise GenerationError(f"{run} is not running (it is {run.get_status_display().lower()})")

    async def cancel(client):
        await client.get_workflow_handle(run.workflow_id).cancel()

    try:
        temporal_call(cancel)
    except TemporalUnavailable as exc:
        raise GenerationUnavailable(str(exc)) from None
    GenerationRun.objects.filter(pk=run.pk).update(cancelled_by=user)
    _audit(AuditEvent.Action.RUN_CANCELLED, user=user, run=run)


def generation_rerender(*, run: GenerationRun, user=None) -> str:
    """Render again the images of a finished run that the media service could not make
    (with the world's current visual style). Returns the re-render's workflow ID."""
    _require(user, "start_run", "re-render images")
    run.refresh_from_db()
    if run.is_active:
        raise GenerationError(f"{run} is still running; its images are retried as it goes")
    if not run.degraded_items:
        raise GenerationError(f"{run} has no images waiting for a re-render")
    workflow_id = f"{run.workflow_id}-rerender"
    run_input = WorldRunInput(RunRef(run.pk, run.world_id, run.number, run.workflow_id), world_snapshot(run.world),
                              run_config())
    try:
        temporal_call(lambda client: client.start_workflow(
            RerenderImagesWorkflow.run, run_input, id=workflow_id, task_queue=settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE, id_conflict_policy=WorkflowIDConflictPolicy.FAIL))
    except WorkflowAlreadyStartedError:
        raise GenerationError(f"the images of {run} are already being re-rendered") from None
    except TemporalUnavailable as exc:
        raise GenerationUnavailable(f"could not start the re-render: {exc}") from None
    _audit(AuditEvent.Action.IMAGES_RERENDERED, user=user, run=run, detail=f"{run.degraded_items} images")
    return workflow_id


def run_degraded_record(*, update: DegradedItemsUpdate) -> None:
    """After a re-render: the images still missing (called by an activity)."""
    GenerationRun.objects.filter(pk=update.run_id).update(degraded_items=update.degraded_items,
                                                           updated_at=timezone.now())


def run_status_record(*, update: RunStatusUpdate) -> None:
    """Mirror a workflow's progress onto its run row (called by an activity). Tokens come from the
    run's token ledger (every billed token, failed attempts included); a finished run's post count
    from what is stored (posts of a character that failed count too)."""
    progress = update.progress
    fields = {
        "status": progress.status, "stage": progress.stage, "characters_done": progress.characters_done,
        "characters_total": progress.characters_total, "posts_done": progress.posts_done,
        "posts_total": progress.posts_total, "degraded_items": progress.degraded_items,
        "tokens_used": progress.tokens_used, "bible_revision": progress.bible_revision,
        "error": progress.last_error, "updated_at": timezone.now(),
    }
    if update.run_key:
        db = mongo.get_db()
        fields["tokens_used"] = max(progress.tokens_used, store.tokens_used(db, update.run_key))
        if update.finished:
            fields["posts_done"] = max(progress.posts_done, db.posts.count_documents({"run_key": update.run_key}))
    if update.finished:
        fields["finished_at"] = timezone.now()
    GenerationRun.objects.filter(pk=update.run_id).update(**fields)
