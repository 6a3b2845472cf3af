"""The living mode of ``benchmarks.generation`` (``--live-worlds N --day-seconds S --days D``).

Seeds N published worlds (placeholder content, ``worlds.seeding``), takes them all live at a day every S
seconds (spread over the first day), waits until each has lived D days, and measures: how late each day
started against its schedule (p50, p95), what a day made, the largest history of an execution, the CPU
of the Temporal server and the worker while idle between days, the CPU a world day costs in each
process, the worker's RSS and the Mongo connections.
"""

import statistics
import time

from benchmarks.generation import Sampler, Stack, completed_activities, cpu_seconds

PREFIX = "Bench living"
HISTORY_SAMPLE = 50  # live workflows whose history length is read


def run_living(stack: Stack, opts) -> dict:
    from clients import mongo
    from clients.temporal import temporal_call
    from worlds.models import LiveWorld, World
    from worlds.seeding import seed_worlds
    from worlds.services import world_go_live

    workers = stack.start_workers("living")
    pids = {"temporal": stack.processes[0].popen.pid, "worker": workers[0].process.popen.pid}
    every_pid = {process.name: process.popen.pid for process in stack.processes} | {"worker": pids["worker"]}
    sampler = Sampler(stack.env["MONGO_URI"], [worker.process.popen.pid for worker in workers])
    sampler.start()
    try:
        seed_worlds(
            worlds=opts.live_worlds,
            posts=opts.live_worlds * opts.characters,
            characters_per_world=opts.characters,
            prefix=PREFIX,
        )
        worlds = list(World.objects.filter(name__startswith=PREFIX).order_by("pk"))
        started = time.monotonic()
        cpu_before = {name: cpu_seconds(pid) for name, pid in every_pid.items()}
        for number, world in enumerate(worlds):
            # Worlds go live spread over one day (as fast as going live allows), as worlds that went live at
            # different times would: their days then keep that spread instead of all falling at once.
            time.sleep(max(0.0, started + number * opts.day_seconds / len(worlds) - time.monotonic()))
            world_go_live(
                world=world,
                day_seconds=opts.day_seconds,
                posts_per_day=opts.live_posts,
                comments_per_day=opts.live_comments,
                daily_token_budget=200_000,
            )
        going_live_s = time.monotonic() - started
        db = mongo.get_db()
        wanted = len(worlds) * opts.days
        deadline = started + opts.days * opts.day_seconds + opts.timeout
        # The benchmark's database holds only these worlds: a count without a 1,000-ID $in (which a Python
        # Mongo-wire server matches document by document, ID by ID, at a core's cost a second).
        while (done := db.live_days.count_documents({"day": {"$lte": opts.days}})) < wanted:
            if time.monotonic() > deadline:  # the figures say how far it got
                print(f"only {done} of {wanted} world days were lived within {opts.timeout:.0f} s of the last slot")
                break
            time.sleep(2)
        lived_s = time.monotonic() - started
        cpu_lived = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in every_pid.items()}
        idle = _idle_cpu(pids, LiveWorld, opts)
        reports = list(db.live_days.find({}, {"_id": 0}))
        histories = _history_lengths(
            temporal_call, [live.workflow_id for live in LiveWorld.objects.all()[:HISTORY_SAMPLE]]
        )
    finally:
        sampler.stop()
    activities = completed_activities([worker.metrics_url for worker in workers])
    for worker in workers:
        worker.process.stop()
    later = [r["lag_s"] for r in reports if r["day"] >= 2]
    first = [r["lag_s"] for r in reports if r["day"] == 1]
    return {
        "live_worlds": len(worlds),
        "days_wanted": wanted,
        "days_lived": len(reports),
        "days_per_minute": round(60 * len(reports) / lived_s, 1),
        "going_live_s": round(going_live_s, 1),
        "lived_s": round(lived_s, 1),
        "lag_p50_s": _quantile(later, 0.5),
        "lag_p95_s": _quantile(later, 0.95),
        "lag_max_s": round(max(later), 2) if later else None,
        "first_day_lag_p95_s": _quantile(first, 0.95),
        "posts_per_day": round(statistics.mean(r["posts"] for r in reports), 2),
        "comments_per_day": round(statistics.mean(r["comments"] for r in reports), 2),
        "likes_per_day": round(statistics.mean(r["likes"] for r in reports), 2),
        "tokens_per_day": round(statistics.mean(r["tokens"] for r in reports), 1),
        "activities": activities,
        "history_events_max": max(histories),
        "history_events_p50": statistics.median(histories),
        **idle,
        # where the CPU went while the worlds went live and lived (ms per world day lived, by process)
        "cpu_ms_per_day": {name: round(1000 * cpu / max(1, len(reports))) for name, cpu in cpu_lived.items()},
        "peak_mongo_connections": sampler.peak_connections,
        "worker_peak_rss_mb": round(sampler.peak_rss_mb, 1),
    }


def _idle_cpu(pids: dict[str, int], LiveWorld, opts) -> dict:
    """CPU share of each process over the quiet time before the next days start (at most ``--idle-seconds``)."""
    upcoming = LiveWorld.objects.exclude(next_day_at=None).order_by("next_day_at").values_list("next_day_at", flat=True)
    first = upcoming.first()
    window = min(opts.idle_seconds, (first.timestamp() - time.time() - 2) if first else opts.idle_seconds)
    if window < 2:
        return {"idle_window_s": 0}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(window)
    return {
        "idle_window_s": round(window, 1),
        **{
            f"idle_cpu_pct_{name}": round(100 * (cpu_seconds(pid) - before[name]) / window, 1)
            for name, pid in pids.items()
        },
    }


def _history_lengths(temporal_call, workflow_ids: list[str]) -> list[int]:
    async def lengths(client):
        return [
            (await client.get_workflow_handle(wid).describe()).raw_description.workflow_execution_info.history_length
            for wid in workflow_ids
        ]

    return temporal_call(lengths, timeout=120)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)
