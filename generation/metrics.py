"""The worker's application metrics, recorded through the activity's Temporal metric meter: they are
exported with the SDK's own on the worker's Prometheus endpoint (``--metrics-port``), and are a no-op
where no metrics are configured (tests on the time-skipping server). Like the SDK's: no ``_total``
suffix, durations in milliseconds. The meter adds ``namespace``, ``task_queue`` and ``activity_type``.
Labels are bounded: never a world, run or item ID, never a message. Imports nothing from Django."""

from datetime import timedelta

from temporalio import activity

RUNS_FINISHED = "worldgen_runs_finished"  # status: completed, failed, cancelled, expired, budget_exceeded
ITEMS_GENERATED = "worldgen_items_generated"  # kind: character, post
ITEMS_FAILED = "worldgen_items_failed"  # kind: the LLM stage (bible ... post, comment) or image
LLM_TOKENS = "worldgen_llm_tokens"  # model, stage
LLM_LATENCY = "worldgen_llm_request_latency"  # model (histogram, ms)
DEGRADED_IMAGES = "worldgen_degraded_images"
BUDGET_STOPS = "worldgen_budget_stops"  # ledger: run, day
OUTAGE_WAITS = "worldgen_outage_waits"  # upstream: llm, media

DESCRIPTIONS = {
    RUNS_FINISHED: "Generation runs that ended, by final status",
    ITEMS_GENERATED: "Characters and posts written and stored",
    ITEMS_FAILED: "LLM tasks whose output stayed invalid after repairs, and images the media service refused",
    LLM_TOKENS: "Tokens the LLM provider billed (prompt + completion, failed calls included)",
    LLM_LATENCY: "Duration of one LLM HTTP call, failed ones included",
    DEGRADED_IMAGES: "Images left for a re-render because the media service stayed down",
    BUDGET_STOPS: "LLM calls refused by a token budget (the run's, or a live world's day's): the run stops",
    OUTAGE_WAITS: "Attempts failed because the LLM or media service was unavailable (retried after a wait)",
}
# Bucket bounds (ms) for PrometheusConfig: an LLM call takes from under a second to LLM_TIMEOUT_SECONDS.
BUCKETS = {LLM_LATENCY: [100, 250, 500, 1000, 2500, 5000, 10000, 20000, 30000, 60000, 120000]}


def count(name: str, value: int = 1, **labels: str) -> None:
    if value:
        activity.metric_meter().create_counter(name, DESCRIPTIONS[name]).add(value, labels)


def observe_duration(name: str, seconds: float, **labels: str) -> None:
    histogram = activity.metric_meter().create_histogram_timedelta(name, DESCRIPTIONS[name], "ms")
    histogram.record(timedelta(seconds=seconds), labels)
