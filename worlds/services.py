"""World services: every write about worlds and runs. Admin, API, commands and
activities call these; none of them talk to Temporal or the ORM directly."""

import contextlib
import dataclasses
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from temporalio.client import WorkflowUpdateFailedError
from temporalio.common import TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from clients import mongo
from clients.temporal import (
    Observed,
    TemporalNoAnswer,
    TemporalUnavailable,
    observe_workflows,
    temporal_call,
    workflow_status,
)
from generation import documents, search_attributes, store
from generation.contracts import (
    Decision,
    DegradedItemsUpdate,
    RegenerateInput,
    RegenerationUpdate,
    RerenderInput,
    RunConfig,
    RunStatusUpdate,
    Stage,
    WorldCleanupInput,
    WorldRunInput,
    WorldSnapshot,
    cleanup_workflow_id,
)
from generation.living.contracts import LiveReport, LiveSettings, LiveState, LiveStatus, LiveWorldInput
from generation.living.workflows import LiveWorldWorkflow
from generation.workflows import (
    RegenerateVersionWorkflow,
    RenderMissingImagesWorkflow,
    WorldCleanupWorkflow,
    WorldGenerationWorkflow,
    WorldRunWorkflow,
    describe_failure,
)
from worlds import selectors
from worlds.models import (
    AuditEvent,
    GenerationRun,
    LiveWorld,
    Regeneration,
    World,
    validate_feedback_length,
    validate_token_budget,
)

Status = GenerationRun.Status
FINISHED_FROM_TEMPORAL = {"COMPLETED", "FAILED", "CANCELED", "TERMINATED", "TIMED_OUT"}


class ActionError(Exception):
    """A generation command that cannot be carried out; the message is for the user."""


class ActionForbidden(ActionError):
    """The user lacks the role for this action."""


class ActionInvalid(ActionError):
    """The world definition (or the request) cannot be carried out as it is."""


class ActionUnavailable(ActionError):
    """Temporal could not be reached, or did not answer; the message says what is known."""


def _require(user, permission: str, action: str) -> None:
    """``user`` None is the system (management commands, run by operators)."""
    if user is not None and not user.has_perm(f"worlds.{permission}"):
        raise ActionForbidden(f"you do not have permission to {action}")


def _audit(
    action: str, *, user=None, world: World | None = None, run: GenerationRun | None = None, detail: str = ""
) -> None:
    world = world or (run and run.world)
    AuditEvent.objects.create(
        action=action,
        actor=user,
        world=world,
        run=run,
        detail=detail,
        world_pk=world and world.pk,
        world_name=world.name if world else "",
        run_number=run and run.number,
    )


def _temporal(call, *, what: str, timeout: float | None = None, not_found: bool = False):
    """``temporal_call(call)`` with Temporal's failures as messages for the user. WorkflowAlreadyStartedError,
    and NOT_FOUND when the caller asks for it (``not_found``), are left to the caller."""
    try:
        return temporal_call(call, timeout=timeout)
    except TemporalNoAnswer as exc:
        raise ActionUnavailable(f"Temporal did not answer while trying to {what}; try again ({exc})") from None
    except TemporalUnavailable as exc:
        raise ActionUnavailable(f"could not {what}: {exc}") from None
    except RPCError as exc:
        if not_found and exc.status == RPCStatusCode.NOT_FOUND:
            raise
        raise ActionUnavailable(f"could not {what}: Temporal answered {exc.status.name}: {exc.message}") from None


# --- worlds ----------------------------------------------------------------------------------


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


def world_delete(*, world: World, user=None) -> str:
    """Delete ``world``: a durable cleanup workflow stops its runs and removes every document and
    image of them; the world and its runs leave the SQL database at once (so nothing of it is public
    any more). If Temporal cannot take the cleanup, nothing is deleted. If the start was sent and its answer
    lost, the world is hidden and refuses commands (``deleting_since``) until Temporal confirms the cleanup:
    Temporal is asked now, and the worker's reconciler sends the start again (one cleanup per world, so a
    second start finds the first) and then deletes the rows. Returns the cleanup's ID."""
    _require(user, "delete_world", "delete worlds")
    cleanup_id = cleanup_workflow_id(world.pk)
    try:
        temporal_call(world_cleanup_start(world=world))
    except TemporalNoAnswer as exc:
        World.objects.filter(pk=world.pk).update(deleting_since=timezone.now())
        _audit(
            AuditEvent.Action.WORLD_DELETED,
            user=user,
            world=world,
            detail=f"{world.name}: deletion asked, the start of {cleanup_id} not confirmed",
        )
        status = "UNKNOWN"
        with contextlib.suppress(ActionUnavailable):
            status = _workflow_status(cleanup_id, what=f"look up the cleanup of {world}")
        if status in ("MISSING", "UNKNOWN"):
            raise ActionUnavailable(
                f"Temporal did not confirm the cleanup of {world} ({exc}): the world is hidden and takes no "
                "commands, and it is deleted once Temporal confirms the cleanup"
            ) from None
    except (TemporalUnavailable, WorkflowAlreadyStartedError, RPCError) as exc:
        reason = _start_refusal(exc, cleanup_id) if isinstance(exc, RPCError) else str(exc)
        raise ActionUnavailable(f"could not start the cleanup of {world}: {reason}") from None
    return world_deletion_confirmed(world=world, user=user)


def world_cleanup_start(*, world: World):
    """The ``temporal_call`` that starts ``world``'s cleanup, or finds the one started already."""
    workflow_ids = [
        wid for run_wid in world.runs.values_list("workflow_id", flat=True) for wid in (run_wid, f"{run_wid}-rerender")
    ]
    running = Regeneration.objects.filter(run__world=world, status=Regeneration.Status.RUNNING).select_related("run")
    workflow_ids += [regeneration.workflow_id for regeneration in running]
    workflow_ids += [live.workflow_id for live in world.lives.filter(status__in=LiveWorld.RUNNING)]
    inp = WorldCleanupInput(world.pk, workflow_ids)
    attributes = _search_attributes(world.pk, world.name, search_attributes.CLEANUP)
    return lambda client: client.start_workflow(
        WorldCleanupWorkflow.run,
        inp,
        id=cleanup_workflow_id(world.pk),
        task_queue=settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
        search_attributes=attributes,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


def world_deletion_confirmed(*, world: World, user=None) -> str:
    """Temporal has ``world``'s cleanup: the world and its runs leave the database. Returns the cleanup's ID."""
    cleanup_id = cleanup_workflow_id(world.pk)
    runs = world.runs.count()
    _audit(
        AuditEvent.Action.WORLD_DELETED,
        user=user,
        world=world,
        detail=f"{world.name}; {runs} run{'' if runs == 1 else 's'}; content removed by {cleanup_id}",
    )
    world.delete()
    return cleanup_id


def _require_not_deleting(world_id: int) -> None:
    if World.objects.filter(pk=world_id, deleting_since__isnull=False).exists():
        raise ActionError("the world is being deleted")


def world_snapshot(world: World) -> WorldSnapshot:
    return WorldSnapshot(
        world_id=world.pk,
        name=world.name,
        premise=world.premise,
        genre=world.genre,
        tone=world.tone,
        language=world.language,
        visual_style=world.visual_style,
        character_count=world.character_count,
        posts_per_character=world.posts_per_character,
        requires_approval=world.requires_approval,
        token_budget=world.token_budget,
        model=world.model_override or None,
    )


def run_config() -> RunConfig:
    return RunConfig(
        workflows_queue=settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
        llm_queue=settings.TEMPORAL_TASK_QUEUE_LLM,
        media_queue=settings.TEMPORAL_TASK_QUEUE_MEDIA,
        approval_timeout_s=settings.GENERATION_APPROVAL_TIMEOUT_SECONDS,
        max_bible_revisions=settings.GENERATION_MAX_BIBLE_REVISIONS,
        character_concurrency=settings.GENERATION_CHARACTER_CONCURRENCY,
        heartbeat_timeout_s=settings.GENERATION_HEARTBEAT_TIMEOUT_SECONDS,
        llm_retry_max_interval_s=settings.LLM_RETRY_MAX_INTERVAL_SECONDS,
        max_failed_share=settings.GENERATION_MAX_FAILED_SHARE,
    )


# --- starting a run ---------------------------------------------------------------------------
# The row is created first and never deleted: its run number and workflow ID are never reused. If
# Temporal refuses the start, the row is marked failed; if the answer is lost, it is marked
# start_unconfirmed and Temporal is asked (describe) until it is known whether the workflow exists.


def generation_start(*, world: World, user=None) -> GenerationRun:
    """Start a run of ``world``. Refused while another run of it is active."""
    _require(user, "start_run", "start generation runs")
    _require_not_deleting(world.pk)
    try:
        world.full_clean()
    except ValidationError as exc:
        problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
        raise ActionInvalid(f"{world} cannot be generated: {problems}") from None
    for stale in world.runs.filter(status__in=GenerationRun.ACTIVE):
        run_reconcile(run=stale)  # a row whose workflow ended or vanished must not block the world
    snapshot = world_snapshot(world)
    with transaction.atomic():
        World.objects.select_for_update().filter(pk=world.pk).first()  # serialise starts of one world
        if world.runs.filter(status__in=GenerationRun.ACTIVE).exists():
            raise ActionError(f"{world} is already being generated; cancel that run first")
        number = (world.runs.order_by("-number").values_list("number", flat=True).first() or 0) + 1
        workflow_id = f"world-{world.pk}-run-{number}"  # GenerationRun.base_workflow_id
        try:
            run = GenerationRun.objects.create(
                world=world,
                number=number,
                workflow_id=workflow_id,
                started_by=user,
                status=Status.PENDING,
                stage=Stage.QUEUED,
                requires_approval=world.requires_approval,
                characters_total=world.character_count,
                posts_total=world.character_count * world.posts_per_character,
                world_snapshot=dataclasses.asdict(snapshot),
            )
        except IntegrityError:
            raise ActionError(f"{world} is already being generated") from None
    return _start_workflow(run, WorldRunInput(run.ref, snapshot, run_config()), user, AuditEvent.Action.RUN_STARTED)


def _search_attributes(world_id: int, world_name: str, kind: str, run_number: int | None = None):
    """What the Temporal UI finds the workflow by (``WorldId = 7``); none when TEMPORAL_SEARCH_ATTRIBUTES is off."""
    if not settings.TEMPORAL_SEARCH_ATTRIBUTES:
        return TypedSearchAttributes.empty
    return search_attributes.run_attributes(world_id, world_name, kind, run_number)


def _first_start(workflow_run, inp, workflow_id: str, attributes: TypedSearchAttributes = TypedSearchAttributes.empty):
    """A ``temporal_call`` that starts a workflow under an ID never used before (IDs are not reused)."""
    return lambda client: client.start_workflow(
        workflow_run,
        inp,
        id=workflow_id,
        task_queue=settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
        search_attributes=attributes,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
    )


def _start_workflow(run: GenerationRun, run_input: WorldRunInput, user, action: str) -> GenerationRun:
    """Start the workflow of a ``run`` row just made pending (a start or a resume), after the commit so
    the workflow's first status update finds the row. A refusal marks the row failed; a lost answer,
    start unconfirmed, settled by asking Temporal."""
    workflow_id, world = run.workflow_id, run.world
    try:
        kind = search_attributes.RESUME if run_input.run.resume else search_attributes.GENERATION
        attributes = _search_attributes(world.pk, run_input.world.name, kind, run.number)
        temporal_call(_first_start(WorldRunWorkflow.run, run_input, workflow_id, attributes))
    except TemporalNoAnswer as exc:
        _set_status(
            run, Status.START_UNCONFIRMED, f"the start was sent but not confirmed: {exc}", expect=Status.PENDING
        )
        _audit(action, user=user, run=run, detail=f"{workflow_id} (start unconfirmed)")
        with contextlib.suppress(ActionUnavailable):
            run_reconcile(run=run)  # Temporal may answer now; if not, the reconciler asks again
        run.refresh_from_db()
        if run.status == Status.START_UNCONFIRMED:
            raise ActionUnavailable(
                f"Temporal did not confirm the start of {run}; it is being checked and "
                "shows as start unconfirmed until Temporal answers"
            ) from None
        return run
    except (TemporalUnavailable, WorkflowAlreadyStartedError, RPCError) as exc:
        message = _start_refusal(exc, workflow_id)
        _set_status(run, Status.FAILED, message, expect=Status.PENDING, finished=True)
        if isinstance(exc, RPCError) and exc.status in (
            RPCStatusCode.INVALID_ARGUMENT,
            RPCStatusCode.FAILED_PRECONDITION,
        ):
            raise ActionInvalid(f"{world} could not be started: {message}") from None
        raise ActionUnavailable(f"{world} could not be started: {message}") from None
    _audit(action, user=user, run=run, detail=workflow_id)
    return run


def generation_resume(*, run: GenerationRun, user=None) -> GenerationRun:
    """Go on with a run that finished short (failed, cancelled, expired, stopped by its budget, or completed
    with failed items) as the same run: items already stored are skipped without an LLM call, failed ones
    are made again. It runs as a new workflow, ``<run's workflow ID>-resume-<n>``, with the world as the
    run started it, except the token budget, which is the world's current one (raise it to resume a run
    its budget stopped)."""
    _require(user, "start_run", "resume generation runs")
    _require_not_deleting(run.world_id)
    run.refresh_from_db()
    world = run.world
    if not run.resumable:
        raise ActionError(
            f"{run} has nothing to resume: it is {run.get_status_display().lower()}"
            + (" with every item made" if run.status == Status.COMPLETED else "")
        )
    if run.status == Status.BUDGET_EXCEEDED and world.token_budget <= run.tokens_used:
        raise ActionError(
            f"{run} used {run.tokens_used} tokens and {world} allows {world.token_budget}: "
            "raise the world's token budget to resume it"
        )
    snapshot = _resume_snapshot(run)
    _settle_regenerations(run)
    if run.regenerations.filter(status=Regeneration.Status.RUNNING).exists():
        raise ActionError(f"an item of {run} is being regenerated; resume it once that has finished")
    if rerender_running(run=run):
        raise ActionError(f"the images of {run} are being re-rendered; resume it once that has finished")
    for stale in world.runs.filter(status__in=GenerationRun.ACTIVE):
        run_reconcile(run=stale)
    with transaction.atomic():
        World.objects.select_for_update().filter(pk=world.pk).first()  # serialised with starts of the world
        if world.runs.filter(status__in=GenerationRun.ACTIVE).exists():
            raise ActionError(f"{world} is already being generated; resume {run} once that run has finished")
        resumes = run.resumes + 1
        updated = GenerationRun.objects.filter(pk=run.pk, status=run.status, resumes=run.resumes).update(
            status=Status.PENDING,
            stage=Stage.QUEUED,
            resumes=resumes,
            workflow_id=f"{run.base_workflow_id}-resume-{resumes}",
            error="",
            resumed_at=timezone.now(),
            finished_at=None,
        )
        if not updated:
            raise ActionError(f"{run} changed meanwhile (resumed by someone else?); look again")
    run.refresh_from_db()
    revision, feedback = _resume_revision(run)
    run_input = WorldRunInput(run.ref, snapshot, run_config(), revision, run.bible_approved, feedback)
    return _start_workflow(run, run_input, user, AuditEvent.Action.RUN_RESUMED)


def _resume_revision(run: GenerationRun) -> tuple[int, str]:
    """(the bible revision a resumed run goes on from, the feedback it is to be written with): a run stopped
    after a reviewer rejected its stored revision, before the revision asked for was written, writes it with the
    reviewer's feedback; otherwise the run goes on from its revision as it is."""
    stored = store.bible_revision(mongo.get_db(), run.ref)
    if not run.bible_approved and stored is not None and run.rejected_revision == stored and run.review_feedback:
        return stored + 1, run.review_feedback
    return (run.bible_revision if stored is None else stored), ""


def _resume_snapshot(run: GenerationRun) -> WorldSnapshot:
    """The world as the run started it, with the world's current token budget."""
    world = run.world
    if run.world_snapshot:
        return dataclasses.replace(WorldSnapshot(**run.world_snapshot), token_budget=world.token_budget)
    # Runs started before snapshots were kept: the world as it is now, if its shape has not changed.
    if (world.character_count, world.character_count * world.posts_per_character) != (
        run.characters_total,
        run.posts_total,
    ):
        raise ActionInvalid(
            f"{run} was made with {run.characters_total} characters and {run.posts_total} posts, and {world} "
            "has changed since; start a new run instead"
        )
    return world_snapshot(world)


def _start_refusal(exc: Exception, workflow_id: str) -> str:
    if isinstance(exc, WorkflowAlreadyStartedError):
        return f"Temporal already has a workflow {workflow_id} (from another installation?); start again"
    if isinstance(exc, RPCError):
        hint = ""
        if "search attribute" in exc.message.lower():
            hint = " (create worldgen's search attributes, docs/OPERATIONS.md, or set TEMPORAL_SEARCH_ATTRIBUTES=false)"
        return f"Temporal refused the start ({exc.status.name}): {exc.message}{hint}"
    return f"nothing was started: {exc}"


def _set_status(run: GenerationRun, status: str, error: str, *, expect=None, finished: bool = False) -> bool:
    """Move ``run`` to ``status`` unless its row changed meanwhile (``expect``: the status it must have)."""
    rows = GenerationRun.objects.filter(pk=run.pk)
    if expect is not None:
        rows = rows.filter(status__in=[expect] if isinstance(expect, str) else expect)
    fields = {"status": status, "error": error, "updated_at": timezone.now()}
    if finished:
        fields["finished_at"] = timezone.now()
    return bool(rows.update(**fields))


# --- commands to a running run ------------------------------------------------------------------


def _send(run: GenerationRun, call, *, what: str) -> None:
    """Send a command to ``run``'s workflow. A workflow Temporal no longer has is looked into (the row
    is corrected) and reported as such."""
    try:
        _temporal(call, what=what, not_found=True)
    except RPCError:  # NOT_FOUND
        run_reconcile(run=run)
        run.refresh_from_db()
        raise ActionError(
            f"could not {what}: Temporal has no running workflow {run.workflow_id}; "
            f"{run} is now {run.get_status_display().lower()}"
        ) from None


def _decide(run: GenerationRun, decision: Decision, what: str) -> None:
    """Send a reviewer's decision as an update: refused with the workflow's reason (409) when nothing awaits
    approval any more or another reviewer decided first, so two reviewers deciding at once cannot both see
    success."""

    async def send(client):
        await client.get_workflow_handle(run.workflow_id).execute_update(WorldGenerationWorkflow.review, decision)

    try:
        _send(run, send, what=what)
    except WorkflowUpdateFailedError as exc:
        reason = getattr(exc.cause, "message", None) or describe_failure(exc)
        raise ActionError(f"could not {what}: {reason}") from None


def _check_review(run: GenerationRun, user, verb: str) -> None:
    _require(user, "review_run", f"{verb} world bibles")
    run.refresh_from_db()
    if run.status != Status.AWAITING_APPROVAL:
        raise ActionError(f"nothing is awaiting approval: {run} is {run.get_status_display().lower()}")
    if user is not None and run.started_by_id == user.pk:
        raise ActionForbidden(f"you may not {verb} runs you started (four-eyes rule)")


def generation_approve(*, run: GenerationRun, user=None) -> None:
    _check_review(run, user, "approve")
    _decide(run, Decision(approved=True, by=getattr(user, "username", "")), f"approve the bible of {run}")
    GenerationRun.objects.filter(pk=run.pk).update(approved_by=user)
    _audit(AuditEvent.Action.RUN_APPROVED, user=user, run=run, detail=f"revision {run.bible_revision}")


def _clean_feedback(feedback: str | None, *, required: bool) -> str:
    feedback = (feedback or "").strip()
    if required and not feedback:
        raise ActionInvalid("say what should change: feedback is required to reject")
    try:
        validate_feedback_length(feedback)
    except ValidationError as exc:
        raise ActionInvalid(exc.messages[0]) from None
    return feedback


def generation_reject(*, run: GenerationRun, feedback: str, user=None) -> None:
    feedback = _clean_feedback(feedback, required=True)
    _check_review(run, user, "reject")
    _decide(
        run, Decision(approved=False, feedback=feedback, by=getattr(user, "username", "")), f"reject the bible of {run}"
    )
    # Kept for a resume: a run stopped before it wrote the revision this asks for writes it with this feedback.
    GenerationRun.objects.filter(pk=run.pk).update(
        rejected_by=user, review_feedback=feedback, rejected_revision=run.bible_revision
    )
    _audit(AuditEvent.Action.RUN_REJECTED, user=user, run=run, detail=feedback)


def generation_cancel(*, run: GenerationRun, user=None) -> None:
    """Cancel an active run, or the re-render of a finished one."""
    _require(user, "cancel_run", "cancel generation runs")
    run.refresh_from_db()
    workflow_id = run.workflow_id
    if not run.is_active:
        if not rerender_running(run=run):
            raise ActionError(f"{run} is not running (it is {run.get_status_display().lower()})")
        workflow_id = f"{run.workflow_id}-rerender"

    async def cancel(client):
        await client.get_workflow_handle(workflow_id).cancel()

    _send(run, cancel, what=f"cancel {run}")
    GenerationRun.objects.filter(pk=run.pk).update(cancelled_by=user)
    _audit(AuditEvent.Action.RUN_CANCELLED, user=user, run=run, detail=workflow_id)


def _workflow_status(workflow_id: str, *, what: str) -> str:
    """Temporal's status name of a workflow (RUNNING, COMPLETED, ...), or MISSING if it has none."""
    return _temporal(lambda client: workflow_status(client, workflow_id), what=what)


def rerender_running(*, run: GenerationRun) -> bool:
    return _workflow_status(f"{run.workflow_id}-rerender", what=f"look up the re-render of {run}") == "RUNNING"


def generation_rerender(*, run: GenerationRun, user=None) -> str:
    """Render again the images of a finished run that the media service could not make
    (with the world's current visual style). Returns the re-render's workflow ID."""
    _require(user, "start_run", "re-render images")
    _require_not_deleting(run.world_id)
    run.refresh_from_db()
    if run.is_active:
        raise ActionError(f"{run} is still running; its images are retried as it goes")
    if not run.degraded_items:
        raise ActionError(f"{run} has no images waiting for a re-render")
    workflow_id = f"{run.workflow_id}-rerender"
    run_input = RerenderInput(run.ref, world_snapshot(run.world), run_config())
    try:
        _temporal(
            lambda client: client.start_workflow(
                RenderMissingImagesWorkflow.run,
                run_input,
                id=workflow_id,
                task_queue=settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
                search_attributes=_search_attributes(
                    run.world_id, run_input.world.name, search_attributes.RERENDER, run.number
                ),
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            ),
            what=f"start the re-render of {run}",
        )
    except WorkflowAlreadyStartedError:
        raise ActionError(f"the images of {run} are already being re-rendered") from None
    _audit(AuditEvent.Action.IMAGES_RERENDERED, user=user, run=run, detail=f"{run.degraded_items} images")
    return workflow_id


# --- regenerating one item ----------------------------------------------------------------------
# A new version of one character or post of a finished run, as a workflow of its own
# (``<run's first workflow ID>-regenerate-<row ID>``). One item is regenerated at a time: a second request
# for it (or for its character, or one of its posts) while one runs is refused.


def item_regenerate(
    *, run: GenerationRun, character_index: int, post_index: int | None = None, feedback: str = "", user=None
) -> Regeneration:
    """Regenerate character ``character_index`` of ``run`` (profile, avatar, plan and posts) or one of its
    posts (caption and image), with optional feedback. The version it replaces is kept; the tokens count
    toward the run's ledger and budget (the world's current one)."""
    _require(user, "start_run", "regenerate characters and posts")
    _require_not_deleting(run.world_id)
    feedback = _clean_feedback(feedback, required=False)
    run.refresh_from_db()
    label = f"character {character_index}" if post_index is None else f"post {character_index}.{post_index}"
    run_snapshot = _resume_snapshot(run)
    if not 0 <= character_index < run_snapshot.character_count or not (
        post_index is None or 0 <= post_index < run_snapshot.posts_per_character
    ):
        raise ActionInvalid(
            f"{run} has no {label}: it has characters 0 to {run_snapshot.character_count - 1}, each with posts "
            f"0 to {run_snapshot.posts_per_character - 1}"
        )
    if run.is_active:
        raise ActionError(f"{run} is {run.get_status_display().lower()}; regenerate its items once it has finished")
    db = mongo.get_db()
    stored = (
        store.has_profile(db, run.ref, character_index)
        if post_index is None
        else store.has_post(db, run.ref, character_index, post_index)
    )
    if not stored:
        raise ActionError(f"{label} of {run} was never made; resume the run to make its failed items")
    _settle_regenerations(run)
    with transaction.atomic():
        GenerationRun.objects.select_for_update().filter(pk=run.pk).first()  # serialise requests for the run
        for other in run.regenerations.filter(status=Regeneration.Status.RUNNING):
            if other.overlaps(character_index, post_index):
                raise ActionError(f"{other.item} of {run} is already being regenerated; wait for it to finish")
        regeneration = Regeneration.objects.create(
            run=run, character_index=character_index, post_index=post_index, feedback=feedback, requested_by=user
        )
    inp = RegenerateInput(regeneration.pk, run.ref, run_snapshot, run_config(), character_index, post_index, feedback)
    try:
        attributes = _search_attributes(run.world_id, run_snapshot.name, search_attributes.REGENERATION, run.number)
        temporal_call(_first_start(RegenerateVersionWorkflow.run, inp, regeneration.workflow_id, attributes))
    except TemporalNoAnswer as exc:
        # It may have started: the row stays running (blocking a second regeneration of the item) until
        # Temporal says, now or when the reconciler asks.
        _audit(AuditEvent.Action.ITEM_REGENERATED, user=user, run=run, detail=f"{label} (start unconfirmed)")
        status = "UNKNOWN"
        with contextlib.suppress(ActionUnavailable):
            status = _workflow_status(regeneration.workflow_id, what=f"look up {regeneration}")
        if status in ("MISSING", "UNKNOWN"):  # not known to Temporal (yet): not taken as started
            raise ActionUnavailable(
                f"Temporal did not confirm the regeneration of {label} of {run} ({exc}); it shows as running "
                "until Temporal answers"
            ) from None
        return regeneration
    except (TemporalUnavailable, WorkflowAlreadyStartedError, RPCError) as exc:
        message = _start_refusal(exc, regeneration.workflow_id)
        _regeneration_finished(regeneration.pk, Regeneration.Status.FAILED, message)
        raise ActionUnavailable(f"{label} of {run} could not be regenerated: {message}") from None
    detail = f"{label} ({regeneration.workflow_id})" + (f": {feedback}" if feedback else "")
    _audit(AuditEvent.Action.ITEM_REGENERATED, user=user, run=run, detail=detail)
    return regeneration


def _settle_regenerations(run: GenerationRun) -> None:
    """Regenerations of ``run`` marked running whose workflow Temporal no longer runs are marked failed."""
    for regeneration in run.regenerations.filter(status=Regeneration.Status.RUNNING).select_related("run"):
        regeneration_settle(
            regeneration=regeneration, status=_workflow_status(regeneration.workflow_id, what=f"look up {regeneration}")
        )


def regeneration_settle(*, regeneration: Regeneration, status: str) -> str | None:
    """Correct a regeneration row marked running from its workflow's Temporal ``status``; returns what changed.
    A workflow Temporal does not have counts as never started only past ``RECONCILE_START_GRACE_SECONDS``."""
    if status == "MISSING" and _within_start_grace(regeneration.started_at):
        return None  # a start whose answer was lost may still land: the row stays, and blocks a second one
    if status == "COMPLETED":
        _regeneration_finished(regeneration.pk, Regeneration.Status.COMPLETED)
    elif status == "CANCELED":
        _regeneration_finished(regeneration.pk, Regeneration.Status.CANCELLED, "cancelled in Temporal")
    elif status != "RUNNING":
        message = "its workflow never started" if status == "MISSING" else f"its workflow ended as {status}"
        _regeneration_finished(regeneration.pk, Regeneration.Status.FAILED, message)
    else:
        return None
    return f"{regeneration}: its workflow is {status}"


def _regeneration_finished(regeneration_id: int, status: str, error: str = "", **fields) -> None:
    Regeneration.objects.filter(pk=regeneration_id, status=Regeneration.Status.RUNNING).update(
        status=status, error=error, finished_at=timezone.now(), **fields
    )


def regeneration_record(*, update: RegenerationUpdate) -> None:
    """How a regeneration ended (called by an activity): its tokens are every attempt's billed to its drafts
    (before drafts: what its activities reported); the run's token count follows its ledger."""
    tokens = update.tokens
    if update.run_key:
        drafts = f"{update.run_key}~r{update.regeneration_id}"  # documents.draft_key of the run and regeneration
        tokens = max(tokens, documents.billed_tokens(mongo.get_db(), drafts))
    Regeneration.objects.filter(pk=update.regeneration_id).update(
        status=update.status, error=update.error, tokens_used=tokens, finished_at=timezone.now()
    )
    if update.run_key:
        used = store.tokens_used(mongo.get_db(), update.run_key)
        GenerationRun.objects.filter(regenerations=update.regeneration_id, tokens_used__lt=used).update(
            tokens_used=used
        )


# --- publishing --------------------------------------------------------------------------------
# Viewers see a world's live run only. A completed run publishes itself unless staff made a publishing choice
# for the world (published a run, rolled back, unpublished) after it started: that choice stands, through
# resumes too, until staff change it. Staff may publish a failed, cancelled or stopped run (never one whose
# bible still needed approval), roll back to an earlier run by publishing it, or unpublish the world.


def run_publish(*, run: GenerationRun, user=None) -> None:
    _require(user, "publish_run", "publish runs")
    _require_not_deleting(run.world_id)
    run.refresh_from_db()
    if run.is_active:
        raise ActionError(f"{run} is still {run.get_status_display().lower()}; publish it once it has finished")
    if not run.bible_cleared:
        raise ActionError(f"{run} cannot be published: its world bible was never approved")
    if not store.has_bible(mongo.get_db(), run.ref):
        raise ActionError(f"{run} has nothing to show: it stopped before its world bible was written")
    world = run.world
    if world.live_run_id == run.pk:
        raise ActionError(f"{run} is already live")
    World.objects.filter(pk=world.pk).update(live_run=run, publishing_decided_at=timezone.now())
    _audit(
        AuditEvent.Action.RUN_PUBLISHED,
        user=user,
        run=run,
        detail=f"replaces run {world.live_run.number}" if world.live_run else "",
    )


def world_unpublish(*, world: World, user=None) -> None:
    _require(user, "publish_run", "unpublish worlds")
    world.refresh_from_db()
    if world.live_run is None:
        raise ActionError(f"{world} is not published")
    run = world.live_run
    World.objects.filter(pk=world.pk).update(live_run=None, publishing_decided_at=timezone.now())
    _audit(AuditEvent.Action.RUN_UNPUBLISHED, user=user, run=run)


# --- mirrored state (called by activities and the reconciler) -------------------------------------


def run_degraded_record(*, update: DegradedItemsUpdate) -> None:
    """After a re-render: the images still missing (called by an activity)."""
    GenerationRun.objects.filter(pk=update.run_id).update(
        degraded_items=update.degraded_items, updated_at=timezone.now()
    )


def run_status_record(*, update: RunStatusUpdate) -> None:
    """Mirror a workflow's progress onto its run row (called by an activity). Tokens come from the
    run's token ledger (every billed token, failed attempts included); a finished run's post count
    from what is stored (posts of a character that failed count too). A completed run goes live."""
    progress = update.progress
    fields = {
        "status": progress.status,
        "stage": progress.stage,
        "characters_done": progress.characters_done,
        "characters_total": progress.characters_total,
        "posts_done": progress.posts_done,
        "posts_total": progress.posts_total,
        "degraded_items": progress.degraded_items,
        "failed_items": progress.failed_items,
        "tokens_used": progress.tokens_used,
        "bible_revision": progress.bible_revision,
        "error": progress.last_error,
        "updated_at": timezone.now(),
    }
    if progress.bible_approved:
        fields["bible_approved"] = True
    if update.run_key:
        db = mongo.get_db()
        fields["tokens_used"] = max(progress.tokens_used, store.tokens_used(db, update.run_key))
        if update.finished:
            fields["posts_done"] = max(progress.posts_done, db.posts.count_documents({"run_key": update.run_key}))
    if update.finished:
        fields["finished_at"] = timezone.now()
    with transaction.atomic():
        GenerationRun.objects.filter(pk=update.run_id).update(**fields)
        if update.finished and progress.status == Status.COMPLETED:
            run = GenerationRun.objects.filter(pk=update.run_id).select_related("world__live_run").first()
            live = run and run.world.live_run
            # Staff's publishing choice (publish, roll back, unpublish) stands for the runs started before it.
            decided = run and run.world.publishing_decided_at
            if (
                run is not None
                and (live is None or live.number < run.number)
                and (not decided or decided < run.started_at)
            ):
                World.objects.filter(pk=run.world_id).update(live_run=run)
                _audit(AuditEvent.Action.RUN_PUBLISHED, run=run, detail=Status.COMPLETED)


def runs_reconcile(*, run_ids: list[int] | None = None, user=None) -> list[str]:
    """Check active run rows against Temporal now (all of them, or ``run_ids``); returns the corrections."""
    _require(user, "cancel_run", "correct runs from Temporal")
    runs = selectors.runs_to_reconcile(run_ids=run_ids)
    observations = _temporal(
        lambda client: observe_workflows(client, [run.workflow_id for run in runs]),
        what="check runs against Temporal",
        timeout=300,
    )
    return runs_reconcile_record(runs=runs, observations=observations, user=user)


def runs_reconcile_record(*, runs: list[GenerationRun], observations: list[Observed], user=None) -> list[str]:
    pairs = zip(runs, observations, strict=True)
    changes = [run_reconcile_record(run=run, observed=observed, user=user) for run, observed in pairs]
    return [change for change in changes if change]


def run_reconcile(*, run: GenerationRun, user=None) -> str | None:
    """Ask Temporal about one active run and correct its row; returns what changed, if anything."""
    [observed] = _temporal(lambda client: observe_workflows(client, [run.workflow_id]), what=f"look up {run}")
    return run_reconcile_record(run=run, observed=observed, user=user)


def run_reconcile_record(*, run: GenerationRun, observed: Observed, user=None) -> str | None:
    """Correct ``run``'s row from what Temporal said. Only a row still
    in the status it was read with is changed: a workflow's own report always wins."""
    run.refresh_from_db()
    if not run.is_active:
        return None
    if observed.state == "running":
        if run.status in (Status.PENDING, Status.START_UNCONFIRMED):
            if _set_status(run, Status.RUNNING, "", expect=run.status):
                return _reconciled(run, "the workflow is running", user)
        return None
    if observed.state == "missing":
        grace = timedelta(seconds=settings.RECONCILE_START_GRACE_SECONDS)
        if run.status in (Status.PENDING, Status.START_UNCONFIRMED) and timezone.now() - run.last_start < grace:
            return None  # a start may still be on its way
        message = (
            "the workflow never started"
            if run.status in (Status.PENDING, Status.START_UNCONFIRMED)
            else "Temporal no longer has this workflow"
        )
        if _set_status(run, Status.FAILED, message, expect=run.status, finished=True):
            return _reconciled(run, message, user)
        return None
    if observed.progress is not None:  # completed: its own final report
        run_status_record(update=RunStatusUpdate(run.pk, observed.progress, True, run.ref.key))
        return _reconciled(run, f"the workflow completed ({observed.progress.status})", user)
    status = Status.CANCELLED if observed.status == "CANCELED" else Status.FAILED
    if _set_status(run, status, observed.error, expect=run.status, finished=True):
        return _reconciled(run, observed.error, user)
    return None


def _reconciled(run: GenerationRun, what: str, user) -> str:
    _audit(AuditEvent.Action.RUN_RECONCILED, user=user, run=run, detail=what)
    return f"{run}: {what}"


# --- live worlds ----------------------------------------------------------------------------------------
# A published world goes live: LiveWorldWorkflow (``world-<id>-live-<n>``) lives a world day at a time from
# the cast of its live run. Commands are Temporal updates, validated by the workflow against its state, so
# the caller learns at once whether they were taken.

LIVE_COMMANDS = {
    "pause": LiveWorldWorkflow.pause,
    "resume": LiveWorldWorkflow.resume,
    "stop": LiveWorldWorkflow.stop,
    "set_cadence": LiveWorldWorkflow.set_cadence,
    "set_token_budget": LiveWorldWorkflow.set_token_budget,
    "inject_event": LiveWorldWorkflow.inject_event,
}


def world_go_live(
    *,
    world: World,
    day_seconds: float,
    posts_per_day: int = 3,
    comments_per_day: int = 2,
    daily_token_budget: int = 20_000,
    token_budget: int | None = None,
    ends_at=None,
    user=None,
) -> LiveWorld:
    """Take a published world live: its live run's cast goes on posting, a world day every ``day_seconds``.
    ``token_budget`` caps what this time live may spend in all (default: the world's token budget); a world
    that lived before goes on from its last day, with its rotation."""
    _require(user, "control_live_world", "take worlds live")
    _require_not_deleting(world.pk)
    world.refresh_from_db()
    run = world.live_run
    if run is None:
        raise ActionError(f"{world} is not published: publish a run before it goes live")
    if ends_at is not None and ends_at <= timezone.now():
        raise ActionInvalid("the end date has passed: choose a later one, or none")
    snapshot = _resume_snapshot(run)
    profiled = store.profiled_characters(mongo.get_db(), run.ref)
    if profiled < snapshot.character_count:
        raise ActionInvalid(
            f"{world} cannot go live: {run} has {profiled} of its {snapshot.character_count} characters "
            "with a profile; resume the run to make the others, or publish a run with its whole cast"
        )
    _settle_lives(world)
    with transaction.atomic():
        World.objects.select_for_update().filter(pk=world.pk).first()  # serialise with other commands on it
        running = world.lives.filter(status__in=LiveWorld.RUNNING).first()
        if running is not None:
            raise ActionError(
                f"{world} is already live; stop it first"
                if running.status != LiveWorld.Status.STARTING
                else f"{world} is going live: Temporal has not confirmed the start of {running.workflow_id} yet"
            )
        number = (world.lives.order_by("-number").values_list("number", flat=True).first() or 0) + 1
        days, next_slot = selectors.live_story_so_far(run=run)
        live = LiveWorld(
            world=world,
            run=run,
            number=number,
            day_seconds=day_seconds,
            posts_per_day=posts_per_day,
            comments_per_day=comments_per_day,
            daily_token_budget=daily_token_budget,
            token_budget=world.token_budget if token_budget is None else token_budget,
            ends_at=ends_at,
            first_day=days,
            days=days,
            next_slot=next_slot,
            started_by=user,
        )
        try:
            live.full_clean(exclude=["world", "run"])
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
            raise ActionInvalid(f"{world} cannot go live: {problems}") from None
        live.save()
    settings_ = LiveSettings(
        day_seconds=day_seconds,
        posts_per_day=posts_per_day,
        comments_per_day=comments_per_day,
        daily_token_budget=daily_token_budget,
        ends_at=ends_at.timestamp() if ends_at else None,
        token_budget=live.token_budget,
    )
    state = LiveState(days=days, next_slot=next_slot)
    inp = LiveWorldInput(live.pk, run.ref, snapshot, run_config(), settings_, state)
    detail = f"{live.workflow_id}: a day every {day_seconds:g} s, {posts_per_day} posts, {comments_per_day} comments"
    detail += f", {daily_token_budget} tokens a day, {live.token_budget} in all" + (f", from day {days + 1}")
    try:
        attributes = _search_attributes(world.pk, inp.world.name, search_attributes.LIVE, run.number)
        temporal_call(_first_start(LiveWorldWorkflow.run, inp, live.workflow_id, attributes))
    except TemporalNoAnswer as exc:
        # It may have started: the row shows it starting, and Temporal is asked (now, and by the reconciler).
        _audit(AuditEvent.Action.WORLD_LIVE, user=user, run=run, detail=f"{detail} (start unconfirmed)")
        with contextlib.suppress(ActionUnavailable):
            _settle_lives(world)
        live.refresh_from_db()
        if live.status == LiveWorld.Status.STARTING:
            raise ActionUnavailable(
                f"Temporal did not confirm that {world} went live ({exc}); it shows as starting until Temporal answers"
            ) from None
        return live
    except (TemporalUnavailable, WorkflowAlreadyStartedError, RPCError) as exc:
        message = _start_refusal(exc, live.workflow_id)
        LiveWorld.objects.filter(pk=live.pk).update(status=LiveWorld.Status.FAILED, error=message)
        raise ActionUnavailable(f"{world} could not go live: {message}") from None
    _audit(AuditEvent.Action.WORLD_LIVE, user=user, run=run, detail=detail)
    return live


def live_command(*, live: LiveWorld, command: str, value=None, user=None) -> str:
    """Send ``command`` (pause, resume, stop, set_cadence with seconds, set_token_budget with tokens,
    inject_event with its text) to a live world; returns what it did. Refusals by the workflow come back at
    once, with its reason."""
    _require(user, "control_live_world", "control live worlds")
    if command not in LIVE_COMMANDS:
        raise ActionInvalid(f"unknown command {command!r}; one of: {', '.join(LIVE_COMMANDS)}")
    if command == "set_token_budget":
        try:
            validate_token_budget(value)
        except ValidationError as exc:
            raise ActionInvalid(exc.messages[0]) from None
    live.refresh_from_db()
    if not live.is_running:
        raise ActionError(f"{live} is {live.get_status_display().lower()}: it takes no commands")
    update = LIVE_COMMANDS[command]

    async def send(client):
        handle = client.get_workflow_handle(live.workflow_id)
        result = await (handle.execute_update(update) if value is None else handle.execute_update(update, value))
        return result, await handle.query(LiveWorldWorkflow.state)

    try:
        result, state = _temporal(send, what=f"{command.replace('_', ' ')} {live}", not_found=True)
    except RPCError:  # NOT_FOUND
        _settle_lives(live.world)
        raise ActionError(f"Temporal no longer runs {live.workflow_id}; it is marked as ended") from None
    except WorkflowUpdateFailedError as exc:
        reason = getattr(exc.cause, "message", None) or describe_failure(exc)  # the workflow's validator's words
        raise ActionError(f"{live} refused to {command.replace('_', ' ')}: {reason}") from None
    live_state_record(live=live, state=state)
    if command == "set_cadence":
        LiveWorld.objects.filter(pk=live.pk).update(day_seconds=value)
        said = f"a world day now comes every {value:g} s"
    elif command == "set_token_budget":
        LiveWorld.objects.filter(pk=live.pk).update(token_budget=value)
        said = f"it may now spend {value} tokens in all ({state.tokens} spent)"
        if state.status == LiveStatus.PAUSED:
            said += "; resume it to go on"
    elif command == "inject_event":
        said = f"the event happens on day {result}"
    else:
        said = {
            "pause": "paused: no day starts until it is resumed",
            "resume": "resumed",
            "stop": "stopped: it finishes the day it is living, if any, and lives no more",
        }[command]
    _audit(
        AuditEvent.Action.LIVE_COMMAND,
        user=user,
        run=live.run,
        detail=f"{live.workflow_id} {command}" + (f": {value}" if value is not None else ""),
    )
    return said


def _settle_lives(world: World) -> None:
    """Rows of ``world`` shown running whose workflow Temporal no longer runs get the workflow's last state."""
    for live in world.lives.filter(status__in=LiveWorld.RUNNING):
        live_settle(live=live, status=_workflow_status(live.workflow_id, what=f"look up {live}"))


def live_settle(*, live: LiveWorld, status: str) -> str | None:
    """Correct a live world row shown running from its workflow's Temporal ``status``; returns what changed. A
    workflow Temporal does not have is taken as never started only once its start is past
    ``RECONCILE_START_GRACE_SECONDS`` (an unconfirmed start may still land)."""
    if status == "RUNNING":
        if live.status == LiveWorld.Status.STARTING:
            LiveWorld.objects.filter(pk=live.pk, status=LiveWorld.Status.STARTING).update(status=LiveWorld.Status.LIVE)
            return f"{live}: its workflow is running"
        return None
    if status == "MISSING" and live.status == LiveWorld.Status.STARTING and _within_start_grace(live.started_at):
        return None  # an unconfirmed start may still land
    error = "its workflow never started" if status == "MISSING" else f"its workflow ended as {status}"
    final = LiveWorld.Status.STOPPED if status in ("COMPLETED", "CANCELED") else LiveWorld.Status.FAILED
    LiveWorld.objects.filter(pk=live.pk, status__in=LiveWorld.RUNNING).update(
        status=final, error=error if final == "failed" else "", next_day_at=None
    )
    return f"{live}: {error}"


def _within_start_grace(started_at) -> bool:
    return timezone.now() - started_at < timedelta(seconds=settings.RECONCILE_START_GRACE_SECONDS)


def live_state_record(*, live: LiveWorld, state: LiveState, error: str | None = None) -> None:
    """Mirror a live world's state onto its row: what it spent is its finished days' ledgers and the ledger of
    a day it began and did not finish (every billed token, every attempt)."""
    spent = state.tokens
    if state.started_day:
        spent += store.tokens_used(mongo.get_db(), documents.live_day_key(live.run.ref, live.pk, state.started_day))
    fields = {
        "status": state.status,
        "days": state.days,
        "next_slot": state.next_slot,
        "skipped_days": state.skipped_days,
        "tokens_used": spent,
        "next_day_at": (datetime.fromtimestamp(state.next_day_at, UTC) if state.status == LiveStatus.LIVE else None),
        "error": state.error if error is None else error,
        "updated_at": timezone.now(),
    }
    LiveWorld.objects.filter(pk=live.pk).update(**fields)


def live_report_record(*, report: LiveReport) -> None:
    """A live world's report after a day (or a day that failed) or when it ends (called by an activity): its
    row, and the day's record in Mongo with what the day made (counted from what is stored) and what it spent
    (its ledger), written first. The run's degraded items count the day's images kept for a re-render."""
    live = LiveWorld.objects.filter(pk=report.live_id).select_related("run").first()
    if live is None:  # the world was deleted meanwhile
        return
    if report.day is not None:
        db, day, ref = mongo.get_db(), report.day, live.run.ref
        made = documents.day_counts(db, ref, day.day)
        lag = round(day.started_at - day.scheduled_at, 3)
        spent = {"tokens": store.tokens_used(db, day.ledger)} if day.ledger else {}
        record = {**dataclasses.asdict(day), **made, **spent, "lag_s": lag, "live_number": live.number}
        store.save_day_report(db, ref, record)
        GenerationRun.objects.filter(pk=live.run_id).update(degraded_items=store.images_waiting(db, ref))
    live_state_record(live=live, state=report.state, error=report.error or report.state.error)
