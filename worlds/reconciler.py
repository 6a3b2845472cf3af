"""Rows converge to workflows: run rows that say a run is active are checked against Temporal
(describe), and corrected when the workflow ended without reporting it (terminated in the Temporal
UI, timed out), vanished, or never started. Runs every ``RECONCILE_INTERVAL_SECONDS`` in each
worker; also ``manage.py reconcile_runs`` and the admin's run list action."""

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from generation.contracts import Progress
from generation.workflows import describe_failure
from worlds import services
from worlds.models import GenerationRun

log = logging.getLogger(__name__)

QUIET_FOR = timedelta(seconds=60)  # rows mirrored more recently are left alone
CONCURRENT_DESCRIBES = 20


@dataclass
class Observed:
    """What Temporal says of a run's workflow: ``state`` running, closed or missing."""

    state: str
    status: str = ""  # Temporal's status name when closed
    progress: Progress | None = None  # a completed workflow's result (its final report)
    error: str = ""


async def observe_run(client: Client, workflow_id: str) -> Observed:
    handle = client.get_workflow_handle(workflow_id)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return Observed("missing")
        raise
    status = description.status.name
    if status == "RUNNING":
        return Observed("running")
    if status == "COMPLETED":
        return Observed("closed", status, progress=await handle.result(result_type=Progress))
    if status == "TERMINATED":
        return Observed("closed", status, error="the workflow was terminated in Temporal (outside worldgen)")
    if status == "CANCELED":
        return Observed("closed", status, error="cancelled in Temporal")
    try:
        await handle.result()
    except WorkflowFailureError as exc:
        return Observed("closed", status, error=describe_failure(exc))
    return Observed("closed", status, error=f"the workflow ended as {status.lower()} in Temporal")


async def reconcile_runs(client: Client, *, run_ids: list[int] | None = None, quiet_for: timedelta = QUIET_FOR,
                         user=None) -> list[str]:
    """Check active run rows (not mirrored within ``quiet_for``) against Temporal; returns the corrections."""
    runs = await sync_to_async(_runs_to_check)(run_ids, quiet_for)
    limit = asyncio.Semaphore(CONCURRENT_DESCRIBES)

    async def observe(run: GenerationRun) -> Observed:
        async with limit:
            return await observe_run(client, run.workflow_id)

    observations = await asyncio.gather(*(observe(run) for run in runs))
    changes = []
    for run, observed in zip(runs, observations):
        change = await sync_to_async(services.run_reconcile_record)(run=run, observed=observed, user=user)
        if change:
            log.warning("run row corrected from Temporal", extra={"run": change})
            changes.append(change)
    return changes


def _runs_to_check(run_ids: list[int] | None, quiet_for: timedelta) -> list[GenerationRun]:
    runs = GenerationRun.objects.filter(status__in=GenerationRun.ACTIVE, updated_at__lte=timezone.now() - quiet_for)
    if run_ids is not None:
        runs = runs.filter(pk__in=run_ids)
    return list(runs.select_related("world"))


async def reconcile_forever(client: Client) -> None:
    """The worker's periodic reconciler; a failed round is logged and retried next time."""
    while True:
        await asyncio.sleep(settings.RECONCILE_INTERVAL_SECONDS)
        try:
            await reconcile_runs(client)
        except Exception:
            log.exception("reconciling run rows failed; trying again next round")
        finally:
            await sync_to_async(close_old_connections)()  # workers never pass through a request cycle
