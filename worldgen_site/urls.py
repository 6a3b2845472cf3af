from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from worlds import temporal_codec, views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("images/<str:image_id>.png", views.image, name="image"),
    path("api/", include("worlds.api_urls")),
    path("worlds/", include("worlds.urls")),
    # The Temporal UI/CLI codec server (worlds/temporal_codec.py): decode and encode.
    *(path(f"temporal-codec/{op}", temporal_codec.codec, {"operation": op}) for op in ("decode", "encode")),
    path("", RedirectView.as_view(url="/worlds/", permanent=False)),
]
