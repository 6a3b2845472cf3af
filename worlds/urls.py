"""World viewer routes (public, read-only; see worlds.views)."""

from django.urls import path

from worlds import views

app_name = "worlds"

urlpatterns = [
    path("", views.world_list, name="world_list"),
    path("<int:world_id>/", views.world_detail, name="world_detail"),
    path("<int:world_id>/characters/<int:index>/", views.character_detail, name="character_detail"),
    path("<int:world_id>/feed/", views.world_feed, name="world_feed"),
]
