"""Probes of the web process: ``/healthz`` (the process answers: liveness) and ``/readyz`` (its database,
Mongo and Temporal answer: readiness).

A middleware placed first answers them before the host check and the HTTPS redirect, so a kubelet's plain
HTTP probe to the pod's IP works. Each dependency gets ``READY_CHECK_TIMEOUT_SECONDS``; the answer names
what failed and nothing more (the reason goes to the log).
"""

import logging
from collections.abc import Callable

import pymongo
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from clients import mongo
from clients.temporal import temporal_call

log = logging.getLogger(__name__)

READY_CHECK_TIMEOUT_SECONDS = 2.0


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _mongo() -> None:
    with pymongo.timeout(READY_CHECK_TIMEOUT_SECONDS):
        mongo.get_db().command("ping")


def _temporal() -> None:
    temporal_call(lambda client: client.service_client.check_health(), timeout=READY_CHECK_TIMEOUT_SECONDS)


CHECKS: dict[str, Callable[[], None]] = {"database": _database, "mongo": _mongo, "temporal": _temporal}


def readiness() -> JsonResponse:
    results = {}
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # any failure means not ready; the reason is logged, not shown
            log.warning("readiness check failed", extra={"check": name, "error": str(exc)})
            results[name] = "unavailable"
    ready = all(result == "ok" for result in results.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", **results}, status=200 if ready else 503)


class HealthMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/healthz":
            return JsonResponse({"status": "ok"})
        if request.path == "/readyz":
            return readiness()
        return self.get_response(request)
