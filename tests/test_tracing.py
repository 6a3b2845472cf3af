"""Tracing: one trace from an API call on the web process, through the workflow and an activity, to the
activity's LLM (HTTP), media (gRPC) and Mongo calls. The web (this process, over live_server) and a real
worker process export their spans over OTLP/HTTP to a small OTLP receiver run here."""

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from clients import temporal as temporal_client
from clients import tracing
from tests.test_metrics import editor_api, start_run, wait_finished

SECRET = "sk-tracing-test-key-0123456789"
MONGO_ATTRIBUTES = {
    "db.system.name",
    "db.namespace",
    "db.operation.name",
    "db.collection.name",
    "server.address",
    "server.port",
}


@dataclass
class Span:
    service: str
    trace: str
    id: str
    parent: str
    name: str
    attributes: dict = field(default_factory=dict)


class OtlpReceiver(ThreadingHTTPServer):
    """Accepts OTLP/HTTP (protobuf) trace exports on ``/v1/traces`` and keeps the spans and raw bodies."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}
                    ids = (span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex())
                    spans.append(Span(resource["service.name"], *ids, span.name, attributes))
        with self.lock:
            self.bodies.append(body)
            self.spans += spans


class Handler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        self.server.add(body)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def otlp():
    receiver = OtlpReceiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    yield receiver
    receiver.shutdown()
    receiver.server_close()


@pytest.mark.django_db(transaction=True)
def test_one_trace_from_the_api_call_through_the_workflow_to_llm_grpc_and_mongo(
    start_worker, live_server, settings, otlp
):
    settings.TRACING_ENABLED, settings.OTEL_EXPORTER_OTLP_ENDPOINT = True, otlp.url
    settings.OTEL_SERVICE_NAME = "worldgen-web"
    tracing.start()
    temporal_client._thread = None  # this process's next Temporal client is made with the tracing interceptor
    try:
        worker = start_worker(
            env={
                "TRACING_ENABLED": "true",
                "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
                "OTEL_SERVICE_NAME": "worldgen-worker",
                "LLM_API_KEY": SECRET,  # sent to the LLM on every call; must reach no span
            }
        )
        api = editor_api(live_server.url)
        run = wait_finished(api, start_run(api, character_count=1, posts_per_character=0))
        assert run["status"] == "completed", run
        assert worker.process.stop() == 0  # a stopping worker sends the spans it still holds
    finally:
        tracing.shutdown()  # sends this process's spans
        temporal_client._thread = None

    [request] = [s for s in otlp.spans if s.name == "POST api-world-generate"]
    assert request.service == "worldgen-web" and request.attributes["http.response.status_code"] == 202
    spans = [s for s in otlp.spans if s.trace == request.trace]
    by_id = {s.id: s for s in spans}

    def one(name: str, service: str = "worldgen-worker") -> Span:
        found = [s for s in spans if s.name == name and s.service == service]
        assert len(found) == 1, (name, sorted({s.name for s in spans}))
        return found[0]

    def parent(span: Span) -> Span:
        return by_id[span.parent]

    start = one("StartWorkflow:WorldRunWorkflow", service="worldgen-web")
    assert parent(start) is request  # the Temporal start nests in the API request
    # Temporal's workflow spans hang off the start: RunWorkflow, then StartActivity > RunActivity for each activity
    assert parent(one("RunWorkflow:WorldRunWorkflow")) is start
    bible = one("RunActivity:generate_bible")
    assert parent(bible).name == "StartActivity:generate_bible" and parent(parent(bible)) is start
    [llm] = [
        s for s in spans if s.parent == bible.id and s.attributes.get("http.url", "").endswith("/chat/completions")
    ]
    assert llm.name == "POST" and llm.attributes["http.status_code"] == 200
    render = one("RunActivity:render_character")
    [grpc] = [s for s in spans if s.parent == render.id and s.name.endswith("MediaRenderer/RenderImage")]
    assert grpc.attributes["rpc.grpc.status_code"] == 0  # OK
    mongo = [s for s in spans if s.attributes.get("db.system.name") == "mongodb" and s.parent in (bible.id, render.id)]
    assert {"find bibles", "update generation_tasks", "update bibles", "update characters"} <= {s.name for s in mongo}
    assert all(set(s.attributes) <= MONGO_ATTRIBUTES for s in mongo)  # never the command's body
    assert parent(render).name == "StartActivity:render_character" and parent(parent(render)) is start
    assert not any(SECRET.encode() in body for body in otlp.bodies)
    assert not any("authorization" in key.lower() for s in otlp.spans for key in s.attributes)


def test_tracing_is_off_by_default_and_adds_nothing(settings):
    assert settings.TRACING_ENABLED is False
    assert not tracing.active() and tracing.interceptors() == [] and tracing.mongo_listeners() == []
