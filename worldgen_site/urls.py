from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from worlds import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("images/<str:image_id>.png", views.image, name="image"),
    path("api/", include("worlds.api_urls")),
    path("worlds/", include("worlds.urls")),
    path("", RedirectView.as_view(url="/worlds/", permanent=False)),
]
