"""The benchmarks run end to end at a tiny size (their figures belong in docs/PERFORMANCE.md, not here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


def run(args: list[str], tmp_path: Path) -> dict:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, *args, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(out.read_text())


def test_bench_generation_runs_all_three_modes(tmp_path):
    # A workflow cache of one entry: the workers replay evicted workflows, and the figures count it.
    args = ["-m", "benchmarks.generation", "--worlds", "2", "--characters", "1", "--posts", "1"]
    figures = run([*args, "--max-cached-workflows", "1"], tmp_path)
    assert set(figures["modes"]) == {"baseline", "pipeline", "per-activity-connections"}
    assert (figures["worlds_completed"], figures["worlds_failed"], figures["duplicates"]) == (2, 0, 0)
    for key in (
        "activities",
        "wall_s",
        "baseline_activities_per_s",
        "pipeline_activities_per_s",
        "ratio",
        "p50_world_s",
        "p95_world_s",
        "per_activity_activities_per_s",
        "worker_peak_rss_mb",
        "orchestration_cpu_ratio",
        "orchestration_cpu_ratio_per_item",
        "items_ratio",
        "mongo_ops_per_activity",
        "mongo_ops_per_item",
        "history_bytes_per_item",
        "temporal_actions_per_item",
    ):
        assert figures[key] > 0, key
    # Orchestration cost (issue 14), from the histories and Mongo's counters: 2 items a world here.
    baseline, pipeline = figures["modes"]["baseline"], figures["modes"]["pipeline"]
    assert pipeline["items"] == baseline["items"] == 4
    assert baseline["temporal_actions_by_kind"]["activity_task_scheduled"] == baseline["activities"]
    assert baseline["temporal_actions_by_kind"]["workflow_execution_started"] == 2 * 2  # worlds and children
    assert baseline["mongo_ops_per_activity"] < 1.5 < pipeline["mongo_ops_per_activity"]  # no-ops touch no Mongo
    assert pipeline["history_bytes"] > 0 and baseline["history_bytes"] > 0
    # One workflow a world, and fewer actions than the baseline's activity and child per step.
    assert pipeline["temporal_actions_by_kind"]["workflow_execution_started"] == 2
    assert pipeline["temporal_actions_per_item"] < baseline["temporal_actions_per_item"]
    assert pipeline["temporal_actions_per_item_with_heartbeats"] >= pipeline["temporal_actions_per_item"]
    assert pipeline["workflow_cache"]["total_forced_eviction"] > 0 and pipeline["workflow_cache"]["miss"] > 0
    assert 0 < figures["worker_mongo_pool_peaks"][0] <= figures["mongo_pool_size"]
    # A client per activity opens more connections than the shared pool ever holds.
    assert figures["per_activity_peak_mongo_connections"] > figures["worker_mongo_pool_peaks"][0]
    assert figures["modes"]["pipeline"]["cpu_s_by_process"]["mediaserver"] > 0


def test_bench_generation_lives_worlds_in_its_living_mode(tmp_path):
    # One world: no going-live spread over the day to wait for.
    args = ["-m", "benchmarks.generation", "--live-worlds", "1", "--days", "1", "--characters", "2"]
    figures = run([*args, "--idle-seconds", "3"], tmp_path)
    assert (figures["live_worlds"], figures["days_lived"], figures["posts_per_day"]) == (1, 1, 1)
    assert figures["idle_window_s"] == 3 and figures["idle_cpu_pct_worker"] >= 0
    assert figures["first_day_lag_p95_s"] >= 0 and figures["history_events_max"] > 0
    assert figures["worker_peak_rss_mb"] > 0 and figures["peak_mongo_connections"] > 0


def test_bench_generation_refuses_an_unknown_mode():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.generation", "--modes", "pipeline,turbo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "--modes takes a comma list of" in done.stderr


def test_bench_web_times_every_endpoint(tmp_path):
    figures = run(
        ["-m", "benchmarks.web", "--worlds", "30", "--posts", "120", "--requests", "5", "--target-p95-ms", "100000"],
        tmp_path,
    )
    assert figures["seeding"]["worlds"] == 30 and figures["seeding"]["posts"] == 120
    assert len(figures["endpoints"]) == 5
    assert all(
        r["requests"] == 5 and 0 < r["p50_ms"] <= r["p95_ms"] <= r["max_ms"] for r in figures["endpoints"].values()
    )


def test_bench_mongo_clients_runs_both_clients(tmp_path):
    figures = run(
        ["-m", "benchmarks.mongo_clients", "--activities", "20", "--concurrency", "5", "--rounds", "1"], tmp_path
    )
    assert set(figures["clients"]) == {"sync-threads", "async"}
    for client in figures["clients"].values():
        assert client["activities_per_s"] > 0 and client["client_cpu_ms_per_activity"] > 0
