"""Minimal admin: world definitions and their runs (actions and previews come with the staff-surface issue)."""

from django.contrib import admin

from worlds.models import GenerationRun, World


class RunInline(admin.TabularInline):
    model = GenerationRun
    extra = 0
    can_delete = False
    fields = ("number", "status", "stage", "characters_done", "posts_done", "degraded_items", "tokens_used", "error")
    readonly_fields = fields
    show_change_link = True


@admin.register(World)
class WorldAdmin(admin.ModelAdmin):
    list_display = ("name", "genre", "character_count", "posts_per_character", "requires_approval", "created_at")
    search_fields = ("name", "premise")
    inlines = [RunInline]


@admin.register(GenerationRun)
class GenerationRunAdmin(admin.ModelAdmin):
    list_display = ("__str__", "status", "stage", "characters_done", "posts_done", "degraded_items", "tokens_used",
                    "started_at", "finished_at")
    list_filter = ("status",)
    readonly_fields = [field.name for field in GenerationRun._meta.fields]

    def has_add_permission(self, request):
        return False  # runs are started through worlds.services, never typed in
