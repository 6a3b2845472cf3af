"""The reference deployment under deploy/ is consistent with the code.

Parses every YAML file (all documents) and checks the manifests against the
settings module, the real ``run_temporal_worker`` parser and docs/OPERATIONS.md.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from temporal_worker.management.commands.run_temporal_worker import Command, _queues
from temporal_worker.worker import QUEUE_KINDS
from worldgen_site import health

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
REQUIRED_IN_PRODUCTION = {"SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "MONGO_URI"}
SECRET_NAMES = {"SECRET_KEY", "DATABASE_URL", "MONGO_URI", "LLM_API_KEY", "TEMPORAL_API_KEY", "METRICS_TOKEN"}


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def _documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in _yaml_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


DOCS = _documents()


def _by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in DOCS if doc.get("kind") == kind]


def _one(kind: str, name: str) -> dict:
    found = [doc for doc in _by_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _settings_env_names() -> set[str]:
    source = (ROOT / "worldgen_site" / "settings.py").read_text()
    return set(re.findall(r"\benv_\w+\(\s*\"([A-Z][A-Z0-9_]*)\"", source))


def _containers(doc: dict) -> list[dict]:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] != "Pod" else doc["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _workloads() -> list[dict]:
    return [doc for _, doc in DOCS if doc.get("kind") in ("Deployment", "Job")]


def _worldgen_containers() -> list[tuple[dict, dict]]:
    return [
        (doc, c) for doc in _workloads() for c in _containers(doc) if c["image"].split(":")[0].endswith("/worldgen")
    ]


def _container_env(container: dict) -> dict[str, str]:
    """Name -> value the container gets from envFrom (ConfigMap/Secret) and env."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            values.update(_one("ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            values.update(_one("Secret", source["secretRef"]["name"])["stringData"])
    for item in container.get("env", []):
        values[item["name"]] = item.get("value", "<from valueFrom>")
    return values


def _workers() -> dict[str, tuple[dict, dict, list[str]]]:
    """Deployments running run_temporal_worker: name -> (deployment, container, worker args)."""
    found = {}
    for doc in _by_kind("Deployment"):
        for c in doc["spec"]["template"]["spec"]["containers"]:
            argv = [*c.get("command", []), *c.get("args", [])]
            if "run_temporal_worker" in argv:
                found[doc["metadata"]["name"]] = (doc, c, argv[argv.index("run_temporal_worker") + 1 :])
    return found


def _parse_worker_args(args: list[str]):
    return Command().create_parser("manage.py", "run_temporal_worker").parse_args(args)


def _port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    matches = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert matches, f"container {container['name']} has no port named {port!r}"
    return matches[0]


def test_deploy_tree_has_the_reference_files():
    names = {p.relative_to(DEPLOY).as_posix() for p in _yaml_files()}
    assert "prometheus/alerts.yaml" in names
    kinds = {doc["kind"] for _, doc in DOCS}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Job", "ConfigMap", "Secret", "PrometheusRule"} <= kinds


@pytest.mark.parametrize(
    "path,doc", DOCS, ids=[f"{p.name}:{d.get('kind')}:{d.get('metadata', {}).get('name')}" for p, d in DOCS]
)
def test_every_document_has_api_version_kind_and_name(path, doc):
    assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], path
    assert isinstance(doc.get("kind"), str) and doc["kind"], path
    assert isinstance(doc.get("metadata"), dict) and doc["metadata"].get("name"), path


def test_every_env_var_in_the_manifests_is_a_real_setting():
    settings_names = _settings_env_names()
    assert {"SECRET_KEY", "MONGO_URI", "LLM_RATE_LIMIT_PER_SECOND"} <= settings_names  # the grep works
    referenced = set()
    for cm in _by_kind("ConfigMap"):
        if cm["metadata"]["name"] == "worldgen-config":
            referenced |= set(cm["data"])
    for secret in _by_kind("Secret"):
        referenced |= set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for _, c in _worldgen_containers():
        referenced |= {item["name"] for item in c.get("env", [])}
    assert referenced, "no env names found"
    unknown = sorted(referenced - settings_names)
    assert not unknown, f"not read by worldgen_site/settings.py: {unknown}"


def test_every_worldgen_container_gets_the_required_production_settings():
    containers = _worldgen_containers()
    assert len(containers) >= 6  # collectstatic, web, three workers, migrate
    for doc, c in containers:
        env = _container_env(c)
        assert env.get("WORLDGEN_ENV") == "production", (doc["metadata"]["name"], c["name"])
        missing = sorted(REQUIRED_IN_PRODUCTION - env.keys())
        assert not missing, f"{doc['metadata']['name']}/{c['name']} lacks {missing}"


def test_secrets_are_placeholders_and_only_in_the_secret():
    secret = _one("Secret", "worldgen-secrets")
    assert set(secret["stringData"]) == SECRET_NAMES
    for name, value in secret["stringData"].items():
        assert "CHANGE-ME" in value, f"{name} must be a placeholder"
    for cm in _by_kind("ConfigMap"):
        assert not SECRET_NAMES & set(cm.get("data", {})), "secrets belong in the Secret, not a ConfigMap"
    for _, c in _worldgen_containers():
        assert not SECRET_NAMES & {item["name"] for item in c.get("env", []) if "value" in item}


def test_the_manifest_environment_loads_production_settings_and_passes_check_deploy():
    """ConfigMap + Secret template, as a pod would see them, satisfy settings.py and check --deploy."""
    web = _one("Deployment", "worldgen-web")
    container = next(c for c in web["spec"]["template"]["spec"]["containers"] if c["name"] == "web")
    env = {k: v for k, v in os.environ.items() if k not in _settings_env_names()}
    env.update(_container_env(container))
    env["STATIC_ROOT"] = str(ROOT / "staticfiles")  # the in-image path need not exist here
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_web_trusts_exactly_the_ingress_proxy_for_client_addresses():
    """One proxy (the ingress controller) is in front of the web process: admin login lockouts count the client
    address it appends to X-Forwarded-For (tests/test_access_limits.py runs it behind real proxies)."""
    web = _one("Deployment", "worldgen-web")
    container = next(c for c in web["spec"]["template"]["spec"]["containers"] if c["name"] == "web")
    assert _container_env(container).get("TRUSTED_PROXY_COUNT") == "1"
    assert "TRUSTED_PROXY_COUNT" in OPERATIONS.read_text()


def test_worker_args_parse_with_the_real_command_and_cover_the_three_queues():
    workers = _workers()
    assert len(workers) == 3, sorted(workers)
    served = {}
    for name, (_, _, args) in workers.items():
        options = _parse_worker_args(args)
        kinds = _queues(options.queues)
        assert len(kinds) == 1, f"{name} should serve exactly one queue, got {kinds}"
        assert kinds[0] not in served, f"{kinds[0]} served by {served.get(kinds[0])} and {name}"
        served[kinds[0]] = name
        assert name.endswith(kinds[0]), f"{name} serves {kinds[0]}"
        assert options.max_concurrent_activities >= 1 and options.max_concurrent_workflow_tasks >= 1
        assert options.health_host == "0.0.0.0", f"{name}: /healthz and /metrics bind to --health-host"
    assert set(served) == set(QUEUE_KINDS)


def test_an_unknown_worker_option_is_rejected_by_the_parser():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        _parse_worker_args(["--queues", "llm", "--no-such-option", "1"])


def test_worker_probes_metrics_and_grace_period_match_the_args():
    for name, (doc, c, args) in _workers().items():
        options = _parse_worker_args(args)
        pod = doc["spec"]["template"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            http = c[probe]["httpGet"]
            assert http["path"] == "/healthz", (name, probe)
            assert _port_number(c, http["port"]) == options.health_port, (name, probe)
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == options.metrics_port > 0
        assert options.metrics_port in {p["containerPort"] for p in c["ports"]}
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        assert grace > options.graceful_shutdown_timeout, f"{name}: SIGKILL would cut the graceful shutdown"
        # /healthz only listens after the start-up connect retries: the startup probe must outlast them.
        connect = options.connect_timeout
        if "--connect-timeout" not in args:
            connect = float(_container_env(c).get("WORKER_CONNECT_TIMEOUT_SECONDS", connect))
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] > connect, name
        assert c["resources"]["requests"] and c["resources"]["limits"], name
        assert pod["metadata"]["labels"].items() >= doc["spec"]["selector"]["matchLabels"].items()


def test_llm_grace_period_outlasts_an_llm_call():
    doc, c, args = _workers()["worldgen-worker-llm"]
    llm_timeout = float(_container_env(c)["LLM_TIMEOUT_SECONDS"])
    assert _parse_worker_args(args).graceful_shutdown_timeout > llm_timeout


def test_web_service_and_probes_are_wired():
    web = _one("Deployment", "worldgen-web")
    service = _one("Service", "worldgen-web")
    pod = web["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    for port in service["spec"]["ports"]:
        assert any(p.get("name") == port["targetPort"] for c in containers.values() for p in c.get("ports", []))
    django = containers["web"]
    # The probes skip the host check and the HTTPS redirect (tests/test_web_server.py shows it).
    assert django["livenessProbe"]["httpGet"]["path"] == "/healthz"
    readiness = django["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/readyz"
    checks = len(health.CHECKS) * health.READY_CHECK_TIMEOUT_SECONDS
    assert readiness["timeoutSeconds"] > checks, "a slow dependency must answer 503, not time the probe out"
    assert django["command"] == ["gunicorn", "-c", "worldgen_site/gunicorn.conf.py", "worldgen_site.wsgi"]
    assert (ROOT / "worldgen_site/gunicorn.conf.py").exists()
    assert re.search(r"^gunicorn==[\d.]+ ", (ROOT / "requirements.txt").read_text(), re.M), "gunicorn is pinned"
    static_root = _container_env(django)["STATIC_ROOT"]
    init = {c["name"]: c for c in pod["spec"]["initContainers"]}["collectstatic"]
    assert "collectstatic" in init["command"]
    assert static_root in {m["mountPath"] for m in init["volumeMounts"]}


def test_migrate_job_runs_migrate_and_check_deploy():
    job = _one("Job", "worldgen-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    script = " ".join(container["command"])
    assert "manage.py migrate --noinput" in script
    assert "check --deploy" in script
    assert "ensure_indexes" in script
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_llm_hpa_scales_the_llm_workers_on_an_adapter_metric():
    hpa = _one("HorizontalPodAutoscaler", "worldgen-worker-llm")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] in _workers()
    _, c, args = _workers()[target["name"]]
    assert _queues(_parse_worker_args(args).queues) == ["llm"]
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    name = metric["external"]["metric"]["name"]
    assert (
        metric["external"]["metric"]["selector"]["matchLabels"]["task_queue"]
        == _container_env(c)["TEMPORAL_TASK_QUEUE_LLM"]
    )
    adapter = yaml.safe_load(_one("ConfigMap", "worldgen-prometheus-adapter")["data"]["config.yaml"])
    rules = {rule["name"]["as"]: rule for rule in adapter["externalRules"]}
    assert name in rules, f"no prometheus-adapter rule serves {name}"
    assert "temporal_activity_schedule_to_start_latency_bucket" in rules[name]["seriesQuery"]


# Words of PromQL that are not metric names (aggregations and functions are followed by "(").
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: strings, label matchers, ranges, grouping label lists and
    function calls removed, what is left are metric names."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    words = re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", expr)
    return {word for word, call in words if not call and word not in PROMQL_KEYWORDS}


def test_alert_rules_are_non_empty_and_use_metrics_the_operations_doc_names():
    rules = [rule for doc in _by_kind("PrometheusRule") for group in doc["spec"]["groups"] for rule in group["rules"]]
    assert len(rules) >= 5
    docs_text = OPERATIONS.read_text()
    used = set()
    for rule in rules:
        assert rule.get("alert") and rule["labels"]["severity"] in ("warning", "critical")
        expr = rule.get("expr", "").strip()
        assert expr, rule["alert"]
        names = metric_names(expr)
        assert names, f"{rule['alert']}: no metric in {expr!r}"
        for name in names:
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert base.startswith(("temporal_", "worldgen_")), f"{rule['alert']}: {name} is neither SDK nor app"
            assert base in docs_text, f"{rule['alert']}: docs/OPERATIONS.md never mentions {base}"
            used.add(base)
    assert {
        "temporal_activity_schedule_to_start_latency",
        "temporal_workflow_task_schedule_to_start_latency",
        "temporal_worker_task_slots_available",
        "temporal_activity_execution_failed",
        "temporal_workflow_failed",
        "worldgen_runs_finished",
        "worldgen_llm_request_latency",
        "worldgen_degraded_images",
        "worldgen_budget_stops",
        "worldgen_outage_waits",
        "worldgen_web_request_duration_seconds",
    } <= used


def test_metric_name_extraction():
    assert metric_names('sum by (le) (rate(temporal_x_bucket{task_queue="a_b"}[5m])) > 3') == {"temporal_x_bucket"}


def test_operations_doc_uses_the_real_names():
    text = OPERATIONS.read_text()
    parser = Command().create_parser("manage.py", "run_temporal_worker")
    options = {opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")}
    for option in (
        "--queues",
        "--llm-rate-limit",
        "--graceful-shutdown-timeout",
        "--health-port",
        "--metrics-port",
        "--health-host",
        "--max-concurrent-activities",
    ):
        assert option in options and option in text
    for flag in re.findall(r"run_temporal_worker[^\n`]*", text):
        for opt in re.findall(r"--[a-z-]+", flag):
            assert opt in options, f"docs show an option the command lacks: {opt}"
    for name in (
        "TEMPORAL_TLS",
        "TEMPORAL_API_KEY",
        "TEMPORAL_NAMESPACE",
        "DATABASE_URL",
        "MONGO_URI",
        "LLM_RATE_LIMIT_PER_SECOND",
        "worldgen-workflows",
        "worldgen-llm",
        "worldgen-media",
        "/healthz",
    ):
        assert name in text
    # The media server (MEDIA_IMAGE_*, MEDIA_TLS_*) and gunicorn's config (WEB_*) read their own.
    paths = [*(ROOT / "mediaserver").glob("*.py"), ROOT / "worldgen_site/gunicorn.conf.py"]
    source = "".join(path.read_text() for path in paths)
    real = _settings_env_names() | set(re.findall(r"(?:env\w*|environ\.get)\(\s*\"([A-Z][A-Z0-9_]*)\"", source))
    for name in re.findall(r"`([A-Z][A-Z0-9]+(?:_[A-Z0-9]+)+)`", text):
        if name not in ("X_FORWARDED_PROTO",):
            assert name in real, f"docs name {name}, which neither settings.py nor the media server reads"


def test_every_pod_runs_as_non_root_on_a_read_only_root_filesystem_with_a_writable_tmp():
    for doc in _workloads():
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        temporary = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for c in _containers(doc):
            context = c["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"], c["name"]
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert mounts.get("/tmp") in temporary, f"{c['name']}: /tmp must be a writable emptyDir"


def _policies_for(labels: dict) -> list[dict]:
    return [p for p in _by_kind("NetworkPolicy") if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]


def _allowed_ports(policies: list[dict]) -> set[int]:
    return {port["port"] for p in policies for rule in p["spec"].get("ingress", []) for port in rule["ports"]}


def test_network_policies_let_in_only_each_pod_s_own_ports():
    for name, (doc, _, args) in _workers().items():
        options = _parse_worker_args(args)
        policies = _policies_for(doc["spec"]["template"]["metadata"]["labels"])
        assert policies and all("Ingress" in p["spec"]["policyTypes"] for p in policies), name
        assert _allowed_ports(policies) == {options.metrics_port, options.health_port}, name
    web = _one("Deployment", "worldgen-web")["spec"]["template"]
    policies = _policies_for(web["metadata"]["labels"])
    served = {p["containerPort"] for c in web["spec"]["containers"] for p in c.get("ports", [])}
    assert policies and _allowed_ports(policies) == served


def test_the_migrate_job_s_index_command_runs(mongo_env):
    """The job's ensure_indexes line is real code: run it against the test Mongo."""
    job = _one("Job", "worldgen-migrate")
    script = " ".join(job["spec"]["template"]["spec"]["containers"][0]["command"])
    code = re.search(r'shell -c "([^"]+)"', script)[1]
    env = {**os.environ, **mongo_env}
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
