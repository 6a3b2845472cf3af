"""What the orchestration itself costs, from Temporal's histories and Mongo's own counters (issue 14).

- ``history_bytes_per_item`` and ``temporal_actions_per_item``: over every workflow of a mode's worlds (the
  world workflow, and the baseline's children), per generated item (a character or a post).
- Actions are counted the way Temporal Cloud bills them, from history events: a workflow started (each
  history's start event: a child, a continue-as-new), an activity scheduled or retried, a timer, a signal,
  an update, a marker (a local activity or side effect) and a search-attribute upsert. Activity heartbeats
  are billed too but leave no event: the benchmark counts them from the workers' requests to Temporal
  (``activity_heartbeats``, and ``temporal_actions_per_item_with_heartbeats``).
- ``mongo_ops_per_activity``: the server's ``opcounters`` over the mode, less the noise of the clients'
  monitoring and of the benchmark's own sampling, measured at rest just before.
"""

import time
from collections import Counter

from temporalio.api.enums.v1 import EventType

BILLED = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    EventType.EVENT_TYPE_TIMER_STARTED,
    EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    EventType.EVENT_TYPE_MARKER_RECORDED,
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
}


async def history_figures(client, workflow_ids: list[str]) -> dict:
    """Bytes, events and billed actions over these workflows' histories (every run of each)."""
    events = 0
    actions: Counter = Counter()
    sizes: Counter = Counter()
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        for event in history.events:
            events += 1
            name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_").lower()
            sizes[name] += event.ByteSize()
            if event.event_type in BILLED:
                actions[name] += 1
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                actions["activity_retry"] += event.activity_task_started_event_attributes.attempt - 1
    return {
        "history_bytes": sizes.total(),
        "history_bytes_by_kind": dict(sizes.most_common(6)),
        "history_events": events,
        "temporal_actions": actions.total(),
        "temporal_actions_by_kind": dict(actions.most_common()),
    }


def pipeline_workflow_ids(runs: list) -> list[str]:
    """Each run's workflow (WorldRunWorkflow: its characters are activities of it, not child workflows)."""
    return [run.workflow_id for run in runs]


class MongoOps:
    """Operations the Mongo server counted (insert, query, update, delete, getmore, command)."""

    def __init__(self, observer) -> None:
        self.observer = observer

    def total(self) -> int:
        return sum(self.observer.admin.command("serverStatus")["opcounters"].values())

    def rest_rate(self, seconds: float = 3.0) -> float:
        """Operations a second with nothing running but monitoring (this call's own read included)."""
        before = self.total()
        time.sleep(seconds)
        return (self.total() - before - 1) / seconds
