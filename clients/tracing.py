"""OpenTelemetry tracing, off unless ``TRACING_ENABLED``: one trace from a web request (an admin click or an
API call) through the Temporal client's start, the workflow and its activities (temporalio's
``TracingInterceptor`` on the client, which the worker's client passes to its workers) to each activity's
LLM (httpx), media (gRPC) and Mongo calls. Spans go over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT``.

``start()`` runs in every process at Django start-up, before any client exists. The tracer provider is this
module's own, not OpenTelemetry's global one, so ``shutdown()`` (which flushes) can stop it. Spans carry no
secrets: no headers, no Mongo command bodies, URLs without credentials.
"""

import threading
from typing import TYPE_CHECKING

from django.conf import settings
from opentelemetry import trace
from pymongo import monitoring
from temporalio.client import Interceptor

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

# The SDK, the exporter and the instrumentations are imported only when tracing is on (start-up time).
_provider: "TracerProvider | None" = None


def start() -> None:
    """Set up tracing if ``TRACING_ENABLED`` (idempotent)."""
    global _provider
    if _provider is not None or not settings.TRACING_ENABLED:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": settings.OTEL_SERVICE_NAME}))
    endpoint = f"{settings.OTEL_EXPORTER_OTLP_ENDPOINT.rstrip('/')}/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    GrpcAioInstrumentorClient().instrument(tracer_provider=provider)
    _provider = provider


def shutdown() -> None:
    """Export what is buffered and stop tracing."""
    global _provider
    if _provider is None:
        return
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().uninstrument()
    GrpcAioInstrumentorClient().uninstrument()
    _provider.shutdown()
    _provider = None


def active() -> bool:
    return _provider is not None


def tracer() -> trace.Tracer:
    return (_provider or trace.NoOpTracerProvider()).get_tracer("worldgen")


def interceptors() -> list[Interceptor]:
    """For ``Client.connect``: Temporal's spans, with the caller's trace carried in workflow headers."""
    if _provider is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(tracer())]


def mongo_listeners() -> list[monitoring.CommandListener]:
    """For ``MongoClient(event_listeners=...)``. (opentelemetry-instrumentation-pymongo pins an older
    OpenTelemetry than the SDK's, so Mongo's spans are made here.)"""
    return [MongoSpans()] if _provider is not None else []


class MongoSpans(monitoring.CommandListener):
    """A client span per Mongo command run inside a traced operation (an activity, a request); the command's
    name and collection only, never its body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: dict[tuple, trace.Span] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if _provider is None or not trace.get_current_span().get_span_context().is_valid:
            return
        collection = event.command.get(event.command_name)
        name = f"{event.command_name} {collection}" if isinstance(collection, str) else event.command_name
        host, port = event.connection_id
        span = tracer().start_span(
            name,
            kind=trace.SpanKind.CLIENT,
            attributes={
                "db.system.name": "mongodb",
                "db.namespace": event.database_name,
                "db.operation.name": event.command_name,
                **({"db.collection.name": collection} if isinstance(collection, str) else {}),
                "server.address": str(host),
                "server.port": port or 0,
            },
        )
        with self._lock:
            self._spans[(event.request_id, event.connection_id)] = span

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._end(event, None)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._end(event, f"{event.command_name} failed")

    def _end(self, event, error: str | None) -> None:
        with self._lock:
            span = self._spans.pop((event.request_id, event.connection_id), None)
        if span is not None:
            if error:
                span.set_status(trace.StatusCode.ERROR, error)
            span.end()
