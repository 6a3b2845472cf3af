"""Metrics you can alert on. The worker's application metrics (on the Temporal SDK's Prometheus endpoint)
and the web's request latency (``/metrics``) are scraped from the real processes after real runs started
through the API over HTTP; their values match what Mongo and the LLM stand-in recorded, and every metric
that the Grafana dashboard and the alert rules query is one the processes really export."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from django.contrib.auth.models import Group, Permission, User
from rest_framework.authtoken.models import Token

from clients import mongo
from generation import documents, store
from generation import metrics as app_metrics
from localstack import servers
from tests.conftest import ROOT
from tests.test_deploy_files import metric_names
from worlds.staff_groups import grant_staff_groups

DASHBOARD = ROOT / "deploy" / "grafana" / "worldgen-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
WEB = ROOT / "deploy" / "k8s" / "web.yaml"
SDK_METRICS_SOURCES = [  # where the Temporal SDK (sdk-core, shipped in the wheel) names its metrics
    "crates/sdk-core/src/telemetry/metrics.rs",
    "crates/client/src/metrics.rs",
]
FINISHED = {"completed", "failed", "cancelled", "expired", "budget_exceeded"}
TOKEN = "metrics-test-token-0123456789"
WEB_LATENCY = "worldgen_web_request_duration_seconds"
# Labels the worker's application metrics may carry: no world, run or item ID can be among them.
BOUNDED_LABELS = {"namespace", "task_queue", "activity_type", "service_name", "le"} | {
    "status",
    "kind",
    "model",
    "stage",
    "ledger",
    "upstream",
}


# --- the queries of the dashboard and the alert rules ------------------------------------------------------


def dashboard_panels() -> list[dict]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [inner for panel in panels for inner in [panel, *panel.get("panels", [])]]


def promql_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every alert rule and every dashboard target."""
    queries = []
    for doc in yaml.safe_load_all(ALERTS.read_text()):
        for group in doc["spec"]["groups"]:
            queries += [(f"alert {rule['alert']}", rule["expr"]) for rule in group["rules"]]
    for panel in dashboard_panels():
        queries += [(f"panel {panel['title']!r}", target["expr"]) for target in panel.get("targets", [])]
    return queries


def test_the_dashboard_is_grafana_json_with_a_query_in_every_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    datasource = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert datasource and datasource[0]["query"] == "prometheus"
    panels = [p for p in dashboard_panels() if p["type"] != "row"]
    assert len(panels) >= 8
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["targets"] and panel["gridPos"]["w"] > 0, panel["title"]
        for target in panel["targets"]:
            assert metric_names(target["expr"]), f"{panel['title']}: no metric in {target['expr']!r}"
            assert target["refId"] and "${" in json.dumps(target["datasource"])
    queried = {name for _, expr in promql_queries() for name in metric_names(expr)}
    for name in [*app_metrics.DESCRIPTIONS, WEB_LATENCY]:  # every application metric is on the dashboard
        assert any(q == name or q.startswith(f"{name}_") for q in queried), f"nothing queries {name}"


def test_promql_metric_names_are_read_from_queries():
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(worldgen_llm_request_latency_bucket{model=~"$model"}'
        "[$__rate_interval]))) > 60000 and on() sum(increase(x_total[1h] offset 1h)) >= bool 5"
    )
    assert metric_names(expr) == {"worldgen_llm_request_latency_bucket", "x_total"}


def test_the_web_deployment_gives_its_processes_one_metrics_directory():
    [web] = [d for d in yaml.safe_load_all(WEB.read_text()) if d["kind"] == "Deployment"]
    pod = web["spec"]["template"]["spec"]
    [container] = [c for c in pod["containers"] if c["name"] == "web"]
    directory = {e["name"]: e["value"] for e in container["env"]}["PROMETHEUS_MULTIPROC_DIR"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[mount["name"]]


# --- scraping -----------------------------------------------------------------------------------------------


SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)(?: \d+)?$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def exported(text: str) -> dict[str, dict]:
    """Series name as exposed (``x``, ``x_bucket``, ``x_sum``, ...) -> {labels as a sorted tuple: value}.
    (prometheus-client's parser renames counters to ``x_total``; this reads the names as they are.)"""
    series: dict[str, dict] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, f"not a Prometheus sample line: {line!r}"
            name, labels, value = match.groups()
            series.setdefault(name, {})[tuple(sorted(LABEL.findall(labels or "")))] = float(value)
    return series


def total(series: dict, name: str, **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    return sum(v for key, v in series.get(name, {}).items() if set(labels.items()) <= set(key))


def by_label(series: dict, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in series.get(name, {}).items():
        out[dict(key)[label]] = out.get(dict(key)[label], 0) + value
    return out


def sdk_metric_source() -> str:
    import temporalio.bridge

    core = Path(temporalio.bridge.__file__).parent / "sdk-core"
    return "".join((core / path).read_text() for path in SDK_METRICS_SOURCES)


# --- the real processes ------------------------------------------------------------------------------------


def llm_control(llm_server: str, body: dict) -> dict:
    root = llm_server.removesuffix("/v1")
    httpx.post(f"{root}/_control", json=body, timeout=5).raise_for_status()
    return httpx.get(f"{root}/_stats", timeout=5).json()


def editor_api(base_url: str) -> httpx.Client:
    grant_staff_groups(Group, Permission)
    editor = User.objects.create_user("metrics-editor", is_staff=True)
    editor.groups.add(Group.objects.get(name="Editors"))
    token = Token.objects.create(user=editor)
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Token {token.key}"}, timeout=30)


def start_run(api: httpx.Client, **world) -> dict:
    body = {"name": "Metered", "premise": "Lighthouse keepers trade weather by letter.", **world}
    created = api.post("/api/worlds/", json=body)
    assert created.status_code == 201, created.text
    started = api.post(f"/api/worlds/{created.json()['id']}/generate/")
    assert started.status_code == 202, started.text
    return started.json()


def wait_finished(api: httpx.Client, run: dict, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (run := api.get(f"/api/runs/{run['id']}/").json())["status"] not in FINISHED:
        assert time.monotonic() < deadline, run
        time.sleep(0.3)
    return run


def scrape_web(base_url: str) -> dict[str, dict]:
    response = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return exported(response.text)


def billed_by_stage(run_keys: list[str]) -> dict[str, int]:
    """Tokens billed per LLM stage, from the attempts recorded on the runs' generation tasks in Mongo."""
    stages: dict[str, int] = {}
    for task in mongo.get_db().generation_tasks.find({"run_key": {"$in": run_keys}}):
        billed = sum(attempt.get("billed_tokens", 0) for attempt in task.get("attempts", []))
        if billed:
            stages[task["stage"]] = stages.get(task["stage"], 0) + billed
    return stages


@pytest.mark.django_db(transaction=True)
def test_metrics_after_real_runs_match_the_records_and_cover_every_query(
    start_worker, live_server, llm_server, settings
):
    """One worker with the media service down. Run 1 (2 characters x 1 post): its bible call gets a 503 once,
    its 4 images degrade. Run 2: a budget too small for its first call. Run 3: its bible stays invalid."""
    settings.METRICS_TOKEN = TOKEN
    worker = start_worker(env={"MEDIA_GRPC_TARGET": f"127.0.0.1:{servers.free_port()}"})
    api = editor_api(live_server.url)
    web_before = scrape_web(live_server.url)
    llm_control(llm_server, {"reset": True, "queue": [{"status": 503}]})

    main = start_run(api, character_count=2, posts_per_character=1)
    budget = start_run(api, character_count=1, posts_per_character=0, token_budget=1000)
    main, budget = wait_finished(api, main), wait_finished(api, budget)
    assert (main["status"], main["degraded_items"], budget["status"]) == ("completed", 4, "budget_exceeded")
    llm_control(llm_server, {"queue": [{"invalid_json": True}] * 3})  # the bible and its 2 repairs
    failed = wait_finished(api, start_run(api, character_count=1, posts_per_character=0))
    assert failed["status"] == "failed" and failed["stage"] == "bible"
    assert api.get("/api/no-such-thing/").status_code == 404

    worker_text = httpx.get(worker.metrics_url, timeout=10).text
    series = exported(worker_text)
    stats = llm_control(llm_server, {})
    db = mongo.get_db()
    keys = [documents.run_key(run["world"], run["number"]) for run in (main, budget, failed)]

    # runs by final status, items, failures
    assert by_label(series, app_metrics.RUNS_FINISHED, "status") == {"completed": 1, "budget_exceeded": 1, "failed": 1}
    main_key = keys[0]
    assert (
        by_label(series, app_metrics.ITEMS_GENERATED, "kind")
        == {
            "character": db.characters.count_documents({"run_key": main_key}),
            "post": db.posts.count_documents({"run_key": main_key}),
        }
        == {"character": 2, "post": 2}
    )
    assert by_label(series, app_metrics.ITEMS_FAILED, "kind") == {"bible": 1}
    # tokens: what each run's ledger holds, per stage as the tasks' attempts billed it
    ledgers = sum(store.tokens_used(db, key) for key in keys)
    assert total(series, app_metrics.LLM_TOKENS) == ledgers == main["tokens_used"] + failed["tokens_used"] > 0
    assert by_label(series, app_metrics.LLM_TOKENS, "stage") == billed_by_stage(keys)
    assert set(by_label(series, app_metrics.LLM_TOKENS, "model")) == {settings.LLM_MODEL}
    # one latency observation per HTTP call the stand-in answered: run 1's 503, its bible, cast, 2 profiles,
    # 2 plans and 2 posts; run 3's bible and 2 repairs (run 2 made none)
    assert total(series, f"{app_metrics.LLM_LATENCY}_count") == stats["chat_requests"] == 1 + 8 + 3
    bounds = set(by_label(series, f"{app_metrics.LLM_LATENCY}_bucket", "le"))
    assert bounds == {*map(str, app_metrics.BUCKETS[app_metrics.LLM_LATENCY]), "+Inf"}  # the worker's buckets (ms)
    assert total(series, f"{app_metrics.LLM_LATENCY}_bucket", le="120000") == stats["chat_requests"]
    # degradations, budget stops, outage waits (3 attempts for each image before it degrades)
    assert total(series, app_metrics.DEGRADED_IMAGES) == main["degraded_items"] == 4
    assert by_label(series, app_metrics.BUDGET_STOPS, "ledger") == {"run": 1}
    assert by_label(series, app_metrics.OUTAGE_WAITS, "upstream") == {"llm": 1, "media": 4 * 3}
    for name in app_metrics.DESCRIPTIONS:
        for key in series.get(name, {}) | series.get(f"{name}_bucket", {}):
            assert {label for label, _ in key} <= BOUNDED_LABELS, (name, key)

    # the web: request latency by view (the route's name), the 3 starts and the unmatched path among them
    web = scrape_web(live_server.url)

    def requests(**labels: str) -> float:
        name = f"{WEB_LATENCY}_count"
        return total(web, name, **labels) - total(web_before, name, **labels)

    assert requests(view="api-world-generate", method="POST", status="202") == 3
    assert requests(view="api-worlds", method="POST", status="201") == 3
    assert requests(view="api-run", method="GET", status="200") >= 3
    assert requests(view="worlds.api.NotFoundApi", status="404") == 1
    assert not any("/api/" in dict(key)["view"] for key in web[f"{WEB_LATENCY}_count"])

    # every metric the dashboard and the alerts query is exported (Temporal's failure counters exist only
    # once something failed: those not seen here must be names the SDK's own source defines)
    seen, sdk = {**series, **web}, sdk_metric_source()
    for where, expr in promql_queries():
        for name in metric_names(expr):
            if name in seen:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert name == base or f"{base}_bucket" in seen, f"{where}: {name} is not a histogram series"
                continue
            assert name.startswith("temporal_") and f'"{name.removeprefix("temporal_")}"' in sdk, (
                f"{where} queries {name}, which neither process exports"
            )


def test_web_metrics_endpoint_is_off_without_a_token_and_needs_it(live_server, settings):
    url = f"{live_server.url}/metrics"
    settings.METRICS_TOKEN = ""
    assert httpx.get(url, headers={"Authorization": "Bearer"}, timeout=10).status_code == 404
    settings.METRICS_TOKEN = TOKEN
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}x"}, timeout=10).status_code == 401
    response = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200 and "# TYPE worldgen_web_request_duration_seconds histogram" in response.text


def test_web_metrics_of_every_process_are_served_with_a_multiprocess_directory(live_server, settings, tmp_path):
    """Another process (as a gunicorn worker would) answers a request with PROMETHEUS_MULTIPROC_DIR set;
    this process's /metrics, pointed at the same directory, serves its count."""
    script = (
        "import django; django.setup(); from django.test import Client; "
        "assert Client(HTTP_HOST='localhost').get('/no-such-page/').status_code == 404"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "worldgen_site.settings"}
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, timeout=60)
    assert list(tmp_path.glob("histogram_*.db"))  # the other process wrote its values there
    settings.METRICS_TOKEN, settings.PROMETHEUS_MULTIPROC_DIR = TOKEN, str(tmp_path)
    web = scrape_web(live_server.url)
    assert web[f"{WEB_LATENCY}_count"] == {(("method", "GET"), ("status", "404"), ("view", "unmatched")): 1.0}
