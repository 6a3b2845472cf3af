"""Temporal client: how both processes connect, and the web process's bridge.

The Temporal client is bound to the event loop that created it. The web
process (sync Django: admin, DRF) therefore keeps one client on one
background event-loop thread for the life of the process and submits
coroutines to it: ``temporal_call(lambda client: client.start_workflow(...))``.
Never ``Client.connect`` per request.
"""

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from django.conf import settings
from temporalio.client import Client, WorkflowFailureError
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from clients import tracing
from clients.codec import data_converter
from generation.contracts import Progress
from generation.workflows import describe_failure

T = TypeVar("T")


class TemporalUnavailable(Exception):
    """Temporal could not be reached: the call did not happen."""


class TemporalNoAnswer(TemporalUnavailable):
    """The call was sent but no answer came (timeout, connection lost): it may have taken effect.
    Never guess what happened: ask Temporal (describe) once it answers again."""


# Statuses after which a call may or may not have reached the server.
AMBIGUOUS_STATUSES = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.UNKNOWN,
    RPCStatusCode.INTERNAL,
}


# Set once this process has made a Temporal client. Its Rust threads can outlive the interpreter and
# abort it at exit (temporalio/sdk-python#300), so manage.py then ends with os._exit after flushing.
client_made = False


async def connect_client(*, runtime: Runtime | None = None) -> Client:
    global client_made
    client_made = True
    return await Client.connect(
        settings.TEMPORAL_ADDRESS,
        namespace=settings.TEMPORAL_NAMESPACE,
        api_key=settings.TEMPORAL_API_KEY or None,
        tls=settings.TEMPORAL_TLS,
        runtime=runtime,
        data_converter=data_converter(settings.TEMPORAL_PAYLOAD_KEYS),  # encrypted when keys are set
        interceptors=tracing.interceptors(),  # spans (TRACING_ENABLED); the worker's workers inherit them
    )


class _ClientThread:
    """An event loop on a daemon thread that owns one Temporal client."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._client: Client | None = None
        self._connecting: asyncio.Lock | None = None
        threading.Thread(target=self.loop.run_forever, name="temporal-client", daemon=True).start()

    async def client(self) -> Client:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is None:
                self._client = await connect_client()
            return self._client


_lock = threading.Lock()
_thread: _ClientThread | None = None


def _client_thread() -> _ClientThread:
    global _thread
    with _lock:
        # A forked child inherits neither the thread nor a usable client.
        if _thread is None or _thread.pid != os.getpid():
            _thread = _ClientThread()
        return _thread


def temporal_call(fn: Callable[[Client], Awaitable[T]], *, timeout: float | None = None) -> T:
    """Run ``fn(client)`` on the shared client from synchronous code. Raises ``TemporalUnavailable``
    when nothing was sent, ``TemporalNoAnswer`` when the call may or may not have taken effect, and
    Temporal's own errors (e.g. ``RPCError`` NOT_FOUND, ``WorkflowAlreadyStartedError``) as they are."""
    timeout = settings.TEMPORAL_CALL_TIMEOUT_SECONDS if timeout is None else timeout
    thread = _client_thread()

    async def run() -> T:
        try:
            client = await thread.client()
        except Exception as exc:
            raise TemporalUnavailable(f"Temporal is not reachable at {settings.TEMPORAL_ADDRESS}: {exc}") from exc
        try:
            return await fn(client)
        except RPCError as exc:
            if exc.status in AMBIGUOUS_STATUSES:
                raise TemporalNoAnswer(f"Temporal did not answer ({exc.status.name}): {exc.message}") from exc
            raise

    future = asyncio.run_coroutine_threadsafe(run(), thread.loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TemporalNoAnswer(f"Temporal did not answer within {timeout:.0f}s") from None


# --- What Temporal says of a run's workflow (for the reconciler) -----------------------------------

CONCURRENT_DESCRIBES = 20


@dataclass
class Observed:
    """A run workflow as Temporal describes it: ``state`` running, closed or missing."""

    state: str
    status: str = ""  # Temporal's status name when closed
    progress: Progress | None = None  # a completed workflow's result (its final report)
    error: str = ""


async def workflow_status(client: Client, workflow_id: str) -> str:
    """Temporal's status name of a workflow (RUNNING, COMPLETED, ...), or MISSING if it has none."""
    try:
        status = (await client.get_workflow_handle(workflow_id).describe()).status
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return "MISSING"
        raise
    return status.name if status else "UNKNOWN"


async def workflow_statuses(client: Client, workflow_ids: list[str]) -> list[str]:
    """``workflow_status`` of each, a few at a time."""
    return await _each(workflow_ids, lambda workflow_id: workflow_status(client, workflow_id))


LISTED_PER_QUERY = 200  # workflow IDs per visibility query


async def listed_running(client: Client, workflow_ids: list[str]) -> set[str]:
    """Those of ``workflow_ids`` that Temporal's visibility lists as running: one list call per
    ``LISTED_PER_QUERY`` workflows instead of a describe each. Visibility lags a little, so a workflow
    missing here is not known to have ended: ask about it with ``observe_workflows``."""
    running: set[str] = set()
    for start in range(0, len(workflow_ids), LISTED_PER_QUERY):
        ids = ", ".join(f"'{workflow_id}'" for workflow_id in workflow_ids[start : start + LISTED_PER_QUERY])
        async for execution in client.list_workflows(f"ExecutionStatus = 'Running' AND WorkflowId IN ({ids})"):
            running.add(execution.id)
    return running


async def observe_workflows(client: Client, workflow_ids: list[str]) -> list[Observed]:
    """Describe run workflows, a few at a time (Temporal's answer, never a guess)."""
    return await _each(workflow_ids, lambda workflow_id: _observe(client, workflow_id))


async def _each(workflow_ids: list[str], ask: Callable[[str], Awaitable[T]]) -> list[T]:
    limit = asyncio.Semaphore(CONCURRENT_DESCRIBES)

    async def one(workflow_id: str) -> T:
        async with limit:
            return await ask(workflow_id)

    return list(await asyncio.gather(*(one(workflow_id) for workflow_id in workflow_ids)))


async def _observe(client: Client, workflow_id: str) -> Observed:
    handle = client.get_workflow_handle(workflow_id)
    status = await workflow_status(client, workflow_id)
    if status == "MISSING":
        return Observed("missing")
    if status == "RUNNING":
        return Observed("running")
    if status == "COMPLETED":
        progress = await client.get_workflow_handle(workflow_id, result_type=Progress).result()
        return Observed("closed", status, progress=progress)
    if status == "TERMINATED":
        return Observed("closed", status, error="the workflow was terminated in Temporal (outside worldgen)")
    if status == "CANCELED":
        return Observed("closed", status, error="cancelled in Temporal")
    try:
        await handle.result()
    except WorkflowFailureError as exc:
        return Observed("closed", status, error=describe_failure(exc))
    return Observed("closed", status, error=f"the workflow ended as {status.lower()} in Temporal")
