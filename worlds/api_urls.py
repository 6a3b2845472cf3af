"""API routes (filled in by worlds/api.py)."""

urlpatterns = []
