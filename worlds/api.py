"""The integrator API. Views are thin: reads go through ``worlds.selectors``, writes
through ``worlds.services`` (which check roles, write the audit trail and raise
``ActionError`` with a message for the user); this module maps those errors
to HTTP statuses and describes every request and response for the OpenAPI schema.
"""

import logging

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.generics import get_object_or_404
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from worlds import selectors, services
from worlds.models import GenerationRun, LiveWorld, Regeneration, World
from worlds.serializers import (
    CadenceSerializer,
    CharacterSerializer,
    ErrorSerializer,
    GoLiveSerializer,
    InjectEventSerializer,
    ItemQuerySerializer,
    ItemVersionsSerializer,
    LiveCommandResultSerializer,
    LiveTokenBudgetSerializer,
    LiveWorldDetailSerializer,
    LiveWorldSerializer,
    PageQuerySerializer,
    PostPageSerializer,
    PostQuerySerializer,
    PostSerializer,
    QualityReportSerializer,
    RegenerateInputSerializer,
    RegenerationSerializer,
    RejectInputSerializer,
    RunDetailSerializer,
    RunSerializer,
    WorldInputSerializer,
    WorldSerializer,
)
from worlds.services import ActionError, ActionForbidden, ActionInvalid, ActionUnavailable

logger = logging.getLogger(__name__)


# --- errors -----------------------------------------------------------------------------


class BadRequest(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "temporal_unavailable"


def api_exception(exc: Exception) -> Exception:
    """A service's exception as the DRF exception with the right status; others unchanged."""
    if isinstance(exc, ActionForbidden):
        return exceptions.PermissionDenied(str(exc))
    if isinstance(exc, ActionInvalid):
        return BadRequest(str(exc))
    if isinstance(exc, ActionUnavailable):
        return ServiceUnavailable(str(exc))
    if isinstance(exc, ActionError):
        return Conflict(str(exc))
    if isinstance(exc, DjangoValidationError):  # the model's full_clean() inside a service
        return exceptions.ValidationError(getattr(exc, "message_dict", None) or {"non_field_errors": exc.messages})
    return exc


def errors(*codes: int) -> dict:
    """Schema of the error responses of an operation (bodies as DRF renders them)."""
    described = {
        400: "Invalid input: `{field: [messages]}`, or `{detail}`.",
        403: "Not authenticated, not staff, or missing the role for this action.",
        404: "No such world or run.",
        409: "Conflicts with the run's state (e.g. already being generated, nothing awaiting approval).",
        503: "Temporal is not reachable; try again.",
    }
    return {
        code: OpenApiResponse(OpenApiTypes.OBJECT if code == 400 else ErrorSerializer, description=described[code])
        for code in codes
    }


# --- permissions and base view ---------------------------------------------------------


class StaffRole(BasePermission):
    """Staff only, with the model permissions the view lists for the method (superusers have all).
    The services check roles too; this gives an early 403 before any input is read."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_staff):
            return False
        method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method
        return user.has_perms(view.required_perms.get(method, ()))


class Api(APIView):
    parser_classes = [JSONParser]  # an integrator API: JSON bodies only
    permission_classes = [StaffRole]
    required_perms: dict[str, tuple[str, ...]] = {}

    def handle_exception(self, exc):
        return super().handle_exception(api_exception(exc))


def query_data(request) -> dict:
    """The query parameters for a serializer: as a plain dict, so that an empty value is invalid rather
    than absent, and a repeated parameter stays a list, which is invalid too."""
    return {key: values[0] if len(values) == 1 else values for key, values in request.query_params.lists()}


class Pagination(LimitOffsetPagination):
    """The default limit/offset pagination, but bad values are a 400 instead of being ignored."""

    def paginate_queryset(self, queryset, request, view=None):
        query = PageQuerySerializer(data=query_data(request))
        query.is_valid(raise_exception=True)
        self._query = query.validated_data
        return super().paginate_queryset(queryset, request, view)

    def get_limit(self, request):
        return self._query["limit"]

    def get_offset(self, request):
        return self._query["offset"]


VIEW_WORLDS = ("worlds.view_world",)
VIEW_RUNS = ("worlds.view_world", "worlds.view_generationrun")
WORLD_ID = OpenApiParameter("world_id", OpenApiTypes.INT, OpenApiParameter.PATH, description="ID of the world.")
RUN_ID = OpenApiParameter("run_id", OpenApiTypes.INT, OpenApiParameter.PATH, description="ID of the run.")


def get_world(world_id: str) -> World:
    return get_object_or_404(World.objects.select_related("created_by", "live_run"), pk=world_id)


def get_run(run_id: str) -> GenerationRun:
    return get_object_or_404(GenerationRun, pk=run_id)


# --- worlds -------------------------------------------------------------------------------


class WorldListCreateApi(Api):
    required_perms = {"GET": VIEW_WORLDS, "POST": ("worlds.add_world",)}
    pagination_class = Pagination

    @extend_schema(
        summary="List worlds, newest first, each with its latest run",
        parameters=[PageQuerySerializer],
        responses={200: WorldSerializer(many=True), **errors(400, 403)},
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(World.objects.select_related("created_by", "live_run"), request, view=self)
        return paginator.get_paginated_response(WorldSerializer(page, many=True).data)

    @extend_schema(
        summary="Create a world", request=WorldInputSerializer, responses={201: WorldSerializer, **errors(400, 403)}
    )
    def post(self, request):
        data = WorldInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        world = services.world_create(user=request.user, **data.validated_data)
        return Response(WorldSerializer(world).data, status=status.HTTP_201_CREATED)


@extend_schema(parameters=[WORLD_ID])
class WorldDetailApi(Api):
    required_perms = {"GET": VIEW_WORLDS, "PATCH": ("worlds.change_world",), "DELETE": ("worlds.delete_world",)}

    @extend_schema(summary="Get a world", responses={200: WorldSerializer, **errors(403, 404)})
    def get(self, request, world_id):
        return Response(WorldSerializer(get_world(world_id)).data)

    @extend_schema(
        summary="Change a world (the next run uses the new definition)",
        request=WorldInputSerializer,
        responses={200: WorldSerializer, **errors(400, 403, 404)},
    )
    def patch(self, request, world_id):
        world = get_world(world_id)
        data = WorldInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        world = services.world_update(world=world, user=request.user, **data.validated_data)
        return Response(WorldSerializer(world).data)

    @extend_schema(
        summary="Delete a world, its runs and all their content",
        description="Active runs are stopped and every document and image is removed by a durable "
        "cleanup workflow; the world is gone (and nothing of it public) at once.",
        responses={204: None, **errors(403, 404, 503)},
    )
    def delete(self, request, world_id):
        services.world_delete(world=get_world(world_id), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(parameters=[WORLD_ID])
class WorldGenerateApi(Api):
    required_perms = {"POST": ("worlds.start_run",)}
    throttle_scope = "generate"  # LLM work: the stricter API_GENERATE_THROTTLE_RATE

    @extend_schema(
        summary="Start generating a world",
        request=None,
        description="Starts a run and answers at once; follow it at `/api/runs/{id}/`.",
        responses={202: RunSerializer, **errors(400, 403, 404, 409, 503)},
    )
    def post(self, request, world_id):
        run = services.generation_start(world=get_world(world_id), user=request.user)
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(parameters=[WORLD_ID])
class WorldCharactersApi(Api):
    required_perms = {"GET": VIEW_RUNS}

    @extend_schema(
        summary="Characters of the world's live (published) run (empty if nothing is published)",
        responses={200: CharacterSerializer(many=True), **errors(403, 404)},
    )
    def get(self, request, world_id):
        run = get_world(world_id).live_run
        if run is None:
            return Response([])
        post_counts = selectors.run_post_counts_by_character(run=run)
        characters = selectors.run_characters(run=run)
        return Response(CharacterSerializer(characters, many=True, context={"post_counts": post_counts}).data)


@extend_schema(parameters=[WORLD_ID])
class WorldPostsApi(Api):
    required_perms = {"GET": VIEW_RUNS}

    @extend_schema(
        summary="Feed of the world's live (published) run, oldest or newest first (empty if nothing is published)",
        description="`order=oldest` (the default) gives the posts in posting order: every character's first "
        "post, then every second post, ..., then a live world's posts day by day as they were posted. "
        "`order=newest` gives the same posts in reverse, the newest first. `character` keeps one character's "
        "posts, in the same order. `next` and `previous` keep the query (order and character included): "
        "follow them to page on.",
        parameters=[PostQuerySerializer],
        responses={200: PostPageSerializer, **errors(400, 403, 404)},
    )
    def get(self, request, world_id):
        query = PostQuerySerializer(data=query_data(request))
        query.is_valid(raise_exception=True)
        limit, offset = query.validated_data["limit"], query.validated_data["offset"]
        run = get_world(world_id).live_run
        posts = (
            []
            if run is None
            else selectors.run_posts(
                run=run,
                character_index=query.validated_data.get("character"),
                offset=offset,
                limit=limit + 1,
                newest_first=query.validated_data["order"] == "newest",
            )
        )
        url = request.build_absolute_uri()
        return Response(
            {
                "next": replace_query_param(url, "offset", offset + limit) if len(posts) > limit else None,
                "previous": replace_query_param(url, "offset", max(offset - limit, 0)) if offset else None,
                "results": PostSerializer(posts[:limit], many=True).data,
            }
        )


# --- runs ---------------------------------------------------------------------------------


@extend_schema(parameters=[RUN_ID])
class RunDetailApi(Api):
    required_perms = {"GET": ("worlds.view_generationrun",)}

    @extend_schema(
        summary="A run's progress",
        responses={200: RunDetailSerializer, **errors(403, 404)},
        description="The progress mirrored on the run row; while the run is active also `live`, the "
        "workflow's own progress, unless Temporal does not answer, and `waiting`, the LLM calls waiting for "
        "their provider to come back (an outage does not fail a run; it waits). `failed` lists the items "
        "that failed for good: the run went on without them, and fails past GENERATION_MAX_FAILED_SHARE.",
    )
    def get(self, request, run_id):
        run = get_run(run_id)
        try:
            run.failed = selectors.run_failed_items(run=run) if run.failed_items else []
            if run.is_active:
                run.waiting = selectors.run_waiting(run=run)
        except Exception as exc:  # optional extras: Mongo may be unreachable
            logger.warning("failed items or waiting calls of %s unavailable: %s", run.workflow_id, exc)
        if run.is_active:
            try:
                run.live = selectors.run_live_progress(run=run)
            except Exception as exc:  # an optional extra: the mirrored fields still answer
                logger.warning("live progress of %s unavailable: %s", run.workflow_id, exc)
        return Response(RunDetailSerializer(run).data)


@extend_schema(parameters=[RUN_ID])
class RunQualityApi(Api):
    required_perms = {"GET": ("worlds.view_generationrun",)}

    @extend_schema(
        summary="A run's content quality report",
        responses={200: QualityReportSerializer, **errors(403, 404)},
        description="Variety, copying and repetition of the captions so far, repairs per LLM call, and each "
        "character's overlap with the others; `flags` name the targets missed. A run with no posts yet has "
        "zeros and no flags.",
    )
    def get(self, request, run_id):
        run = get_object_or_404(GenerationRun.objects.select_related("world"), pk=run_id)
        return Response(QualityReportSerializer(selectors.run_quality(run=run).as_dict()).data)


class RunCommandApi(Api):
    """POST a command about a run; answers 202 with the run (the workflow acts on it shortly)."""

    def post(self, request, run_id):
        run = get_run(run_id)
        self.command(request, run)
        run.refresh_from_db()
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(
    summary="Approve the world bible (not of a run you started)",
    parameters=[RUN_ID],
    request=None,
    responses={202: RunSerializer, **errors(403, 404, 409, 503)},
)
class RunApproveApi(RunCommandApi):
    required_perms = {"POST": ("worlds.review_run",)}

    def command(self, request, run):
        services.generation_approve(run=run, user=request.user)


@extend_schema(
    summary="Reject the world bible with feedback; it is regenerated with it",
    parameters=[RUN_ID],
    request=RejectInputSerializer,
    responses={202: RunSerializer, **errors(400, 403, 404, 409, 503)},
)
class RunRejectApi(RunCommandApi):
    required_perms = {"POST": ("worlds.review_run",)}
    throttle_scope = "generate"  # the bible is written again: LLM work

    def command(self, request, run):
        data = RejectInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.generation_reject(run=run, feedback=data.validated_data["feedback"], user=request.user)


@extend_schema(
    summary="Cancel an active run (what was made is kept)",
    parameters=[RUN_ID],
    request=None,
    responses={202: RunSerializer, **errors(403, 404, 409, 503)},
)
class RunCancelApi(RunCommandApi):
    required_perms = {"POST": ("worlds.cancel_run",)}

    def command(self, request, run):
        services.generation_cancel(run=run, user=request.user)


@extend_schema(
    summary="Render again the images of a finished run that the media service could not make",
    parameters=[RUN_ID],
    request=None,
    responses={202: RunSerializer, **errors(403, 404, 409, 503)},
)
class RunRerenderApi(RunCommandApi):
    required_perms = {"POST": ("worlds.start_run",)}
    throttle_scope = "generate"  # LLM work: the stricter API_GENERATE_THROTTLE_RATE

    def command(self, request, run):
        services.generation_rerender(run=run, user=request.user)


@extend_schema(
    summary="Resume a run that finished short: it goes on as the same run, skipping every item already stored",
    description="For a failed, cancelled, expired or budget-stopped run, or a completed one with failed items "
    "(which are made again). Items already stored are not generated or billed again. The resumed run keeps "
    "the world definition it started with, except the token budget, which is the world's current one.",
    parameters=[RUN_ID],
    request=None,
    responses={202: RunSerializer, **errors(400, 403, 404, 409, 503)},
)
class RunResumeApi(RunCommandApi):
    required_perms = {"POST": ("worlds.start_run",)}
    throttle_scope = "generate"  # LLM work: the stricter API_GENERATE_THROTTLE_RATE

    def command(self, request, run):
        services.generation_resume(run=run, user=request.user)


@extend_schema(
    summary="Publish a finished run: it becomes what viewers see (also: roll back to an earlier run)",
    parameters=[RUN_ID],
    request=None,
    responses={202: RunSerializer, **errors(403, 404, 409)},
)
class RunPublishApi(RunCommandApi):
    required_perms = {"POST": ("worlds.publish_run",)}

    def command(self, request, run):
        services.run_publish(run=run, user=request.user)


# --- regenerating one item ---------------------------------------------------------------------


@extend_schema(parameters=[RUN_ID])
class RunRegenerateApi(Api):
    required_perms = {"POST": ("worlds.start_run",)}
    throttle_scope = "generate"  # LLM work: the stricter API_GENERATE_THROTTLE_RATE

    @extend_schema(
        summary="Regenerate one character (profile, avatar, plan, posts) or one post (caption, image)",
        description="Of a finished run, with optional feedback. The version it replaces is kept (see "
        "`versions`); the feed shows the new one once it is written. A second request for the same item (or "
        "its character, or one of its posts) while one runs answers 409. Poll `GET /api/regenerations/{id}/`.",
        request=RegenerateInputSerializer,
        responses={202: RegenerationSerializer, **errors(400, 403, 404, 409, 503)},
    )
    def post(self, request, run_id):
        run = get_run(run_id)
        data = RegenerateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        regeneration = services.item_regenerate(
            run=run,
            character_index=data.validated_data["character"],
            post_index=data.validated_data["post"],
            feedback=data.validated_data["feedback"],
            user=request.user,
        )
        return Response(RegenerationSerializer(regeneration).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(parameters=[RUN_ID])
class RunItemVersionsApi(Api):
    required_perms = {"GET": ("worlds.view_generationrun",)}

    @extend_schema(
        summary="A character's or post's versions: the current one, the earlier ones, its regenerations",
        parameters=[ItemQuerySerializer],
        responses={200: ItemVersionsSerializer, **errors(400, 403, 404)},
    )
    def get(self, request, run_id):
        run = get_run(run_id)
        query = ItemQuerySerializer(data=query_data(request))
        query.is_valid(raise_exception=True)
        character, post = query.validated_data["character"], query.validated_data.get("post")
        versions = selectors.item_versions(run=run, character_index=character, post_index=post)
        if versions["current"] is None:
            item = f"character {character}" if post is None else f"post {character}.{post}"
            raise exceptions.NotFound(f"{run} has no {item}")
        return Response(ItemVersionsSerializer(versions).data)


class RegenerationDetailApi(Api):
    required_perms = {"GET": ("worlds.view_generationrun",)}

    @extend_schema(
        summary="A regeneration: running, completed, failed or cancelled",
        parameters=[OpenApiParameter("regeneration_id", OpenApiTypes.INT, OpenApiParameter.PATH)],
        responses={200: RegenerationSerializer, **errors(403, 404)},
    )
    def get(self, request, regeneration_id):
        regeneration = get_object_or_404(Regeneration.objects.select_related("run", "requested_by"), pk=regeneration_id)
        return Response(RegenerationSerializer(regeneration).data)


# --- live worlds ----------------------------------------------------------------------------------


def latest_live(world: World) -> LiveWorld:
    live = world.lives.select_related("run", "started_by").order_by("-number").first()
    if live is None:
        raise exceptions.NotFound(f"{world} has never been live")
    return live


@extend_schema(parameters=[WORLD_ID])
class WorldLiveApi(Api):
    required_perms = {"GET": ("worlds.view_liveworld",), "POST": ("worlds.control_live_world",)}

    @property
    def throttle_scope(self) -> str | None:
        return "generate" if self.request.method == "POST" else None  # going live starts LLM work

    @extend_schema(
        summary="The world's live state: its latest time live, with the latest days and every time it was live",
        responses={200: LiveWorldDetailSerializer, **errors(403, 404)},
    )
    def get(self, request, world_id):
        world = get_world(world_id)
        live = latest_live(world)
        live.timeline = selectors.live_timeline(live=live)
        live.lives = selectors.live_history(world=world)
        live.tokens_used_all_lives = sum(life.tokens_used for life in live.lives)
        return Response(LiveWorldDetailSerializer(live).data)

    @extend_schema(
        summary="Take a published world live: its cast goes on posting, a world day at a time",
        description="The first day starts at once. Each day: an event, posts from a fair rotation of the "
        "cast (with images), comments and replies, likes and follows, and each acting character's memory. A "
        "world that was live before goes on from its last day. `daily_token_budget` caps each day, "
        "`token_budget` the whole time live (every attempt counted): past it the world pauses and says why. A "
        "run whose cast is not all profiled is refused (400).",
        request=GoLiveSerializer,
        responses={202: LiveWorldSerializer, **errors(400, 403, 404, 409, 503)},
    )
    def post(self, request, world_id):
        data = GoLiveSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        live = services.world_go_live(world=get_world(world_id), user=request.user, **data.validated_data)
        return Response(LiveWorldSerializer(live).data, status=status.HTTP_202_ACCEPTED)


LIVE_COMMAND_INPUTS = {
    "pause": ("pause", None),
    "resume": ("resume", None),
    "stop": ("stop", None),
    "cadence": ("set_cadence", CadenceSerializer),
    "budget": ("set_token_budget", LiveTokenBudgetSerializer),
    "events": ("inject_event", InjectEventSerializer),
}
LIVE_COMMANDS_THAT_SPEND = {"resume", "budget", "events"}  # they lead to LLM work: the stricter throttle


@extend_schema(
    parameters=[
        WORLD_ID,
        OpenApiParameter("command", OpenApiTypes.STR, OpenApiParameter.PATH, enum=list(LIVE_COMMAND_INPUTS)),
    ]
)
class WorldLiveCommandApi(Api):
    required_perms = {"POST": ("worlds.control_live_world",)}

    @property
    def throttle_scope(self) -> str | None:
        return "generate" if self.kwargs.get("command") in LIVE_COMMANDS_THAT_SPEND else None

    @extend_schema(
        operation_id="worlds_live_command",
        summary="Pause, resume or stop a live world, change its cadence or token budget, or inject an event",
        description='`cadence` takes `{"day_seconds": 120}`, `budget` takes `{"token_budget": 800000}` (what '
        'this time live may spend in all), `events` takes `{"text": "a comet splits the sky"}` (the next day to '
        "start is about it; the answer says which). The world's workflow validates each command against its "
        "state and answers at once: 200 when taken, 409 with the reason when refused.",
        request=OpenApiTypes.OBJECT,
        responses={200: LiveCommandResultSerializer, **errors(400, 403, 404, 409, 503)},
    )
    def post(self, request, world_id, command):
        if command not in LIVE_COMMAND_INPUTS:
            raise exceptions.NotFound(f"no live command {command!r}; one of: {', '.join(LIVE_COMMAND_INPUTS)}")
        name, serializer = LIVE_COMMAND_INPUTS[command]
        value = None
        if serializer is not None:
            data = serializer(data=request.data)
            data.is_valid(raise_exception=True)
            [value] = data.validated_data.values()
        live = latest_live(get_world(world_id))
        said = services.live_command(live=live, command=name, value=value, user=request.user)
        live.refresh_from_db()
        return Response({"detail": said, "live": LiveWorldSerializer(live).data})


@extend_schema(parameters=[WORLD_ID])
class WorldUnpublishApi(Api):
    required_perms = {"POST": ("worlds.publish_run",)}

    @extend_schema(
        summary="Unpublish a world: viewers no longer see it",
        request=None,
        responses={200: WorldSerializer, **errors(403, 404, 409)},
    )
    def post(self, request, world_id):
        services.world_unpublish(world=get_world(world_id), user=request.user)
        return Response(WorldSerializer(get_world(world_id)).data)


@extend_schema(exclude=True)
class NotFoundApi(APIView):
    """Anything else under /api/: a JSON 404 rather than Django's HTML page."""

    permission_classes = [AllowAny]

    def http_method_not_allowed(self, request, *args, **kwargs):
        raise exceptions.NotFound()

    options = http_method_not_allowed
