"""Admin for content staff: worlds, their runs and the audit trail.

Every action is a thin call to ``worlds.services`` (which checks the role,
writes the audit trail and refuses what cannot be done) and reports a clear
success or error message.
"""

import copy
from urllib.parse import quote

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _

from generation import quality, search_attributes
from generation.contracts import Stage
from generation.documents import ImageStatus
from generation.living.contracts import MAX_DAY_SECONDS, MAX_EVENT_CHARS, MIN_DAY_SECONDS
from worlds import selectors, services
from worlds.models import (
    MIN_TOKEN_BUDGET,
    AuditEvent,
    GenerationRun,
    LiveWorld,
    Regeneration,
    World,
    validate_daily_token_budget,
    validate_feedback_length,
    validate_token_budget,
)

STAGES = [Stage.BIBLE, Stage.APPROVAL, Stage.CHARACTERS, Stage.POSTS, Stage.DONE]
Status = GenerationRun.Status


def progress_bar(run: GenerationRun | None) -> str:
    if run is None:
        return format_html('<span class="wg-muted">{}</span>', "never generated")
    total = 2 + run.characters_total + run.posts_total
    done = (run.stage not in (Stage.QUEUED, Stage.BIBLE)) + (run.status == Status.COMPLETED)
    done += run.characters_done + run.posts_done
    percent = 100 if run.status == Status.COMPLETED else min(99, int(100 * done / max(total, 1)))
    return format_html(
        '<div class="wg-status wg-{}">{}</div><div class="wg-bar" title="{}%"><span style="width:{}%"></span></div>'
        '<div class="wg-muted">{}/{} characters, {}/{} posts</div>',
        run.status,
        run.get_status_display(),
        percent,
        percent,
        run.characters_done,
        run.characters_total,
        run.posts_done,
        run.posts_total,
    )


def temporal_link(run: GenerationRun) -> str:
    if not settings.TEMPORAL_UI_URL:
        return run.workflow_id
    url = f"{settings.TEMPORAL_UI_URL}/namespaces/{settings.TEMPORAL_NAMESPACE}/workflows/{run.workflow_id}"
    return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', url, run.workflow_id)


def world_workflows_url(world_id: int) -> str | None:
    """The Temporal UI's list of a world's workflows (by the WorldId search attribute), if it has one."""
    if not (settings.TEMPORAL_UI_URL and settings.TEMPORAL_SEARCH_ATTRIBUTES):
        return None
    namespace = quote(settings.TEMPORAL_NAMESPACE, safe="")
    visibility_query = quote(search_attributes.query(world_id), safe="")
    return f"{settings.TEMPORAL_UI_URL}/namespaces/{namespace}/workflows?query={visibility_query}"


class RunPermissions:
    """What the admin's actions check (``permissions=[...]``): the run roles of worlds.staff_groups."""

    def has_start_run_permission(self, request):
        return request.user.has_perm("worlds.start_run")

    def has_cancel_run_permission(self, request):
        return request.user.has_perm("worlds.cancel_run")

    def has_review_run_permission(self, request):
        return request.user.has_perm("worlds.review_run")

    def has_publish_run_permission(self, request):
        return request.user.has_perm("worlds.publish_run")


class FeedbackForm(forms.Form):
    feedback = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5, "cols": 70}),
        validators=[validate_feedback_length],
        help_text="What should change in the world bible? The bible is regenerated with it.",
    )


class RegenerateForm(forms.Form):
    feedback = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 70}),
        validators=[validate_feedback_length],
        help_text='What should the new version change? For example "make her grumpier". Optional.',
    )


class GoLiveForm(forms.Form):
    day_seconds = forms.FloatField(
        min_value=MIN_DAY_SECONDS,
        max_value=MAX_DAY_SECONDS,
        initial=3600,
        help_text=f"A world day every this many seconds ({MIN_DAY_SECONDS:g} at least: a minute, for a demo).",
    )
    posts_per_day = forms.IntegerField(min_value=1, max_value=50, initial=3, help_text="Across the cast, in turn.")
    comments_per_day = forms.IntegerField(min_value=0, max_value=50, initial=2, help_text="Each one answered.")
    daily_token_budget = forms.IntegerField(
        min_value=MIN_TOKEN_BUDGET,
        initial=20_000,
        validators=[validate_daily_token_budget],
        help_text="A day makes no LLM call past this many tokens.",
    )
    token_budget = forms.IntegerField(
        min_value=MIN_TOKEN_BUDGET,
        required=False,
        validators=[validate_token_budget],
        help_text="What this time live may spend in all, every attempt counted; past it the world pauses. "
        "Empty: the world's token budget.",
    )
    ends_at = forms.DateTimeField(required=False, help_text="Optional: no day starts after it (UTC).")


class CadenceForm(forms.Form):
    day_seconds = forms.FloatField(min_value=MIN_DAY_SECONDS, max_value=MAX_DAY_SECONDS)


class InjectEventForm(forms.Form):
    text = forms.CharField(max_length=MAX_EVENT_CHARS, help_text="What happens; the next day is about it.")


class LiveTokenBudgetForm(forms.Form):
    token_budget = forms.IntegerField(
        min_value=MIN_TOKEN_BUDGET, validators=[validate_token_budget], help_text="What it may spend in all."
    )


LIVE_FORMS = {"set_cadence": CadenceForm, "set_token_budget": LiveTokenBudgetForm, "inject_event": InjectEventForm}


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records staff look at: runs, live worlds, regenerations and audit events are written only through
    worlds.services (from a world's page, its preview or the API), never added, changed or deleted here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class RunInline(admin.TabularInline):
    model = GenerationRun
    extra = 0
    can_delete = False
    fields = (
        "number",
        "live",
        "status",
        "stage",
        "characters_done",
        "posts_done",
        "degraded_items",
        "tokens_used",
        "started_by",
        "error",
    )
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="Live")
    def live(self, run: GenerationRun):
        return "live" if run.world.live_run_id == run.pk else ""


WORLD_LIST_COLUMNS = ("name", "genre", "character_count", "posts_per_character", "requires_approval")


class WorldChangeList(ChangeList):
    """Loads only the shown columns of the page's worlds: SQLite sorts whole rows (premise and all) to find a
    page, which was the slowest query of the list with 10,000 worlds. Actions get the full rows (get_queryset)."""

    def get_results(self, request):
        self.queryset = self.queryset.only(*WORLD_LIST_COLUMNS)
        super().get_results(request)


@admin.register(World)
class WorldAdmin(RunPermissions, admin.ModelAdmin):
    list_display = (*WORLD_LIST_COLUMNS, "generation")
    search_fields = ("name", "premise")
    list_filter = ("requires_approval", "visual_style", "language")
    inlines = [RunInline]
    actions = ["generate", "cancel", "approve", "reject", "delete_selected"]
    readonly_fields = ("generation", "live", "viewer_link", "preview")
    fieldsets = [
        (None, {"fields": ("name", "premise", ("genre", "tone"), ("language", "visual_style"))}),
        (
            "Size and review",
            {
                "fields": (
                    ("character_count", "posts_per_character"),
                    "requires_approval",
                    "token_budget",
                    "model_override",
                )
            },
        ),
        ("Generated", {"fields": ("generation", "live", "viewer_link", "preview")}),
    ]

    class Media:
        css = {"all": ["worlds/admin.css"]}

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("runs")

    def get_changelist(self, request, **kwargs):
        return WorldChangeList

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if str(object_id).isdigit():  # the template links to the world's workflows in the Temporal UI
            extra_context = {**(extra_context or {}), "temporal_workflows_url": world_workflows_url(int(object_id))}
        return super().change_view(request, object_id, form_url, extra_context)

    def action_checkbox(self, obj):
        """Django's markup (tests compare it), without rendering a widget template for each row of the list:
        that was a fifth of the list's CPU time."""
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME,
            obj.pk,
            format_html(_("Select this object for an action - {}"), str(obj)),
        )

    @admin.display(description="Latest run")
    def generation(self, world: World):
        runs = sorted(world.runs.all(), key=lambda run: run.number) if world.pk else []
        return progress_bar(runs[-1] if runs else None)

    @admin.display(description="Live run")
    def live(self, world: World):
        if world.live_run is None:
            return "Not published: viewers do not see this world. Publish a finished run from the run list."
        run = world.live_run
        return format_html(
            '<a href="{}">Run {}</a> ({}), published: viewers see it. To roll back, publish an '
            "earlier run from the run list.",
            reverse("admin:worlds_generationrun_change", args=[run.pk]),
            run.number,
            run.get_status_display().lower(),
        )

    @admin.display(description="World viewer")
    def viewer_link(self, world: World):
        if not world.pk:
            return "-"
        return format_html('<a href="/worlds/{}/" target="_blank">Open the world viewer</a>', world.pk)

    @admin.display(description="Preview of the latest run (staff only)")
    def preview(self, world: World):
        run = selectors.world_latest_run(world=world) if world.pk else None
        if run is None:
            return "Nothing generated yet."
        if not run.bible_cleared:
            return f"Run {run.number}: its bible is waiting for a reviewer (see the world bible on the run's approval)."
        bible = selectors.run_bible(run=run) or {}
        characters = selectors.run_characters(run=run)
        posts = selectors.run_posts(run=run, limit=6)
        made_by = selectors.item_provenance(run=run, characters=characters, posts=posts)

        def regenerate(*position: int) -> str:
            url = reverse("admin:worlds_world_regenerate", args=[world.pk, run.pk, *position])
            return format_html('<a href="{}">Versions and regenerate</a>', url)

        return format_html(
            '<div class="wg-preview"><h3>{}</h3><p>{}</p>'
            '<div class="wg-cast">{}</div><div class="wg-posts">{}</div></div>',
            bible.get("title", "(no bible yet)"),
            bible.get("setting", ""),
            format_html_join(
                "",
                '<figure>{}<figcaption>{} <span class="wg-muted">@{}</span>'
                '<small class="wg-muted">v{} · {}</small><small>{}</small></figcaption></figure>',
                (
                    (
                        _image(c),
                        c.get("name", ""),
                        c.get("handle", ""),
                        c.get("version", 1),
                        made_by[(c["index"],)],
                        regenerate(c["index"]),
                    )
                    for c in characters
                ),
            ),
            format_html_join(
                "",
                '<figure>{}<figcaption>{}<small class="wg-muted">v{} · {}</small><small>{}</small></figcaption>'
                "</figure>",
                (
                    (
                        _image(p),
                        p.get("caption", ""),
                        p.get("version", 1),
                        made_by[(p["character_index"], p["index"])],
                        regenerate(p["character_index"], p["index"]),
                    )
                    for p in posts
                ),
            ),
        )

    # --- actions on the world page (buttons) -----------------------------------
    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:world_id>/generate/", view(self.generate_view), name="worlds_world_generate"),
            path("<int:world_id>/cancel/", view(self.cancel_view), name="worlds_world_cancel"),
            path("<int:world_id>/approve/", view(self.approve_view), name="worlds_world_approve"),
            path("<int:world_id>/reject/", view(self.reject_view), name="worlds_world_reject"),
            path("<int:world_id>/unpublish/", view(self.unpublish_view), name="worlds_world_unpublish"),
            path("<int:world_id>/live/", view(self.live_view), name="worlds_world_live"),
            path(
                "<int:world_id>/runs/<int:run_id>/regenerate/<int:character>/",
                view(self.regenerate_view),
                name="worlds_world_regenerate",
            ),
            path(
                "<int:world_id>/runs/<int:run_id>/regenerate/<int:character>/<int:post>/",
                view(self.regenerate_view),
                name="worlds_world_regenerate",
            ),
        ] + super().get_urls()

    def _world_action(self, request, world_id: int, do) -> HttpResponseRedirect:
        world = get_object_or_404(World, pk=world_id)
        if request.method == "POST":
            self._report(request, world, do)
        return HttpResponseRedirect(reverse("admin:worlds_world_change", args=[world.pk]))

    def generate_view(self, request, world_id: int):
        return self._world_action(request, world_id, lambda world: self._generate(request, world))

    def cancel_view(self, request, world_id: int):
        return self._world_action(request, world_id, lambda world: self._cancel(request, world))

    def approve_view(self, request, world_id: int):
        return self._world_action(request, world_id, lambda world: self._approve(request, world))

    def unpublish_view(self, request, world_id: int):
        return self._world_action(request, world_id, lambda world: self._unpublish(request, world))

    def reject_view(self, request, world_id: int):
        world = get_object_or_404(World, pk=world_id)
        form = FeedbackForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            self._report(request, world, lambda w: self._reject(request, w, form.cleaned_data["feedback"]))
            return HttpResponseRedirect(reverse("admin:worlds_world_change", args=[world.pk]))
        return self._feedback_page(request, [world], form)

    def regenerate_view(self, request, world_id: int, run_id: int, character: int, post: int | None = None):
        """An item's current and earlier versions, and a form to regenerate it with feedback."""
        run = get_object_or_404(GenerationRun.objects.select_related("world"), pk=run_id, world_id=world_id)
        if not self.has_view_permission(request, run.world):
            raise PermissionDenied
        form = RegenerateForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                regeneration = services.item_regenerate(
                    run=run,
                    character_index=character,
                    post_index=post,
                    feedback=form.cleaned_data["feedback"],
                    user=request.user,
                )
            except services.ActionError as exc:
                self.message_user(request, f"{run.world}: {exc}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"{run.world}: {regeneration.item} of run {run.number} is being regenerated; "
                    "the feed shows the new version once it is written.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(reverse("admin:worlds_world_change", args=[world_id]))
        versions = selectors.item_versions(run=run, character_index=character, post_index=post)
        if versions["current"] is None:
            raise Http404("no such character or post")
        item = f"character {character}" if post is None else f"post {character}.{post}"
        context = {
            **self.admin_site.each_context(request),
            "title": f"{item.capitalize()} of {run}",
            "run": run,
            "versions": [versions["current"], *versions["earlier"]],
            "regenerations": versions["regenerations"],
            "form": form,
            "can_regenerate": request.user.has_perm("worlds.start_run"),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/worlds/world/regenerate.html", context)

    def live_view(self, request, world_id: int):
        """The world's life: go live, or its state, its latest days and its commands."""
        world = get_object_or_404(World, pk=world_id)
        if not request.user.has_perm("worlds.view_liveworld"):
            raise PermissionDenied
        lives = selectors.live_history(world=world)
        live = lives[0] if lives else None
        command = request.POST.get("command", "") if request.method == "POST" else ""
        go_live = GoLiveForm(request.POST if command == "go_live" else None)
        command_form = LIVE_FORMS[command](request.POST) if command in LIVE_FORMS else None
        if command == "go_live" and go_live.is_valid():
            self._report(request, world, lambda w: self._go_live(request, w, go_live.cleaned_data))
            return HttpResponseRedirect(request.path)
        if command and command != "go_live" and live is not None and (command_form is None or command_form.is_valid()):
            value = next(iter(command_form.cleaned_data.values())) if command_form else None
            self._report(
                request,
                world,
                lambda w: services.live_command(live=live, command=command, value=value, user=request.user),
            )
            return HttpResponseRedirect(request.path)
        context = {
            **self.admin_site.each_context(request),
            "title": f"{world}: living",
            "world": world,
            "live": live,
            "timeline": selectors.live_timeline(live=live) if live else [],
            "lives": lives,
            "tokens_used_all_lives": sum(life.tokens_used for life in lives),
            "go_live": go_live,
            "cadence": command_form if command == "set_cadence" else CadenceForm(),
            "budget": command_form if command == "set_token_budget" else LiveTokenBudgetForm(),
            "inject": command_form if command == "inject_event" else InjectEventForm(),
            "can_control": request.user.has_perm("worlds.control_live_world"),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/worlds/world/live.html", context)

    @staticmethod
    def _go_live(request, world: World, fields: dict) -> str:
        live = services.world_go_live(world=world, user=request.user, **fields)
        first = "its first day" if not live.first_day else f"day {live.first_day + 1} (it goes on from its last day)"
        return f"live: {first} starts now, then one every {live.day_seconds:g} s"

    # --- bulk actions (world list) ------------------------------------------------
    @admin.action(description="Generate selected worlds", permissions=["start_run"])
    def generate(self, request, queryset):
        for world in queryset:
            self._report(request, world, lambda w: self._generate(request, w))

    @admin.action(description="Cancel the active run of selected worlds", permissions=["cancel_run"])
    def cancel(self, request, queryset):
        for world in queryset:
            self._report(request, world, lambda w: self._cancel(request, w))

    @admin.action(description="Approve the world bible of selected worlds", permissions=["review_run"])
    def approve(self, request, queryset):
        for world in queryset:
            self._report(request, world, lambda w: self._approve(request, w))

    @admin.action(description="Reject the world bible of selected worlds, with feedback", permissions=["review_run"])
    def reject(self, request, queryset):
        form = FeedbackForm(request.POST if "feedback" in request.POST else None)
        if form.is_bound and form.is_valid():
            for world in queryset:
                self._report(request, world, lambda w: self._reject(request, w, form.cleaned_data["feedback"]))
            return None
        return self._feedback_page(request, list(queryset), form, bulk=True)

    # --- deletion: always through worlds.services.world_delete (stops runs, removes content) --------
    @admin.action(description="Delete selected worlds, their runs and all their content", permissions=["delete"])
    def delete_selected(self, request, queryset):
        if not request.POST.get("post"):
            return django_delete_selected(self, request, queryset)  # Django's confirmation page
        for world in queryset:
            self._report(request, world, lambda w: self._delete(request, w))
        return None

    def get_deleted_objects(self, objs, request):
        """What the confirmation page lists. The runs and their content go with the world (the service
        deletes them), so no permission on runs is needed."""
        worlds = list(objs)
        runs = sum(world.runs.count() for world in worlds)
        summary = [
            f"{world} ({pluralize_runs(world.runs.count())}, with every document and image they made)"
            for world in worlds
        ]
        return summary, {"worlds": len(worlds), "runs": runs}, set(), []

    def delete_model(self, request, obj):
        try:
            self._delete(request, obj)
        except services.ActionError as exc:
            request._world_delete_error = str(exc)

    def response_delete(self, request, obj_display, obj_id):
        error = getattr(request, "_world_delete_error", None)
        if error:
            self.message_user(request, f"{obj_display} was not deleted: {error}", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:worlds_world_change", args=[obj_id]))
        return super().response_delete(request, obj_display, obj_id)

    def _delete(self, request, world: World) -> str:
        logged = copy.copy(world)  # deleting clears the instance's pk
        services.world_delete(world=world, user=request.user)
        super().log_deletions(request, [logged])
        return "deleted; its runs are stopped and their content is being removed"

    def log_deletions(self, request, queryset):
        """Django logs before deleting; the admin log is written by _delete, once the service has deleted."""

    # --- helpers -------------------------------------------------------------------
    def _feedback_page(self, request, worlds: list[World], form: FeedbackForm, bulk: bool = False):
        context = {
            **self.admin_site.each_context(request),
            "title": "Reject the world bible",
            "worlds": worlds,
            "form": form,
            "bulk": bulk,
            "opts": self.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/worlds/world/reject.html", context)

    def _report(self, request, world: World, do) -> None:
        try:
            message = do(world)
        except services.ActionError as exc:
            self.message_user(request, f"{world}: {exc}", messages.ERROR)
        else:
            self.message_user(request, f"{world}: {message}", messages.SUCCESS)

    @staticmethod
    def _active_run(world: World) -> GenerationRun:
        run = world.runs.filter(status__in=GenerationRun.ACTIVE).order_by("-number").first()
        if run is None:
            raise services.ActionError("nothing is running")
        return run

    def _generate(self, request, world: World) -> str:
        run = services.generation_start(world=world, user=request.user)
        return f"run {run.number} started"

    def _cancel(self, request, world: World) -> str:
        run = self._active_run(world)
        services.generation_cancel(run=run, user=request.user)
        return f"run {run.number} is being cancelled"

    def _approve(self, request, world: World) -> str:
        run = self._active_run(world)
        services.generation_approve(run=run, user=request.user)
        return f"bible of run {run.number} approved; characters are being generated"

    def _unpublish(self, request, world: World) -> str:
        services.world_unpublish(world=world, user=request.user)
        return "unpublished: viewers no longer see it"

    def _reject(self, request, world: World, feedback: str) -> str:
        run = self._active_run(world)
        services.generation_reject(run=run, feedback=feedback, user=request.user)
        return f"bible of run {run.number} rejected; a new revision is being written"

    def save_model(self, request, obj, form, change):
        fields = {name: form.cleaned_data[name] for name in form.changed_data}
        if change:
            services.world_update(world=obj, user=request.user, **fields)
        else:
            saved = services.world_create(user=request.user, **form.cleaned_data)
            obj.pk, obj.created_by, obj._state.adding = saved.pk, saved.created_by, False


def pluralize_runs(count: int) -> str:
    return f"{count} run{'' if count == 1 else 's'}"


def _image(doc: dict) -> str:
    if doc.get("image_status") == ImageStatus.RENDERED:
        return format_html('<img src="/images/{}.png" alt="" loading="lazy">', doc["image_id"])
    return format_html('<div class="wg-placeholder">{}</div>', "image pending")  # args: Django 6 requires them


def _check_mark(met: bool | None) -> str:
    """✓ or ✗ against the target; blank for figures without one or not measured yet."""
    return "" if met is None else format_html('<span class="wg-{}">{}</span>', "ok" if met else "miss", "✓✗"[not met])


def _flags(flags: list[str]) -> str:
    return format_html('<span class="wg-miss">✗ {}</span>', "; ".join(flags)) if flags else _check_mark(True)


@admin.register(GenerationRun)
class GenerationRunAdmin(RunPermissions, ReadOnlyAdmin):
    list_display = (
        "__str__",
        "live",
        "status",
        "stage",
        "characters_done",
        "posts_done",
        "degraded_items",
        "tokens_used",
        "started_by",
        "started_at",
        "finished_at",
    )
    list_filter = ("status",)
    list_select_related = ("world", "started_by")
    fields = (
        "world",
        "number",
        "live",
        "status",
        "timeline",
        "temporal",
        "waiting",
        "error",
        ("requires_approval", "bible_approved"),
        ("characters_done", "characters_total"),
        ("posts_done", "posts_total"),
        "degraded_items",
        "failed",
        "tokens_used",
        "bible_revision",
        ("started_by", "approved_by", "rejected_by", "cancelled_by"),
        ("started_at", "resumes", "resumed_at", "finished_at"),
        "quality",
        "audit",
    )
    readonly_fields = [name for entry in fields for name in (entry if isinstance(entry, tuple) else (entry,))]
    actions = ["resume", "publish", "rerender_images", "reconcile"]

    class Media:
        css = {"all": ["worlds/admin.css"]}

    @admin.display(description="Live")
    def live(self, run: GenerationRun):
        return "live" if run.world.live_run_id == run.pk else ""

    @admin.action(
        description="Publish the selected run (viewers see it; an earlier run rolls the world back)",
        permissions=["publish_run"],
    )
    def publish(self, request, queryset):
        self._each_run(
            request, queryset, lambda run: services.run_publish(run=run, user=request.user), "{run} is live."
        )

    @admin.action(
        description="Check the selected runs against Temporal (correct stale rows)", permissions=["cancel_run"]
    )
    def reconcile(self, request, queryset):
        try:
            changes = services.runs_reconcile(run_ids=list(queryset.values_list("pk", flat=True)), user=request.user)
        except services.ActionError as exc:
            messages.error(request, str(exc))
            return
        for change in changes:
            messages.warning(request, change)
        messages.success(request, f"{len(changes)} of {queryset.count()} runs corrected from Temporal.")

    @admin.action(
        description="Resume the selected runs (failed, cancelled, or with failed items): stored items are kept",
        permissions=["start_run"],
    )
    def resume(self, request, queryset):
        self._each_run(
            request,
            queryset,
            lambda run: services.generation_resume(run=run, user=request.user),
            "{run} is resumed: it makes only what is missing.",
        )

    @admin.action(description="Re-render missing images of the selected runs", permissions=["start_run"])
    def rerender_images(self, request, queryset):
        self._each_run(
            request,
            queryset,
            lambda run: services.generation_rerender(run=run, user=request.user),
            "Re-rendering the {run.degraded_items} missing images of {run}.",
        )

    @staticmethod
    def _each_run(request, queryset, do, done: str) -> None:
        for run in queryset.select_related("world"):
            try:
                do(run)
            except services.ActionError as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, done.format(run=run))

    @admin.display(description="Stage timeline")
    def timeline(self, run: GenerationRun):
        current = STAGES.index(run.stage) if run.stage in STAGES else -1
        finished = run.status == Status.COMPLETED
        return format_html(
            '<ol class="wg-timeline">{}</ol>',
            format_html_join(
                "",
                '<li class="wg-{}">{}</li>',
                (
                    ("done" if finished or i < current else "current" if i == current else "todo", stage)
                    for i, stage in enumerate(STAGES)
                ),
            ),
        )

    @admin.display(description="Temporal")
    def temporal(self, run: GenerationRun):
        return temporal_link(run)

    @admin.display(description="Failed items")
    def failed(self, run: GenerationRun):
        """Items that failed for good; the run went on without them (up to GENERATION_MAX_FAILED_SHARE)."""
        if not run.failed_items:
            return "0"
        items = selectors.run_failed_items(run=run)
        return format_html(
            "{}{}",
            run.failed_items,
            format_html_join("", "<p>{} {}: {}</p>", ((i["stage"], i["index"], i["error"]) for i in items)),
        )

    @admin.display(description="Waiting for")
    def waiting(self, run: GenerationRun):
        """LLM calls retried while their provider is down: the run waits instead of failing."""
        calls = selectors.run_waiting(run=run) if run.is_active else []
        if not calls:
            return "-"
        return format_html_join(
            "",
            "<p>the LLM, for {} {}, since {}; failed attempts in a row: {}; last error: {}</p>",
            (
                (c["stage"], c["index"], c["since"].strftime("%Y-%m-%d %H:%M:%S UTC"), c["attempts"], c["error"])
                for c in calls
            ),
        )

    @admin.display(description="Content quality")
    def quality(self, run: GenerationRun):
        """The run's quality report, computed for this page only (the run list does not show it)."""
        report = selectors.run_quality(run=run)
        figures = report.run
        figure_rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    quality.LABELS[name],
                    quality.shown(getattr(figures, name)),
                    quality.THRESHOLDS.get(name, ""),
                    _check_mark(figures.checks.get(name)),
                )
                for name in quality.RUN_FIGURES
            ),
        )
        flags = format_html_join("", '<li class="wg-miss">✗ {}</li>', ((flag,) for flag in figures.flags))
        character_rows = format_html_join(
            "",
            "<tr><td>#{} @{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (c.index, c.handle, c.posts, quality.shown(c.overlap), c.repeated_sentences, _flags(c.flags))
                for c in report.characters
            ),
        )
        return format_html(
            '<div class="wg-quality"><table><tr><th>Figure</th><th>Value</th><th>Target</th><th></th></tr>{}'
            "</table><ul>{}</ul><p>{}</p><table><tr><th>Character</th><th>Posts</th><th>Overlap (target {})</th>"
            "<th>Repeated sentences (target {})</th><th>Flags</th></tr>{}</table></div>",
            figure_rows,
            flags or format_html("<li>{}</li>", "✓ No run figure misses its target."),
            "Prompt versions: " + (", ".join(report.prompt_versions) or "not recorded"),
            quality.THRESHOLDS["overlap"],
            quality.THRESHOLDS["repeated_sentences"],
            character_rows,
        )

    @admin.display(description="Audit trail")
    def audit(self, run: GenerationRun):
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li>{} — {}: {} {}</li>",
                (
                    (e.at.strftime("%Y-%m-%d %H:%M:%S"), e.actor or "system", e.get_action_display(), e.detail)
                    for e in run.audit_events.select_related("actor")
                ),
            ),
        )


@admin.register(LiveWorld)
class LiveWorldAdmin(ReadOnlyAdmin):
    list_display = (
        "__str__",
        "status",
        "first_day",
        "days",
        "next_day_at",
        "day_seconds",
        "tokens_used",
        "token_budget",
        "started_by",
    )
    list_filter = ("status",)
    list_select_related = ("world", "started_by")


@admin.register(Regeneration)
class RegenerationAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "status", "feedback", "tokens_used", "requested_by", "started_at", "finished_at")
    list_filter = ("status",)
    list_select_related = ("run__world", "requested_by")
    readonly_fields = ("run", "item", "feedback", "status", "error", "tokens_used", "requested_by", "started_at")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor", "action", "world_pk", "world_name", "run_number", "detail")
    list_filter = ("action",)
    search_fields = ("world_name", "detail")
    list_select_related = ("actor", "world", "run")
