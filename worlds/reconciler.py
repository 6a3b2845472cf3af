"""Rows converge to workflows: the worker's periodic check of active run rows against Temporal.
Every ``RECONCILE_INTERVAL_SECONDS`` each worker asks Temporal about the active rows that have
not been mirrored for a minute and corrects those whose workflow ended without reporting it
(terminated in the Temporal UI, timed out), vanished, or never started
(``worlds.services.runs_reconcile_record``). ``manage.py reconcile_runs`` and the admin's run
list action do the same at once, through the web process's client."""

import asyncio
import logging
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from temporalio.client import Client

from clients.temporal import observe_workflows
from worlds import selectors, services

log = logging.getLogger(__name__)

QUIET_FOR = timedelta(seconds=60)  # rows mirrored more recently are left alone


async def reconcile_round(client: Client) -> list[str]:
    runs = await sync_to_async(selectors.runs_to_reconcile)(quiet_for=QUIET_FOR)
    observations = await observe_workflows(client, [run.workflow_id for run in runs])
    changes = await sync_to_async(services.runs_reconcile_record)(runs=runs, observations=observations)
    for change in changes:
        log.warning("run row corrected from Temporal", extra={"run": change})
    return changes


async def reconcile_forever(client: Client) -> None:
    """A failed round is logged and tried again next time."""
    while True:
        await asyncio.sleep(settings.RECONCILE_INTERVAL_SECONDS)
        try:
            await reconcile_round(client)
        except Exception:
            log.exception("reconciling run rows failed; trying again next round")
        finally:
            await sync_to_async(close_old_connections)()  # workers never pass through a request cycle
