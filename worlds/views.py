from django.http import Http404, HttpResponse
from django.views.decorators.http import require_GET

from worlds import selectors


@require_GET
def image(request, image_id: str):
    png = selectors.image_png(image_id=image_id)
    if png is None:
        raise Http404("no such image")
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "public, max-age=86400, immutable"  # rendered images never change
    return response
