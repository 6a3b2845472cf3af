"""The web process's Prometheus metrics (prometheus-client): request latency by view.

``MetricsMiddleware`` comes first in ``MIDDLEWARE`` (after the probes). It times every request under the
name of the view that answered (the URL pattern's ``view_name``, never the path: bounded labels) and serves
``GET /metrics`` itself, ahead of the host check and the HTTPS redirect (Prometheus scrapes pods by IP over
plain HTTP).
``/metrics`` is off (404) unless ``METRICS_TOKEN`` is set, and then answers only a request that sends
``Authorization: Bearer <METRICS_TOKEN>``. Under a server of several processes (gunicorn workers) set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory: each process writes its values there and ``/metrics``
sums them all.
"""

import hmac
import time

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

REQUEST_LATENCY = Histogram(
    "worldgen_web_request_duration_seconds",
    "Time to answer a request, by view (the URL pattern's name; 'unmatched' when none matched)",
    ["view", "method", "status"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
PATH = "/metrics"


class MetricsMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == PATH:
            return scrape(request)
        started = time.perf_counter()
        response = self.get_response(request)
        match = request.resolver_match
        view = match.view_name if match else "unmatched"
        method = request.method if request.method in METHODS else "other"
        REQUEST_LATENCY.labels(view, method, str(response.status_code)).observe(time.perf_counter() - started)
        return response


def scrape(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if not token:
        return HttpResponse("Not Found", status=404, content_type="text/plain")
    expected = f"Bearer {token}".encode()
    if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
        return HttpResponse(
            "Unauthorized", status=401, content_type="text/plain", headers={"WWW-Authenticate": "Bearer"}
        )
    registry = REGISTRY
    if settings.PROMETHEUS_MULTIPROC_DIR:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
