"""A server span for each web request while tracing is on (``clients/tracing.py``), named by the view that
answered (``GET api-run``), never the path. A W3C ``traceparent`` header continues the caller's trace.
What the request does nests under it, the Temporal start included: ``temporal_call`` runs the call in the
caller's context, so the client's ``StartWorkflow`` span is this span's child."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from opentelemetry import propagate, trace

from clients import tracing


class TracingMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not tracing.active():
            return self.get_response(request)
        parent = propagate.extract(request.headers)
        with tracing.tracer().start_as_current_span(
            f"{request.method} request", context=parent, kind=trace.SpanKind.SERVER
        ) as span:
            response = self.get_response(request)
            match = request.resolver_match
            route = match.view_name if match else "unmatched"
            span.update_name(f"{request.method} {route}")
            span.set_attributes(
                {
                    "http.request.method": request.method or "",
                    "http.route": route,
                    "http.response.status_code": response.status_code,
                }
            )
            if response.status_code >= 500:
                span.set_status(trace.StatusCode.ERROR)
            return response
