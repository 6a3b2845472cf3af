"""``python -m localstack`` (``make demo``): the whole local stack until Ctrl-C.

Starts SecantusDB, the Temporal dev server (with its UI), the local LLM
endpoint, the media server, the worker and Django's server, all from this
venv; generates the sample world; keeps every byte of data under
``.localdata/``; stops everything it started on Ctrl-C or SIGTERM. Runs with
``WORLDGEN_ENV=development`` unless the environment sets it.

Your own models: with ``LLM_BASE_URL`` set (and ``LLM_MODEL``, ``LLM_API_KEY``
as it needs), the worker calls that endpoint and the local LLM stand-in is not
started; with ``MEDIA_GRPC_TARGET`` set, the same for the media server. With
``MEDIA_IMAGE_BASE_URL`` set (and ``MEDIA_IMAGE_MODEL``, ``MEDIA_IMAGE_API_KEY``),
the media server started here draws with that OpenAI-compatible image API.
"""

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from localllm import MODEL_ID as LOCAL_LLM_MODEL
from localstack import servers

ROOT = Path(__file__).resolve().parent.parent
YOUR_LLM = os.environ.get("LLM_BASE_URL", "")  # an OpenAI-compatible endpoint of yours: no stand-in
YOUR_MEDIA = os.environ.get("MEDIA_GRPC_TARGET", "")
ENCRYPTED = bool(os.environ.get("TEMPORAL_PAYLOAD_KEYS", "").strip())
YOUR_IMAGES = os.environ.get("MEDIA_IMAGE_BASE_URL", "")  # an image API for the media server started here


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m localstack", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / ".localdata", help="all local data (default: .localdata)"
    )
    parser.add_argument("--web-port", type=int, default=8000)
    parser.add_argument("--temporal-port", type=int, default=7233)
    parser.add_argument("--temporal-ui-port", type=int, default=8233)
    parser.add_argument("--mongo-port", type=int, default=27017)
    parser.add_argument("--worker-health-port", type=int, default=8081)
    parser.add_argument("--worker-metrics-port", type=int, default=9464)
    parser.add_argument("--llm-port", type=int, default=8090)
    parser.add_argument("--media-port", type=int, default=50051)
    parser.add_argument("--no-sample", action="store_true", help="do not generate the sample world")
    parser.add_argument(
        "--live",
        type=float,
        metavar="SECONDS",
        help="take the sample world live, a world day every SECONDS (60 at least): `make demo DEMO_ARGS=--live=60`",
    )
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"[localstack] {message}", flush=True)


def check_ports(ports: dict[str, int]) -> None:
    taken = [
        f"port {port} ({what}, change it with --{flag})"
        for (what, flag), port in ports.items()
        if not servers.port_is_free(port)
    ]
    if taken:
        raise servers.StackError(
            "these ports are taken: "
            + "; ".join(taken)
            + ". Stop whatever uses them (maybe another `make demo`) or pick other ports."
        )


def admin_password(data_dir: Path) -> str:
    path = data_dir / "admin-password.txt"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(12) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def manage(*args: str, env: dict) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise servers.StackError(f"manage.py {' '.join(args[:1])} failed:\n{result.stderr or result.stdout}")
    return result.stdout.strip()


def wait_for_http(process: servers.ManagedProcess, url: str, expect: str, timeout: float = 90) -> None:
    """Until ``url`` answers with ``expect`` in its body: another server that took the port (e.g. one of the
    Temporal dev server's random ports) answers too, but not with what ours does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise servers.StackError(f"{process.name} exited:\n{process.log_tail()}")
        try:
            answer = httpx.get(url, timeout=2)
            if answer.status_code < 500 and expect in answer.text:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise servers.StackError(f"{process.name} did not answer {url} within {timeout:.0f}s:\n{process.log_tail()}")


def start_stand_in(
    name: str, module: str, variable: str, port: int, started: list, logs: Path, env: dict | None = None
) -> str:
    """Start ``python -m <module>`` on ``port`` (with ``env`` added to the environment), the stand-in for
    what ``variable`` would name; returns its address (host:port)."""
    say(f"starting the {name} (a stand-in; set {variable} to use yours)")
    process = servers.start(
        name,
        [sys.executable, "-m", module, "--port", str(port)],
        log_path=logs / f"{module}.log",
        env={**os.environ, **env} if env else None,
        cwd=ROOT,
    )
    started.append(process)
    servers.wait_for_port(process, port)
    return f"127.0.0.1:{port}"


def run(opts: argparse.Namespace, started: list[servers.ManagedProcess]) -> None:
    check_ports(
        {
            ("Django web server", "web-port"): opts.web_port,
            ("Temporal", "temporal-port"): opts.temporal_port,
            ("Temporal UI", "temporal-ui-port"): opts.temporal_ui_port,
            ("SecantusDB", "mongo-port"): opts.mongo_port,
            ("worker health", "worker-health-port"): opts.worker_health_port,
            ("worker metrics", "worker-metrics-port"): opts.worker_metrics_port,
            **({} if YOUR_LLM else {("local LLM endpoint", "llm-port"): opts.llm_port}),
            **({} if YOUR_MEDIA else {("media server", "media-port"): opts.media_port}),
        }
    )
    data, logs = opts.data_dir.resolve(), opts.data_dir.resolve() / "logs"
    (data / "mongo").mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)

    say("starting SecantusDB and the Temporal dev server")
    mongo = servers.start(
        "SecantusDB",
        servers.secantus_args(port=opts.mongo_port, storage=data / "mongo"),
        log_path=logs / "secantus.log",
    )
    started.append(mongo)
    temporal = servers.start(
        "Temporal dev server",
        servers.temporal_dev_server_args(
            port=opts.temporal_port, ui_port=opts.temporal_ui_port, db_file=data / "temporal.db"
        )
        # Encrypted payloads: the UI decodes them through the web server's codec endpoint (docs/OPERATIONS.md).
        + (["--ui-codec-endpoint", f"http://127.0.0.1:{opts.web_port}/temporal-codec"] if ENCRYPTED else []),
        log_path=logs / "temporal.log",
    )
    started.append(temporal)
    models = {"LLM_BASE_URL": YOUR_LLM, "MEDIA_GRPC_TARGET": YOUR_MEDIA}  # what the worker calls
    for variable, yours in models.items():
        if yours:
            say(f"using your {variable}={yours}: no stand-in is started for it")
    if not YOUR_LLM:  # the stand-in knows one model, and needs no key
        address = start_stand_in("local LLM endpoint", "localllm", "LLM_BASE_URL", opts.llm_port, started, logs)
        models |= {"LLM_BASE_URL": f"http://{address}/v1", "LLM_MODEL": LOCAL_LLM_MODEL, "LLM_API_KEY": ""}
    elif not os.environ.get("LLM_MODEL"):
        say(f"LLM_MODEL is not set: asking your endpoint for {LOCAL_LLM_MODEL!r}, which it may not have")
    if not YOUR_MEDIA:
        images = {"MEDIA_IMAGE_BACKEND": os.environ.get("MEDIA_IMAGE_BACKEND") or "openai"} if YOUR_IMAGES else {}
        if YOUR_IMAGES:
            say(f"using your MEDIA_IMAGE_BASE_URL={YOUR_IMAGES}: the media server draws with it")
        models["MEDIA_GRPC_TARGET"] = start_stand_in(
            "media server", "mediaserver", "MEDIA_GRPC_TARGET", opts.media_port, started, logs, images
        )
    servers.wait_for_mongo(mongo, opts.mongo_port)
    servers.wait_for_port(temporal, opts.temporal_port, timeout=90)

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "worldgen_site.settings",
        "MONGO_URI": servers.mongo_uri(opts.mongo_port),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{opts.temporal_port}",
        "TEMPORAL_UI_URL": f"http://127.0.0.1:{opts.temporal_ui_port}",
        "DATABASE_URL": os.environ.get("DATABASE_URL", f"sqlite:///{data / 'db.sqlite3'}"),
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text"),
        **models,
        "PYTHONUNBUFFERED": "1",
    }
    say("migrating the database and creating the admin user")
    manage("migrate", "--noinput", env=env)
    password = admin_password(data)
    manage("ensure_local_admin", "--username", "admin", "--password", password, env=env)

    say("starting the worker and the web server")
    worker = servers.start(
        "worker",
        [
            sys.executable,
            "manage.py",
            "run_temporal_worker",
            "--health-port",
            str(opts.worker_health_port),
            "--metrics-port",
            str(opts.worker_metrics_port),
        ],
        log_path=logs / "worker.log",
        env=env,
        cwd=ROOT,
    )
    started.append(worker)
    web = servers.start(
        "web server",
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{opts.web_port}"],
        log_path=logs / "web.log",
        env=env,
        cwd=ROOT,
    )
    started.append(web)
    wait_for_http(worker, f"http://127.0.0.1:{opts.worker_health_port}/healthz", '"status"')
    wait_for_http(web, f"http://127.0.0.1:{opts.web_port}/admin/login/", "csrfmiddlewaretoken")

    say(manage("stack_check", env=env))
    if not opts.no_sample:
        media = "your image API" if YOUR_IMAGES else "the procedural stand-in"
        kinds = ("yours" if YOUR_LLM else "a stand-in", "yours" if YOUR_MEDIA else media)
        say("generating the sample world (LLM: {}; images: {})".format(*kinds))
        if (
            subprocess.run(
                [sys.executable, "manage.py", "generate_world", "--sample", "--wait"], cwd=ROOT, env=env
            ).returncode
            != 0
        ):
            raise servers.StackError(f"the sample world was not generated; see the lines above and {logs}")
        if opts.live:
            say(manage("go_live", "--sample", "--day-seconds", str(opts.live), env=env))
    print(
        f"""
  worldgen is up.
    World viewer: http://127.0.0.1:{opts.web_port}/worlds/
    Admin:        http://127.0.0.1:{opts.web_port}/admin/   (user: admin, password: {password};
                  user "reviewer", same password, approves bibles: nobody approves their own run)
    API docs:     http://127.0.0.1:{opts.web_port}/api/docs/
    Worlds:       http://127.0.0.1:{opts.web_port}/admin/worlds/world/  (runs: /admin/worlds/generationrun/)
    Temporal UI:  http://127.0.0.1:{opts.temporal_ui_port}/
    Worker:       http://127.0.0.1:{opts.worker_health_port}/healthz  (metrics: http://127.0.0.1:{opts.worker_metrics_port}/metrics)
    MongoDB:      {servers.mongo_uri(opts.mongo_port)}  (database worldgen: bibles, characters, posts,
                  generation_tasks, images.files)
    Data and logs: {data}
  Press Ctrl-C to stop everything.
""",
        flush=True,
    )
    while True:
        for process in started:
            if not process.alive():
                raise servers.StackError(f"{process.name} stopped unexpectedly:\n{process.log_tail()}")
        time.sleep(0.5)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    # The local development stack: settings fail closed to production, so say so for every process it starts.
    os.environ.setdefault("WORLDGEN_ENV", "development")
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job starts with it ignored
        signal.signal(sig, _interrupt)
    started: list[servers.ManagedProcess] = []
    code = 0
    try:
        run(opts, started)
    except KeyboardInterrupt:
        say("stopping")
    except servers.StackError as exc:
        say(f"error: {exc}")
        code = 1
    finally:
        for process in reversed(started):
            process.stop()
        if started:
            say("all processes stopped")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
