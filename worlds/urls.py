"""World viewer routes (filled in by the viewer views)."""

urlpatterns = []
