"""Rows converge to workflows: the worker's periodic check of active rows against Temporal.
Every ``RECONCILE_INTERVAL_SECONDS`` each worker asks Temporal about the active run rows that have
not been mirrored for a minute (those shown running through a few visibility list calls, then a describe
of each row whose workflow is not listed running) and corrects those whose workflow ended without reporting it
(terminated in the Temporal UI, timed out), vanished, or never started
(``worlds.services.runs_reconcile_record``). ``manage.py reconcile_runs`` and the admin's run
list action do the same at once, through the web process's client. Regenerations and live worlds
shown running are settled the same way (``regeneration_settle``, ``live_settle``); a live world is
asked about once a day of it is ``LIVE_OVERDUE`` late, or once it has been paused or starting a minute. A world
whose deletion Temporal did not confirm is deleted once its cleanup is confirmed."""

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from temporalio.client import Client

from clients.temporal import Observed, listed_running, observe_workflows, workflow_statuses
from worlds import selectors, services
from worlds.models import GenerationRun

log = logging.getLogger(__name__)

QUIET_FOR = timedelta(seconds=60)  # rows mirrored more recently are left alone
LIVE_OVERDUE = timedelta(minutes=10)  # a live world's day this late without a report is looked up


async def reconcile_round(client: Client) -> list[str]:
    runs = await sync_to_async(selectors.runs_to_reconcile)(quiet_for=QUIET_FOR)
    # Workflows listed running need no describe: a row shown running is right, one still starting is moved on.
    listed = await listed_running(client, [run.workflow_id for run in runs])
    starting = [run for run in runs if run.workflow_id in listed and run.status in GenerationRun.STARTING]
    unlisted = [run for run in runs if run.workflow_id not in listed]
    observations = await observe_workflows(client, [run.workflow_id for run in unlisted])
    observations += [Observed("running")] * len(starting)
    changes = await sync_to_async(services.runs_reconcile_record)(runs=unlisted + starting, observations=observations)
    for change in changes:
        log.warning("run row corrected from Temporal", extra={"run": change})
    regenerations = await _settle(
        client,
        await sync_to_async(selectors.regenerations_to_settle)(quiet_for=QUIET_FOR),
        lambda row, status: services.regeneration_settle(regeneration=row, status=status),
    )
    lives = await _settle(
        client,
        await sync_to_async(selectors.lives_to_settle)(quiet_for=QUIET_FOR, overdue=LIVE_OVERDUE),
        lambda row, status: services.live_settle(live=row, status=status),
    )
    return changes + regenerations + lives + await _finish_deletions(client)


async def _finish_deletions(client: Client) -> list[str]:
    """Worlds whose deletion was asked while Temporal did not answer: the cleanup's start is sent again (one
    cleanup per world: a start that did land is found, not repeated), then the world leaves the database."""
    finished = []
    for world in await sync_to_async(selectors.worlds_being_deleted)():
        start = await sync_to_async(services.world_cleanup_start)(world=world)
        await start(client)
        cleanup_id = await sync_to_async(services.world_deletion_confirmed)(world=world)
        log.warning("world deleted once Temporal confirmed its cleanup", extra={"cleanup": cleanup_id})
        finished.append(f"{world}: deleted ({cleanup_id})")
    return finished


async def _settle(client: Client, rows: list, settle: Callable[[Any, str], str | None]) -> list[str]:
    statuses = await workflow_statuses(client, [row.workflow_id for row in rows])

    def record() -> list[tuple[str, str]]:
        return [(change, status) for row, status in zip(rows, statuses, strict=True) if (change := settle(row, status))]

    changes = await sync_to_async(record)()
    for change, status in changes:
        # A row behind a running workflow (a live world still shown starting) is routine; anything else is not.
        log.log(
            logging.INFO if status == "RUNNING" else logging.WARNING,
            "row corrected from Temporal",
            extra={"row": change},
        )
    return [change for change, _ in changes]


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
