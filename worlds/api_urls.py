"""API routes, under /api/."""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from worlds import api

urlpatterns = [
    path("worlds/", api.WorldListCreateApi.as_view(), name="api-worlds"),
    path("worlds/<str:world_id>/", api.WorldDetailApi.as_view(), name="api-world"),
    path("worlds/<str:world_id>/generate/", api.WorldGenerateApi.as_view(), name="api-world-generate"),
    path("worlds/<str:world_id>/characters/", api.WorldCharactersApi.as_view(), name="api-world-characters"),
    path("worlds/<str:world_id>/posts/", api.WorldPostsApi.as_view(), name="api-world-posts"),
    path("worlds/<str:world_id>/live/", api.WorldLiveApi.as_view(), name="api-world-live"),
    path("worlds/<str:world_id>/live/<str:command>/", api.WorldLiveCommandApi.as_view(), name="api-world-live-command"),
    path("worlds/<str:world_id>/unpublish/", api.WorldUnpublishApi.as_view(), name="api-world-unpublish"),
    path("runs/<str:run_id>/", api.RunDetailApi.as_view(), name="api-run"),
    path("runs/<str:run_id>/quality/", api.RunQualityApi.as_view(), name="api-run-quality"),
    path("runs/<str:run_id>/approve/", api.RunApproveApi.as_view(), name="api-run-approve"),
    path("runs/<str:run_id>/reject/", api.RunRejectApi.as_view(), name="api-run-reject"),
    path("runs/<str:run_id>/cancel/", api.RunCancelApi.as_view(), name="api-run-cancel"),
    path("runs/<str:run_id>/rerender/", api.RunRerenderApi.as_view(), name="api-run-rerender"),
    path("runs/<str:run_id>/resume/", api.RunResumeApi.as_view(), name="api-run-resume"),
    path("runs/<str:run_id>/regenerate/", api.RunRegenerateApi.as_view(), name="api-run-regenerate"),
    path("runs/<str:run_id>/versions/", api.RunItemVersionsApi.as_view(), name="api-run-versions"),
    path("regenerations/<str:regeneration_id>/", api.RegenerationDetailApi.as_view(), name="api-regeneration"),
    path("runs/<str:run_id>/publish/", api.RunPublishApi.as_view(), name="api-run-publish"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    re_path(r"", api.NotFoundApi.as_view()),  # a JSON 404 for any other path under /api/
]
